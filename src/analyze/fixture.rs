//! Replay fixtures made real: a recorded base sample (captured from the
//! lab), a counter-series file and a kernel log of raw /dev/kmsg records
//! become a bundle in the real format (manifest first, sizes and sha256),
//! which the analyzer then reads like any other. The replay tests
//! (tests/replay.rs) and the analyzer benchmark use it; the fixtures and
//! where their lines come from are in tests/fixtures/PROVENANCE.md.
//!
//! `series.txt`, one directive per line (`#` comments):
//!
//! ```text
//! rename uplink0 eno1                 rename an interface of the base sample
//! window -300 30                      history from/to, seconds around the collapse (default -300 30)
//! kind bond0 bond                     set an interface's kind
//! gone vnet2 1                        the interface (and its bridge port) is gone from T on
//! domain guest2 shutoff 0.5           a domain's state from T on
//! gap 2 14                            no samples for S seconds after T (the agent stalled)
//! KEY T=V T=V …                       a series: counters interpolate linearly between
//!                                     knots, states (carrier, state, mtu, vlans, clock) step
//! ```
//!
//! Keys: `link.IF.{tx_packets,rx_packets,tx_dropped,rx_dropped,carrier_changes,
//! rx_length_errors}` (counters), `link.IF.{carrier,mtu}`, `port.IF.state`,
//! `vlans.IF` (value `1pu+100`: vid 1 PVID untagged, vid 100),
//! `qdisc.IF.{backlog_bytes,drops}`, `conntrack.{count,max}`,
//! `conntrack.stat.NAME`, `neigh.total_inet`, `neigh.gc_thresh3`,
//! `arp_cache.NAME`, `softnet.CPU.{dropped,time_squeeze}`, `buddy.ORDER`,
//! `clock.step_s` (wall clock minus monotonic, stepped), `lag_us`.
//!
//! `kmsg.txt`: raw records `PRI,SEQ,BOOT_US,FLAGS;TEXT`, with a first line
//! `# collapse_boot_us N` mapping the kernel's clock to the collapse.
//! `events.jsonl`: events whose `ts_unix_ns` is relative to the collapse.
//! `deep/…`: files put into the bundle under the same name.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::bundle::{Entry, Incident, Manifest, BUNDLE_FORMAT_VERSION};
use crate::sample::bridge::PortVlan;
use crate::sample::{Event, EventKind, Sample};

#[derive(Clone, Debug, PartialEq)]
struct SeriesSpec {
    key: String,
    knots: Vec<(f64, String)>,
}

/// A replay scenario read from a fixture directory.
pub struct Scenario {
    pub base: Sample,
    pub from_s: f64,
    pub to_s: f64,
    pub interval_s: f64,
    pub incident_ns: i64,
    series: Vec<SeriesSpec>,
    kinds: Vec<(String, String)>,
    gone: Vec<(String, f64)>,
    domains: Vec<(String, String, f64)>,
    gaps: Vec<(f64, f64)>,
    pub events: Vec<Event>,
    pub files: Vec<(String, Vec<u8>)>,
}

fn num(v: &str) -> f64 {
    v.trim().parse().unwrap_or(0.0)
}

fn interp(knots: &[(f64, String)], t: f64, step: bool) -> Option<String> {
    let first = knots.first()?;
    if t <= first.0 {
        return Some(first.1.clone());
    }
    for w in knots.windows(2) {
        let ((t0, v0), (t1, v1)) = (&w[0], &w[1]);
        if t >= *t0 && t < *t1 {
            if step {
                return Some(v0.clone());
            }
            let f = (t - t0) / (t1 - t0);
            return Some(format!("{}", (num(v0) + (num(v1) - num(v0)) * f).round()));
        }
    }
    knots.last().map(|k| k.1.clone())
}

fn vlans(spec: &str) -> Vec<PortVlan> {
    spec.split('+')
        .filter(|s| !s.is_empty() && *s != "-")
        .map(|s| {
            let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
            PortVlan {
                vid: digits.parse().unwrap_or(0),
                pvid: s[digits.len()..].contains('p'),
                untagged: s[digits.len()..].contains('u'),
            }
        })
        .collect()
}

