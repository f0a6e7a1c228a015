//! Store benchmark (run by `make bench`, not by `make test`: it measures,
//! it does not judge). Prints bytes per hour on disk for 50 and 500 vNICs at
//! 1 Hz against the same samples as JSON lines, the time to read a
//! 15-minute window, and the CPU time per written sample.
//!
//! `cargo test --release --test store_bench -- --ignored --nocapture`

use std::time::{Duration, Instant};

use hvflight::sample::{Bridge, BridgePort, FdbEntry, Link, LinkStats, Sample, Snmp};
use hvflight::store::{read_range, StoreWriter, WriterConfig};

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
                    stats: st.clone(),
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

#[test]
#[ignore = "benchmark: run by make bench"]
fn store_bench() {
    println!(
        "{:>6} {:>14} {:>14} {:>8} {:>16} {:>18}",
        "vNICs", "store MiB/h", "JSONL MiB/h", "ratio", "write CPU/sample", "read 15 min window"
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
        let t = Instant::now();
        let (recs, _) = read_range(dir.path(), i64::MIN, i64::MAX);
        let read = t.elapsed();
        assert_eq!(recs.len(), count);
        let per_h = |b: u64| b as f64 * 3600.0 / count as f64 / (1 << 20) as f64;
        println!(
            "{n:>6} {:>14.1} {:>14.1} {:>7.1}x {:>13.3} ms {:>15.1} ms",
            per_h(disk),
            per_h(jsonl as u64),
            jsonl as f64 / disk as f64,
            write_cpu.as_secs_f64() * 1e3,
            read.as_secs_f64() * 1e3
        );
        println!(
            "        ({:.2} GiB/day on disk)",
            per_h(disk) * 24.0 / 1024.0
        );
    }
}

#[test]
#[ignore = "experiment"]
fn exp_floor() {
    let samples = series(500, 100);
    let t = cpu_time();
    let mut v = Vec::new();
    for s in &samples {
        v.push(s.clone());
    }
    let c = cpu_time() - t;
    let t = cpu_time();
    drop(v);
    let d = cpu_time() - t;
    let js: Vec<Vec<u8>> = samples
        .iter()
        .map(|s| serde_json::to_vec(s).unwrap())
        .collect();
    let t = cpu_time();
    let mut v = Vec::new();
    for j in &js {
        v.push(serde_json::from_slice::<Sample>(j).unwrap());
    }
    let p = cpu_time() - t;
    let t = cpu_time();
    for s in &samples {
        let _ = serde_json::to_vec(s).unwrap();
    }
    let w = cpu_time() - t;
    println!(
        "per sample CPU: clone {:?} drop {:?} json parse {:?} json write {:?} json bytes {}",
        c / 100,
        d / 100,
        p / 100,
        w / 100,
        js[0].len()
    );
}
