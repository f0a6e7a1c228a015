//! Store benchmark (run by `make bench`, not by `make test`: it measures,
//! it does not judge). Prints bytes per hour on disk for 50 and 500 vNICs at
//! 1 Hz against the same samples as JSON lines, the time to read a
//! 15-minute window, and the CPU time per written sample.
//!
//! `cargo test --release --test store_bench -- --ignored --nocapture`

use std::time::{Duration, Instant};

use hvflight::sample::{Bridge, BridgePort, FdbEntry, Link, LinkStats, Sample, Snmp};
use hvflight::store::rows::{Projection, Select};
use hvflight::store::{
    read_query, read_range, scan, scan_ref, scan_ref_stats, Query, ReadReport, Record, RecordRef,
    StoreWriter, WriterConfig,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Samples whose counters move like a busy host's: every vNIC passes a
/// random number of packets each second.
fn series(n: usize, count: usize) -> Vec<Sample> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut stats: Vec<LinkStats> = vec![LinkStats::default(); n + 2];
    let mut snmp: Vec<i64> = vec![0; 400];
    let t0 = 1_795_000_000i64;
    (0..count)
        .map(|k| {
            for s in stats.iter_mut() {
                let rx = rng.next() % 200;
                let tx = rng.next() % 200;
                s.rx_packets += rx;
                s.tx_packets += tx;
                s.rx_bytes += rx * (60 + rng.next() % 1400);
                s.tx_bytes += tx * (60 + rng.next() % 1400);
                if rng.next() % 50 == 0 {
                    s.rx_dropped += 1;
                }
            }
            for v in snmp.iter_mut() {
                *v += (rng.next() % 100) as i64;
            }
            let links: Vec<Link> = stats
                .iter()
                .enumerate()
                .map(|(i, st)| Link {
                    ifindex: i as u32 + 1,
                    name: if i == 0 {
                        "br0".into()
                    } else if i == 1 {
                        "bond0".into()
                    } else {
                        format!("tap{:08x}-{:02x}", i * 7919, i % 97)
                    },
                    kind: if i == 0 {
                        "bridge".into()
                    } else {
                        "tun".into()
                    },
                    master: if i > 0 { Some(1) } else { None },
                    mac: format!(
                        "fe:16:3e:{:02x}:{:02x}:{:02x}",
                        i >> 16,
                        (i >> 8) & 255,
                        i & 255
                    ),
                    mtu: 1500,
                    operstate: "up".into(),
                    admin_up: true,
                    carrier: Some(true),
                    carrier_changes: Some(2),
                    txqlen: Some(1000),
                    stats: *st,
                    ..Default::default()
                })
                .collect();
            let ports = links
                .iter()
                .skip(1)
                .map(|l| BridgePort {
                    ifindex: l.ifindex,
                    name: l.name.clone(),
                    state: 3,
                    learning: Some(true),
                    unicast_flood: Some(true),
                    cost: Some(2),
                    priority: Some(32),
                    ..Default::default()
                })
                .collect();
            let fdb = links
                .iter()
                .skip(2)
                .map(|l| FdbEntry {
                    mac: l.mac.replacen("fe", "fa", 1),
                    ifindex: l.ifindex,
                    port: l.name.clone(),
                    master: Some(1),
                    state: "dynamic".into(),
                    updated_s: Some((rng.next() % 300) as u32),
                    ..Default::default()
                })
                .collect();
            Sample {
                version: 1,
                seq: k as u64 + 1,
                ts_unix_ns: (t0 + k as i64) * 1_000_000_000 + (rng.next() % 1_000_000) as i64,
                mono_ns: k as u64 * 1_000_000_000,
                boot_ns: k as u64 * 1_000_000_000,
                host: "compute-017".into(),
                duration_us: 2000 + rng.next() % 500,
                links: Some(links),
                bridges: Some(vec![Bridge {
                    ifindex: 1,
                    name: "br0".into(),
                    stp_state: Some(0),
                    ports,
                    ..Default::default()
                }]),
                fdb: Some(fdb),
                snmp: Some(Snmp {
                    counters: snmp
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (format!("Section{}.Counter{i}", i / 40), *v))
                        .collect(),
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    Duration::from_micros(
        (ru.ru_utime.tv_sec * 1_000_000
            + ru.ru_utime.tv_usec
            + ru.ru_stime.tv_sec * 1_000_000
            + ru.ru_stime.tv_usec) as u64,
    )
}

/// CPU and wall time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (c0, t0) = (cpu_time(), Instant::now());
    let r = f();
    (r, cpu_time() - c0, t0.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

#[test]
#[ignore = "benchmark: run by make bench"]
fn store_bench() {
    println!(
        "{:>6} {:>12} {:>12} {:>7} {:>11} | 15-min read, ms CPU (wall): {:>15} {:>15} {:>15} {:>15}",
        "vNICs",
        "store MiB/h",
        "JSONL MiB/h",
        "ratio",
        "write/smpl",
        "read_range all",
        "stream all",
        "lent all",
        "--iface one"
    );
    for n in [50usize, 500] {
        let count = 900; // 15 minutes at 1 Hz
        let samples = series(n, count);
        let jsonl: usize = samples
            .iter()
            .map(|s| serde_json::to_vec(s).unwrap().len() + 1)
            .sum();
        let dir = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            dir: dir.path().to_path_buf(),
            host: "compute-017".into(),
            max_bytes: 1 << 34,
            max_age_s: 1 << 30,
            segment_bytes: 64 << 20,
            segment_max_age_s: 3600,
            sync_interval: Duration::from_secs(5),
            min_free_bytes: 0,
            zstd_level: 3,
        };
        let mut w = StoreWriter::open(cfg).unwrap();
        let c0 = cpu_time();
        for s in &samples {
            w.write_sample(s).unwrap();
        }
        let write_cpu = (cpu_time() - c0) / count as u32;
        drop(w);
        let disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        // Everything, as owned samples (what the bundle writer and the analyzer get).
        let ((recs, report), all_cpu, all_wall) =
            timed(|| read_range(dir.path(), i64::MIN, i64::MAX));
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(recs.len(), count);
        assert_eq!(
            recs.last(),
            Some(&Record::Sample(Box::new(samples[count - 1].clone())))
        );
        drop(recs);
        // Everything, one sample at a time (what `history` does).
        let (seen, stream_cpu, stream_wall) = timed(|| {
            let mut seen = 0;
            let mut report = ReadReport::default();
            scan(
                dir.path(),
                &Query::range(i64::MIN, i64::MAX),
                &mut report,
                &mut |r| {
                    seen += matches!(r, Record::Sample(_)) as usize;
                    true
                },
            );
            seen
        });
        assert_eq!(seen, count);
        // Everything lent (`scan_ref`, what `history` does): patched in place.
        let (lent, lent_cpu, lent_wall) = timed(|| {
            let (mut seen, mut last_seq) = (0, 0);
            let mut report = ReadReport::default();
            scan_ref(
                dir.path(),
                &Query::range(i64::MIN, i64::MAX),
                &mut report,
                &mut |r| {
                    if let RecordRef::Sample { sample, .. } = r {
                        seen += 1;
                        last_seq = sample.seq;
                    }
                    true
                },
            );
            (seen, last_seq)
        });
        assert_eq!(lent, (count, samples[count - 1].seq));
        let (patched, generic) = scan_ref_stats(dir.path(), &Query::range(i64::MIN, i64::MAX));
        // One interface (`history --iface X`): only its rows are materialized.
        let name = samples[0].links.as_ref().unwrap()[n / 2].name.clone();
        let mut q = Query::range(i64::MIN, i64::MAX);
        q.projection = Projection {
            fields: Some(["links".to_string()].into()),
            select: Some(Select {
                seq: "links".into(),
                field: "name".into(),
                values: [name.clone()].into(),
            }),
        };
        let (one, one_cpu, one_wall) = timed(|| read_query(dir.path(), &q).0);
        assert_eq!(one.len(), count);
        match &one[count - 1] {
            Record::Sample(s) => {
                assert_eq!(s.links.as_ref().unwrap().len(), 1);
                assert_eq!(s.link(&name), samples[count - 1].link(&name));
                assert!(s.fdb.is_none());
            }
            r => panic!("{r:?}"),
        }
        // The floor of any read that hands out owned samples: cloning them.
        let (clones, clone_cpu, _) = timed(|| {
            samples
                .iter()
                .map(|s| Box::new(s.clone()))
                .collect::<Vec<_>>()
        });
        drop(clones);
        let per_h = |b: u64| b as f64 * 3600.0 / count as f64 / (1 << 20) as f64;
        println!(
            "{n:>6} {:>12.1} {:>12.1} {:>6.1}x {:>8.3} ms | {:>30} {:>15} {:>15} {:>15}",
            per_h(disk),
            per_h(jsonl as u64),
            jsonl as f64 / disk as f64,
            write_cpu.as_secs_f64() * 1e3,
            format!("{} ({})", ms(all_cpu), ms(all_wall)),
            format!("{} ({})", ms(stream_cpu), ms(stream_wall)),
            format!("{} ({})", ms(lent_cpu), ms(lent_wall)),
            format!("{} ({})", ms(one_cpu), ms(one_wall)),
        );
        println!(
            "        ({:.2} GiB/day on disk, {} bytes per sample; cloning the {count} samples alone: {} ms CPU; lent: {patched} patched, {generic} decoded whole)",
            per_h(disk) * 24.0 / 1024.0,
            disk / count as u64,
            ms(clone_cpu)
        );
    }
}

/// For profiling (callgrind counts instructions, so the numbers hold on a
/// loaded machine): `PROFILE_DIR=/tmp/p PROFILE_VNICS=500 valgrind
/// --tool=callgrind target/release/deps/store_bench-… --ignored profile_write`,
/// then the same with `profile_read` on the store it left.
#[test]
#[ignore = "profiling helper"]
fn profile_write() {
    let dir = std::path::PathBuf::from(std::env::var("PROFILE_DIR").expect("PROFILE_DIR"));
    let n: usize = std::env::var("PROFILE_VNICS").map_or(500, |v| v.parse().unwrap());
    let count: usize = std::env::var("PROFILE_COUNT").map_or(120, |v| v.parse().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let samples = series(n, count);
    let mut w = StoreWriter::open(WriterConfig {
        dir,
        host: "compute-017".into(),
        max_bytes: 1 << 34,
        max_age_s: 1 << 30,
        segment_bytes: 64 << 20,
        segment_max_age_s: 3600,
        sync_interval: Duration::from_secs(5),
        min_free_bytes: 0,
        zstd_level: 3,
    })
    .unwrap();
    for s in &samples {
        w.write_sample(s).unwrap();
    }
}

#[test]
#[ignore = "profiling helper"]
fn profile_read() {
    let dir = std::path::PathBuf::from(std::env::var("PROFILE_DIR").expect("PROFILE_DIR"));
    let mut seen = 0;
    let mut report = ReadReport::default();
    let mut q = Query::range(i64::MIN, i64::MAX);
    if let Ok(name) = std::env::var("PROFILE_IFACE") {
        q.projection = Projection {
            fields: Some(["links".to_string()].into()),
            select: Some(Select {
                seq: "links".into(),
                field: "name".into(),
                values: [name].into(),
            }),
        };
    }
    if std::env::var_os("PROFILE_LENT").is_some() {
        scan_ref(&dir, &q, &mut report, &mut |r| {
            seen += matches!(r, RecordRef::Sample { sample, .. } if sample.links.as_ref().is_some_and(|l| !l.is_empty()))
                as usize;
            true
        });
    } else {
        scan(&dir, &q, &mut report, &mut |r| {
            seen += matches!(r, Record::Sample(s) if s.links.as_ref().is_some_and(|l| !l.is_empty()))
                as usize;
            true
        });
    }
    assert!(seen > 0 && report.warnings.is_empty());
}
