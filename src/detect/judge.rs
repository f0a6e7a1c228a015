//! One sample's judgement, per bridge: which guests are eligible, and
//! which uplink-crossing signals say the crossing is broken (or degraded).
//! Reads the raw sample and the detector's windows; the state machine in
//! mod.rs turns verdicts into transitions and incidents.

use super::frames::{parse_mac, Mac};
use super::uplink::{self, Uplink};
use super::{Detector, GatewayView, GuestMemo, Verdict};
use rustc_hash::FxHashMap;
use std::collections::HashMap;

use super::window::{LinkCounter, ProbeCounter};
use crate::sample::{Bridge, Domain, FdbEntry, GuestProbe, Sample};

const NS: u64 = 1_000_000_000;

pub(super) fn domain_of<'a>(s: &'a Sample, port: &str) -> Option<&'a Domain> {
    s.libvirt.iter().flat_map(|l| &l.domains).find(|d| {
        d.vnics
            .iter()
            .any(|v| v.host_ifname.as_deref() == Some(port))
    })
}

/// Per-sample lookups the judgement makes for every port, built once per
/// sample (borrowed from it: no strings copied).
pub(super) struct Lookups<'a> {
    /// Host interface → the first domain whose vNIC libvirt maps to it.
    domains: FxHashMap<&'a str, &'a Domain>,
    /// Probed interface → its (first) guest probe.
    probes: FxHashMap<&'a str, &'a GuestProbe>,
    /// The sample's FDB by MAC, entries in the sample's order;
    /// built on first use (only senders are looked up), so finding a
    /// guest's entry is not a scan of the whole FDB per guest. SipHash
    /// (std's, randomly keyed), not FxHash: guests choose their MACs, and a
    /// flood of crafted ones must not turn the index quadratic.
    fdb: std::cell::OnceCell<HashMap<Mac, Vec<&'a FdbEntry>>>,
    sample: &'a Sample,
}

impl<'a> Lookups<'a> {
    pub(super) fn new(s: &'a Sample) -> Self {
        let mut domains = FxHashMap::default();
        for d in s.libvirt.iter().flat_map(|l| &l.domains) {
            for v in &d.vnics {
                if let Some(ifname) = v.host_ifname.as_deref() {
                    domains.entry(ifname).or_insert(d);
                }
            }
        }
        let mut probes = FxHashMap::default();
        for g in s.probes.iter().flat_map(|p| &p.guests) {
            probes.entry(g.iface.as_str()).or_insert(g);
        }
        Lookups {
            domains,
            probes,
            fdb: std::cell::OnceCell::new(),
            sample: s,
        }
    }

    /// The FDB entries for `mac` (any case), in the sample's order.
    fn fdb_entries(&self, mac: &str) -> &[&'a FdbEntry] {
        let index = self.fdb.get_or_init(|| {
            let mut m: HashMap<Mac, Vec<&'a FdbEntry>> = HashMap::new();
            for e in self.sample.fdb.iter().flatten() {
                if let Some(k) = parse_mac(&e.mac) {
                    m.entry(k).or_default().push(e);
                }
            }
            m
        });
        parse_mac(mac)
            .and_then(|k| index.get(&k))
            .map_or(&[], |v| v.as_slice())
    }
}

/// The kernel's drop reason for a netfilter verdict (nftables or
/// iptables/ebtables, bridge family or br_netfilter).
const NETFILTER_DROP: &str = "NETFILTER_DROP";

/// Per program load: a reload restarts the kernel's counters at 0, and a
/// fresh key starts a fresh window rather than a delta across the two.
fn nf_key(u: &Uplink, loaded_mono_ns: u64) -> String {
    format!("nfdrop:{}/{}:{loaded_mono_ns}", u.port, u.ifindex)
}

fn gw_key(bridge: &str, vlan: Option<u16>, what: &str) -> String {
    format!("gw:{bridge}/{}:{what}", vlan.unwrap_or(0))
}

