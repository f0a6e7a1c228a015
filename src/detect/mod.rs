//! The collapse detector: decides "the VMs' network has collapsed" from
//! signals that cross the uplink, never from host-to-guest traffic alone
//! (most faults leave bridge-to-guest ARP working). docs/detection.md
//! describes the signals, probes, eligibility and states for operators.
//!
//! Per watched bridge, over a short window (`judge.rs`):
//! - no usable uplink (carrier, port state, the NICs below a bond or VLAN);
//! - eligible guests keep sending while nothing leaves through the uplink;
//! - the gateway, answering before, stops answering probes sent out
//!   through the uplink (`gateway.rs`, `prober.rs`);
//! - guests' ARP requests for the gateway leave through the uplink and no
//!   reply comes back;
//! - every sending eligible guest (at least `min_cut_off_guests`) stops
//!   receiving anything;
//! - netfilter drops most of what the guests send on its way out through
//!   the uplink (the kernel's drop reasons, when the eBPF program is loaded).
//!
//! Eligible guests: libvirt says running, past the boot grace (since the
//! port appeared, flapped or the domain restarted), not migrating (a
//! migration event, a port moved to another bridge), and recently
//! responsive (two-way traffic, or answering the gentle guest probes of
//! `guests.rs`). Idle guests are not evidence; a node with no eligible guest
//! is "unknown", never silently "healthy" (status shows eligible of total).
//!
//! States move healthy → suspect → collapsed → recovering → healthy with
//! hysteresis; collapses within the merge window are one incident. One guest
//! cut off while the host is fine is a per-guest event, not a collapse.
//! A degraded network (full-size probes fail while small ones pass; conntrack
//! or neighbour table full) is reported as degradation, with its own bundle.

pub mod frames;
pub mod gateway;
pub mod guests;
mod judge;
pub mod prober;
pub mod uplink;
mod window;

use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Model;
use crate::sample::{Event, EventKind, Sample};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct DetectConfig {
    pub enabled: bool,
    /// Consecutive bad samples before "collapsed" (the first makes it "suspect").
    pub collapse_after: u32,
    /// Consecutive good samples before "healthy" again.
    pub recover_after: u32,
    /// Signals are packet counts over this window, seconds.
    pub window_s: f64,
    /// A guest is sending when its vNIC received at least this many packets in the window.
    pub min_guest_packets: f64,
    /// A sending guest that receives nothing is cut off when it sent at least
    /// this many packets in the window (or frames toward it were dropped).
    pub cut_off_min_packets: f64,
    /// This many sending guests of one bridge all cut off at once is a host-wide collapse.
    pub min_cut_off_guests: u32,
    /// Netfilter drops (eBPF drop reason NETFILTER_DROP) on the uplinks' way
    /// out are a signal from this many frames in the window…
    pub netfilter_drop_min_packets: f64,
    /// …when they are at least this share (0.05–1) of what the guests other
    /// than the busiest one sent: a host-wide drop, not one guest's frames.
    pub netfilter_drop_min_share: f64,
    /// Guests younger than this (port new, flapped, domain restarted) are booting: not evidence.
    pub boot_grace_s: u64,
    /// A guest stays out of judgement this long after a migration event or a
    /// move to another bridge.
    pub migration_grace_s: u64,
    /// A guest is eligible only when it had two-way traffic or answered a
    /// probe within this many seconds.
    pub responsive_s: u64,
    /// Collapses this close to the last one are the same incident.
    pub merge_window_s: u64,
    /// Gateway probes per bridge/VLAN through the uplink.
    pub gateway_probes: bool,
    /// Gateway probe interval per bridge/VLAN.
    pub probe_interval_ms: u64,
    /// A probe not answered within this long is unanswered (at most half the interval).
    pub probe_timeout_ms: u64,
    /// This many gateway probes unanswered in a row (after it answered) is a signal.
    pub probe_fail_after: u32,
    /// Every Nth probe round also sends a full-MTU probe (0 = off).
    pub mtu_probe_every: u32,
    /// Guests' ARP requests for the gateway unanswered in the window that make a signal.
    pub guest_arp_unanswered_min: u32,
    /// Gentle unicast ARP probes to guests.
    pub guest_probes: bool,
    /// Each guest is probed at most once per this many seconds.
    pub guest_probe_interval_s: u64,
    /// All guest probes together at most this many per second.
    pub guest_probe_max_per_s: u32,
    /// Guests are not probed for this long after their DHCP, address probing or a lifecycle change.
    pub guest_probe_pause_s: u64,
    /// Gateway per bridge ("br0") or bridge VLAN ("br0/100"); else learned.
    pub gateways: BTreeMap<String, String>,
    /// Uplink ports per bridge; else the bridge's non-vNIC ports.
    pub uplinks: BTreeMap<String, Vec<String>>,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            enabled: true,
            collapse_after: 2,
            recover_after: 5,
            window_s: 2.0,
            min_guest_packets: 1.0,
            cut_off_min_packets: 2.0,
            min_cut_off_guests: 2,
            netfilter_drop_min_packets: 3.0,
            netfilter_drop_min_share: 0.5,
            boot_grace_s: 60,
            migration_grace_s: 60,
            responsive_s: 120,
            merge_window_s: 300,
            gateway_probes: true,
            probe_interval_ms: 1000,
            probe_timeout_ms: 500,
            probe_fail_after: 3,
            mtu_probe_every: 1,
            guest_arp_unanswered_min: 2,
            guest_probes: true,
            guest_probe_interval_s: 10,
            guest_probe_max_per_s: 20,
            guest_probe_pause_s: 60,
            gateways: BTreeMap::new(),
            uplinks: BTreeMap::new(),
        }
    }
}

