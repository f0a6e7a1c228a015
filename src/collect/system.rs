//! The `system` section: CPU time (/proc/stat), memory (/proc/meminfo),
//! load (/proc/loadavg), pressure stall totals (/proc/pressure/*), NET_RX /
//! NET_TX softirqs per CPU (/proc/softirqs) and free pages per order
//! (/proc/buddyinfo). None of these depend on the network namespace.
//!
//! stat, meminfo, loadavg and pressure are parsed by the procfs crate
//! (procfs-core's `FromBufRead` types over text we read from our own root,
//! so the root stays injectable); softirqs and buddyinfo by our own parsers
//! (procfs has none). PSI and buddyinfo are optional: PSI can be off
//! (psi=0) and some kernels/containers lack /proc/buddyinfo.

use std::sync::OnceLock;

use ::procfs::{
    CpuPressure, ExplicitSystemInfo, FromBufRead, FromBufReadSI, IoPressure, KernelStats,
    LoadAverage, Meminfo, MemoryPressure, ProcResult,
};

use super::{CollectError, Collector, Context};
use crate::kernel;
use crate::kernel::procfs_lines::{first_bad_line, guard, Shape};
use crate::sample::proc::CpuTimes;
use crate::sample::{Sample, System};
use crate::source::procfs;

pub struct SystemCollector;

/// Clock ticks and page size from sysconf, once. Explicit because procfs's
/// own lookup reads the aux vector through rustix, which crashes under
/// valgrind (our profiler). We store raw ticks; procfs only needs the
/// rate for its *_ms helpers.
fn system_info() -> &'static ExplicitSystemInfo {
    static SI: OnceLock<ExplicitSystemInfo> = OnceLock::new();
    SI.get_or_init(|| {
        // SAFETY: sysconf with valid names has no preconditions.
        let (tps, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: tps.max(1) as u64,
            page_size: page.max(1) as u64,
            is_little_endian: cfg!(target_endian = "little"),
        }
    })
}

/// Hands `text` (the content of `root/rel`) to a procfs parser: inputs that
/// would panic inside procfs are refused first, a panic that slips through
/// is caught, and a procfs error is turned into one that names the line.
fn with_procfs<T>(
    ctx: &Context,
    rel: &str,
    shape: Shape,
    text: &str,
    parse: impl FnOnce(&[u8]) -> ProcResult<T>,
) -> Result<T, CollectError> {
    let err = |e| procfs::parse_err(&ctx.proc_root, rel, e);
    guard(shape, text).map_err(err)?;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(text.as_bytes()))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(err(first_bad_line(shape, text, &e.to_string()))),
        Err(_) => Err(err(first_bad_line(shape, text, "parser panicked"))),
    }
}

fn required(ctx: &Context, rel: &str, buf: &mut String) -> Result<(), CollectError> {
    procfs::read_required_into(&ctx.proc_root, rel, buf)
}

impl Collector for SystemCollector {
    fn name(&self) -> &'static str {
        "system"
    }

    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        let mut buf = String::with_capacity(4096);

        required(ctx, "stat", &mut buf)?;
        let stat = with_procfs(ctx, "stat", Shape::Stat, &buf, |b| {
            KernelStats::from_buf_read(b, system_info())
        })?;
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

        required(ctx, "meminfo", &mut buf)?;
        let mem = with_procfs(ctx, "meminfo", Shape::Meminfo, &buf, |b| {
            Meminfo::from_buf_read(b)
        })?;
        // procfs converts "kB" to bytes.
        s.mem_total_kb = mem.mem_total / 1024;
        s.mem_available_kb = mem.mem_available.unwrap_or(mem.mem_free) / 1024;

        required(ctx, "loadavg", &mut buf)?;
        let load = with_procfs(ctx, "loadavg", Shape::Loadavg, &buf, |b| {
            <LoadAverage as ::procfs::FromRead>::from_read(b)
        })?;
        s.load1 = load.one as f64;

        // "total" is cumulative stall time in µs; the model derives rates.
        if procfs::read_into(&ctx.proc_root, "pressure/cpu", &mut buf)? {
            let p = with_procfs(ctx, "pressure/cpu", Shape::Pressure, &buf, |b| {
                CpuPressure::from_buf_read(b)
            })?;
            s.psi.insert("cpu_some_us".into(), p.some.total);
        }
        if procfs::read_into(&ctx.proc_root, "pressure/memory", &mut buf)? {
            let p = with_procfs(ctx, "pressure/memory", Shape::Pressure, &buf, |b| {
                MemoryPressure::from_buf_read(b)
            })?;
            s.psi.insert("memory_some_us".into(), p.some.total);
            s.psi.insert("memory_full_us".into(), p.full.total);
        }
        if procfs::read_into(&ctx.proc_root, "pressure/io", &mut buf)? {
            let p = with_procfs(ctx, "pressure/io", Shape::Pressure, &buf, |b| {
                IoPressure::from_buf_read(b)
            })?;
            s.psi.insert("io_some_us".into(), p.some.total);
            s.psi.insert("io_full_us".into(), p.full.total);
        }

        required(ctx, "softirqs", &mut buf)?;
        let mut sirq = kernel::softirqs::parse(&buf)
            .map_err(|e| procfs::parse_err(&ctx.proc_root, "softirqs", e))?;
        s.softirq_net_rx = sirq.remove("NET_RX").unwrap_or_default();
        s.softirq_net_tx = sirq.remove("NET_TX").unwrap_or_default();

        if procfs::read_into(&ctx.proc_root, "buddyinfo", &mut buf)? {
            s.buddy_free = kernel::buddyinfo::parse(&buf)
                .map_err(|e| procfs::parse_err(&ctx.proc_root, "buddyinfo", e))?;
        }
        sample.system = Some(s);
        Ok(())
    }
}