/// Feeds this sample's raw counters into the windows.
/// `uplinks[i]`: the uplinks of the sample's i-th bridge.
pub(super) fn record(d: &mut Detector, s: &Sample, uplinks: &[Vec<Uplink>]) {
    let t = s.mono_ns;
    for l in s.links.iter().flatten() {
        let st = &l.stats;
        let values = [st.rx_packets, st.tx_packets, st.tx_dropped].map(|v| v as f64);
        d.win.record_link(l.ifindex, &l.name, t, values);
    }
    for p in s.probes.iter().flat_map(|p| &p.guests) {
        d.win
            .record_probe(&p.iface, t, [p.sent as f64, p.answered as f64]);
    }
    for g in s.probes.iter().flat_map(|p| &p.bridges) {
        let sent = (g.arp_sent + g.icmp_sent + g.large_sent).saturating_sub(g.send_errors);
        d.win
            .record(&gw_key(&g.bridge, g.vlan, "sent"), t, sent as f64);
        d.win.record(
            &gw_key(&g.bridge, g.vlan, "arp_unanswered"),
            t,
            g.guest_arp_unanswered as f64,
        );
        d.win.record(
            &gw_key(&g.bridge, g.vlan, "arp_replies"),
            t,
            g.guest_arp_replies as f64,
        );
    }
    // Netfilter drops per uplink port, 0 included: the kernel's entry for a
    // port appears with its first drop, and a window needs the point before.
    if let Some(drops) = &s.drops {
        for ups in uplinks {
            for u in ups {
                let n: u64 = drops
                    .entries
                    .iter()
                    .filter(|e| e.ifindex == u.ifindex && e.reason == NETFILTER_DROP)
                    .map(|e| e.count)
                    .sum();
                d.win.record(&nf_key(u, drops.loaded_mono_ns), t, n as f64);
            }
        }
    }
    if let Some(ct) = &s.conntrack {
        let drops: u64 = ["drop", "early_drop", "insert_failed"]
            .iter()
            .filter_map(|k| ct.stats.get(*k))
            .sum();
        d.win.record("conntrack:drops", t, drops as f64);
    }
    if let Some(fulls) = s
        .neighbours
        .as_ref()
        .and_then(|n| n.arp_cache.as_ref())
        .and_then(|a| a.get("table_fulls"))
    {
        d.win.record("neigh:table_fulls", t, *fulls as f64);
    }
    d.win.trim(t, (d.cfg.window_s * 1e9) as u64);
}

fn sums(d: &Detector, name: &str, ifindex: u32) -> Option<(f64, f64, f64)> {
    Some((
        d.win.link_delta(ifindex, name, LinkCounter::Rx)?,
        d.win.link_delta(ifindex, name, LinkCounter::Tx)?,
        d.win
            .link_delta(ifindex, name, LinkCounter::TxDropped)
            .unwrap_or(0.0),
    ))
}

