//! The reference docs describe the code as it is: docs/configuration.md
//! lists every config key with its real default, and the operator guide's
//! capability list is the unit's.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn flatten(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            _ => {
                out.insert(key, v.clone());
            }
        }
    }
}

#[test]
fn configuration_reference_lists_every_key_with_its_default() {
    let schema = toml::Table::try_from(hvflight::config::Config::default()).unwrap();
    let mut keys = BTreeMap::new();
    flatten("", &schema, &mut keys);
    let text = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let row = regex::Regex::new(r"^\| `([a-z_0-9]+\.[a-z_0-9.]+)` \| `([^`]*)` \|").unwrap();
    let documented: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| row.captures(l))
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    let mut wrong = vec![];
    for (key, value) in &keys {
        // The documented default must parse to the real one.
        match documented.get(key) {
            None => wrong.push(format!(
                "{key} (default {value}) is not in docs/configuration.md"
            )),
            Some(doc) => {
                let parsed: Result<toml::Table, _> = toml::from_str(&format!("v = {doc}"));
                if parsed.ok().and_then(|t| t.get("v").cloned()).as_ref() != Some(value) {
                    wrong.push(format!(
                        "{key}: documented default {doc}, real default {value}"
                    ));
                }
            }
        }
    }
    for key in documented.keys() {
        if !keys.contains_key(key) {
            wrong.push(format!("{key} is documented but is not a config key"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `CapabilityBoundingSet=` of the shipped unit.
pub fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(repo().join("packaging/hvflight.service")).unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn operator_guide_explains_each_capability_of_the_unit() {
    let guide = std::fs::read_to_string(repo().join("docs/operator-guide.md")).unwrap();
    let caps = unit_capabilities();
    assert!(caps.len() >= 5, "{caps:?}");
    for cap in &caps {
        assert!(
            guide.contains(&format!("| `{cap}` |")),
            "docs/operator-guide.md has no row for {cap}"
        );
    }
    // And nothing more: every capability row is in the unit.
    let row = regex::Regex::new(r"^\| `(CAP_[A-Z_]+)` \|").unwrap();
    for l in guide.lines() {
        if let Some(c) = row.captures(l) {
            assert!(
                caps.contains(&c[1].to_string()),
                "the guide explains {} but the unit does not grant it",
                &c[1]
            );
        }
    }
}
