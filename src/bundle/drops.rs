//! `deep/drop_reasons.txt`: the kernel's drop reasons over the bundle's
//! window, per interface and reason, before and after the incident — a
//! summary for a person (the samples in history/ hold the raw counters).
//! Built while the writer streams the history, from the rates in model.rs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::sample::{Drops, Sample};

#[derive(Default)]
struct Row {
    before: f64,
    after: f64,
    peak_per_s: f64,
    first_ns: i64,
}

#[derive(Default)]
pub struct DropSummary {
    prev: Option<(u64, Drops)>,
    rows: BTreeMap<(String, String), Row>,
    samples_with: u64,
    samples_without: u64,
    last_failure: Option<String>,
    overflow: u64,
}

impl DropSummary {
    /// Feeds the next sample of the window (in time order).
    pub fn add(&mut self, s: &Sample, incident_ns: i64) {
        let Some(d) = &s.drops else {
            self.samples_without += 1;
            if let Some(f) = s.failure("drops") {
                self.last_failure = Some(f.error.clone());
            }
            return;
        };
        self.samples_with += 1;
        self.overflow = d.overflow;
        if let Some((mono, p)) = &self.prev {
            if s.mono_ns > *mono {
                let dt = (s.mono_ns - mono) as f64 / 1e9;
                let (rates, _) = crate::model::drop_rates(d, p, dt);
                for (iface, by_reason) in rates {
                    for (reason, r) in by_reason {
                        let row = self.rows.entry((iface.clone(), reason)).or_insert(Row {
                            first_ns: s.ts_unix_ns,
                            ..Default::default()
                        });
                        if s.ts_unix_ns <= incident_ns {
                            row.before += r * dt;
                        } else {
                            row.after += r * dt;
                        }
                        row.peak_per_s = row.peak_per_s.max(r);
                    }
                }
            }
        }
        self.prev = Some((s.mono_ns, d.clone()));
    }

    pub fn text(&self, incident_ns: i64) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "Kernel drop reasons (skb:kfree_skb, counted in-kernel by hvflight's eBPF program)\n\
             per interface of the watched namespace, over the bundle's window; \"before\" and\n\
             \"after\" are relative to the incident at {}.\n",
            crate::clock::format_rfc3339(incident_ns)
        );
        if self.samples_with == 0 {
            let _ = writeln!(
                o,
                "not recorded: {}",
                self.last_failure
                    .as_deref()
                    .unwrap_or("no sample in the window has a drops section")
            );
            return o;
        }
        if self.samples_without > 0 {
            let _ = writeln!(
                o,
                "({} of {} samples without the section{})\n",
                self.samples_without,
                self.samples_with + self.samples_without,
                self.last_failure
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
        if self.rows.is_empty() {
            let _ = writeln!(o, "no drops counted in the window");
        } else {
            let _ = writeln!(
                o,
                "{:<16} {:<28} {:>10} {:>10} {:>9} {:>11}",
                "interface", "reason", "before", "after", "peak/s", "first (s)"
            );
            let mut rows: Vec<(&(String, String), &Row)> = self.rows.iter().collect();
            rows.sort_by(|a, b| (b.1.before + b.1.after).total_cmp(&(a.1.before + a.1.after)));
            for ((iface, reason), r) in rows {
                let _ = writeln!(
                    o,
                    "{:<16} {:<28} {:>10.0} {:>10.0} {:>9.1} {:>+11.1}",
                    if iface.is_empty() {
                        "(no device)"
                    } else {
                        iface
                    },
                    reason,
                    r.before,
                    r.after,
                    r.peak_per_s,
                    (r.first_ns - incident_ns) as f64 / 1e9
                );
            }
        }
        if self.overflow > 0 {
            let _ = writeln!(
                o,
                "\n{} drops were not counted per key: the kernel map was full (collect.drops_max_entries)",
                self.overflow
            );
        }
        o
    }
}