/// Judges one bridge over the window.
/// `ups`: the bridge's uplinks (`uplink::uplinks`).
pub(super) fn judge(
    d: &mut Detector,
    s: &Sample,
    look: &Lookups,
    br: &Bridge,
    ups: &[Uplink],
) -> Verdict {
    let cfg = d.cfg.clone();
    let now = s.mono_ns;
    let mut v = Verdict {
        bridge: br.name.clone(),
        ..Default::default()
    };
    let full_window = d
        .first_mono_ns
        .is_some_and(|f| (now - f) as f64 / 1e9 >= cfg.window_s);
    let probes: Vec<&crate::sample::GatewayProbe> = s
        .probes
        .iter()
        .flat_map(|p| &p.bridges)
        .filter(|g| g.bridge == br.name)
        .collect();
    v.gateways = probes
        .iter()
        .map(|g| GatewayView {
            vlan: g.vlan,
            gateway: g.gateway.clone(),
            source: g.gateway_source.clone(),
            answered: g.arp_answered + g.icmp_answered > 0,
            consecutive_unanswered: g.consecutive_unanswered,
            last_rtt_ms: g.last_rtt_us.map(|u| u as f64 / 1000.0),
        })
        .collect();
    v.uplinks = ups.to_vec();
    let (mut guests_tx, mut receiving_senders, mut traffic_cut) = (0.0, 0usize, 0usize);
    let (mut toward_senders, mut busiest_tx) = (0.0, 0.0f64);
    for p in &br.ports {
        let Some(link) = s.link(&p.name) else {
            continue;
        };
        if ups.iter().any(|u| u.ifindex == p.ifindex) || !uplink::is_guest_port(s, link) {
            continue;
        }
        v.total_guests += 1;
        let dom = look.domains.get(p.name.as_str()).copied();
        // A guest's memo is its port's (name, ifindex): another name on the
        // ifindex is another port.
        let fresh = || GuestMemo {
            grace_from_ns: now,
            operstate: link.operstate.clone(),
            bridge: br.name.clone(),
            ..Default::default()
        };
        let (name, memo) = d
            .guests
            .entry(p.ifindex)
            .or_insert_with(|| (p.name.clone(), fresh()));
        if *name != p.name {
            *name = p.name.clone();
            *memo = fresh();
        }
        // A port flap (a guest reboot, a link set down/up) restarts the grace.
        if memo.operstate != link.operstate {
            memo.operstate = link.operstate.clone();
            memo.grace_from_ns = now;
        }
        // A port that shows up on another bridge is migrating.
        match d.port_bridge.get_mut(&p.name) {
            Some(prev) if *prev != br.name => {
                *prev = br.name.clone();
                memo.migrating_until_ns = now + cfg.migration_grace_s * NS;
                memo.grace_from_ns = now;
            }
            Some(_) => {}
            None => {
                d.port_bridge.insert(p.name.clone(), br.name.clone());
            }
        }
        if memo.bridge != br.name {
            memo.bridge = br.name.clone();
        }
        if let Some(dom) = dom {
            if let Some(t) = d.domain_started_ns.get(&dom.name) {
                memo.grace_from_ns = memo.grace_from_ns.max(*t);
            }
        }
        let Some((rx, tx, txdrop)) = sums(d, &p.name, p.ifindex) else {
            continue;
        };
        // Our own guest probes are not traffic toward the guest, and the
        // guest's answers to them are not traffic it sends: an idle guest
        // that answers two probes in a window would otherwise look like one
        // that keeps sending and receives nothing (cut off).
        let delta = |c| d.win.probe_delta(&p.name, c).unwrap_or(0.0);
        let tx = (tx - delta(ProbeCounter::Sent)).max(0.0);
        let rx = (rx - delta(ProbeCounter::Answered)).max(0.0);
        // Host side rx = what the guest sends; tx = what reaches it.
        let (_, memo) = d.guests.get_mut(&p.ifindex).expect("inserted above");
        // Traffic while booting (link-up chatter: IPv6 RS/MLD/DAD flooded
        // between guests) says nothing about the guest's network.
        let past_grace = now.saturating_sub(memo.grace_from_ns) >= cfg.boot_grace_s * NS;
        // A conversation: a few packets each way in one window. Not a probe
        // and its answer, not one router solicitation met by the others'
        // (Linux repeats them with backoff for as long as no router answers).
        if past_grace && rx >= cfg.cut_off_min_packets && tx >= cfg.cut_off_min_packets {
            memo.last_conversation_ns = Some(now);
        }
        if !full_window {
            continue;
        }
        let probe = look.probes.get(p.name.as_str()).copied();
        let probe_answered_recently = probe
            .and_then(|g| g.last_answer_mono_ns)
            .is_some_and(|t| now.saturating_sub(t) <= cfg.responsive_s * NS);
        let two_way_recently = memo
            .last_conversation_ns
            .is_some_and(|t| now.saturating_sub(t) <= cfg.responsive_s * NS);
        let running = match dom {
            Some(dm) => dm.state == "running",
            None => link.operstate != "down",
        };
        let migrating = memo.migrating_until_ns > now
            || dom.is_some_and(|dm| {
                d.domain_migrating_until
                    .get(&dm.name)
                    .is_some_and(|t| *t > now)
                    || (dm.state == "paused" && dm.reason.contains("migrat"))
            });
        let eligible = running
            && past_grace
            && !migrating
            && (two_way_recently || probe_answered_recently)
            && link.operstate != "down";
        if !eligible {
            memo.cut_off = false;
            continue;
        }
        v.eligible_guests += 1;
        // Cut off: a guest whose conversation just broke off (or toward which
        // frames are dropped) keeps sending and receives nothing; it stays
        // cut off while that lasts.
        let recent_ns = (cfg.window_s * 3.0).max(5.0) as u64 * NS;
        let conversing = memo
            .last_conversation_ns
            .is_some_and(|t| now.saturating_sub(t) <= recent_ns);
        memo.cut_off = if memo.cut_off {
            rx >= cfg.min_guest_packets && tx == 0.0
        } else {
            tx == 0.0 && rx >= cfg.cut_off_min_packets && (txdrop > 0.0 || conversing)
        };
        if rx >= cfg.min_guest_packets {
            v.sending_guests += 1;
            guests_tx += rx;
            busiest_tx = busiest_tx.max(rx);
            toward_senders += tx;
            // Broadcasts still reach a guest whose unicast cannot: the FDB
            // says where unicast toward it goes.
            let undeliverable = if rx >= cfg.cut_off_min_packets {
                unicast_undeliverable(look, s, br, p, dom)
            } else {
                None
            };
            if memo.cut_off || undeliverable.is_some() {
                let w = cfg.window_s;
                let why = match undeliverable {
                    Some(u) => format!("sent {rx:.0} packets in {w} s; {u}"),
                    None => {
                        let mut why = format!("sent {rx:.0} packets in {w} s, none reached it");
                        if txdrop > 0.0 {
                            why.push_str(&format!(", {txdrop:.0} dropped toward it"));
                        }
                        why
                    }
                };
                v.cut_off.push((p.name.clone(), why));
                traffic_cut += 1;
            } else {
                receiving_senders += 1;
            }
        }
        // Secondary: it answered our probes and stopped (two in a row).
        if let Some(g) = probe {
            if g.answered > 0
                && g.consecutive_unanswered >= 2
                && !v.cut_off.iter().any(|(c, _)| c == &p.name)
            {
                v.cut_off.push((
                    p.name.clone(),
                    format!(
                        "stopped answering ARP from the host ({} probes unanswered)",
                        g.consecutive_unanswered
                    ),
                ));
            }
        }
    }
    if v.eligible_guests == 0 || ups.is_empty() || !full_window {
        return v; // nothing to judge with
    }
    let links = s.links.as_deref().unwrap_or_default();
    let usable: Vec<&Uplink> = ups
        .iter()
        .filter(|u| {
            let Some(p) = br.ports.iter().find(|p| p.ifindex == u.ifindex) else {
                return false;
            };
            let Some(l) = s.link(&u.port) else {
                return false;
            };
            let nics_down = !u.nics.is_empty()
                && u.nics.iter().all(|n| {
                    links
                        .iter()
                        .find(|x| &x.name == n)
                        .is_some_and(|x| x.carrier == Some(false))
                });
            p.state == 3 && l.carrier != Some(false) && l.operstate != "down" && !nics_down
        })
        .collect();
    if usable.is_empty() {
        let why: Vec<String> = ups
            .iter()
            .filter_map(|u| {
                let p = br.ports.iter().find(|p| p.ifindex == u.ifindex)?;
                let l = s.link(&u.port)?;
                Some(format!(
                    "{} carrier {} port state {}",
                    u.port,
                    if l.carrier == Some(false) {
                        "off"
                    } else {
                        "on"
                    },
                    p.state
                ))
            })
            .collect();
        v.bad.push(format!("no usable uplink ({})", why.join(", ")));
        return v;
    }
    let w = cfg.window_s;
    // What left through the uplinks, less our own gateway probes (the
    // prober's counters are taken as of the moment the links were read).
    let probes_sent: f64 = probes
        .iter()
        .filter_map(|g| d.win.delta(&gw_key(&g.bridge, g.vlan, "sent")))
        .sum();
    let up_tx: f64 = (usable
        .iter()
        .filter_map(|u| sums(d, &u.port, u.ifindex))
        .map(|x| x.1)
        .sum::<f64>()
        - probes_sent)
        .max(0.0);
    // Nothing left: at most one packet (the host's own chatter), and the
    // guests' traffic did not
    // stay on the bridge either (guests talking to each other need no uplink).
    if guests_tx >= 3.0 && up_tx <= (0.05 * guests_tx).max(1.0) && toward_senders < 0.5 * guests_tx
    {
        v.bad.push(format!(
            "{} guest(s) sent {guests_tx:.0} packets in {w} s, nothing left through the uplink",
            v.sending_guests
        ));
    }
    if let Some(why) = netfilter_drops(d, s, &usable, v.sending_guests, guests_tx, busiest_tx) {
        v.bad.push(why);
    }
    if traffic_cut >= cfg.min_cut_off_guests as usize && receiving_senders == 0 {
        let (first, why) = &v.cut_off[0];
        v.bad.push(format!(
            "{traffic_cut} guests keep sending and are cut off ({}; {first}: {why})",
            v.cut_off
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for g in &probes {
        let Some(gw) = &g.gateway else { continue };
        let through = g.uplinks.join(",");
        let vlan = g.vlan.map(|v| format!(" VLAN {v}")).unwrap_or_default();
        if g.arp_answered > 0 && g.consecutive_unanswered >= cfg.probe_fail_after {
            let ago = g
                .last_answer_mono_ns
                .map(|t| {
                    format!(
                        ", last answer {:.1} s ago",
                        now.saturating_sub(t) as f64 / 1e9
                    )
                })
                .unwrap_or_default();
            v.bad.push(format!(
                "gateway {gw}{vlan} ({}) stopped answering probes through {through}: {} unanswered{ago}",
                g.gateway_source, g.consecutive_unanswered
            ));
        }
        let unanswered = d
            .win
            .delta(&gw_key(&g.bridge, g.vlan, "arp_unanswered"))
            .unwrap_or(0.0);
        let replies = d
            .win
            .delta(&gw_key(&g.bridge, g.vlan, "arp_replies"))
            .unwrap_or(0.0);
        if unanswered >= cfg.guest_arp_unanswered_min as f64 && replies == 0.0 {
            v.bad.push(format!(
                "guests' ARP for gateway {gw}{vlan}: {unanswered:.0} requests left through {through} in {w} s, none answered"
            ));
        }
        // Degradation: full-size probes fail while small ones pass.
        if g.large_sent > 0
            && g.large_consecutive_unanswered >= 2
            && g.consecutive_unanswered == 0
            && g.arp_answered > 0
        {
            v.degraded.push(format!(
                "full-size frames fail: {} B probes to gateway {gw}{vlan} through {through} unanswered ({} in a row) while small ones are answered — the path MTU is below the bridge MTU",
                g.large_bytes, g.large_consecutive_unanswered
            ));
        }
    }
    v
}

/// Netfilter drops what the guests send on its way out (catalogue F11/F12):
/// at the bridge's forward hook skb->dev is already the egress port, so the
/// kernel counts these drops on the uplink. The uplinks' own counters cannot
/// tell: the host's chatter still leaves and still reaches the guests' ports
/// for seconds after such a drop. Host-wide only: at least
/// `min_cut_off_guests` guests sending, and the drops cover the share of
/// the others' frames even if every frame of the busiest guest was among
/// them — one guest whose frames a rule drops (its security group, a spoof
/// filter) is that guest's matter. Other drop reasons (STP state, a down
/// port) are not netfilter's. Nothing without the eBPF drop counters.
fn netfilter_drops(
    d: &Detector,
    s: &Sample,
    usable: &[&Uplink],
    sending: usize,
    guests_tx: f64,
    busiest_tx: f64,
) -> Option<String> {
    let cfg = &d.cfg;
    let loaded = s.drops.as_ref()?.loaded_mono_ns;
    let (mut dropped, mut at) = (0.0, Vec::new());
    for u in usable {
        let n = d.win.delta(&nf_key(u, loaded)).unwrap_or(0.0);
        if n > 0.0 {
            dropped += n;
            at.push(format!("{} {n:.0}", u.port));
        }
    }
    // A share near 0 would make any drop a collapse.
    let share = cfg.netfilter_drop_min_share.clamp(0.05, 1.0);
    let others = (guests_tx - busiest_tx).max(0.0);
    let host_wide = sending >= cfg.min_cut_off_guests.max(2) as usize
        && others > 0.0
        && dropped - busiest_tx >= share * others;
    (dropped >= cfg.netfilter_drop_min_packets && host_wide).then(|| {
        format!(
            "netfilter dropped {dropped:.0} frames on their way out through the uplink ({}; kernel drop reason {NETFILTER_DROP}) in {} s, while {sending} guests sent {guests_tx:.0}",
            at.join(", "),
            cfg.window_s
        )
    })
}

/// Why unicast toward the guest on port `p` cannot reach it, from the FDB:
/// its MAC is learned on another port (catalogue F6), or not learned and
/// unknown unicast is not flooded to its port (F7). None when it can (or
/// when the FDB or the guest's MAC are not known).
fn unicast_undeliverable(
    look: &Lookups,
    s: &Sample,
    br: &Bridge,
    p: &crate::sample::BridgePort,
    dom: Option<&Domain>,
) -> Option<String> {
    // Without an FDB section nothing is known about where unicast goes.
    s.fdb.as_ref()?;
    let mac = dom?
        .vnics
        .iter()
        .find(|v| v.host_ifname.as_deref() == Some(&p.name))?
        .mac
        .to_ascii_lowercase();
    let entry = look
        .fdb_entries(&mac)
        .iter()
        .copied()
        .find(|e| !e.is_self && e.master.is_none_or(|m| m == br.ifindex));
    match entry {
        Some(e) if e.ifindex != p.ifindex => Some(format!(
            "the bridge forwards its MAC {mac} to {} ({} FDB entry), not to its port",
            if e.port.is_empty() {
                e.ifindex.to_string()
            } else {
                e.port.clone()
            },
            e.state
        )),
        None if p.unicast_flood == Some(false) => Some(format!(
            "its MAC {mac} is not in the FDB (learning {}) and unicast flooding is off on its port",
            match p.learning {
                Some(true) => "on",
                Some(false) => "off",
                None => "?",
            }
        )),
        _ => None,
    }
}

/// Host-wide degradations: conntrack or the neighbour table full.
pub(super) fn host_degraded(d: &Detector, s: &Sample) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ct) = &s.conntrack {
        if let (Some(c), Some(m)) = (ct.count, ct.max) {
            let drops = d.win.delta("conntrack:drops").unwrap_or(0.0);
            // Evictions keep the count a hair under the limit while it is full.
            if m > 0 && c + 2 >= m && drops > 0.0 {
                out.push(format!(
                    "conntrack table full: {c} of {m} entries, {drops:.0} packets dropped or not inserted in {} s — new flows fail",
                    d.cfg.window_s
                ));
            }
        }
    }
    let fulls = d.win.delta("neigh:table_fulls").unwrap_or(0.0);
    if fulls > 0.0 {
        out.push(format!(
            "neighbour table overflow: table_fulls +{fulls:.0} in {} s",
            d.cfg.window_s
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fdb_index_finds_every_entry_of_a_mac_in_the_samples_order() {
        let e = |mac: &str, ifindex, is_self| FdbEntry {
            mac: mac.into(),
            ifindex,
            is_self,
            ..Default::default()
        };
        let s = Sample {
            fdb: Some(vec![
                e("52:54:00:00:00:01", 7, true),
                e("52:54:00:00:00:02", 8, false),
                e("52:54:00:00:00:01", 9, false),
                e("not a mac", 10, false),
            ]),
            ..Default::default()
        };
        let look = Lookups::new(&s);
        let found: Vec<u32> = look
            .fdb_entries("52:54:00:00:00:01")
            .iter()
            .map(|e| e.ifindex)
            .collect();
        assert_eq!(found, vec![7, 9]);
        assert_eq!(look.fdb_entries("52:54:00:00:00:03").len(), 0);
        assert_eq!(
            look.fdb_entries("52:54:00:00:00:01").len(),
            look.fdb_entries("52:54:00:00:00:01".to_uppercase().as_str())
                .len(),
            "any case"
        );
        assert_eq!(look.fdb_entries("not a mac").len(), 0);
    }
}
