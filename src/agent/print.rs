//! Human one-line renderings of samples and events, for `run --print`,
//! `sample` and the demo. Machine consumers use the JSON forms instead.

use std::fmt::Write as _;

use crate::clock::format_rfc3339;
use crate::model::Model;
use crate::sample::{Event, EventKind, Sample};

fn hms(unix_ns: i64) -> String {
    // "2026-11-24T04:31:02.001Z" → "04:31:02.001"
    let s = format_rfc3339(unix_ns);
    s[11..23].to_string()
}

fn pps(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A vNIC is a bridge port libvirt maps to a domain; every other bridge
/// port is an uplink. Without libvirt's view (unreachable, or no domain
/// mapped) libvirt's tap MAC prefix (fe:…) decides — only then, because a
/// random kernel MAC (a veth uplink's, say) starts with fe: one time in 64.
pub fn is_vnic(sample: &Sample, ifname: &str, mac: &str) -> bool {
    if !sample.has_mapped_vnics() {
        return mac.starts_with("fe:");
    }
    sample.is_mapped_vnic(ifname)
}

pub fn sample_line(s: &Sample, m: &Model) -> String {
    let mut out = format!("{} #{}", hms(s.ts_unix_ns), s.seq);
    let rates = |name: &str| m.links.get(name);
    for br in s.bridges.iter().flatten() {
        if let Some(r) = rates(&br.name) {
            let _ = write!(
                out,
                " | {} rx {} tx {} pps",
                br.name,
                pps(r.rx_packets_per_s),
                pps(r.tx_packets_per_s)
            );
        } else {
            let _ = write!(out, " | {}", br.name);
        }
        let (mut vnics, mut silent) = (0, Vec::new());
        for p in &br.ports {
            let mac = s.link(&p.name).map(|l| l.mac.as_str()).unwrap_or("");
            let state = if p.state == 3 {
                String::new()
            } else {
                format!(" state {}", p.state)
            };
            if is_vnic(s, &p.name, mac) {
                vnics += 1;
                if rates(&p.name)
                    .is_some_and(|r| r.rx_packets_per_s == 0.0 && r.tx_packets_per_s == 0.0)
                {
                    silent.push(p.name.clone());
                }
                if !state.is_empty() {
                    let _ = write!(out, " {}{}", p.name, state);
                }
            } else if let Some(r) = rates(&p.name) {
                let link = s.link(&p.name);
                let carrier = match link.and_then(|l| l.carrier) {
                    Some(false) => " NO-CARRIER",
                    _ => "",
                };
                let _ = write!(
                    out,
                    " · uplink {} rx {} tx {} pps drop {}{}{}",
                    p.name,
                    pps(r.rx_packets_per_s),
                    pps(r.tx_packets_per_s),
                    pps(r.rx_dropped_per_s + r.tx_dropped_per_s),
                    carrier,
                    state
                );
                if let Some(d) = m.drops_per_s.get(&p.name) {
                    let _ = write!(
                        out,
                        " (kernel: {})",
                        crate::control::client::reasons_text(d, 3)
                    );
                }
            }
        }
        let _ = write!(out, " · vnics {vnics}");
        if !silent.is_empty() {
            silent.truncate(5);
            let _ = write!(out, " (silent: {})", silent.join(" "));
        }
    }
    if let Some(f) = &s.fdb {
        let _ = write!(out, " · fdb {}", f.len());
    }
    if let Some(n) = &s.neighbours {
        let _ = write!(out, " · neigh {}", n.total_inet + n.total_inet6);
    }
    if let Some(c) = &s.conntrack {
        if let (Some(count), Some(max)) = (c.count, c.max) {
            let _ = write!(out, " · ct {count}/{max}");
        }
    }
    if let Some(d) = m.softnet_dropped_per_s.filter(|d| *d > 0.0) {
        let _ = write!(out, " · softnet drops {}/s", pps(d));
    }
    if let Some(l) = &s.libvirt {
        let running = l.domains.iter().filter(|d| d.state == "running").count();
        let _ = write!(out, " · domains {running}/{} running", l.domains.len());
    }
    if !s.failures.is_empty() {
        let names: Vec<&str> = s.failures.iter().map(|f| f.collector.as_str()).collect();
        let _ = write!(out, " · FAILED: {}", names.join(","));
    }
    let _ = write!(out, " · {} µs", s.duration_us);
    out
}

/// A raw sample as one JSON line, tagged `"kind": "sample"` like events are.
pub fn sample_json(s: &Sample) -> String {
    let mut b = Vec::new();
    match write_sample_json(&mut b, s) {
        Ok(()) => String::from_utf8(b).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A sample as one JSON object (no newline), `"kind":"sample"` first,
/// streamed to `w`. Never through a `serde_json::Value`: at 500 vNICs a
/// sample is a 0.8 MB line, and its Value tree was ~13 MiB, most of the
/// agent's peak while a bundle wrote its history.
pub fn write_sample_json(w: &mut impl std::io::Write, s: &Sample) -> std::io::Result<()> {
    #[derive(serde::Serialize)]
    struct Tagged<'a> {
        kind: &'static str,
        #[serde(flatten)]
        sample: &'a Sample,
    }
    let t = Tagged {
        kind: "sample",
        sample: s,
    };
    serde_json::to_writer(w, &t).map_err(std::io::Error::from)
}

/// An event as one JSON line with a human "ts" next to "ts_unix_ns".
pub fn event_json(e: &Event) -> String {
    match serde_json::to_value(e) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("ts".into(), format_rfc3339(e.ts_unix_ns).into());
            serde_json::Value::Object(m).to_string()
        }
        _ => String::new(),
    }
}