impl DetectConfig {
    pub fn prober(&self) -> prober::ProberConfig {
        let interval_ns = self.probe_interval_ms.max(10) * 1_000_000;
        prober::ProberConfig {
            gateway: gateway::Timing {
                interval_ns,
                timeout_ns: (self.probe_timeout_ms * 1_000_000)
                    .min(interval_ns / 2)
                    .max(1),
                mtu_probe_every: self.mtu_probe_every,
            },
            guest: guests::GuestTiming {
                interval_ns: self.guest_probe_interval_s.max(1) * 1_000_000_000,
                timeout_ns: 1_000_000_000,
                max_per_s: self.guest_probe_max_per_s.max(1),
                pause_ns: self.guest_probe_pause_s * 1_000_000_000,
            },
            gateway_probes: self.gateway_probes,
            guest_probes: self.guest_probes,
        }
    }

    /// `gateways` as (bridge, VLAN) → address; entries that do not parse are skipped
    /// (config validation rejects them before the agent starts).
    pub fn gateways_for(&self, bridge: &str) -> BTreeMap<Option<u16>, std::net::Ipv4Addr> {
        self.gateways
            .iter()
            .filter_map(|(k, v)| {
                let (b, vlan) = match k.split_once('/') {
                    Some((b, vid)) => (b, Some(vid.parse::<u16>().ok()?)),
                    None => (k.as_str(), None),
                };
                (b == bridge).then_some((vlan, v.parse().ok()?))
            })
            .collect()
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Healthy,
    Suspect,
    Collapsed,
    Recovering,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Suspect => "suspect",
            State::Collapsed => "collapsed",
            State::Recovering => "recovering",
        }
    }
}

/// The gateway probe of one bridge/VLAN as status shows it.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct GatewayView {
    pub vlan: Option<u16>,
    pub gateway: Option<String>,
    pub source: String,
    pub answered: bool,
    pub consecutive_unanswered: u32,
    pub last_rtt_ms: Option<f64>,
}

/// What one sample says about one bridge.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub bridge: String,
    pub eligible_guests: usize,
    pub total_guests: usize,
    /// Eligible guests that sent in the window.
    pub sending_guests: usize,
    pub uplinks: Vec<uplink::Uplink>,
    pub gateways: Vec<GatewayView>,
    /// Why the uplink crossing looks broken (empty: it looks fine).
    pub bad: Vec<String>,
    /// Degradations seen on this bridge (the network works, not fully).
    pub degraded: Vec<String>,
    /// Guests cut off on their own: (port, why).
    pub cut_off: Vec<(String, String)>,
}

