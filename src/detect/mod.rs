//! The collapse detector (passive part): decides "the VMs' network has
//! collapsed" from signals that cross the uplink, never from host-to-guest
//! traffic alone (most faults leave bridge-to-guest ARP working).
//!
//! Per watched bridge, from each sample and its rates:
//! - the uplink is unusable: no uplink port has carrier and is forwarding;
//! - guests keep sending but nothing leaves through the uplink.
//!
//! Evidence needs eligible guests: vNIC ports seen for longer than the boot
//! grace that are sending right now — idle guests are not evidence, and a
//! node with no eligible guest is "unknown", never silently "healthy".
//! States move healthy → suspect → collapsed → recovering → healthy with
//! hysteresis (consecutive samples); flaps within the merge window belong to
//! one incident. A vNIC whose guest sends while nothing reaches it any more
//! is reported on its own ("guest cut off"), not as a host-wide collapse.
//! Gateway probes and the packet ring join this in the detector issue.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::agent::print::is_vnic;
use crate::model::Model;
use crate::sample::Sample;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct DetectConfig {
    pub enabled: bool,
    /// Consecutive bad samples before "collapsed" (the first makes it "suspect").
    pub collapse_after: u32,
    /// Consecutive good samples before "healthy" again.
    pub recover_after: u32,
    /// Signals are packet counts over this window, seconds (a guest that
    /// pings once a second is "sending" in every window).
    pub window_s: f64,
    /// A guest is sending when its vNIC received at least this many packets in the window.
    pub min_guest_packets: f64,
    /// vNIC ports younger than this are booting guests: not evidence.
    pub boot_grace_s: u64,
    /// Collapses this close to the last one are the same incident.
    pub merge_window_s: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            enabled: true,
            collapse_after: 2,
            recover_after: 5,
            window_s: 2.0,
            min_guest_packets: 1.0,
            boot_grace_s: 60,
            merge_window_s: 300,
        }
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

/// What one sample says about one bridge.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub bridge: String,
    pub eligible_guests: usize,
    pub total_guests: usize,
    /// Why the uplink crossing looks broken (empty: it looks fine).
    pub bad: Vec<String>,
    /// vNICs whose guest sends while nothing reaches it.
    pub cut_off: Vec<String>,
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
    Incident { reason: String },
    /// One guest cut off (not a host-wide collapse).
    GuestCutOff { iface: String, domain: String },
}

pub struct Detector {
    cfg: DetectConfig,
    pub state: State,
    bad_run: u32,
    good_run: u32,
    last_collapse_unix_ns: Option<i64>,
    first_seen_mono_ns: HashMap<String, u64>,
    cut_off_run: HashMap<String, u32>,
    reported_cut_off: BTreeMap<String, bool>,
    /// Per interface: (monotonic ns, rx packets, tx packets) of each interval in the window.
    window: HashMap<String, std::collections::VecDeque<(u64, f64, f64)>>,
    first_mono_ns: Option<u64>,
    pub last: Vec<Verdict>,
}

impl Detector {
    pub fn new(cfg: DetectConfig) -> Detector {
        Detector {
            cfg,
            state: State::Healthy,
            bad_run: 0,
            good_run: 0,
            last_collapse_unix_ns: None,
            first_seen_mono_ns: HashMap::new(),
            cut_off_run: HashMap::new(),
            reported_cut_off: BTreeMap::new(),
            window: HashMap::new(),
            first_mono_ns: None,
            last: Vec::new(),
        }
    }

    pub fn eligible(&self) -> usize {
        self.last.iter().map(|v| v.eligible_guests).sum()
    }

    pub fn total(&self) -> usize {
        self.last.iter().map(|v| v.total_guests).sum()
    }

    /// Packets received and sent by `iface` over the window.
    fn sums(&self, iface: &str) -> Option<(f64, f64)> {
        let w = self.window.get(iface)?;
        Some(w.iter().fold((0.0, 0.0), |a, x| (a.0 + x.1, a.1 + x.2)))
    }

    fn update_window(&mut self, s: &Sample, m: &Model) {
        let horizon = s.mono_ns.saturating_sub((self.cfg.window_s * 1e9) as u64);
        for (name, r) in &m.links {
            let w = self.window.entry(name.clone()).or_default();
            w.push_back((
                s.mono_ns,
                r.rx_packets_per_s * m.interval_s,
                r.tx_packets_per_s * m.interval_s,
            ));
        }
        for w in self.window.values_mut() {
            while w.front().is_some_and(|x| x.0 <= horizon) {
                w.pop_front();
            }
        }
        self.window.retain(|_, w| !w.is_empty());
    }