/// `hvflight status` for humans.
pub fn status_text(v: &serde_json::Value) -> String {
    let mut o = String::new();
    let a = &v["agent"];
    let s = &v["sampling"];
    let _ = writeln!(
        o,
        "hvflight {} on {} (pid {}), up {} s",
        a["version"].as_str().unwrap_or("?"),
        a["host"].as_str().unwrap_or("?"),
        a["pid"],
        a["uptime_s"]
    );
    let _ = writeln!(
        o,
        "sampling: every {} ms, sample #{} {} ms ago, took {} µs, lag {} µs (max {} µs over the last 60)",
        s["interval_ms"], s["last_seq"], s["ms_since_last_sample"], s["last_duration_us"], s["last_lag_us"], s["max_lag_us_last_60"]
    );
    match v["collectors_failing"].as_array() {
        Some(f) if !f.is_empty() => {
            for c in f {
                let _ = writeln!(
                    o,
                    "FAILING collector {}: {}",
                    c["collector"].as_str().unwrap_or("?"),
                    c["error"].as_str().unwrap_or("?")
                );
            }
        }
        _ => {
            let _ = writeln!(o, "collectors: all OK");
        }
    }
    let l = &v["libvirt"];
    let conn = match l["connected"].as_bool() {
        Some(true) => "connected",
        Some(false) => "NOT CONNECTED",
        None => "not sampled yet",
    };
    let _ = writeln!(
        o,
        "libvirt: {} {conn}, {} domains ({} running)",
        l["uri"].as_str().unwrap_or("?"),
        l["domains"],
        l["running"]
    );
    let st = &v["store"];
    let _ = writeln!(
        o,
        "store: {} — {:.1} MiB in {} segments, {} records dropped",
        st["dir"].as_str().unwrap_or("(none)"),
        st["bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        st["segments"],
        st["dropped_records"]
    );
    let d = &v["detector"];
    if d.is_object() {
        let _ = writeln!(
            o,
            "detector: {} — {} of {} guests eligible to judge{}",
            d["state"].as_str().unwrap_or("?").to_uppercase(),
            d["eligible_guests"],
            d["total_guests"],
            d["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
                .map(|r| format!("; {r}"))
                .unwrap_or_default()
        );
    }
    let b = &v["bundles"];
    if b.is_object() {
        let _ = write!(
            o,
            "bundles: {} in {} ({:.1} MiB)",
            b["count"],
            b["dir"].as_str().unwrap_or("?"),
            b["bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        match b["last_incident"].as_object() {
            Some(li) => {
                let _ = writeln!(
                    o,
                    "; last incident {} at {} ({}: {}) → {}",
                    li["id"].as_str().unwrap_or("?"),
                    li["ts"].as_str().unwrap_or("?"),
                    li["trigger"].as_str().unwrap_or("?"),
                    li["reason"].as_str().unwrap_or(""),
                    li["bundle"].as_str().unwrap_or("?")
                );
            }
            None => {
                let _ = writeln!(o, "; no incident yet");
            }
        }
    }
    upload_text(&mut o, &v["upload"]);
    if let Some(u) = a["unknown_config_keys"]
        .as_array()
        .filter(|u| !u.is_empty())
    {
        let keys: Vec<&str> = u.iter().filter_map(|k| k.as_str()).collect();
        let _ = writeln!(
            o,
            "config {}: unknown keys ignored: {}",
            a["config_file"].as_str().unwrap_or(""),
            keys.join(", ")
        );
    }
    let _ = writeln!(o, "tail clients: {}", v["tail_clients"]);
    o
}

pub fn event_line(e: &Event) -> String {
    let t = hms(e.ts_unix_ns);
    match &e.kind {
        EventKind::Link {
            action,
            name,
            operstate,
            carrier,
            mtu,
            port_state,
            master,
            ..
        } => {
            let mut s = format!("{t} EVENT link {action} {name} {operstate}");
            if let Some(c) = carrier {
                let _ = write!(s, " carrier={}", if *c { "on" } else { "off" });
            }
            if let Some(m) = mtu {
                let _ = write!(s, " mtu={m}");
            }
            if let Some(m) = master {
                let _ = write!(s, " master={m}");
            }
            if let Some(p) = port_state {
                let _ = write!(s, " port_state={p}");
            }
            s
        }
        EventKind::Fdb {
            action,
            mac,
            port,
            vlan,
            state,
            ..
        } => {
            let vlan = vlan.map(|v| format!(" vlan {v}")).unwrap_or_default();
            format!("{t} EVENT fdb {action} {mac} on {port}{vlan} {state}")
        }
        EventKind::Neigh {
            action,
            ip,
            mac,
            dev,
            state,
            ..
        } => {
            format!("{t} EVENT neigh {action} {ip} {mac} dev {dev} {state}")
        }
        EventKind::Addr {
            action,
            dev,
            addr,
            prefix_len,
            ..
        } => {
            format!("{t} EVENT addr {action} {addr}/{prefix_len} dev {dev}")
        }
        EventKind::Kmsg { text, tags, .. } => {
            let tags = if tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", tags.join(","))
            };
            format!("{t} KERNEL{tags} {}", text.replace('\n', " "))
        }
        EventKind::Libvirt {
            domain,
            event,
            detail,
            ..
        } => {
            format!("{t} EVENT libvirt {domain} {event} {detail}")
        }
        EventKind::LibvirtConnection {
            uri,
            connected,
            error,
        } => {
            if *connected {
                format!("{t} EVENT libvirt connected to {uri}")
            } else {
                format!("{t} EVENT libvirt DISCONNECTED from {uri}: {error}")
            }
        }
        EventKind::Loss {
            source,
            detail,
            count,
        } => {
            format!("{t} LOSS {source}: {count} lost ({detail})")
        }
        EventKind::Agent { what, detail } => format!("{t} AGENT {what} {detail}"),
        EventKind::Capture {
            iface,
            what,
            detail,
        } => format!("{t} CAPTURE {what} {iface} {detail}"),
        EventKind::Detector {
            from,
            to,
            reason,
            eligible_guests,
        } => {
            format!(
                "{t} DETECTOR {from} → {}: {reason} ({eligible_guests} eligible guests)",
                to.to_uppercase()
            )
        }
        EventKind::GuestCutOff {
            iface,
            domain,
            reason,
        } => format!("{t} GUEST CUT OFF {iface} ({domain}): {reason}"),
        EventKind::Degradation {
            what,
            reason,
            active,
        } => {
            if *active {
                format!("{t} DEGRADED {what}: {reason}")
            } else {
                format!("{t} degradation over: {what}")
            }
        }
    }
}

/// The `upload:` lines of `hvflight status`.
fn upload_text(o: &mut String, u: &serde_json::Value) {
    if u["enabled"] != true {
        let _ = writeln!(o, "upload: off");
        return;
    }
    let sp = &u["spool"];
    let limit = u["bandwidth_limit_bytes_per_s"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        o,
        "upload: to {} bucket {} ({}); spool {} waiting ({:.1} MiB), {} uploaded; {} uploads, {} failed attempts since start",
        u["endpoint"].as_str().unwrap_or("?"),
        u["bucket"].as_str().unwrap_or("?"),
        if limit > 0.0 {
            format!("limit {:.1} MiB/s", limit / 1048576.0)
        } else {
            "no bandwidth limit".into()
        },
        sp["pending"],
        sp["pending_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        sp["uploaded"],
        u["uploads_total"],
        u["failures_total"],
    );
    if let Some(c) = u["uploading"].as_object() {
        let _ = writeln!(
            o,
            "upload: sending {} — {:.1} of {:.1} MiB",
            c["entry"].as_str().unwrap_or("?"),
            c["bytes_done"].as_f64().unwrap_or(0.0) / 1048576.0,
            c["size"].as_f64().unwrap_or(0.0) / 1048576.0
        );
    }
    if let Some(t) = u["last_success"].as_str() {
        let _ = writeln!(
            o,
            "upload: last success {t}: {}",
            u["last_success_location"].as_str().unwrap_or("")
        );
    }
    if let (Some(t), Some(e)) = (
        u["last_error_ts"].as_str(),
        u["last_error"].as_str().filter(|e| !e.is_empty()),
    ) {
        // RFC 3339 UTC times compare as strings; an error older than the
        // last success is history, not news.
        if u["last_success"].as_str().is_none_or(|s| s < t) {
            let _ = writeln!(o, "upload: LAST ERROR {t}: {e}");
        }
    }
    for e in sp["entries"].as_array().into_iter().flatten() {
        if e["attempts"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                o,
                "upload: {} queued, {} failed attempt(s), next in {} s",
                e["entry"].as_str().unwrap_or("?"),
                e["attempts"],
                e["next_attempt_in_s"]
            );
        }
    }
}
