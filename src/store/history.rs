//! `hvflight history`: what the store holds for a time range, without the
//! agent running (or while it runs: reading takes no lock). Human output
//! shows rates per second (from `model`), JSON output the raw records.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use crate::agent::print;
use crate::model::Model;
use crate::sample::{Event, EventKind, Sample};

use super::reader::{scan, scan_ref, Query, ReadReport, Record, RecordRef};
use super::rows::{Projection, Select};

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub since_ns: i64,
    pub until_ns: i64,
    pub iface: Option<String>,
    pub domain: Option<String>,
    pub json: bool,
}

/// "10m", "90s", "2h", "1d" before `now_ns`, or an RFC 3339 UTC time
/// ("2026-11-24T04:30:00Z").
pub fn parse_time(s: &str, now_ns: i64) -> Result<i64, String> {
    let s = s.trim();
    let unit = |c: char| match c {
        's' => Some(1i64),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    if let Some(last) = s.chars().last() {
        if let (Some(mult), Ok(n)) = (unit(last), s[..s.len() - 1].parse::<f64>()) {
            if n >= 0.0 {
                return Ok(now_ns - (n * mult as f64 * 1e9) as i64);
            }
        }
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!(
            "{s:?}: expected a duration like 10m, 90s, 2h or a UTC time like 2026-11-24T04:30:00Z"
        )
    })
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    // YYYY-MM-DDTHH:MM:SS[.fff]Z — days-from-civil by hand (one function, no date crate).
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mi, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) || hh > 23 || mi > 59 || ss > 60 {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac_ns: i64 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    Some(((days * 86_400 + hh * 3600 + mi * 60 + ss) * 1_000_000_000) + frac_ns)
}

fn event_iface(e: &Event) -> Option<&str> {
    match &e.kind {
        EventKind::Link { name, .. } => Some(name),
        EventKind::Fdb { port, .. } => Some(port),
        EventKind::Neigh { dev, .. } | EventKind::Addr { dev, .. } => Some(dev),
        _ => None,
    }
}

/// Interfaces of a domain (by name or UUID) as a sample maps them.
fn domain_ifaces(s: &Sample, domain: &str, set: &mut BTreeSet<String>) {
    for d in s.libvirt.iter().flat_map(|l| &l.domains) {
        if d.name == domain || d.uuid == domain {
            set.extend(d.vnics.iter().filter_map(|v| v.host_ifname.clone()));
        }
    }
}

fn iface_line(s: &Sample, m: &Model, ifaces: &BTreeSet<String>) -> String {
    let mut line = crate::clock::format_rfc3339(s.ts_unix_ns).to_string();
    for name in ifaces {
        match (s.link(name), m.links.get(name)) {
            (Some(l), Some(r)) => line.push_str(&format!(
                " | {name} {} rx {:.1} tx {:.1} pps, rx {:.0} tx {:.0} B/s, drop rx {:.1} tx {:.1}/s",
                l.operstate, r.rx_packets_per_s, r.tx_packets_per_s, r.rx_bytes_per_s, r.tx_bytes_per_s,
                r.rx_dropped_per_s, r.tx_dropped_per_s
            )),
            (Some(l), None) => line.push_str(&format!(" | {name} {} (no rate yet)", l.operstate)),
            (None, _) => line.push_str(&format!(" | {name} absent")),
        }
    }
    line
}

/// Prints the range; returns the number of records shown and the read report's warnings.
///
/// Streams the store (memory stays bounded) and, with `--iface`/`--domain`
/// and human output, decodes only the interfaces asked for: at 500 vNICs
/// that is what keeps a 15-minute read short.
pub fn history(
    dir: &Path,
    q: &HistoryQuery,
    out: &mut dyn Write,
) -> std::io::Result<(usize, Vec<String>)> {
    let mut report = ReadReport::default();
    let mut ifaces: BTreeSet<String> = q.iface.iter().cloned().collect();
    let mut domain_warning = None;
    if let Some(d) = &q.domain {
        // First pass: only the libvirt section, to map the domain to its vNICs.
        let mut found = BTreeSet::new();
        let mut pre = Query::range(q.since_ns, q.until_ns);
        pre.projection.fields = Some(["libvirt".to_string()].into());
        pre.events = false;
        let mut pre_report = ReadReport::default();
        scan(dir, &pre, &mut pre_report, &mut |r| {
            if let Record::Sample(s) = &r {
                domain_ifaces(s, d, &mut found);
            }
            true
        });
        if found.is_empty() {
            domain_warning = Some(format!("domain {d:?}: no vNIC of it in the range"));
        }
        ifaces.extend(found);
    }
    let filtered = q.iface.is_some() || q.domain.is_some();
    let mut query = Query::range(q.since_ns, q.until_ns);
    if filtered && !q.json {
        query.projection = Projection {
            fields: Some(["links".to_string()].into()),
            select: Some(Select {
                seq: "links".into(),
                field: "name".into(),
                values: ifaces.clone(),
            }),
        };
    }
    let mut shown = 0;
    let mut result = Ok(());
    // Lent samples (`scan_ref`): the reader patches the numbers of the
    // sample before into the next one instead of building each anew, and
    // hands the previous one along for the rates.
    scan_ref(dir, &query, &mut report, &mut |r| {
        let step = (|| -> std::io::Result<()> {
            match r {
                RecordRef::Sample { sample: s, prev } => {
                    if q.json {
                        writeln!(out, "{}", print::sample_json(s))?;
                    } else {
                        let m = Model::new(s, prev);
                        let line = if filtered {
                            iface_line(s, &m, &ifaces)
                        } else {
                            print::sample_line(s, &m)
                        };
                        writeln!(out, "{line}")?;
                    }
                    shown += 1;
                }
                RecordRef::Events(evs) => {
                    for e in &evs {
                        if filtered && !event_iface(e).is_some_and(|i| ifaces.contains(i)) {
                            continue;
                        }
                        if q.json {
                            writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default())?;
                        } else {
                            writeln!(out, "{}", print::event_line(e))?;
                        }
                        shown += 1;
                    }
                }
            }
            Ok(())
        })();
        match step {
            Ok(()) => true,
            Err(e) => {
                result = Err(e);
                false
            }
        }
    });
    result?;
    let mut warnings = report.warnings;
    for (p, off) in &report.torn_tails {
        warnings.push(format!(
            "{}: torn tail at offset {off} (a crash, or the record being written)",
            p.display()
        ));
    }
    warnings.extend(domain_warning);
    Ok((shown, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = 1_000_000 * 1_000_000_000;
        assert_eq!(parse_time("10m", now).unwrap(), now - 600 * 1_000_000_000);
        assert_eq!(parse_time("1.5h", now).unwrap(), now - 5400 * 1_000_000_000);
        assert_eq!(
            parse_time("2015-02-27T02:30:00Z", now).unwrap(),
            1_425_004_200 * 1_000_000_000
        );
        assert_eq!(
            parse_time("2015-02-27T02:30:00.25Z", now).unwrap(),
            1_425_004_200_250_000_000
        );
        assert!(parse_time("yesterday", now)
            .unwrap_err()
            .contains("expected a duration"));
        assert!(parse_time("-5m", now).is_err());
    }
}
