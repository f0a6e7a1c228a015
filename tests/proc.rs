//! The /proc collectors against fake proc roots built from this machine's
//! captured files (tests/fixtures/proc, see PROVENANCE.md), and against a
//! real network namespace of their own (needs root).

use std::path::{Path, PathBuf};
use std::process::Command;

use hvflight::collect::conntrack::ConntrackCollector;
use hvflight::collect::neigh_limits::read_neigh_limits;
use hvflight::collect::netfilter::NetfilterCollector;
use hvflight::collect::proc_all::{proc_collectors, PROC_COLLECTORS};
use hvflight::collect::snmp::SnmpCollector;
use hvflight::collect::softnet::SoftnetCollector;
use hvflight::collect::system::SystemCollector;
use hvflight::collect::{CollectError, Collector, Context, Sampler};
use hvflight::sample::Sample;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc")
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A proc root in a temp dir: the host capture, or the host's global files
/// with a namespace's net/ and sys/net/ (what `ip netns exec` shows).
struct FakeProc {
    dir: tempfile::TempDir,
}

impl FakeProc {
    fn host() -> FakeProc {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixtures().join("host"), dir.path());
        FakeProc { dir }
    }

    fn netns() -> FakeProc {
        let f = FakeProc::host();
        std::fs::remove_dir_all(f.path("net")).unwrap();
        std::fs::remove_dir_all(f.path("sys")).unwrap();
        copy_tree(&fixtures().join("netns"), f.dir.path());
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ctx(&self) -> Context {
        Context {
            proc_root: self.dir.path().to_path_buf(),
            ..Default::default()
        }
    }

    /// Replaces `rel` with a file from tests/fixtures/proc/malformed.
    fn put_malformed(&self, rel: &str, fixture: &str) {
        std::fs::copy(fixtures().join("malformed").join(fixture), self.path(rel)).unwrap();
    }

    fn remove(&self, rel: &str) {
        let p = self.path(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }
}

fn collect(c: &mut dyn Collector, ctx: &Context) -> Result<Sample, CollectError> {
    let mut s = Sample::default();
    c.collect(ctx, &mut s)?;
    Ok(s)
}

fn text(rel: &str) -> String {
    std::fs::read_to_string(fixtures().join("host").join(rel)).unwrap()
}

fn number(rel: &str) -> u64 {
    text(rel).trim().parse().unwrap()
}

/// Field `n` (0-based, whitespace-split) of the line of `rel` starting with `prefix`.
fn field(rel: &str, prefix: &str, n: usize) -> String {
    text(rel)
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap()
        .split_whitespace()
        .nth(n)
        .unwrap()
        .to_string()
}

/// Section.name of a "Section: names" / "Section: values" file, found by hand.
fn paired(rel: &str, section: &str, name: &str) -> i64 {
    let t = text(rel);
    let mut lines = t.lines().filter(|l| l.starts_with(&format!("{section}:")));
    let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let values: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    values[names.iter().position(|n| *n == name).unwrap()]
        .parse()
        .unwrap()
}

#[test]
fn host_capture_values_match_the_files() {
    let f = FakeProc::host();
    let ctx = f.ctx();

    let s = collect(&mut SoftnetCollector, &ctx).unwrap();
    let rows = s.softnet.unwrap();
    assert_eq!(rows.len(), 2);
    let row1: Vec<String> = text("net/softnet_stat")
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    assert_eq!(rows[1].cpu, 1);
    assert_eq!(
        rows[1].processed,
        u64::from_str_radix(&row1[0], 16).unwrap()
    );
    assert_eq!(
        rows[1].time_squeeze,
        u64::from_str_radix(&row1[2], 16).unwrap()
    );

    let c = collect(&mut ConntrackCollector, &ctx)
        .unwrap()
        .conntrack
        .unwrap();
    assert_eq!(
        c.count,
        Some(number("sys/net/netfilter/nf_conntrack_count"))
    );
    assert_eq!(c.max, Some(number("sys/net/netfilter/nf_conntrack_max")));
    assert_eq!(
        c.buckets,
        Some(number("sys/net/netfilter/nf_conntrack_buckets"))
    );
    assert_eq!(c.stats.len(), 17, "{:?}", c.stats.keys());
    assert!(c.stats.contains_key("insert_failed") && c.stats.contains_key("early_drop"));

    let m = collect(&mut SnmpCollector::new(), &ctx)
        .unwrap()
        .snmp
        .unwrap()
        .counters;
    assert_eq!(m["Ip.InReceives"], paired("net/snmp", "Ip", "InReceives"));
    assert_eq!(
        m["TcpExt.IPReversePathFilter"],
        paired("net/netstat", "TcpExt", "IPReversePathFilter")
    );
    assert_eq!(m["Tcp.MaxConn"], -1);
    assert!(m.contains_key("TcpExt.TCPBacklogDrop") && m.contains_key("Ip6.InDiscards"));
    assert_eq!(
        m["Ip6.InReceives"].to_string(),
        field("net/snmp6", "Ip6InReceives", 1)
    );

    let sys = collect(&mut SystemCollector, &ctx).unwrap().system.unwrap();
    assert_eq!(sys.cpu.user.to_string(), field("stat", "cpu ", 1));
    assert_eq!(sys.cpu.softirq.to_string(), field("stat", "cpu ", 7));
    assert_eq!(sys.ncpu, 2);
    assert_eq!(
        sys.mem_total_kb.to_string(),
        field("meminfo", "MemTotal:", 1)
    );
    assert_eq!(
        sys.mem_available_kb.to_string(),
        field("meminfo", "MemAvailable:", 1)
    );
    assert_eq!(
        sys.load1,
        field("loadavg", "", 0).parse::<f32>().unwrap() as f64
    );
    assert_eq!(
        sys.procs_running.to_string(),
        field("stat", "procs_running", 1)
    );
    assert_eq!(
        format!("total={}", sys.psi["cpu_some_us"]),
        field("pressure/cpu", "some", 4)
    );
    assert_eq!(
        format!("total={}", sys.psi["memory_full_us"]),
        field("pressure/memory", "full", 4)
    );
    assert_eq!(sys.psi.len(), 5);
    assert_eq!(sys.softirq_net_rx.len(), 2);
    assert_eq!(
        sys.softirq_net_rx[1].to_string(),
        field("softirqs", "NET_RX:", 2)
    );
    assert_eq!(
        sys.softirq_net_tx[0].to_string(),
        field("softirqs", "NET_TX:", 1)
    );
    assert_eq!(sys.buddy_free.len(), 11);
    let order10: u64 = text("buddyinfo")
        .lines()
        .map(|l| {
            l.split_whitespace()
                .nth(14)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(sys.buddy_free[10], order10);

    // bridge-nf-call-* and the legacy table lists come from the files; the
    // genid comes from the kernel (this process's namespace), not the root.
    let n = collect(&mut NetfilterCollector::new(), &ctx)
        .unwrap()
        .netfilter
        .unwrap();
    assert_eq!(
        n.bridge_nf_call_iptables,
        Some(number("sys/net/bridge/bridge-nf-call-iptables") != 0)
    );
    assert_eq!(
        n.bridge_nf_call_arptables,
        Some(number("sys/net/bridge/bridge-nf-call-arptables") != 0)
    );
    assert!(n.legacy_tables.is_empty() && n.legacy_tables6.is_empty());
    assert!(n.nft_genid.is_some(), "this kernel has nf_tables");

    let l = read_neigh_limits(&ctx).unwrap();
    let t = |fam: &str, i: u32| number(&format!("sys/net/{fam}/neigh/default/gc_thresh{i}")) as u32;
    assert_eq!(
        l.gc_thresh,
        Some([t("ipv4", 1), t("ipv4", 2), t("ipv4", 3)])
    );
    assert_eq!(
        l.gc_thresh6,
        Some([t("ipv6", 1), t("ipv6", 2), t("ipv6", 3)])
    );
    let arp = l.arp_cache.unwrap();
    let hex = |row: usize, col: usize| {
        u64::from_str_radix(
            text("net/stat/arp_cache")
                .lines()
                .nth(row)
                .unwrap()
                .split_whitespace()
                .nth(col)
                .unwrap(),
            16,
        )
        .unwrap()
    };
    assert_eq!(arp["lookups"], hex(1, 4) + hex(2, 4));
    assert_eq!(arp["entries"], hex(1, 0));
    assert!(l.ndisc_cache.unwrap().contains_key("forced_gc_runs"));
}

#[test]
fn in_a_child_namespace_root_only_files_are_none_not_failures() {
    let f = FakeProc::netns();
    let ctx = f.ctx();
    let l = read_neigh_limits(&ctx).unwrap();
    assert_eq!(
        l,
        Default::default(),
        "gc_thresh and arp/ndisc_cache exist only in the root namespace"
    );

    let c = collect(&mut ConntrackCollector, &ctx)
        .unwrap()
        .conntrack
        .unwrap();
    // The capture ran pings under a `ct state` rule: one tracked flow.
    assert_eq!(c.count, Some(1));
    assert_eq!(
        c.stats["entries"], 1,
        "a gauge on every CPU row, not summed to 2"
    );
    assert!(
        c.max.is_some(),
        "6.18 shows the global max read-only in a namespace"
    );

    let m = collect(&mut SnmpCollector::new(), &ctx)
        .unwrap()
        .snmp
        .unwrap()
        .counters;
    assert!(m["Icmp.OutEchos"] >= 3, "the namespace's own counters");
}

/// The snmp collector keeps last read's keys and fills a recycled sample's
/// map in place: whatever it is handed back (the sample before, an older
/// one with other keys, none), each read gives what a new collector gives.
#[test]
fn snmp_counters_recycled_in_place_match_a_fresh_read() {
    let f = FakeProc::host();
    let ctx = f.ctx();
    let fresh = |ctx: &Context| {
        collect(&mut SnmpCollector::new(), ctx)
            .unwrap()
            .snmp
            .unwrap()
            .counters
    };
    let mut c = SnmpCollector::new();
    let mut read = |old: Option<Sample>| {
        if let Some(mut old) = old {
            c.recycle(&mut old);
        }
        collect(&mut c, &ctx).unwrap()
    };
    let s1 = read(None);
    assert_eq!(s1.snmp.as_ref().unwrap().counters, fresh(&ctx));
    // Values move: the recycled map is overwritten.
    let snmp = std::fs::read_to_string(f.path("net/snmp")).unwrap();
    let moved = snmp.replacen("Ip: 2 64 ", "Ip: 1 64 ", 1);
    assert_ne!(
        moved, snmp,
        "the fixture's Ip line starts with Forwarding 2, DefaultTTL 64"
    );
    std::fs::write(f.path("net/snmp"), &moved).unwrap();
    let s2 = read(Some(s1.clone()));
    assert_eq!(s2.snmp.as_ref().unwrap().counters, fresh(&ctx));
    assert_eq!(s2.snmp.as_ref().unwrap().counters["Ip.Forwarding"], 1);
    // The names change (IPv6 gone): a new map, and then handed the old
    // sample whose map has the IPv6 keys, it is not reused for them.
    f.remove("net/snmp6");
    let s3 = read(Some(s2));
    assert_eq!(s3.snmp.as_ref().unwrap().counters, fresh(&ctx));
    let s4 = read(Some(s1));
    let m = &s4.snmp.as_ref().unwrap().counters;
    assert_eq!(*m, fresh(&ctx));
    assert!(!m.keys().any(|k| k.starts_with("Ip6.")));
}

#[test]
fn absent_optional_files_leave_fields_empty() {
    let f = FakeProc::host();
    for rel in [
        "pressure",
        "buddyinfo",
        "net/snmp6",
        "net/stat",
        "net/ip_tables_names",
        "net/ip6_tables_names",
        "sys/net/netfilter",
        "sys/net/bridge",
        "sys/net/ipv6",
    ] {
        f.remove(rel);
    }
    let ctx = f.ctx();
    let sys = collect(&mut SystemCollector, &ctx).unwrap().system.unwrap();
    assert!(sys.psi.is_empty() && sys.buddy_free.is_empty());
    assert!(sys.mem_total_kb > 0);
    let c = collect(&mut ConntrackCollector, &ctx)
        .unwrap()
        .conntrack
        .unwrap();
    assert_eq!((c.count, c.max, c.buckets), (None, None, None));
    assert!(c.stats.is_empty());
    let m = collect(&mut SnmpCollector::new(), &ctx)
        .unwrap()
        .snmp
        .unwrap()
        .counters;
    assert!(m.contains_key("Ip.InReceives") && !m.keys().any(|k| k.starts_with("Ip6.")));
    let n = collect(&mut NetfilterCollector::new(), &ctx)
        .unwrap()
        .netfilter
        .unwrap();
    assert_eq!(n.bridge_nf_call_iptables, None, "br_netfilter not loaded");
    let l = read_neigh_limits(&ctx).unwrap();
    assert!(l.gc_thresh.is_some() && l.gc_thresh6.is_none() && l.arp_cache.is_none());
}

#[test]
fn malformed_files_fail_with_path_and_line() {
    // (file replaced, malformed fixture, collector, expected "path:line")
    let cases: [(&str, &str, &str, usize); 13] = [
        ("net/softnet_stat", "softnet_stat-truncated", "softnet", 2),
        ("net/softnet_stat", "softnet_stat-not-hex", "softnet", 2),
        ("net/snmp", "snmp-truncated", "snmp", 11),
        ("net/netstat", "netstat-short-values", "snmp", 2),
        ("net/snmp6", "snmp6-bad-value", "snmp", 3),
        (
            "net/stat/nf_conntrack",
            "nf_conntrack-short-row",
            "conntrack",
            3,
        ),
        (
            "sys/net/netfilter/nf_conntrack_count",
            "sysctl-garbage",
            "conntrack",
            1,
        ),
        ("softirqs", "softirqs-truncated", "system", 5),
        ("buddyinfo", "buddyinfo-bad", "system", 2),
        ("pressure/cpu", "pressure-cpu-truncated", "system", 1),
        ("meminfo", "meminfo-bad", "system", 3),
        ("stat", "stat-bad", "system", 2),
        ("loadavg", "loadavg-empty", "system", 1),
    ];
    for (rel, fixture, collector, line) in cases {
        let f = FakeProc::host();
        f.put_malformed(rel, fixture);
        let mut c = proc_collectors()
            .into_iter()
            .find(|c| c.name() == collector)
            .unwrap();
        let e = collect(c.as_mut(), &f.ctx()).unwrap_err();
        let want = format!("{}:{line}:", f.path(rel).display());
        assert!(
            e.to_string().starts_with(&want),
            "{fixture}: {e} (want {want})"
        );
    }
    let f = FakeProc::host();
    f.put_malformed("net/stat/arp_cache", "nf_conntrack-short-row");
    let e = read_neigh_limits(&f.ctx()).unwrap_err();
    assert!(e.to_string().contains("net/stat/arp_cache:3:"), "{e}");
    let f = FakeProc::host();
    f.put_malformed("sys/net/ipv4/neigh/default/gc_thresh2", "sysctl-garbage");
    let e = read_neigh_limits(&f.ctx()).unwrap_err();
    assert!(e.to_string().contains("gc_thresh2:1:"), "{e}");
}

#[test]
fn the_snmp_truncation_line_is_the_last_names_line() {
    // Guards the 11 in the table above against a recapture with more sections.
    let t = std::fs::read_to_string(fixtures().join("malformed/snmp-truncated")).unwrap();
    assert_eq!(t.lines().count(), 11);
}

#[test]
fn a_missing_file_is_a_recorded_failure_and_the_sample_goes_on() {
    let f = FakeProc::host();
    f.remove("net/softnet_stat");
    f.remove("stat");
    let mut sampler = Sampler::new(f.ctx(), "test".into(), proc_collectors());
    assert_eq!(sampler.collector_names(), PROC_COLLECTORS);
    let s = sampler.sample();
    let softnet = s.failure("softnet").unwrap();
    assert!(
        softnet
            .error
            .contains(&f.path("net/softnet_stat").display().to_string()),
        "{}",
        softnet.error
    );
    assert!(s.failure("system").unwrap().error.contains("/stat:"));
    assert!(s.softnet.is_none() && s.system.is_none());
    assert!(s.snmp.is_some() && s.conntrack.is_some() && s.netfilter.is_some());
    assert_eq!(s.failures.len(), 2, "{:?}", s.failures);
    // A proc root that does not exist at all: every collector fails, none panics.
    let ctx = Context {
        proc_root: f.path("nowhere"),
        ..Default::default()
    };
    let s = Sampler::new(ctx, "test".into(), proc_collectors()).sample();
    let failed: Vec<&str> = s.failures.iter().map(|f| f.collector.as_str()).collect();
    assert_eq!(
        failed,
        ["softnet", "snmp", "system"],
        "the others have only optional files"
    );
}

/// A namespace of this test's own, deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("hvfp{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        Netns(name)
    }
    fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nft_genid_and_conntrack_count_follow_the_namespace_needs_root() {
    let ns = Netns::new();
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    let name = ns.0.clone();
    // setns() moves only the calling thread, so the collectors run on a
    // thread of their own; the nft and ping commands run through ip netns exec.
    let worker = std::thread::spawn(move || {
        hvflight::source::netns::enter_thread(&name).unwrap();
        // /proc/net follows the *process*; /proc/thread-self/net and
        // /proc/sys/net follow this thread. A proc root of symlinks makes
        // the collectors read this thread's namespace.
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/thread-self/net", root.path().join("net")).unwrap();
        std::os::unix::fs::symlink("/proc/sys", root.path().join("sys")).unwrap();
        let ctx = Context {
            proc_root: root.path().to_path_buf(),
            ..Default::default()
        };
        let ns = Netns(name);
        let mut nf = NetfilterCollector::new();
        let genid = |nf: &mut NetfilterCollector| {
            collect(nf, &ctx)
                .unwrap()
                .netfilter
                .unwrap()
                .nft_genid
                .expect("nf_tables answers in a namespace")
        };
        let g0 = genid(&mut nf);
        ns.exec(&["nft", "add", "table", "inet", "hvfp"]);
        let g1 = genid(&mut nf);
        assert_ne!(g0, g1, "a commit changes the generation");
        assert_eq!(genid(&mut nf), g1, "no commit, no change");

        let count = |ctx: &Context| {
            let c = collect(&mut ConntrackCollector, ctx)
                .unwrap()
                .conntrack
                .unwrap();
            (c.count.unwrap(), c.stats.get("entries").copied())
        };
        assert_eq!(
            count(&ctx),
            (0, Some(0)),
            "a fresh namespace tracks nothing"
        );
        ns.exec(&[
            "nft",
            "add chain inet hvfp out { type filter hook output priority 0; } ; add rule inet hvfp out ct state new counter accept",
        ]);
        assert_ne!(genid(&mut nf), g1);
        ns.exec(&["ping", "-q", "-c", "2", "-i", "0.2", "127.0.0.1"]);
        let (n, entries) = count(&ctx);
        assert!(n >= 1, "conntrack count after tracked pings: {n}");
        assert_eq!(entries, Some(n), "stat table's entries is the same gauge");
        std::mem::forget(ns); // the outer guard deletes it
    });
    if let Err(p) = worker.join() {
        drop(ns);
        std::panic::resume_unwind(p);
    }
}

#[test]
fn proc_collectors_where_builds_only_enabled_ones() {
    let v = hvflight::collect::proc_all::proc_collectors_where(|n| n != "netfilter" && n != "snmp");
    let names: Vec<&str> = v.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["conntrack", "softnet", "system"]);
}
