//! One rule per row of the failure catalogue (shared/failure-catalog.md)
//! where the host leaves evidence, in one file per catalogue group. A rule
//! returns a finding only when it has evidence, and says in
//! `could_not_check` what it needed and the bundle did not have.
//!
//! Confidence is each rule's own, documented in docs/analyzer.md; the
//! levels are chosen so that a cause outranks the symptoms it produces
//! (BPDU guard > the carrier loss it causes; a TX hang > the resets' link
//! flaps; a ruleset change with a libvirtd restart > a bare ruleset change).

mod bridge;
mod filter;
mod guest;
mod host;
mod services;
mod tables;
mod uplink;

use super::view::View;
use super::{Evidence, Finding};

pub type RuleFn = fn(&View, &mut Vec<String>) -> Option<Finding>;

/// A catalogue row's rule.
pub struct Rule {
    pub id: &'static str,
    pub group: &'static str,
    pub run: RuleFn,
}

/// Every rule, in catalogue order.
pub const RULES: &[Rule] = &[
    Rule {
        id: "F1",
        group: "uplink",
        run: uplink::f1_tx_hang,
    },
    Rule {
        id: "F2",
        group: "uplink",
        run: uplink::f2_carrier,
    },
    Rule {
        id: "F3",
        group: "tables",
        run: tables::f3_conntrack,
    },
    Rule {
        id: "F4",
        group: "tables",
        run: tables::f4_neighbours,
    },
    Rule {
        id: "F5",
        group: "bridge",
        run: bridge::f5_bridge_mac,
    },
    Rule {
        id: "F6",
        group: "bridge",
        run: bridge::f6_fdb_wrong_port,
    },
    Rule {
        id: "F7",
        group: "bridge",
        run: bridge::f7_learning,
    },
    Rule {
        id: "F8",
        group: "bridge",
        run: bridge::f8_port_state,
    },
    Rule {
        id: "F9",
        group: "bridge",
        run: bridge::f9_bpdu_guard,
    },
    Rule {
        id: "F10",
        group: "bridge",
        run: bridge::f10_mac_limit,
    },
    Rule {
        id: "F11",
        group: "filter",
        run: filter::f11_ruleset,
    },
    Rule {
        id: "F12",
        group: "filter",
        run: filter::f12_nwfilter,
    },
    Rule {
        id: "F13",
        group: "services",
        run: services::f13_dhcp,
    },
    Rule {
        id: "F14",
        group: "guest",
        run: guest::f14_tap_not_drained,
    },
    Rule {
        id: "F15",
        group: "host",
        run: host::f15_softnet,
    },
    Rule {
        id: "F16",
        group: "uplink",
        run: uplink::f16_offload,
    },
    Rule {
        id: "F17",
        group: "uplink",
        run: uplink::f17_mtu,
    },
    Rule {
        id: "F18",
        group: "bridge",
        run: bridge::f18_vlan,
    },
    Rule {
        id: "F19",
        group: "bridge",
        run: bridge::f19_mcast_snooping,
    },
    Rule {
        id: "F20",
        group: "tables",
        run: tables::f20_rogue_ra,
    },
    Rule {
        id: "F21",
        group: "host",
        run: host::f21_alloc_failures,
    },
    Rule {
        id: "F22",
        group: "guest",
        run: guest::f22_oom,
    },
    Rule {
        id: "F23",
        group: "host",
        run: host::f23_stall,
    },
    Rule {
        id: "F24",
        group: "uplink",
        run: uplink::f24_bonding,
    },
    Rule {
        id: "F25",
        group: "services",
        run: services::f25_ovs,
    },
    Rule {
        id: "F26",
        group: "guest",
        run: guest::f26_migration,
    },
    Rule {
        id: "F27",
        group: "filter",
        run: filter::f27_rp_filter,
    },
    Rule {
        id: "F28",
        group: "host",
        run: host::f28_clock_jump,
    },
    Rule {
        id: "F29",
        group: "services",
        run: services::f29_dhcp_pool,
    },
];

