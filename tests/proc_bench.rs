//! CPU cost of each /proc collector: 1000 collects against the live /proc
//! (or `--proc-root DIR`), reported as µs of this thread's CPU time and of
//! wall time per collect. A benchmark, run by `make bench`, not by `make test`:
//! `cargo test --release --test proc_bench -- --ignored --nocapture`
//! (`HVFLIGHT_PROC_ROOT=DIR` for another /proc).

use std::time::Instant;

use hvflight::collect::neigh_limits::read_neigh_limits;
use hvflight::collect::proc_all::proc_collectors;
use hvflight::collect::Context;
use hvflight::sample::Sample;

const N: u32 = 1000;

fn thread_cpu_ns() -> u128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("clock");
    t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128
}

fn report(name: &str, mut f: impl FnMut()) {
    f(); // warm: opens sockets, faults in pages
    let (c0, w0) = (thread_cpu_ns(), Instant::now());
    for _ in 0..N {
        f();
    }
    let cpu_us = (thread_cpu_ns() - c0) as f64 / 1000.0 / N as f64;
    let wall_us = w0.elapsed().as_nanos() as f64 / 1000.0 / N as f64;
    println!("{name:<14} {cpu_us:>8.1} µs CPU {wall_us:>8.1} µs wall  per collect");
}

#[test]
#[ignore = "benchmark: run by make bench"]
fn proc_collect_cost() {
    let mut ctx = Context::default();
    if let Ok(root) = std::env::var("HVFLIGHT_PROC_ROOT") {
        ctx.proc_root = root.into();
    }
    let mut total = 0.0;
    let t0 = thread_cpu_ns();
    for mut c in proc_collectors() {
        let name = c.name();
        report(name, || {
            let mut s = Sample::default();
            if let Err(e) = c.collect(&ctx, &mut s) {
                eprintln!("{name}: {e}");
            }
        });
    }
    report("neigh_limits", || {
        if let Err(e) = read_neigh_limits(&ctx) {
            eprintln!("neigh_limits: {e}");
        }
    });
    total += (thread_cpu_ns() - t0) as f64 / 1000.0 / (N + 1) as f64;
    // The part of snmp's cost that is ours (parsing ~400 counters into the
    // map) rather than the kernel's (summing per-CPU MIBs to print them).
    let files: Vec<String> = ["net/snmp", "net/netstat", "net/snmp6"]
        .iter()
        .map(|r| std::fs::read_to_string(ctx.proc_root.join(r)).unwrap_or_default())
        .collect();
    report("snmp (parse)", || {
        let mut m = Vec::with_capacity(512);
        let _ = hvflight::kernel::snmp::parse_paired(&files[0], &mut m);
        let _ = hvflight::kernel::snmp::parse_paired(&files[1], &mut m);
        let _ = hvflight::kernel::snmp::parse_snmp6(&files[2], &mut m);
        std::hint::black_box(std::collections::BTreeMap::from_iter(m));
    });
    println!(
        "{:<14} {total:>8.1} µs CPU for one round of all of them",
        "all"
    );
}
