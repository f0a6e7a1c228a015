//! Collectors for /proc-based sections: softnet, snmp, conntrack, system,
//! netfilter. Each is a few small file reads and a pure parse from
//! `kernel/`; a missing optional file (module not loaded, global-only file
//! in a child namespace) leaves a field empty rather than failing.

use std::collections::BTreeMap;

use procfs::{FromBufRead, FromRead, FromReadSI};

use super::{CollectError, Collector, Context};
use crate::kernel;
use crate::sample::proc::CpuTimes;
use crate::sample::{Conntrack, Netfilter, Sample, Snmp, System};
use crate::source::nfgen::NfGen;
use crate::source::procfs::{parse_err, read, read_optional, read_u64};

pub struct SoftnetCollector;

impl Collector for SoftnetCollector {
    fn name(&self) -> &'static str {
        "softnet"
    }
    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let rel = "net/softnet_stat";
        let t = read(&ctx.proc_root, rel)?;
        sample.softnet = Some(
            kernel::softnet::parse(&t)
                .map_err(|e| parse_err(&ctx.proc_root, rel, e.line, e.msg))?,
        );
        Ok(())
    }
}

pub struct SnmpCollector;

impl Collector for SnmpCollector {
    fn name(&self) -> &'static str {
        "snmp"
    }
    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let mut counters = BTreeMap::new();
        for rel in ["net/snmp", "net/netstat"] {
            let t = read(&ctx.proc_root, rel)?;
            kernel::snmp::parse_paired(&t, &mut counters)
                .map_err(|e| parse_err(&ctx.proc_root, rel, e.line, e.msg))?;
        }
        // IPv6 may be disabled: snmp6 is optional.
        if let Some(t) = read_optional(&ctx.proc_root, "net/snmp6")? {
            kernel::snmp::parse_snmp6(&t, &mut counters)
                .map_err(|e| parse_err(&ctx.proc_root, "net/snmp6", e.line, e.msg))?;
        }
        sample.snmp = Some(Snmp { counters });
        Ok(())
    }
}

pub struct ConntrackCollector;

impl Collector for ConntrackCollector {
    fn name(&self) -> &'static str {
        "conntrack"
    }
    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let root = &ctx.proc_root;
        let mut c = Conntrack {
            count: read_u64(root, "sys/net/netfilter/nf_conntrack_count")?,
            max: read_u64(root, "sys/net/netfilter/nf_conntrack_max")?,
            buckets: read_u64(root, "sys/net/netfilter/nf_conntrack_buckets")?,
            ..Default::default()
        };
        let rel = "net/stat/nf_conntrack";
        if let Some(t) = read_optional(root, rel)? {
            c.stats =
                kernel::stat_table::parse(&t).map_err(|e| parse_err(root, rel, e.line, e.msg))?;
        }
        sample.conntrack = Some(c);
        Ok(())
    }
}

pub struct SystemCollector;

fn open(root: &std::path::Path, rel: &str) -> Result<std::fs::File, CollectError> {
    let p = root.join(rel);
    std::fs::File::open(&p).map_err(|e| CollectError::io(p.display().to_string(), e))
}

fn procfs_err(root: &std::path::Path, rel: &str, e: impl std::fmt::Display) -> CollectError {
    parse_err(root, rel, 0, e.to_string())
}

