//! Critical groups: replicas that must not share a host (config
//! `blast_radius.critical_groups`). A domain belongs to the first group whose
//! pattern matches its nova instance name or its libvirt name; `/metrics`
//! exports the membership so a fleet-wide rule can flag a group with several
//! members on one host, and the analyzer can name them in a bundle's blast
//! radius.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::sample::Domain;

/// One group as configured: a name (a bounded label value) and a regular
/// expression over domain names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CriticalGroupConfig {
    pub name: String,
    pub pattern: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct BlastRadiusConfig {
    /// e.g. `[{ name = "webproxy", pattern = "^tools-webproxy-[0-9]+$" }]`.
    pub critical_groups: Vec<CriticalGroupConfig>,
}

/// Why a group cannot be used (index into the list, and what is wrong).
#[derive(Debug, thiserror::Error)]
#[error("critical group #{index} ({name:?}): {msg}")]
pub struct GroupError {
    pub index: usize,
    pub name: String,
    pub msg: String,
}

/// The compiled groups, in configured order.
#[derive(Clone, Debug, Default)]
pub struct CriticalGroups {
    groups: Vec<(String, Regex)>,
}

/// Label values stay printable and short: a Prometheus label and a file name
/// fragment both have to carry them.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl CriticalGroups {
    pub fn new(cfg: &BlastRadiusConfig) -> Result<CriticalGroups, GroupError> {
        let mut groups: Vec<(String, Regex)> = Vec::new();
        for (index, g) in cfg.critical_groups.iter().enumerate() {
            let err = |msg: String| GroupError {
                index,
                name: g.name.clone(),
                msg,
            };
            if !valid_name(&g.name) {
                return Err(err(
                    "name must be 1-64 characters of A-Z a-z 0-9 - _ .".into()
                ));
            }
            if groups.iter().any(|(n, _)| *n == g.name) {
                return Err(err("the same name twice".into()));
            }
            let re = Regex::new(&g.pattern).map_err(|e| err(format!("bad pattern: {e}")))?;
            groups.push((g.name.clone(), re));
        }
        Ok(CriticalGroups { groups })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|(n, _)| n.as_str())
    }

    /// The first group whose pattern matches the domain's nova instance name
    /// or its libvirt name.
    pub fn group_of(&self, d: &Domain) -> Option<&str> {
        let nova = d.nova.as_ref().map(|n| n.instance_name.as_str());
        self.groups
            .iter()
            .find(|(_, re)| {
                nova.is_some_and(|n| !n.is_empty() && re.is_match(n)) || re.is_match(&d.name)
            })
            .map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::libvirt::Nova;

    fn dom(name: &str, nova: Option<&str>) -> Domain {
        Domain {
            name: name.into(),
            nova: nova.map(|n| Nova {
                instance_name: n.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn groups(list: &[(&str, &str)]) -> Result<CriticalGroups, GroupError> {
        CriticalGroups::new(&BlastRadiusConfig {
            critical_groups: list
                .iter()
                .map(|(n, p)| CriticalGroupConfig {
                    name: n.to_string(),
                    pattern: p.to_string(),
                })
                .collect(),
        })
    }

    #[test]
    fn first_matching_group_by_nova_name_then_domain_name() {
        let g = groups(&[("webproxy", "^tools-webproxy-[0-9]+$"), ("db", "db")]).unwrap();
        assert_eq!(
            g.group_of(&dom("instance-0000002a", Some("tools-webproxy-01"))),
            Some("webproxy")
        );
        assert_eq!(g.group_of(&dom("db-2", None)), Some("db"));
        assert_eq!(
            g.group_of(&dom("instance-1", Some("tools-db-1"))),
            Some("db")
        );
        assert_eq!(g.group_of(&dom("instance-1", Some("web"))), None);
        assert_eq!(
            g.names().collect::<Vec<_>>(),
            vec!["webproxy".to_string(), "db".to_string()]
        );
    }

    #[test]
    fn bad_groups_are_refused_with_why() {
        let e = groups(&[("a", "(")]).unwrap_err().to_string();
        assert!(e.contains("#0") && e.contains("bad pattern"), "{e}");
        let e = groups(&[("a b", "x")]).unwrap_err().to_string();
        assert!(e.contains("name must be"), "{e}");
        let e = groups(&[("a", "x"), ("a", "y")]).unwrap_err().to_string();
        assert!(e.contains("#1") && e.contains("twice"), "{e}");
    }
}
