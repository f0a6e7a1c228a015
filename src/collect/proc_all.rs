//! The /proc- and sysctl-based collectors, in sampling order, for the
//! sampler to take as a group. Each is cheap (a few small file reads; the
//! netfilter one adds one netlink round trip) and independent of the
//! netlink collectors, so they may run in any position after `links`.

use super::conntrack::ConntrackCollector;
use super::netfilter::NetfilterCollector;
use super::snmp::SnmpCollector;
use super::softnet::SoftnetCollector;
use super::system::SystemCollector;
use super::Collector;

/// Their `Collector::name()`s, the names `collect.disabled` uses.
pub const PROC_COLLECTORS: [&str; 5] = ["conntrack", "softnet", "snmp", "system", "netfilter"];

pub fn proc_collectors() -> Vec<Box<dyn Collector>> {
    proc_collectors_where(|_| true)
}

/// Only those whose name `on` accepts (disabled ones are not even built).
pub fn proc_collectors_where(on: impl Fn(&str) -> bool) -> Vec<Box<dyn Collector>> {
    let mut v: Vec<Box<dyn Collector>> = Vec::new();
    for name in PROC_COLLECTORS {
        if !on(name) {
            continue;
        }
        v.push(match name {
            "conntrack" => Box::new(ConntrackCollector),
            "softnet" => Box::new(SoftnetCollector),
            "snmp" => Box::new(SnmpCollector::new()),
            "system" => Box::new(SystemCollector),
            _ => Box::new(NetfilterCollector::new()),
        });
    }
    v
}