/// What an incident of the detector is: the bundle's trigger says it, so an
/// operator listing bundles tells a collapse from a degradation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentKind {
    /// The uplink crossing broke (a host-wide collapse).
    Collapse,
    /// The network works, not fully (MTU step, conntrack or neighbour table full).
    Degradation,
}

impl IncidentKind {
    /// The manifest's `incident.trigger`.
    pub fn trigger(self) -> &'static str {
        match self {
            IncidentKind::Collapse => "detector",
            IncidentKind::Degradation => "degradation",
        }
    }
}

/// Something the agent should act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Transition {
        from: State,
        to: State,
        reason: String,
    },
    /// A new incident starts (take a bundle).
    Incident { reason: String, kind: IncidentKind },
    /// One guest cut off (not a host-wide collapse).
    GuestCutOff {
        iface: String,
        domain: String,
        reason: String,
    },
    /// A degradation starts (active) or ends.
    Degradation {
        what: String,
        reason: String,
        active: bool,
    },
}

/// Per guest port, what eligibility needs to remember.
#[derive(Clone, Debug, Default)]
struct GuestMemo {
    /// Restart of the boot grace (port flapped, domain restarted).
    grace_from_ns: u64,
    operstate: String,
    bridge: String,
    last_conversation_ns: Option<u64>,
    /// In the cut-off condition (entered on a broken-off conversation).
    cut_off: bool,
    migrating_until_ns: u64,
}

#[derive(Clone, Debug, Default)]
struct Episode {
    run: u32,
    clear_run: u32,
    active: bool,
    reason: String,
}

pub struct Detector {
    cfg: DetectConfig,
    pub state: State,
    bad_run: u32,
    good_run: u32,
    last_collapse_unix_ns: Option<i64>,
    last_degradation_incident_unix_ns: Option<i64>,
    /// Per guest port's ifindex: its name and memo.
    guests: FxHashMap<u32, (String, GuestMemo)>,
    /// Port name → bridge it was last seen on (a move is a migration).
    port_bridge: FxHashMap<String, String>,
    /// Domain → until when it is migrating / when it last (re)started (mono ns).
    domain_migrating_until: FxHashMap<String, u64>,
    domain_started_ns: FxHashMap<String, u64>,
    cut_off_run: FxHashMap<String, u32>,
    reported_cut_off: FxHashMap<String, bool>,
    degradations: BTreeMap<String, Episode>,
    win: window::Windows,
    first_mono_ns: Option<u64>,
    pub last: Vec<Verdict>,
    /// Host-wide degradations of the last sample (conntrack, neighbours).
    pub last_host_degraded: Vec<String>,
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Detector {
        Detector {
            cfg,
            state: State::Healthy,
            bad_run: 0,
            good_run: 0,
            last_collapse_unix_ns: None,
            last_degradation_incident_unix_ns: None,
            guests: FxHashMap::default(),
            port_bridge: FxHashMap::default(),
            domain_migrating_until: FxHashMap::default(),
            domain_started_ns: FxHashMap::default(),
            cut_off_run: FxHashMap::default(),
            reported_cut_off: FxHashMap::default(),
            degradations: BTreeMap::new(),
            win: window::Windows::default(),
            first_mono_ns: None,
            last: Vec::new(),
            last_host_degraded: Vec::new(),
        }
    }

    pub fn eligible(&self) -> usize {
        self.last.iter().map(|v| v.eligible_guests).sum()
    }

    pub fn total(&self) -> usize {
        self.last.iter().map(|v| v.total_guests).sum()
    }

    /// Degradations in progress (what → why).
    pub fn degraded(&self) -> Vec<(String, String)> {
        self.degradations
            .iter()
            .filter(|(_, e)| e.active)
            .map(|(k, e)| (k.clone(), e.reason.clone()))
            .collect()
    }