impl Scenario {
    /// Reads `dir` (series.txt, kmsg.txt, events.jsonl, deep/…) over the base sample.
    pub fn load(dir: &Path, base_json: &str, incident_ns: i64) -> Result<Scenario, String> {
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
        let mut base_text = base_json.to_string();
        let (mut from_s, mut to_s) = (-300.0, 30.0);
        let mut series = Vec::new();
        let (mut kinds, mut gone, mut domains, mut gaps) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, line) in read("series.txt").lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut w = line.split_whitespace();
            match w.next() {
                None => continue,
                Some("rename") => {
                    let (a, b) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
                    base_text = base_text.replace(&format!("\"{a}\""), &format!("\"{b}\""));
                }
                Some("kind") => kinds.push((
                    w.next().unwrap_or("").to_string(),
                    w.next().unwrap_or("").to_string(),
                )),
                Some("gone") => gone.push((
                    w.next().unwrap_or("").to_string(),
                    num(w.next().unwrap_or("0")),
                )),
                Some("domain") => domains.push((
                    w.next().unwrap_or("").to_string(),
                    w.next().unwrap_or("").to_string(),
                    num(w.next().unwrap_or("0")),
                )),
                Some("gap") => {
                    gaps.push((num(w.next().unwrap_or("0")), num(w.next().unwrap_or("0"))))
                }
                Some("window") => {
                    from_s = num(w.next().unwrap_or("-300"));
                    to_s = num(w.next().unwrap_or("30"));
                }
                Some(key) => {
                    let mut knots = Vec::new();
                    for k in w {
                        let (t, v) = k.split_once('=').ok_or_else(|| {
                            format!("{}/series.txt:{}: {k:?} is not T=V", dir.display(), i + 1)
                        })?;
                        knots.push((num(t), v.to_string()));
                    }
                    series.push(SeriesSpec {
                        key: key.to_string(),
                        knots,
                    });
                }
            }
        }
        let base: Sample =
            serde_json::from_str(&base_text).map_err(|e| format!("base sample: {e}"))?;
        let mut events = Vec::new();
        let kmsg = read("kmsg.txt");
        let mut collapse_us: i64 = 0;
        for rec in crate::kernel::kmsg::split_records(&kmsg) {
            if let Some(n) = rec.strip_prefix("# collapse_boot_us ") {
                collapse_us = n.trim().parse().unwrap_or(0);
                continue;
            }
            if rec.starts_with('#') {
                continue;
            }
            let r = crate::kernel::kmsg::parse_record(rec)
                .map_err(|e| format!("{}/kmsg.txt: {e}", dir.display()))?;
            let t_ns = (r.boot_us as i64 - collapse_us) * 1000;
            events.push(Event {
                ts_unix_ns: incident_ns + t_ns,
                mono_ns: 0,
                kind: EventKind::Kmsg {
                    seq: r.seq,
                    priority: r.priority,
                    facility: r.facility,
                    boot_us: r.boot_us,
                    tags: crate::kernel::kmsg::tags(&r.text),
                    text: r.text,
                },
            });
        }
        for (i, l) in read("events.jsonl").lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let mut e: Event = serde_json::from_str(l)
                .map_err(|e| format!("{}/events.jsonl:{}: {e}", dir.display(), i + 1))?;
            e.ts_unix_ns += incident_ns;
            events.push(e);
        }
        let mut files = Vec::new();
        let deep = dir.join("deep");
        let mut stack = vec![deep.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(b) = std::fs::read(&p) {
                    let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                    files.push((rel, b));
                }
            }
        }
        files.sort();
        Ok(Scenario {
            base,
            from_s,
            to_s,
            interval_s: 1.0,
            incident_ns,
            series,
            kinds,
            gone,
            domains,
            gaps,
            events,
            files,
        })
    }

    /// The samples, one per interval, the series applied to the base:
    /// (true time relative to the collapse, sample): the wall clock in a
    /// sample may have been stepped (`clock.step_s`).
    pub fn samples(&self) -> Vec<(f64, Sample)> {
        let mut out = Vec::new();
        let n = ((self.to_s - self.from_s) / self.interval_s).round() as i64;
        let mono0: u64 = 5_000_000_000_000;
        for i in 0..=n {
            let t = self.from_s + i as f64 * self.interval_s;
            if self.gaps.iter().any(|(g, len)| t > *g && t < g + len) {
                continue;
            }
            let mut s = self.base.clone();
            s.seq = i as u64 + 1;
            s.mono_ns = mono0 + (i as f64 * self.interval_s * 1e9) as u64;
            s.boot_ns = s.mono_ns;
            s.ts_unix_ns = self.incident_ns + (t * 1e9) as i64;
            for sp in &self.series {
                self.apply(&mut s, sp, t);
            }
            for (name, kind) in &self.kinds {
                for l in s.links.iter_mut().flatten().filter(|l| &l.name == name) {
                    l.kind = kind.clone();
                }
            }
            for (name, from) in &self.gone {
                if t >= *from {
                    if let Some(ls) = s.links.as_mut() {
                        ls.retain(|l| &l.name != name);
                    }
                    for b in s.bridges.iter_mut().flatten() {
                        b.ports.retain(|p| &p.name != name);
                    }
                }
            }
            for (name, state, from) in &self.domains {
                if t >= *from {
                    for d in s
                        .libvirt
                        .iter_mut()
                        .flat_map(|l| l.domains.iter_mut())
                        .filter(|d| &d.name == name)
                    {
                        d.state = state.clone();
                        d.reason = "crashed".into();
                    }
                }
            }
            out.push((t, s));
        }
        out
    }

    fn apply(&self, s: &mut Sample, sp: &SeriesSpec, t: f64) {
        let parts: Vec<&str> = sp.key.split('.').collect();
        let state = matches!(
            parts.last(),
            Some(&"carrier") | Some(&"mtu") | Some(&"state") | Some(&"step_s")
        ) || parts[0] == "vlans";
        let Some(v) = interp(&sp.knots, t, state) else {
            return;
        };
        let u = num(&v).max(0.0) as u64;
        match parts.as_slice() {
            ["link", name, field] => {
                if let Some(l) = s.links.iter_mut().flatten().find(|l| l.name == *name) {
                    match *field {
                        "tx_packets" => l.stats.tx_packets = u,
                        "rx_packets" => l.stats.rx_packets = u,
                        "tx_dropped" => l.stats.tx_dropped = u,
                        "rx_dropped" => l.stats.rx_dropped = u,
                        "rx_length_errors" => l.stats.rx_length_errors = u,
                        "carrier_changes" => l.carrier_changes = Some(u as u32),
                        "carrier" => {
                            l.carrier = Some(u != 0);
                            l.operstate = if u != 0 { "up".into() } else { "down".into() };
                        }
                        "mtu" => l.mtu = u as u32,
                        _ => {}
                    }
                }
            }
            ["port", name, "state"] => {
                for p in s
                    .bridges
                    .iter_mut()
                    .flatten()
                    .flat_map(|b| b.ports.iter_mut())
                {
                    if p.name == *name {
                        p.state = u as u8;
                    }
                }
            }
            ["vlans", name] => {
                for b in s.bridges.iter_mut().flatten() {
                    b.vlan_filtering = Some(true);
                    for p in b.ports.iter_mut().filter(|p| p.name == *name) {
                        p.vlans = vlans(&v);
                    }
                }
            }
            ["qdisc", dev, field] => {
                if let Some(q) = s.qdiscs.iter_mut().flatten().find(|q| q.dev == *dev) {
                    match *field {
                        "backlog_bytes" => q.backlog_bytes = u,
                        "drops" => q.drops = u,
                        _ => {}
                    }
                }
            }
            ["conntrack", "count"] => {
                s.conntrack.get_or_insert_with(Default::default).count = Some(u)
            }
            ["conntrack", "max"] => s.conntrack.get_or_insert_with(Default::default).max = Some(u),
            ["conntrack", "stat", name] => {
                s.conntrack
                    .get_or_insert_with(Default::default)
                    .stats
                    .insert(name.to_string(), u);
            }
            ["neigh", "total_inet"] => {
                s.neighbours.get_or_insert_with(Default::default).total_inet = u as u32
            }
            ["neigh", "gc_thresh3"] => {
                let n = s.neighbours.get_or_insert_with(Default::default);
                n.gc_thresh = Some([128, 512, u as u32]);
            }
            ["arp_cache", name] => {
                s.neighbours
                    .get_or_insert_with(Default::default)
                    .arp_cache
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name.to_string(), u);
            }
            ["softnet", cpu, field] => {
                let cpu: usize = cpu.parse().unwrap_or(0);
                if let Some(c) = s.softnet.iter_mut().flatten().nth(cpu) {
                    match *field {
                        "dropped" => c.dropped = u,
                        "time_squeeze" => c.time_squeeze = u,
                        _ => {}
                    }
                }
            }
            ["buddy", order] => {
                let o: usize = order.parse().unwrap_or(0);
                if let Some(sys) = s.system.as_mut() {
                    if sys.buddy_free.len() <= o {
                        sys.buddy_free.resize(o + 1, 0);
                    }
                    sys.buddy_free[o] = u;
                }
            }
            ["clock", "step_s"] => s.ts_unix_ns += (num(&v) * 1e9) as i64,
            ["lag_us"] => s.lag_us = u,
            _ => {}
        }
    }

    /// Writes the scenario as a bundle (the real format) to `path`.
    pub fn write_bundle(&self, path: &Path, id: &str, reason: &str) -> std::io::Result<()> {
        let samples = self.samples();
        // In the order the store would hold them: true time, not the stepped wall clock.
        let mut recs: Vec<(i64, String)> = samples
            .iter()
            .map(|(t, s)| {
                (
                    self.incident_ns + (t * 1e9) as i64,
                    crate::agent::print::sample_json(s),
                )
            })
            .collect();
        recs.extend(
            self.events
                .iter()
                .map(|e| (e.ts_unix_ns, crate::agent::print::event_json(e))),
        );
        recs.sort_by_key(|r| r.0);
        let mut hist = Vec::new();
        for (_, l) in &recs {
            hist.extend_from_slice(l.as_bytes());
            hist.push(b'\n');
        }
        let incident = Incident {
            id: id.into(),
            trigger: "detector".into(),
            reason: reason.into(),
            ts_unix_ns: self.incident_ns,
            ts: crate::clock::format_rfc3339(self.incident_ns),
            ..Default::default()
        };
        write_bundle(
            path,
            &self.base.host,
            incident,
            samples.len() as u64,
            self.events.len() as u64,
            &hist,
            &self.files,
        )
    }
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A bundle in the real layout: manifest first (sizes, sha256), then the
/// history and the other files.
pub fn write_bundle(
    path: &Path,
    host: &str,
    incident: Incident,
    samples: u64,
    events: u64,
    history: &[u8],
    files: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    let mut entries = vec![Entry {
        name: "history/records.jsonl".into(),
        size: history.len() as u64,
        sha256: sha(history),
    }];
    for (n, b) in files {
        entries.push(Entry {
            name: n.clone(),
            size: b.len() as u64,
            sha256: sha(b),
        });
    }
    let t = incident.ts_unix_ns;
    let m = Manifest {
        format_version: BUNDLE_FORMAT_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        host: host.into(),
        incident,
        window_since: String::new(),
        window_until: String::new(),
        complete: true,
        samples,
        events,
        entries,
        ..Default::default()
    };
    let f = std::fs::File::create(path)?;
    let mut tar = tar::Builder::new(zstd::Encoder::new(f, 3)?);
    let mut add = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime((t / 1_000_000_000).max(0) as u64);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    add(
        "manifest.json",
        &serde_json::to_vec_pretty(&m).expect("manifest serializes"),
    )?;
    add("history/records.jsonl", history)?;
    for (n, b) in files {
        add(n, b)?;
    }
    let enc = tar.into_inner()?;
    enc.finish()?.flush()
}