/// The catalogue group of a rule ("uplink", "bridge", …).
pub fn group_of(id: &str) -> &'static str {
    RULES.iter().find(|r| r.id == id).map_or("", |r| r.group)
}

/// Runs every rule (in catalogue order), then adds the kernel's drop
/// reasons where they name a row (analyze/drops.rs).
pub fn run_all(view: &View, could_not_check: &mut Vec<String>) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in RULES {
        if let Some(mut f) = (r.run)(view, could_not_check) {
            f.group = r.group.to_string();
            f.confidence = f.confidence.clamp(0.0, 0.99);
            out.push(f);
        }
    }
    super::drops::cite(view, &mut out);
    if !view.has(|s| s.drops.is_some()) {
        could_not_check.push(
            "no kernel drop reasons in the samples (eBPF unavailable or disabled): the drop-reason evidence of F1/F4/F8/F11/F14/F15/F17/F21 is missing".into(),
        );
    }
    if view.capture.is_none() && !view.source.starts_with("store:") {
        could_not_check.push(
            "no packet capture in the bundle: F9 (BPDUs on the uplink), F13 (unanswered DHCP), F20 (RAs from guests), F26 (RARP after migration), F29 (DHCP NAKs) were judged without packets".into(),
        );
    }
    out
}

/// A finding, or None without evidence.
pub(crate) fn finding(
    id: &str,
    cause: impl Into<String>,
    confidence: f64,
    evidence: Vec<Evidence>,
    next: &[&str],
    interfaces: Vec<String>,
) -> Option<Finding> {
    if evidence.is_empty() {
        return None;
    }
    Some(Finding {
        id: id.into(),
        cause: cause.into(),
        confidence,
        evidence,
        next: next.iter().map(|s| s.to_string()).collect(),
        group: String::new(),
        interfaces,
    })
}

/// How far back a kernel line counts as evidence, and how far after.
pub(crate) const KMSG_BEFORE_S: f64 = 900.0;
pub(crate) const KMSG_AFTER_S: f64 = 120.0;

/// Kernel lines tagged `tag` (by the agent's catalogue tagger) near the
/// collapse, at most `max` (then a count of the rest). Lines about a bridge
/// port are kept only when they name one of ours (the log is the host's;
/// other bridges speak in it too).
pub(crate) fn kmsg_evidence(view: &View, tag: &str, max: usize) -> Vec<Evidence> {
    let ours: Vec<String> = view
        .uplinks
        .iter()
        .chain(view.vnics.keys())
        .map(|n| format!("({n})"))
        .collect();
    let mut out = Vec::new();
    let mut more = 0usize;
    let mut last_t = 0.0;
    for (t, text, tags) in view.kmsg(-KMSG_BEFORE_S, KMSG_AFTER_S) {
        if !tags.iter().any(|x| x == tag) {
            continue;
        }
        let about_port = text.contains(" entered ") && text.contains("port ");
        if about_port && !ours.is_empty() && !ours.iter().any(|o| text.contains(o.as_str())) {
            continue;
        }
        if out.len() < max {
            out.push(Evidence::kernel(t, text));
        } else {
            more += 1;
            last_t = t;
        }
    }
    if more > 0 {
        out.push(Evidence::kernel(
            last_t,
            &format!("… and {more} more such lines (the last shown here)"),
        ));
    }
    out
}

/// Kernel lines matching `re` (untagged signatures, trace lines) in the window.
pub(crate) fn kmsg_matching<'a>(
    view: &'a View,
    re: &'a regex::Regex,
) -> impl Iterator<Item = (f64, &'a str)> + 'a {
    view.kmsg(-KMSG_BEFORE_S, KMSG_AFTER_S)
        .filter(move |(_, t, _)| re.is_match(t))
        .map(|(t, text, _)| (t, text))
}

pub(crate) fn re(p: &str) -> regex::Regex {
    regex::Regex::new(p).expect("constant pattern")
}

#[cfg(test)]
mod tests;