impl Collector for SystemCollector {
    fn name(&self) -> &'static str {
        "system"
    }
    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let root = &ctx.proc_root;
        // Explicit, from sysconf: procfs's own lookup reads the aux vector
        // through rustix, which crashes under valgrind (our profiler).
        // SAFETY: sysconf with valid names has no preconditions.
        let (tps, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let si = procfs::ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: tps.max(1) as u64,
            page_size: page.max(1) as u64,
            is_little_endian: cfg!(target_endian = "little"),
        };
        let stat = procfs::KernelStats::from_read(open(root, "stat")?, &si)
            .map_err(|e| procfs_err(root, "stat", e))?;
        let t = &stat.total;
        let mut s = System {
            cpu: CpuTimes {
                user: t.user,
                nice: t.nice,
                system: t.system,
                idle: t.idle,
                iowait: t.iowait.unwrap_or(0),
                irq: t.irq.unwrap_or(0),
                softirq: t.softirq.unwrap_or(0),
                steal: t.steal.unwrap_or(0),
            },
            ncpu: stat.cpu_time.len() as u32,
            procs_running: stat.procs_running.unwrap_or(0) as u64,
            ..Default::default()
        };
        let mem = procfs::Meminfo::from_buf_read(std::io::BufReader::new(open(root, "meminfo")?))
            .map_err(|e| procfs_err(root, "meminfo", e))?;
        s.mem_total_kb = mem.mem_total / 1024;
        s.mem_available_kb = mem.mem_available.unwrap_or(mem.mem_free) / 1024;
        let load = procfs::LoadAverage::from_read(open(root, "loadavg")?)
            .map_err(|e| procfs_err(root, "loadavg", e))?;
        s.load1 = load.one as f64;
        // PSI may be disabled (psi=0 on the kernel command line): optional.
        if let Ok(f) = open(root, "pressure/cpu") {
            if let Ok(p) = procfs::CpuPressure::from_buf_read(std::io::BufReader::new(f)) {
                s.psi.insert("cpu_some_us".into(), p.some.total);
            }
        }
        if let Ok(f) = open(root, "pressure/memory") {
            if let Ok(p) = procfs::MemoryPressure::from_buf_read(std::io::BufReader::new(f)) {
                s.psi.insert("memory_some_us".into(), p.some.total);
                s.psi.insert("memory_full_us".into(), p.full.total);
            }
        }
        if let Ok(f) = open(root, "pressure/io") {
            if let Ok(p) = procfs::IoPressure::from_buf_read(std::io::BufReader::new(f)) {
                s.psi.insert("io_some_us".into(), p.some.total);
                s.psi.insert("io_full_us".into(), p.full.total);
            }
        }
        let sirq = read(root, "softirqs")?;
        let mut sirq = kernel::softirqs::parse_softirqs(&sirq)
            .map_err(|(l, m)| parse_err(root, "softirqs", l, m))?;
        s.softirq_net_rx = sirq.remove("NET_RX").unwrap_or_default();
        s.softirq_net_tx = sirq.remove("NET_TX").unwrap_or_default();
        if let Some(b) = read_optional(root, "buddyinfo")? {
            s.buddy_free = kernel::softirqs::parse_buddyinfo(&b)
                .map_err(|(l, m)| parse_err(root, "buddyinfo", l, m))?;
        }
        sample.system = Some(s);
        Ok(())
    }
}

pub struct NetfilterCollector {
    nfgen: Option<NfGen>,
}

impl NetfilterCollector {
    pub fn new() -> Self {
        NetfilterCollector { nfgen: None }
    }
}

impl Default for NetfilterCollector {
    fn default() -> Self {
        Self::new()
    }
}

fn flag(root: &std::path::Path, rel: &str) -> Result<Option<bool>, CollectError> {
    Ok(read_u64(root, rel)?.map(|v| v != 0))
}

impl Collector for NetfilterCollector {
    fn name(&self) -> &'static str {
        "netfilter"
    }
    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let root = &ctx.proc_root;
        let mut n = Netfilter {
            bridge_nf_call_iptables: flag(root, "sys/net/bridge/bridge-nf-call-iptables")?,
            bridge_nf_call_ip6tables: flag(root, "sys/net/bridge/bridge-nf-call-ip6tables")?,
            bridge_nf_call_arptables: flag(root, "sys/net/bridge/bridge-nf-call-arptables")?,
            ..Default::default()
        };
        if let Some(t) = read_optional(root, "net/ip_tables_names")? {
            n.legacy_tables = t
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
        }
        if self.nfgen.is_none() {
            self.nfgen = Some(NfGen::new().map_err(|e| CollectError::Netlink {
                what: "nfnetlink".into(),
                msg: e.to_string(),
            })?);
        }
        let g = self.nfgen.as_mut().expect("just set");
        match g.genid() {
            Ok(id) => n.nft_genid = id,
            Err(e) => {
                self.nfgen = None;
                return Err(CollectError::Netlink {
                    what: "NFT_MSG_GETGEN".into(),
                    msg: e.to_string(),
                });
            }
        }
        sample.netfilter = Some(n);
        Ok(())
    }
}