    /// Judges one bridge over the window.
    fn judge(&mut self, s: &Sample, br: &crate::sample::Bridge) -> Verdict {
        let mut v = Verdict {
            bridge: br.name.clone(),
            ..Default::default()
        };
        let grace_ns = self.cfg.boot_grace_s * 1_000_000_000;
        let (mut guests_tx, mut toward_guests) = (0.0, 0.0);
        // Judge only over a full window.
        if self
            .first_mono_ns
            .is_none_or(|f| (s.mono_ns - f) as f64 / 1e9 < self.cfg.window_s)
        {
            for p in &br.ports {
                if let Some(link) = s.link(&p.name) {
                    if is_vnic(s, &p.name, &link.mac) {
                        v.total_guests += 1;
                        self.first_seen_mono_ns
                            .entry(format!("{}/{}", p.name, p.ifindex))
                            .or_insert(s.mono_ns);
                    }
                }
            }
            return v;
        }
        let mut uplinks = Vec::new();
        for p in &br.ports {
            let Some(link) = s.link(&p.name) else {
                continue;
            };
            if is_vnic(s, &p.name, &link.mac) {
                v.total_guests += 1;
                let first = *self
                    .first_seen_mono_ns
                    .entry(format!("{}/{}", p.name, p.ifindex))
                    .or_insert(s.mono_ns);
                let Some((rx, tx)) = self.sums(&p.name) else {
                    continue;
                };
                // Host side rx = what the guest sends; tx = what reaches it.
                if s.mono_ns.saturating_sub(first) >= grace_ns
                    && rx >= self.cfg.min_guest_packets
                    && link.operstate != "down"
                {
                    v.eligible_guests += 1;
                    guests_tx += rx;
                    toward_guests += tx;
                    if tx == 0.0 {
                        v.cut_off.push(p.name.clone());
                    }
                }
            } else {
                uplinks.push((p, link));
            }
        }
        if v.eligible_guests == 0 || uplinks.is_empty() {
            return v; // nothing to judge with
        }
        let usable: Vec<_> = uplinks
            .iter()
            .filter(|(p, l)| p.state == 3 && l.carrier != Some(false) && l.operstate != "down")
            .collect();
        if usable.is_empty() {
            let why: Vec<String> = uplinks
                .iter()
                .map(|(p, l)| {
                    format!(
                        "{} carrier {} port state {}",
                        p.name,
                        if l.carrier == Some(false) {
                            "off"
                        } else {
                            "on"
                        },
                        p.state
                    )
                })
                .collect();
            v.bad.push(format!("no usable uplink ({})", why.join(", ")));
            return v;
        }
        let w = self.cfg.window_s;
        let up_tx: f64 = usable
            .iter()
            .filter_map(|(p, _)| self.sums(&p.name))
            .map(|x| x.1)
            .sum();
        let up_rx: f64 = usable
            .iter()
            .filter_map(|(p, _)| self.sums(&p.name))
            .map(|x| x.0)
            .sum();
        // Only signals that idle networks cannot fake: "the uplink sent
        // and nothing came back" or "nothing reaches the guests" happen on
        // quiet hosts too (multicast chatter, one-way traffic) — those need
        // the gateway probes and the packet ring of the detector issue.
        let _ = (up_rx, toward_guests);
        if guests_tx > 0.0 && up_tx == 0.0 {
            v.bad.push(format!(
                "{} guest(s) sent {guests_tx:.0} packets in {w} s, nothing left through the uplink",
                v.eligible_guests
            ));
        }
        v
    }

    /// Observes one sample; returns what to act on.
    pub fn observe(&mut self, s: &Sample, m: &Model) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.cfg.enabled || m.interval_s == 0.0 {
            return actions;
        }
        self.first_mono_ns.get_or_insert(s.mono_ns);
        self.update_window(s, m);
        let bridges: Vec<crate::sample::Bridge> = s.bridges.clone().unwrap_or_default();
        self.last = bridges.iter().map(|b| self.judge(s, b)).collect();
        let bad: Vec<String> = self
            .last
            .iter()
            .flat_map(|v| v.bad.iter().map(move |b| format!("{}: {b}", v.bridge)))
            .collect();
        // Per-guest: cut off for `collapse_after` samples while the host is fine.
        let cut: Vec<String> = self.last.iter().flat_map(|v| v.cut_off.clone()).collect();
        self.cut_off_run.retain(|k, _| cut.contains(k));
        for c in &cut {
            let n = self.cut_off_run.entry(c.clone()).or_default();
            *n += 1;
            if *n == self.cfg.collapse_after
                && bad.is_empty()
                && !self.reported_cut_off.contains_key(c)
            {
                self.reported_cut_off.insert(c.clone(), true);
                let domain = s
                    .libvirt
                    .iter()
                    .flat_map(|l| &l.domains)
                    .find(|d| d.vnics.iter().any(|v| v.host_ifname.as_deref() == Some(c)))
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                actions.push(Action::GuestCutOff {
                    iface: c.clone(),
                    domain,
                });
            }
        }
        self.reported_cut_off.retain(|k, _| cut.contains(k));

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
                    actions.push(Action::Incident { reason });
                }
                self.last_collapse_unix_ns = Some(s.ts_unix_ns);
            }
            self.state = to;
        }
        if self.state == State::Collapsed {
            self.last_collapse_unix_ns = Some(s.ts_unix_ns);
        }
        actions
    }
}

#[cfg(test)]
mod tests;
