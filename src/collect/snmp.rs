//! The `snmp` section: /proc/net/snmp, /proc/net/netstat and
//! /proc/net/snmp6 in one map keyed "Section.Field". All three are per
//! network namespace. snmp6 is absent when IPv6 is disabled, which is normal.

use std::collections::BTreeMap;

use super::{CollectError, Collector, Context};
use crate::kernel::snmp::{parse_paired, parse_snmp6};
use crate::sample::{Sample, Snmp};
use crate::source::procfs;

pub struct SnmpCollector;

impl Collector for SnmpCollector {
    fn name(&self) -> &'static str {
        "snmp"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let root = &ctx.proc_root;
        let mut counters: Vec<(String, i64)> = Vec::with_capacity(512);
        let mut text = String::with_capacity(8192);
        for rel in ["net/snmp", "net/netstat"] {
            procfs::read_required_into(root, rel, &mut text)?;
            parse_paired(&text, &mut counters).map_err(|e| procfs::parse_err(root, rel, e))?;
        }
        if procfs::read_into(root, "net/snmp6", &mut text)? {
            parse_snmp6(&text, &mut counters)
                .map_err(|e| procfs::parse_err(root, "net/snmp6", e))?;
        }
        sample.snmp = Some(Snmp {
            counters: BTreeMap::from_iter(counters),
        });
        Ok(())
    }
}
