//! The `snmp` section: /proc/net/snmp, /proc/net/netstat and
//! /proc/net/snmp6 in one map keyed "Section.Field". All three are per
//! network namespace. snmp6 is absent when IPv6 is disabled, which is normal.

use std::collections::BTreeMap;

use super::{CollectError, Collector, Context};
use crate::kernel::snmp::{is_key, key, parse_paired_with, parse_snmp6_with};
use crate::sample::{Sample, Snmp};
use crate::source::procfs;

/// The ~400 counters' keys are the same every second: the collector keeps
/// them (in file order) and the map of a recycled sample, and overwrites
/// its values in place: a key string is built only when the files' names
/// change (a kernel upgrade, IPv6 switched on or off), a map only when no
/// recycled one holds exactly this read's keys.
#[derive(Default)]
pub struct SnmpCollector {
    /// "Section.Field" in the order the files list them, from the last read.
    keys: Vec<String>,
    /// This read's values, in the order of `keys`.
    vals: Vec<i64>,
    /// For the map's entries in key order, the index into `keys`/`vals`
    /// (empty when the files name a counter twice: then no map is reused).
    order: Vec<usize>,
    /// A recycled sample's map.
    spare: Option<BTreeMap<String, i64>>,
    /// The files' text, its buffer kept between reads.
    text: String,
}

impl SnmpCollector {
    pub fn new() -> Self {
        SnmpCollector::default()
    }

    /// The map of this read's counters: the recycled one with its values
    /// overwritten when it holds exactly these keys, a new one otherwise.
    fn map(&mut self) -> BTreeMap<String, i64> {
        if let Some(mut m) = self.spare.take() {
            // `order` is from the read that built the map: stale once the
            // names changed, then it no longer matches `keys` in length.
            let same = !self.order.is_empty()
                && self.order.len() == self.keys.len()
                && m.len() == self.order.len()
                && m.keys().zip(&self.order).all(|(k, &i)| *k == self.keys[i]);
            if same {
                for (v, &i) in m.values_mut().zip(&self.order) {
                    *v = self.vals[i];
                }
                return m;
            }
        }
        let m: BTreeMap<String, i64> = self
            .keys
            .iter()
            .cloned()
            .zip(self.vals.iter().copied())
            .collect();
        self.order.clear();
        if m.len() == self.keys.len() {
            self.order.extend(0..self.keys.len());
            self.order.sort_by(|&a, &b| self.keys[a].cmp(&self.keys[b]));
        }
        m
    }
}

impl Collector for SnmpCollector {
    fn name(&self) -> &'static str {
        "snmp"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let root = &ctx.proc_root;
        let (keys, vals) = (&mut self.keys, &mut self.vals);
        vals.clear();
        let mut put = |section: Option<&str>, name: &str, v: i64| {
            let i = vals.len();
            match keys.get_mut(i) {
                Some(k) if is_key(k, section, name) => {}
                Some(old) => *old = key(section, name),
                None => keys.push(key(section, name)),
            }
            vals.push(v);
        };
        let text = &mut self.text;
        for rel in ["net/snmp", "net/netstat"] {
            procfs::read_required_into(root, rel, text)?;
            parse_paired_with(text, &mut put).map_err(|e| procfs::parse_err(root, rel, e))?;
        }
        if procfs::read_into(root, "net/snmp6", text)? {
            parse_snmp6_with(text, &mut put)
                .map_err(|e| procfs::parse_err(root, "net/snmp6", e))?;
        }
        let n = vals.len();
        keys.truncate(n);
        sample.snmp = Some(Snmp {
            counters: self.map(),
        });
        Ok(())
    }

    fn recycle(&mut self, old: &mut Sample) {
        if let Some(s) = old.snmp.take() {
            self.spare = Some(s.counters);
        }
    }
}