    /// The detector's part of `hvflight status --json`.
    pub fn status_json(&self, reason: &str) -> serde_json::Value {
        serde_json::json!({
            "state": self.state.name(),
            "eligible_guests": self.eligible(),
            "total_guests": self.total(),
            "reason": reason,
            "bridges": self.last,
            "degraded": self.degraded().into_iter().map(|(w, r)| serde_json::json!({"what": w, "reason": r})).collect::<Vec<_>>(),
        })
    }

    /// Events the detector learns from: libvirt migration and (re)start events.
    pub fn on_event(&mut self, e: &Event) {
        if let EventKind::Libvirt {
            domain,
            event,
            detail,
            ..
        } = &e.kind
        {
            if detail.contains("migrat") || event.contains("migrat") {
                self.domain_migrating_until.insert(
                    domain.clone(),
                    e.mono_ns + self.cfg.migration_grace_s * 1_000_000_000,
                );
            }
            if matches!(
                event.as_str(),
                "started" | "resumed" | "rebooted" | "reboot" | "defined"
            ) {
                self.domain_started_ns.insert(domain.clone(), e.mono_ns);
            }
        }
    }

    /// Observes one sample; returns what to act on.
    pub fn observe(&mut self, s: &Sample, m: &Model) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.cfg.enabled || m.interval_s == 0.0 {
            return actions;
        }
        self.first_mono_ns.get_or_insert(s.mono_ns);
        let bridges: &[crate::sample::Bridge] = s.bridges.as_deref().unwrap_or_default();
        // Resolved once for both the netfilter windows and the judgement.
        let uplinks: Vec<Vec<uplink::Uplink>> = bridges
            .iter()
            .map(|b| uplink::uplinks(s, b, &self.cfg.uplinks))
            .collect();
        judge::record(self, s, &uplinks);
        let look = judge::Lookups::new(s);
        self.last = bridges
            .iter()
            .zip(&uplinks)
            .map(|(b, ups)| judge::judge(self, s, &look, b, ups))
            .collect();
        self.last_host_degraded = judge::host_degraded(self, s);
        // Ports gone from every bridge are forgotten (their memos and moves).
        let live: FxHashMap<u32, &str> = bridges
            .iter()
            .flat_map(|b| b.ports.iter().map(|p| (p.ifindex, p.name.as_str())))
            .collect();
        self.guests
            .retain(|k, (name, _)| live.get(k) == Some(&name.as_str()));
        let bad: Vec<String> = self
            .last
            .iter()
            .flat_map(|v| v.bad.iter().map(move |b| format!("{}: {b}", v.bridge)))
            .collect();
        self.per_guest(s, &bad, &mut actions);
        self.degradation(s, &bad, &mut actions);
        self.transitions(s, &bad, &mut actions);
        actions
    }

    /// Per-guest: cut off for `collapse_after` samples while the host is fine.
    fn per_guest(&mut self, s: &Sample, bad: &[String], actions: &mut Vec<Action>) {
        let cut: Vec<(String, String)> = self.last.iter().flat_map(|v| v.cut_off.clone()).collect();
        self.cut_off_run
            .retain(|k, _| cut.iter().any(|(c, _)| c == k));
        for (c, why) in &cut {
            let n = self.cut_off_run.entry(c.clone()).or_default();
            *n += 1;
            if *n >= self.cfg.collapse_after
                && bad.is_empty()
                && !self.reported_cut_off.contains_key(c)
            {
                self.reported_cut_off.insert(c.clone(), true);
                actions.push(Action::GuestCutOff {
                    iface: c.clone(),
                    domain: judge::domain_of(s, c)
                        .map(|d| d.name.clone())
                        .unwrap_or_default(),
                    reason: why.clone(),
                });
            }
        }
        self.reported_cut_off
            .retain(|k, _| cut.iter().any(|(c, _)| c == k));
    }

    fn degradation(&mut self, s: &Sample, bad: &[String], actions: &mut Vec<Action>) {
        let mut now: BTreeMap<String, String> = BTreeMap::new();
        for v in &self.last {
            for d in &v.degraded {
                now.insert(
                    format!("{}: {}", v.bridge, d.split(':').next().unwrap_or(d)),
                    d.clone(),
                );
            }
        }
        for d in &self.last_host_degraded {
            now.insert(d.split(':').next().unwrap_or(d).to_string(), d.clone());
        }
        let keys: Vec<String> = self
            .degradations
            .keys()
            .chain(now.keys())
            .cloned()
            .collect();
        for k in keys {
            let e = self.degradations.entry(k.clone()).or_default();
            match now.get(&k) {
                Some(reason) => {
                    e.run += 1;
                    e.clear_run = 0;
                    e.reason = reason.clone();
                    if !e.active && e.run >= self.cfg.collapse_after {
                        e.active = true;
                        actions.push(Action::Degradation {
                            what: k.clone(),
                            reason: reason.clone(),
                            active: true,
                        });
                        let merged = self.last_degradation_incident_unix_ns.is_some_and(|t| {
                            s.ts_unix_ns - t < self.cfg.merge_window_s as i64 * 1_000_000_000
                        });
                        // A collapse in progress has its own bundle.
                        if !merged && bad.is_empty() && self.state == State::Healthy {
                            // The reason starts with what the key names after
                            // its bridge ("full-size frames fail: …"): once.
                            let head = reason.split(':').next().unwrap_or_default();
                            let bridge = k.strip_suffix(head).unwrap_or_default();
                            actions.push(Action::Incident {
                                reason: format!("degradation: {bridge}{reason}"),
                                kind: IncidentKind::Degradation,
                            });
                            self.last_degradation_incident_unix_ns = Some(s.ts_unix_ns);
                        }
                    }
                }
                None => {
                    e.run = 0;
                    e.clear_run += 1;
                    if e.active && e.clear_run >= self.cfg.recover_after {
                        e.active = false;
                        actions.push(Action::Degradation {
                            what: k.clone(),
                            reason: String::new(),
                            active: false,
                        });
                    }
                }
            }
        }
        self.degradations.retain(|_, e| e.active || e.run > 0);
    }

    fn transitions(&mut self, s: &Sample, bad: &[String], actions: &mut Vec<Action>) {
        let from = self.state;
        if bad.is_empty() {
            self.bad_run = 0;
            self.good_run += 1;
        } else {
            self.good_run = 0;
            self.bad_run += 1;
        }
        let to = match self.state {
            State::Healthy if !bad.is_empty() => {
                if self.bad_run >= self.cfg.collapse_after {
                    State::Collapsed
                } else {
                    State::Suspect
                }
            }
            State::Suspect if bad.is_empty() => State::Healthy,
            State::Suspect if self.bad_run >= self.cfg.collapse_after => State::Collapsed,
            State::Collapsed if bad.is_empty() => State::Recovering,
            State::Recovering if !bad.is_empty() => State::Collapsed,
            State::Recovering if self.good_run >= self.cfg.recover_after => State::Healthy,
            st => st,
        };
        if to != from {
            let reason = if bad.is_empty() {
                "uplink crossing works again".to_string()
            } else {
                bad.join("; ")
            };
            actions.push(Action::Transition {
                from,
                to,
                reason: reason.clone(),
            });
            if to == State::Collapsed && from != State::Recovering {
                let merged = self.last_collapse_unix_ns.is_some_and(|t| {
                    s.ts_unix_ns - t < self.cfg.merge_window_s as i64 * 1_000_000_000
                });
                if !merged {
                    actions.push(Action::Incident {
                        reason,
                        kind: IncidentKind::Collapse,
                    });
                }
                self.last_collapse_unix_ns = Some(s.ts_unix_ns);
            }
            self.state = to;
        }
        if self.state == State::Collapsed {
            self.last_collapse_unix_ns = Some(s.ts_unix_ns);
        }
    }
}

#[cfg(test)]
mod tests;
