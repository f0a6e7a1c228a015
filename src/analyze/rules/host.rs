//! Catalogue group "host resources and kernel": F15 softnet backlog drops,
//! F21 atomic allocation failures, F23 CPU stalls, F28 wall-clock jumps.

use super::{finding, kmsg_evidence, re};
use crate::analyze::view::{counter_evidence, rise, View};
use crate::analyze::{Evidence, EvidenceKind, Finding};
use crate::sample::EventKind;

fn end(view: &View) -> f64 {
    view.samples
        .last()
        .map(|s| view.rel(s.ts_unix_ns))
        .unwrap_or(0.0)
        .max(1.0)
}

/// F15: packets dropped in the softnet backlog (NET_RX starved).
pub fn f15_softnet(view: &View, cnc: &mut Vec<String>) -> Option<Finding> {
    if !view.has(|s| s.softnet.is_some()) {
        cnc.push("no softnet_stat in the samples: backlog drops (F15) not checked".into());
        return None;
    }
    let end = end(view);
    let total = view.series(|s| {
        s.softnet
            .as_ref()
            .map(|v| v.iter().map(|c| c.dropped as f64).sum())
    });
    let d = rise(&total, -120.0, end);
    if d == 0.0 {
        return None;
    }
    let mut e = vec![counter_evidence(
        "softnet dropped",
        &total,
        -120.0,
        end,
        format!("{d:.0} packets dropped in the softnet backlog (all CPUs)"),
    )];
    let squeeze = view.series(|s| {
        s.softnet
            .as_ref()
            .map(|v| v.iter().map(|c| c.time_squeeze as f64).sum())
    });
    let sq = rise(&squeeze, -120.0, end);
    if sq > 0.0 {
        e.push(counter_evidence(
            "softnet time_squeeze",
            &squeeze,
            -120.0,
            end,
            format!("NET_RX ran out of budget {sq:.0} times"),
        ));
    }
    // One CPU taking all the drops: the NIC's IRQs land on one CPU.
    let ncpu = view
        .samples
        .last()
        .and_then(|s| s.softnet.as_ref())
        .map(|v| v.len())
        .unwrap_or(0);
    let mut per_cpu = Vec::new();
    for i in 0..ncpu {
        let s = view.series(|s| {
            s.softnet
                .as_ref()
                .and_then(|v| v.get(i))
                .map(|c| c.dropped as f64)
        });
        per_cpu.push(rise(&s, -120.0, end));
    }
    let max = per_cpu.iter().cloned().fold(0.0, f64::max);
    if ncpu > 1 && max >= d * 0.9 {
        let cpu = per_cpu.iter().position(|x| *x == max).unwrap_or(0);
        e.push(Evidence::state(0.0, format!("CPU {cpu} took {max:.0} of the {d:.0} drops: interrupts or RPS concentrated on one CPU")));
    }
    let conf = if d >= 1000.0 {
        0.6
    } else if d >= 100.0 {
        0.5
    } else {
        0.35
    };
    finding(
        "F15",
        "packets dropped in the softnet backlog: NET_RX processing is starved (partial loss that follows load)",
        conf,
        e,
        &[
            "/proc/interrupts in the bundle: NIC queue IRQs on one CPU? irqbalance, RPS/RFS",
            "net.core.netdev_max_backlog and netdev_budget",
        ],
        vec![],
    )
}

/// F21: atomic skb allocations fail (memory fragmentation).
pub fn f21_alloc_failures(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = kmsg_evidence(view, "F21", 4);
    let mut conf: f64 = if e.is_empty() { 0.0 } else { 0.7 };
    // The call trace that follows: an skb allocation on the receive path.
    let trace = re(
        r"(__napi_alloc_skb|__netdev_alloc_skb|__alloc_skb|page_frag_alloc|__netdev_alloc_frag|alloc_skb_with_frags)",
    );
    if let Some((t, line)) = super::kmsg_matching(view, &trace).next() {
        if conf > 0.0 {
            e.push(Evidence::kernel(t, line));
            conf = 0.85;
        }
    }
    // High orders empty in buddyinfo.
    let high = view.series(|s| {
        let b = &s.system.as_ref()?.buddy_free;
        (b.len() > 3).then(|| b[3..].iter().sum::<u64>() as f64)
    });
    if let (Some(first), Some(last)) = (high.first(), high.iter().rev().find(|p| p.0 <= end(view)))
    {
        if last.1 < first.1 * 0.1 || last.1 == 0.0 {
            e.push(Evidence {
                kind: EvidenceKind::Counter,
                series: Some("buddyinfo free blocks order ≥ 3".into()),
                before: Some(first.1),
                after: Some(last.1),
                t_before_rel_s: Some(first.0),
                ..Evidence::state(
                    last.0,
                    format!(
                        "free memory blocks of order ≥ 3: {:.0} → {:.0} (fragmented)",
                        first.1, last.1
                    ),
                )
            });
            conf = if conf > 0.0 { conf + 0.05 } else { 0.35 };
        }
    }
    if conf == 0.0 {
        return None;
    }
    for u in &view.uplinks {
        let s = view.link_counter(u, |x| x.rx_dropped);
        let d = rise(&s, -120.0, end(view));
        if d > 0.0 {
            e.push(counter_evidence(
                &format!("{u} rx_dropped"),
                &s,
                -120.0,
                end(view),
                format!("{u}: rx_dropped +{d:.0} (no buffers to receive into)"),
            ));
            conf += 0.03;
        }
    }
    finding(
        "F21",
        "atomic (GFP_ATOMIC) skb allocations fail: memory is fragmented, receive buffers cannot be refilled",
        conf.min(0.92),
        e,
        &[
            "/proc/buddyinfo and meminfo in the bundle; vm.min_free_kbytes; hugepages and THP compaction",
            "which driver allocates high-order pages (jumbo MTU, rx ring size)",
        ],
        vec![],
    )
}

