//! /proc/net/bonding/<bond> (drivers/net/bonding/bond_procfs.c), pure.
//! Hand-written: no crate parses it. The file is "Key: value" lines; the
//! bond's own keys come first, then one "Slave Interface:" block per slave.

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slave {
    pub name: String,
    pub mii_status: String,
    pub link_failure_count: u64,
    pub aggregator_id: Option<u32>,
    /// 802.3ad: the partner's system MAC as this slave sees it.
    pub partner_mac: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bond {
    pub mode: String,
    pub mii_status: String,
    pub active_aggregator: Option<u32>,
    /// Partner MAC of the active aggregator (802.3ad).
    pub partner_mac: Option<String>,
    pub slaves: Vec<Slave>,
}

pub fn parse(text: &str) -> Bond {
    let mut b = Bond::default();
    let mut in_active_agg = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "Bonding Mode" => b.mode = v.to_string(),
            "Slave Interface" => {
                b.slaves.push(Slave {
                    name: v.to_string(),
                    ..Default::default()
                });
                in_active_agg = false;
            }
            "Active Aggregator Info" => in_active_agg = true,
            "MII Status" => match b.slaves.last_mut() {
                Some(s) => s.mii_status = v.to_string(),
                None => b.mii_status = v.to_string(),
            },
            "Link Failure Count" => {
                if let Some(s) = b.slaves.last_mut() {
                    s.link_failure_count = v.parse().unwrap_or(0);
                }
            }
            "Aggregator ID" => {
                let id = v.parse().ok();
                match b.slaves.last_mut() {
                    Some(s) => s.aggregator_id = id,
                    None if in_active_agg => b.active_aggregator = id,
                    None => {}
                }
            }
            "Partner Mac Address" => match b.slaves.last_mut() {
                Some(s) => s.partner_mac = Some(v.to_string()),
                None => b.partner_mac = Some(v.to_string()),
            },
            _ => {}
        }
    }
    b
}

impl Bond {
    /// What is wrong, in words (empty = nothing seen).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.mii_status == "down" {
            out.push("bond MII Status: down".into());
        }
        let zero = |m: &Option<String>| m.as_deref() == Some("00:00:00:00:00:00");
        if self.mode.contains("802.3ad") && zero(&self.partner_mac) {
            out.push("802.3ad partner MAC 00:00:00:00:00:00: no LACP partner (the switch does not answer)".into());
        }
        for s in &self.slaves {
            if s.mii_status == "down" {
                out.push(format!(
                    "slave {} MII Status: down (link failures {})",
                    s.name, s.link_failure_count
                ));
            }
            if self.mode.contains("802.3ad") {
                if let (Some(a), Some(active)) = (s.aggregator_id, self.active_aggregator) {
                    if a != active && s.mii_status == "up" {
                        out.push(format!(
                            "slave {} in aggregator {a}, the active one is {active} (aggregator mismatch)",
                            s.name
                        ));
                    }
                }
                if zero(&s.partner_mac) && s.mii_status == "up" {
                    out.push(format!("slave {}: partner MAC 00:00:00:00:00:00", s.name));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    /// An 802.3ad bond after the switch stopped answering LACP (layout of
    /// bond_procfs.c; see tests/fixtures/PROVENANCE.md).
    #[test]
    fn lacp_partner_gone() {
        let b = super::parse(include_str!(
            "../../tests/fixtures/replay/F24/deep/proc/net/bonding/bond0"
        ));
        assert!(b.mode.contains("802.3ad"));
        assert_eq!(b.slaves.len(), 2);
        let p = b.problems();
        assert!(p.iter().any(|x| x.contains("no LACP partner")), "{p:?}");
        assert!(
            p.iter().any(|x| x.contains("eno2") && x.contains("down")),
            "{p:?}"
        );
    }
}