/// F23: a CPU stalled (soft lockup, hung task, RCU stall); the agent's own gaps.
pub fn f23_stall(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = kmsg_evidence(view, "F23", 4);
    let mut conf: f64 = if e.is_empty() { 0.0 } else { 0.82 };
    // Gaps in the agent's own samples (monotonic), near the collapse.
    let iv = view.interval_s();
    let mut worst: Option<(f64, f64)> = None;
    for w in view.samples.windows(2) {
        let gap = w[1].mono_ns.saturating_sub(w[0].mono_ns) as f64 / 1e9;
        let t = view.rel(w[1].ts_unix_ns);
        if gap > (iv * 4.0).max(2.0)
            && (-300.0..=30.0).contains(&t)
            && worst.is_none_or(|x| gap > x.1)
        {
            worst = Some((t, gap));
        }
    }
    if let Some((t, gap)) = worst {
        e.push(Evidence::state(t, format!("the agent itself could not sample for {gap:.1} s (interval {iv:.1} s): the host stalled")));
        conf = if conf > 0.0 { conf + 0.08 } else { 0.5 };
    }
    let lag = view.series(|s| Some(s.lag_us as f64 / 1e6));
    if let Some(p) = lag
        .iter()
        .filter(|p| (-300.0..=30.0).contains(&p.0))
        .max_by(|a, b| a.1.total_cmp(&b.1))
    {
        if p.1 > (iv * 2.0).max(1.0) {
            e.push(Evidence::state(
                p.0,
                format!("a sample started {:.1} s late", p.1),
            ));
            conf = conf.max(0.45);
        }
    }
    if conf == 0.0 {
        return None;
    }
    finding(
        "F23",
        "a CPU stalled (soft lockup / hung task / RCU stall): NET_RX stops on it, the host stops forwarding",
        conf.min(0.93),
        e,
        &[
            "the full trace in deep/dmesg.txt: which function the stuck CPU was in (a driver, a spinlock in the bridge/netfilter path)",
            "kernel version and known fixes; watchdog_thresh; whether a kdump was taken",
        ],
        vec![],
    )
}

/// F28: the wall clock stepped (wall − monotonic jumped).
pub fn f28_clock_jump(view: &View, _cnc: &mut Vec<String>) -> Option<Finding> {
    let mut e = Vec::new();
    for w in view.samples.windows(2) {
        if w[0].boot_ns != 0 && w[1].boot_ns < w[0].boot_ns {
            continue; // a reboot, not a step
        }
        let off = |s: &crate::sample::Sample| s.ts_unix_ns - s.mono_ns as i64;
        let jump = (off(&w[1]) - off(&w[0])) as f64 / 1e9;
        let t = view.rel(w[1].ts_unix_ns);
        if jump.abs() > 1.0 && (-300.0..=30.0).contains(&t) {
            e.push(Evidence {
                series: Some("wall − monotonic clock".into()),
                before: Some(off(&w[0]) as f64 / 1e9),
                after: Some(off(&w[1]) as f64 / 1e9),
                t_before_rel_s: Some(view.rel(w[0].ts_unix_ns)),
                kind: EvidenceKind::Counter,
                ..Evidence::state(t, format!("the wall clock stepped {jump:+.3} s between two samples (monotonic time ran on)"))
            });
        }
    }
    for x in &view.events {
        if let EventKind::Agent { what, detail } = &x.kind {
            let t = view.rel(x.ts_unix_ns);
            if what == "clock_jump" && (-300.0..=30.0).contains(&t) {
                e.push(Evidence::event(t, format!("agent: {detail}")));
            }
        }
    }
    finding(
        "F28",
        "the wall clock jumped: time-based state (leases, certificates, conntrack and ARP timers in userspace daemons) broke at the step",
        0.8,
        e,
        &[
            "chrony/ntpd logs at that moment; the RTC; a VM-host clock sync",
            "times in this report after the step are in the new clock; relative times use the monotonic order",
        ],
        vec![],
    )
}
