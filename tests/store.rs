//! The flight-recorder store under the faults it exists to survive:
//! SIGKILL, torn writes, corrupt bytes, a full disk, clock steps — and the
//! format kept readable across versions.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hvflight::sample::{Event, EventKind, Link, LinkStats, Sample};
use hvflight::store::reader::read_segment;
use hvflight::store::writer::segments;
use hvflight::store::{read_range, ReadReport, Record, StoreWriter, WriterConfig};

fn cfg(dir: &Path) -> WriterConfig {
    WriterConfig {
        dir: dir.to_path_buf(),
        host: "node1".into(),
        max_bytes: 1 << 30,
        max_age_s: 48 * 3600,
        segment_bytes: 64 << 20,
        segment_max_age_s: 3600,
        sync_interval: Duration::from_millis(100),
        min_free_bytes: 0,
        zstd_level: 3,
    }
}

/// A sample like a 1 Hz agent's on a host with `n` vNICs.
fn sample(seq: u64, n: usize, t_s: i64) -> Sample {
    let links = (0..n)
        .map(|i| Link {
            ifindex: i as u32 + 2,
            name: format!("vnet{i}"),
            kind: "tun".into(),
            master: Some(1),
            mac: format!("fe:54:00:00:{:02x}:{:02x}", i / 256, i % 256),
            mtu: 1500,
            operstate: "up".into(),
            admin_up: true,
            carrier: Some(true),
            carrier_changes: Some(2),
            txqlen: Some(1000),
            stats: LinkStats {
                rx_packets: seq * 10 + i as u64,
                tx_packets: seq * 12 + i as u64,
                rx_bytes: seq * 1200 + i as u64 * 7,
                tx_bytes: seq * 1500 + i as u64 * 3,
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    Sample {
        version: 1,
        seq,
        ts_unix_ns: t_s * 1_000_000_000,
        mono_ns: seq * 1_000_000_000,
        boot_ns: seq * 1_000_000_000,
        host: "node1".into(),
        links: Some(links),
        ..Default::default()
    }
}

fn samples_of(records: &[Record]) -> Vec<&Sample> {
    records
        .iter()
        .filter_map(|r| {
            if let Record::Sample(s) = r {
                Some(s.as_ref())
            } else {
                None
            }
        })
        .collect()
}

const T0: i64 = 1_795_000_000;

#[test]
fn round_trip_with_events_and_keyframes() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 0..150 {
        let s = sample(i, 20, T0 + i as i64);
        w.write_sample(&s).unwrap();
        let ev = Event {
            ts_unix_ns: s.ts_unix_ns + 1,
            mono_ns: s.mono_ns + 1,
            kind: EventKind::Agent {
                what: format!("e{i}"),
                detail: String::new(),
            },
        };
        w.write_events(&[ev]).unwrap();
    }
    drop(w);
    let (recs, report) = read_range(dir.path(), i64::MIN, i64::MAX);
    assert!(
        report.warnings.is_empty() && report.torn_tails.is_empty(),
        "{report:?}"
    );
    let s = samples_of(&recs);
    assert_eq!(s.len(), 150);
    assert_eq!(*s[149], sample(149, 20, T0 + 149));
    assert_eq!(
        recs.iter()
            .filter(|r| matches!(r, Record::Events(_)))
            .count(),
        150
    );
    // A range in the middle.
    let (recs, _) = read_range(
        dir.path(),
        (T0 + 100) * 1_000_000_000,
        (T0 + 109) * 1_000_000_000,
    );
    let s = samples_of(&recs);
    assert_eq!(
        s.iter().map(|s| s.seq).collect::<Vec<_>>(),
        (100..110).collect::<Vec<_>>()
    );
}

fn write_store(dir: &Path, n: u64) -> PathBuf {
    let mut w = StoreWriter::open(cfg(dir)).unwrap();
    for i in 0..n {
        w.write_sample(&sample(i, 10, T0 + i as i64)).unwrap();
    }
    drop(w);
    segments(dir).remove(0)
}

#[test]
fn torn_writes_recover_every_complete_record() {
    use hvflight::store::format::{decode_frame_header, decode_header, FRAME_HEADER_LEN};
    let dir = tempfile::tempdir().unwrap();
    let seg = write_store(dir.path(), 130);
    let full = std::fs::read(&seg).unwrap();
    // Where each record ends, from the intact file.
    let (_, mut off) = decode_header(&full).unwrap();
    let header_end = off;
    let mut ends = Vec::new();
    while let Some(h) = decode_frame_header(&full[off..]) {
        off += FRAME_HEADER_LEN + h.len;
        ends.push(off);
    }
    assert_eq!(ends.len(), 130);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..60 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let cut = header_end + (rng % (full.len() - header_end) as u64) as usize;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(seg.file_name().unwrap());
        std::fs::write(&p, &full[..cut]).unwrap();
        let mut out = Vec::new();
        let mut report = ReadReport::default();
        read_segment(&p, i64::MIN, i64::MAX, &mut out, &mut report);
        assert!(
            report.warnings.is_empty(),
            "cut {cut}: {:?}",
            report.warnings
        );
        let complete = ends.iter().filter(|e| **e <= cut).count();
        let got: Vec<u64> = samples_of(&out).iter().map(|s| s.seq).collect();
        assert_eq!(got, (0..complete as u64).collect::<Vec<_>>(), "cut {cut}");
        let at_boundary = cut == header_end || ends.contains(&cut);
        assert_eq!(
            report.torn_tails.len(),
            usize::from(!at_boundary),
            "cut {cut}: torn tail {:?}",
            report.torn_tails
        );
        if !at_boundary {
            assert_eq!(
                report.torn_tails[0].1 as usize,
                ends.iter()
                    .rev()
                    .find(|e| **e <= cut)
                    .copied()
                    .unwrap_or(header_end)
            );
        }
    }
}

#[test]
fn corrupt_bytes_skip_one_record_with_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_store(dir.path(), 50);
    let mut b = std::fs::read(&seg).unwrap();
    // Damage the middle of the 10th sample record (a delta, not the keyframe).
    let magic = 0x5246_5648u32.to_le_bytes();
    let starts: Vec<usize> = b
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == magic)
        .map(|(i, _)| i)
        .collect();
    let victim = starts[10] + 40;
    b[victim] ^= 0xff;
    std::fs::write(&seg, &b).unwrap();
    let (recs, report) = read_range(dir.path(), i64::MIN, i64::MAX);
    let seqs: Vec<u64> = samples_of(&recs).iter().map(|s| s.seq).collect();
    assert_eq!(seqs.len(), 49, "{:?}", report.warnings);
    assert!(!seqs.contains(&10));
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let w = &report.warnings[0];
    assert!(
        w.contains(seg.file_name().unwrap().to_str().unwrap())
            && w.contains(&format!("offset {}", starts[10])),
        "{w}"
    );
}

/// The reader walks a segment a piece at a time (256 KiB), not whole:
/// records straddle pieces, damage and a torn tail far into the file are
/// found as they were with a whole read, and `scan_ref` (a bundle's
/// history) lends the same samples.
#[test]
fn a_segment_of_many_read_pieces_reads_back_whole_and_finds_damage_past_the_first() {
    use hvflight::store::format::{decode_frame_header, decode_header, FRAME_HEADER_LEN};
    let dir = tempfile::tempdir().unwrap();
    let n = 200u64;
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    // Counters that do not compress away: records of ~10 KB.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        let mut s = sample(i, 400, T0 + i as i64);
        for l in s.links.as_mut().unwrap() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            l.stats.rx_bytes = rng >> 8;
            l.stats.tx_bytes = rng.rotate_left(17) >> 8;
        }
        w.write_sample(&s).unwrap();
    }
    drop(w);
    let seg = segments(dir.path()).remove(0);
    let full = std::fs::read(&seg).unwrap();
    assert!(
        full.len() > 4 * (256 << 10),
        "segment of {} bytes",
        full.len()
    );
    let (_, mut off) = decode_header(&full).unwrap();
    let mut starts = Vec::new();
    while let Some(h) = decode_frame_header(&full[off..]) {
        starts.push(off);
        off += FRAME_HEADER_LEN + h.len;
    }
    assert_eq!(starts.len() as u64, n);
    let all: Vec<u64> = (0..n).collect();

    // Whole, both ways.
    let (recs, report) = read_range(dir.path(), i64::MIN, i64::MAX);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let seqs: Vec<u64> = samples_of(&recs).iter().map(|s| s.seq).collect();
    assert_eq!(seqs, all);
    let mut lent = Vec::new();
    hvflight::store::scan_ref(
        dir.path(),
        &hvflight::store::Query::range(i64::MIN, i64::MAX),
        &mut ReadReport::default(),
        &mut |r| {
            if let hvflight::store::RecordRef::Sample { sample, .. } = r {
                assert_eq!(sample.links.as_ref().map(|l| l.len()), Some(400));
                lent.push(sample.seq);
            }
            true
        },
    );
    assert_eq!(lent, all);

    // A damaged delta past the first pieces: that one record, named.
    let victim = starts
        .iter()
        .position(|s| *s > 3 * (256 << 10) + 1000)
        .unwrap();
    let mut b = full.clone();
    b[starts[victim] + 40] ^= 0xff;
    std::fs::write(&seg, &b).unwrap();
    let (recs, report) = read_range(dir.path(), i64::MIN, i64::MAX);
    let seqs: Vec<u64> = samples_of(&recs).iter().map(|s| s.seq).collect();
    assert_eq!(seqs.len() as u64, n - 1, "{:?}", report.warnings);
    assert!(!seqs.contains(&(victim as u64)));
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains(&format!("offset {}", starts[victim])),
        "{:?}",
        report.warnings
    );

    // Torn far in, inside a record and on a piece boundary.
    for cut in [starts[victim] + 17, 2 * (256 << 10), full.len() - 3] {
        std::fs::write(&seg, &full[..cut]).unwrap();
        let (recs, report) = read_range(dir.path(), i64::MIN, i64::MAX);
        assert!(
            report.warnings.is_empty(),
            "cut {cut}: {:?}",
            report.warnings
        );
        let complete = starts.iter().filter(|s| **s < cut).count() - 1;
        let seqs: Vec<u64> = samples_of(&recs).iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (0..complete as u64).collect::<Vec<_>>(), "cut {cut}");
        assert_eq!(report.torn_tails.len(), 1, "cut {cut}");
        assert_eq!(
            report.torn_tails[0].1 as usize, starts[complete],
            "cut {cut}"
        );
    }
}

#[test]
fn clock_steps_keep_records_ordered_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 0..10 {
        w.write_sample(&sample(i, 3, T0 + i as i64)).unwrap();
    }
    // The wall clock steps back one hour; monotonic time goes on.
    for i in 10..20 {
        w.write_sample(&sample(i, 3, T0 - 3600 + i as i64)).unwrap();
    }
    drop(w);
    let (recs, report) = read_range(dir.path(), i64::MIN, i64::MAX);
    assert!(report.warnings.is_empty());
    let seqs: Vec<u64> = samples_of(&recs).iter().map(|s| s.seq).collect();
    assert_eq!(
        seqs,
        (0..20).collect::<Vec<_>>(),
        "file order = sampling order"
    );
    let jumps: Vec<&Event> = recs
        .iter()
        .filter_map(|r| {
            if let Record::Events(e) = r {
                Some(e)
            } else {
                None
            }
        })
        .flatten()
        .filter(|e| matches!(&e.kind, EventKind::Agent { what, .. } if what == "clock_jump"))
        .collect();
    assert_eq!(jumps.len(), 1);
    assert!(
        format!("{:?}", jumps[0].kind).contains("-3600"),
        "{:?}",
        jumps[0]
    );
    // Both sides of the step are queryable by their own wall times.
    let (recs, _) = read_range(
        dir.path(),
        (T0 - 3600 + 10) * 1_000_000_000,
        (T0 - 3600 + 19) * 1_000_000_000,
    );
    assert_eq!(samples_of(&recs).len(), 10);
}

#[test]
fn retention_drops_oldest_segments_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.segment_bytes = 16 * 1024;
    c.max_bytes = 64 * 1024;
    let mut w = StoreWriter::open(c).unwrap();
    for i in 0..3000 {
        w.write_sample(&sample(i, 40, T0 + i as i64)).unwrap();
    }
    drop(w);
    let total: u64 = segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total <= 64 * 1024 + 20 * 1024, "{total}");
    let (recs, report) = read_range(dir.path(), i64::MIN, i64::MAX);
    assert!(report.warnings.is_empty());
    let seqs: Vec<u64> = samples_of(&recs).iter().map(|s| s.seq).collect();
    assert_eq!(*seqs.last().unwrap(), 2999, "newest kept");
    assert!(seqs[0] > 0, "oldest dropped");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no hole in what is kept"
    );

    // Age bound: segments whose successor started before max_age are deleted.
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.segment_bytes = 16 * 1024;
    c.max_age_s = 600;
    let mut w = StoreWriter::open(c).unwrap();
    for i in 0..3000 {
        w.write_sample(&sample(i, 40, T0 + i as i64)).unwrap();
    }
    drop(w);
    let (recs, _) = read_range(dir.path(), i64::MIN, i64::MAX);
    let oldest = samples_of(&recs)[0].ts_unix_ns / 1_000_000_000;
    // Whole segments go: at most one segment's span beyond the bound.
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let start_s = |p: &PathBuf| hvflight::store::writer::start_ms(p).unwrap() / 1000;
    let span = start_s(&segs[1]) - start_s(&segs[0]);
    // (retention runs at every keyframe, i.e. every 60 samples)
    assert!(
        oldest >= T0 + 2999 - 600 - span - 60,
        "oldest kept {} s before the newest (segments span {span} s)",
        T0 + 2999 - oldest
    );
    assert!(oldest > T0, "nothing deleted by age");
}

#[test]
fn reader_accepts_format_v1_fixture() {
    // tests/fixtures/store/v1: written by hvflight 0.1.0 in format 1 (see below).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store/v1");
    let (recs, report) = read_range(&dir, i64::MIN, i64::MAX);
    assert!(report.warnings.is_empty(), "{report:?}");
    let s = samples_of(&recs);
    assert_eq!(s.len(), 70);
    assert_eq!(*s[69], sample(69, 4, T0 + 69));
}

// tests/fixtures/store/v1 was generated by the format-1 writer (commit
// b080323) with `sample(i, 4, T0 + i)` for i in 0..70 and `cfg()` above;
// this hvflight writes format 2, so that generator is gone for good.

/// A sample with most sections filled, for the format-2 fixture.
fn rich_sample(seq: u64) -> Sample {
    use hvflight::sample::{Bridge, BridgePort, Domain, FdbEntry, Libvirt, Snmp, Vnic};
    let mut s = sample(seq, 4, T0 + seq as i64);
    s.bridges = Some(vec![Bridge {
        ifindex: 2,
        name: "vnet0".into(),
        stp_state: Some(0),
        ports: vec![BridgePort {
            ifindex: 3,
            name: "vnet1".into(),
            state: if seq < 40 { 3 } else { 0 },
            learning: Some(true),
            ..Default::default()
        }],
        ..Default::default()
    }]);
    s.fdb = Some(vec![FdbEntry {
        mac: "52:54:00:00:00:01".into(),
        ifindex: 3,
        port: "vnet1".into(),
        state: "dynamic".into(),
        updated_s: Some(seq as u32 % 7),
        ..Default::default()
    }]);
    s.snmp = Some(Snmp {
        counters: [
            ("Ip.InDiscards".to_string(), seq as i64 * 3),
            ("Udp.InErrors".to_string(), -1),
        ]
        .into(),
    });
    s.libvirt = Some(Libvirt {
        uri: "test:///default".into(),
        domains: vec![Domain {
            name: "web-01".into(),
            uuid: "6695eb01-f6a4-8304-79aa-97f2502e193f".into(),
            id: Some(1),
            state: "running".into(),
            vnics: vec![Vnic {
                mac: "52:54:00:00:00:01".into(),
                host_ifname: Some("vnet1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        xml_fetches: 0,
        age_ms: 0,
    });
    s.failures = if seq % 10 == 3 {
        vec![hvflight::sample::CollectorFailure {
            collector: "conntrack".into(),
            error: "timed out".into(),
            duration_us: 1000,
            timed_out: true,
        }]
    } else {
        vec![]
    };
    s
}

fn fixture_event(seq: u64) -> Event {
    Event {
        ts_unix_ns: (T0 + seq as i64) * 1_000_000_000 + 500,
        mono_ns: seq * 1_000_000_000 + 500,
        kind: EventKind::Agent {
            what: format!("e{seq}"),
            detail: String::new(),
        },
    }
}

#[test]
fn reader_accepts_format_v2_fixture() {
    // tests/fixtures/store/v2: written by hvflight 0.1.0 (format 2) with the
    // generator below (`cargo test --test store -- --ignored write_v2_fixture`).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store/v2");
    let seg = &segments(&dir)[0];
    assert_eq!(
        &std::fs::read(seg).unwrap()[8..12],
        &2u32.to_le_bytes(),
        "a format-2 segment"
    );
    let (recs, report) = read_range(&dir, i64::MIN, i64::MAX);
    assert!(
        report.warnings.is_empty() && report.torn_tails.is_empty(),
        "{report:?}"
    );
    let s = samples_of(&recs);
    assert_eq!(s.len(), 130);
    for (i, got) in s.iter().enumerate() {
        assert_eq!(**got, rich_sample(i as u64), "sample {i}");
    }
    let events: Vec<&Event> = recs
        .iter()
        .filter_map(|r| {
            if let Record::Events(e) = r {
                Some(e)
            } else {
                None
            }
        })
        .flatten()
        .collect();
    assert_eq!(events.len(), 13);
    assert_eq!(*events[12], fixture_event(120));
    // A range in the middle starts at its keyframe through the index.
    let (recs, report) = read_range(&dir, (T0 + 100) * 1_000_000_000, (T0 + 104) * 1_000_000_000);
    assert!(report.warnings.is_empty());
    assert_eq!(
        samples_of(&recs).iter().map(|s| s.seq).collect::<Vec<_>>(),
        vec![100, 101, 102, 103, 104]
    );
    assert!(
        report.bytes_read < std::fs::metadata(seg).unwrap().len() / 2,
        "{report:?}"
    );
}

#[test]
#[ignore = "generator for tests/fixtures/store/v2; run by hand when the format changes"]
fn write_v2_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store/v2");
    let _ = std::fs::remove_dir_all(&dir);
    let mut w = StoreWriter::open(cfg(&dir)).unwrap();
    for i in 0..130 {
        w.write_sample(&rich_sample(i)).unwrap();
        if i % 10 == 0 {
            w.write_events(&[fixture_event(i)]).unwrap();
        }
    }
}

#[test]
fn the_keyframe_index_is_only_a_hint() {
    use hvflight::store::index::index_path;
    let dir = tempfile::tempdir().unwrap();
    let seg = write_store(dir.path(), 200);
    let q = |d: &Path| {
        let (recs, report) = read_range(d, (T0 + 130) * 1_000_000_000, (T0 + 140) * 1_000_000_000);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        (
            samples_of(&recs).iter().map(|s| s.seq).collect::<Vec<_>>(),
            report.bytes_read,
        )
    };
    let (good, bytes_with_index) = q(dir.path());
    assert_eq!(good, (130..=140).collect::<Vec<_>>());
    let seg_len = std::fs::metadata(&seg).unwrap().len();
    assert!(
        bytes_with_index < seg_len / 2,
        "the index lets a read skip most of the segment"
    );
    // Entries pointing into the middle of records, a torn entry, no index at all:
    // the same records, read the slow way.
    let idx = index_path(&seg);
    let mut b = std::fs::read(&idx).unwrap();
    b[8] = b[8].wrapping_add(7); // first entry's offset: CRC now fails
    std::fs::write(&idx, &b).unwrap();
    assert_eq!(q(dir.path()).0, good);
    let mut forged = b"HVFINDX1".to_vec();
    for (off, ts) in [(100u64, T0 + 120), (5000, T0 + 150)] {
        let mut e = [0u8; 24];
        e[0..8].copy_from_slice(&off.to_le_bytes());
        e[8..16].copy_from_slice(&(ts * 1_000_000_000).to_le_bytes());
        e[16..20].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&e[0..20]);
        e[20..24].copy_from_slice(&crc.to_le_bytes());
        forged.extend_from_slice(&e);
    }
    std::fs::write(&idx, &forged).unwrap();
    assert_eq!(
        q(dir.path()).0,
        good,
        "entries that lie are checked and ignored"
    );
    std::fs::remove_file(&idx).unwrap();
    let (slow, bytes_without) = q(dir.path());
    assert_eq!(slow, good);
    assert!(
        bytes_without + 200 > seg_len,
        "{bytes_without} of {seg_len}: the whole segment"
    );
}

/// The `what` of every agent event a range read returns, in order (the
/// read must give no warning).
fn agent_events(dir: &std::path::Path, since_ns: i64, until_ns: i64) -> Vec<String> {
    let (recs, report) = read_range(dir, since_ns, until_ns);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    recs.iter()
        .filter_map(|r| match r {
            Record::Events(e) => Some(e),
            _ => None,
        })
        .flatten()
        .map(|e| match &e.kind {
            EventKind::Agent { what, .. } => what.clone(),
            k => format!("{k:?}"),
        })
        .collect()
}

#[test]
fn a_range_gets_the_events_of_a_batch_that_began_before_it_and_only_those() {
    // One interval's batch: events at T0+10.0 s, T0+10.6 s and T0+11.2 s.
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    let at = |ms: i64, what: &str| Event {
        ts_unix_ns: T0 * 1_000_000_000 + ms * 1_000_000,
        mono_ns: ms as u64 * 1_000_000,
        kind: EventKind::Agent {
            what: what.into(),
            detail: String::new(),
        },
    };
    for i in 0..20 {
        w.write_sample(&sample(i, 3, T0 + i as i64)).unwrap();
        if i == 11 {
            w.write_events(&[at(10_000, "a"), at(10_600, "b"), at(11_200, "c")])
                .unwrap();
        }
    }
    drop(w);
    let events = |since_ms: i64, until_ms: i64| {
        agent_events(
            dir.path(),
            T0 * 1_000_000_000 + since_ms * 1_000_000,
            T0 * 1_000_000_000 + until_ms * 1_000_000,
        )
    };
    assert_eq!(events(10_500, 20_000), ["b", "c"]);
    assert_eq!(events(9_000, 10_700), ["a", "b"]);
    assert_eq!(events(0, 20_000), ["a", "b", "c"]);
    assert!(events(11_300, 20_000).is_empty());
}

#[test]
fn events_older_than_the_samples_before_them_are_still_found() {
    // The kernel-log backlog read at start carries old times.
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 0..200 {
        w.write_sample(&sample(i, 3, T0 + i as i64)).unwrap();
        if i == 150 {
            w.write_events(&[fixture_event(20)]).unwrap();
        }
    }
    drop(w);
    let (recs, report) = read_range(
        dir.path(),
        (T0 + 15) * 1_000_000_000,
        (T0 + 25) * 1_000_000_000,
    );
    assert!(report.warnings.is_empty());
    assert!(recs
        .iter()
        .any(|r| matches!(r, Record::Events(e) if e[0] == fixture_event(20))));
    assert_eq!(samples_of(&recs).len(), 11);
}

/// After a reboot the agent's first segment starts with its first sample,
/// and the kernel log since boot arrives late, with older times: a range
/// before that segment still gets those lines, and a range that starts
/// within the backlog batch gets its later lines.
#[test]
fn the_kernel_log_backlog_of_a_restart_is_found_before_its_segment_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 0..100 {
        w.write_sample(&sample(i, 3, T0 + i as i64)).unwrap();
    }
    drop(w);
    // The host was down from T0+100 s; it booted at T0+250 s, the agent
    // started at T0+300 s and read the boot's lines after its first sample.
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 300..320 {
        w.write_sample(&sample(i, 3, T0 + i as i64)).unwrap();
        if i == 301 {
            w.write_events(&[fixture_event(250), fixture_event(260), fixture_event(270)])
                .unwrap();
        }
    }
    drop(w);
    assert_eq!(hvflight::store::writer::segments(dir.path()).len(), 2);
    let events = |since_s: i64, until_s: i64| {
        agent_events(
            dir.path(),
            (T0 + since_s) * 1_000_000_000,
            (T0 + until_s) * 1_000_000_000,
        )
    };
    assert_eq!(events(240, 290), ["e250", "e260", "e270"]);
    assert_eq!(events(255, 265), ["e260"]);
    assert_eq!(events(265, 400), ["e270"]);
    assert!(events(200, 249).is_empty());
}

#[test]
fn a_damaged_keyframe_costs_its_interval_and_says_so() {
    use hvflight::store::format::{decode_frame_header, decode_header, FRAME_HEADER_LEN};
    let dir = tempfile::tempdir().unwrap();
    let seg = write_store(dir.path(), 150);
    let mut b = std::fs::read(&seg).unwrap();
    let (_, mut off) = decode_header(&b).unwrap();
    let mut starts = Vec::new();
    while let Some(h) = decode_frame_header(&b[off..]) {
        starts.push((off, h.kind));
        off += FRAME_HEADER_LEN + h.len;
    }
    // The second keyframe loses a bit of its payload.
    let keyframes: Vec<usize> = (0..starts.len())
        .filter(|&i| starts[i].1 == hvflight::store::format::KIND_TABLE_KEYFRAME)
        .collect();
    let (k1, k2) = (keyframes[1], keyframes[2]);
    let kf = starts[k1].0;
    b[kf + FRAME_HEADER_LEN + 5] ^= 0x40;
    std::fs::write(&seg, &b).unwrap();
    let (recs, report) = read_range(dir.path(), i64::MIN, i64::MAX);
    let seqs: Vec<u64> = samples_of(&recs).iter().map(|s| s.seq).collect();
    let expect: Vec<u64> = (0..k1 as u64).chain(k2 as u64..150).collect();
    assert_eq!(seqs, expect);
    assert_eq!(
        report.warnings.len(),
        k2 - k1,
        "{:?}",
        &report.warnings[..3]
    );
    assert!(
        report.warnings[0].contains(&format!("offset {kf}"))
            && report.warnings[0].contains("checksum")
    );
    assert!(
        report.warnings[1].contains("its keyframe is damaged"),
        "{}",
        report.warnings[1]
    );
}

#[test]
fn a_query_decodes_only_the_rows_it_asks_for() {
    use hvflight::store::rows::{Projection, Select};
    use hvflight::store::{read_query, Query};
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 0..90 {
        w.write_sample(&rich_sample(i)).unwrap();
    }
    drop(w);
    let mut q = Query::range(i64::MIN, i64::MAX);
    q.projection = Projection {
        fields: Some(["links".to_string()].into()),
        select: Some(Select {
            seq: "links".into(),
            field: "name".into(),
            values: ["vnet2".to_string()].into(),
        }),
    };
    let (recs, report) = read_query(dir.path(), &q);
    assert!(report.warnings.is_empty());
    let s = samples_of(&recs);
    assert_eq!(s.len(), 90);
    for (i, got) in s.iter().enumerate() {
        let full = rich_sample(i as u64);
        assert_eq!(got.links.as_ref().unwrap().len(), 1);
        assert_eq!(got.link("vnet2"), full.link("vnet2"));
        assert_eq!(
            (got.seq, got.ts_unix_ns, got.mono_ns),
            (full.seq, full.ts_unix_ns, full.mono_ns)
        );
        assert!(got.bridges.is_none() && got.libvirt.is_none() && got.fdb.is_none());
    }
}

#[test]
fn history_by_domain_and_by_interface_shows_rates_of_those_only() {
    use hvflight::store::history::{history, HistoryQuery};
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 0..80 {
        w.write_sample(&rich_sample(i)).unwrap();
    }
    w.write_events(&[Event {
        ts_unix_ns: (T0 + 79) * 1_000_000_000 + 7,
        mono_ns: 79 * 1_000_000_000 + 7,
        kind: EventKind::Link {
            action: "new".into(),
            ifindex: 3,
            name: "vnet1".into(),
            operstate: "down".into(),
            carrier: Some(false),
            admin_up: true,
            master: Some(2),
            mtu: Some(1500),
            mac: String::new(),
            port_state: None,
        },
    }])
    .unwrap();
    drop(w);
    let run = |q: HistoryQuery| {
        let mut out = Vec::new();
        let (shown, warnings) = history(dir.path(), &q, &mut out).unwrap();
        (shown, warnings, String::from_utf8(out).unwrap())
    };
    let base = HistoryQuery {
        since_ns: (T0 + 70) * 1_000_000_000,
        until_ns: (T0 + 100) * 1_000_000_000,
        ..Default::default()
    };
    // web-01's vNIC is vnet1 (libvirt's mapping in the samples).
    let (shown, warnings, text) = run(HistoryQuery {
        domain: Some("web-01".into()),
        ..base.clone()
    });
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(shown, 11, "10 samples and the link event: {text}");
    let lines: Vec<&str> = text.lines().collect();
    // sample(): vnet1's rx_packets grow 10 per second.
    assert!(
        lines[1].contains("| vnet1 up rx 10.0 tx 12.0 pps"),
        "{}",
        lines[1]
    );
    assert!(!text.contains("vnet2"), "{text}");
    assert!(text.contains("vnet1"));
    let (_, _, by_iface) = run(HistoryQuery {
        iface: Some("vnet1".into()),
        ..base.clone()
    });
    assert_eq!(by_iface, text);
    let (_, warnings, _) = run(HistoryQuery {
        domain: Some("nope".into()),
        ..base
    });
    assert_eq!(
        warnings,
        vec!["domain \"nope\": no vNIC of it in the range".to_string()]
    );
}

#[test]
fn sigkill_at_random_moments_loses_nothing_that_was_written_needs_root() {
    // The real agent, killed again and again; each run appends a new segment.
    let dir = tempfile::tempdir().unwrap();
    let mut printed: Vec<(i64, u64)> = Vec::new();
    let mut runs_that_sampled = 0;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _round in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = Command::new(env!("CARGO_BIN_EXE_hvflight"))
            .args([
                "run",
                "--json",
                "--interval-ms",
                "20",
                "--libvirt-uri",
                "test:///default",
                "--state-dir",
            ])
            .arg(dir.path())
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            // A sample is printed only after the store wrote it.
            let mut seen = Vec::new();
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(s) = serde_json::from_str::<Sample>(&l) {
                    if l.contains("\"kind\":\"sample\"") {
                        seen.push((s.ts_unix_ns, s.seq));
                        let _ = first_tx.send(());
                    }
                }
            }
            seen
        });
        // Kill at a random moment while it records (a loaded machine may
        // take seconds to start the agent: wait for its first sample).
        let _ = first_rx.recv_timeout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng % 400));
        child.kill().unwrap();
        child.wait().unwrap();
        let seen = reader.join().unwrap();
        if !seen.is_empty() {
            runs_that_sampled += 1;
        }
        printed.extend(seen);
        let (recs, report) = read_range(&dir.path().join("store"), i64::MIN, i64::MAX);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let stored: std::collections::HashSet<(i64, u64)> = samples_of(&recs)
            .iter()
            .map(|s| (s.ts_unix_ns, s.seq))
            .collect();
        for p in &printed {
            assert!(
                stored.contains(p),
                "sample {p:?} was written before the kill but is not in the store"
            );
        }
    }
    assert!(printed.len() >= 12, "{}", printed.len());
    assert!(
        runs_that_sampled >= 10,
        "{runs_that_sampled} of 12 runs got to sample before the kill"
    );
    assert!(
        segments(&dir.path().join("store")).len() >= runs_that_sampled,
        "each restart starts its own segment"
    );
}

struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_pauses_or_frees_space_never_corrupts_and_recovers_needs_root() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "cannot mount a tmpfs for the disk-full test");
    let _guard = Tmpfs(mnt.clone());
    let store = mnt.join("store");
    let mut c = cfg(&store);
    c.segment_bytes = 64 * 1024;
    c.min_free_bytes = 512 * 1024;
    c.max_bytes = 1 << 30; // only the free-space rule limits us here
    let mut w = StoreWriter::open(c).unwrap();
    // Something else fills the filesystem (guest disks often share it).
    // It leaves the store about 300 KiB above its minimum free space.
    let filler = mnt.join("guest-disk.img");
    let free = hvflight::store::writer::free_bytes(&mnt).unwrap();
    let fill = free.saturating_sub(512 * 1024 + 300 * 1024);
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    let mut written = 0;
    let first_new = 6000;
    for i in 0..first_new {
        if w.write_sample(&sample(i, 60, T0 + i as i64)).unwrap() {
            written += 1;
        }
    }
    assert!(
        w.dropped > 0 || segments(&store).len() > 1,
        "neither paused nor rotated"
    );
    let (recs, report) = read_range(&store, i64::MIN, i64::MAX);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert!(!samples_of(&recs).is_empty() && written > 0);
    // Space returns: recording resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let before = w.dropped;
    for i in first_new..first_new + 50 {
        assert!(
            w.write_sample(&sample(i, 60, T0 + i as i64)).unwrap(),
            "sample {i} not written after space returned"
        );
    }
    assert_eq!(w.dropped, before);
    drop(w);
    let (recs, report) = read_range(&store, i64::MIN, i64::MAX);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(samples_of(&recs).last().unwrap().seq, first_new + 49);
}

#[test]
fn history_reads_while_the_agent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_hvflight"))
        .args([
            "run",
            "--interval-ms",
            "100",
            "--libvirt-uri",
            "test:///default",
            "--state-dir",
        ])
        .arg(dir.path())
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read while it writes, until five samples are there (a loaded machine
    // with a big kernel log backlog takes a while to get going).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new(env!("CARGO_BIN_EXE_hvflight"))
            .args(["history", "--since", "1m", "--json", "--state-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let n = String::from_utf8_lossy(&out.stdout)
            .matches("\"kind\":\"sample\"")
            .count();
        if !out.status.success() || n >= 5 || std::time::Instant::now() > deadline {
            break out;
        }
    };
    let human = Command::new(env!("CARGO_BIN_EXE_hvflight"))
        .args(["history", "--since", "1m", "--iface", "lo", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"kind\":\"sample\""))
        .count();
    assert!(n >= 5, "{n} samples");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.lines()
            .filter(|l| l.contains("| lo ") && l.contains(" rx "))
            .count()
            >= 4,
        "{text}"
    );
    assert!(text.contains("pps"), "rates, not raw counters: {text}");
}

/// A host whose rows churn: counters move every second, links come and go,
/// a port's VLANs and an interface's state change, an SNMP counter appears,
/// collectors fail now and then, and once many new interfaces at once (a
/// keyframe by drift).
fn churning_sample(seq: u64) -> Sample {
    use hvflight::sample::bridge::PortVlan;
    use hvflight::sample::{Conntrack, DropCount, Drops, Neighbours, Qdisc, SoftnetCpu};
    let mut s = rich_sample(seq);
    s.ts_unix_ns += seq as i64 * 7_919;
    s.duration_us = 2000 + seq % 13;
    s.lag_us = seq % 3;
    let links = s.links.as_mut().unwrap();
    if (30..50).contains(&seq) {
        links.push(Link {
            ifindex: 40,
            name: "vnet-new".into(),
            stats: LinkStats {
                rx_bytes: seq * 99,
                ..Default::default()
            },
            ..Default::default()
        });
    }
    if seq >= 50 {
        links.remove(1);
    }
    if (70..75).contains(&seq) {
        links[0].operstate = "down".into();
        links[0].carrier = Some(false);
    }
    if (90..95).contains(&seq) {
        links.extend((0..40).map(|i| Link {
            ifindex: 100 + i,
            name: format!("burst{i}"),
            mtu: 9000,
            txqlen: Some(seq as u32),
            ..Default::default()
        }));
    }
    for l in links.iter_mut() {
        l.stats.multicast = seq * 3 + l.ifindex as u64;
        l.stats.rx_dropped = seq / 10;
    }
    let port = &mut s.bridges.as_mut().unwrap()[0].ports[0];
    port.cost = Some(100 + seq as u32 % 4);
    port.vlans = (0..(seq / 40) as u16)
        .map(|v| PortVlan {
            vid: v + 1,
            pvid: v == 0,
            untagged: v == 0,
        })
        .collect();
    if seq >= 100 {
        s.snmp
            .as_mut()
            .unwrap()
            .counters
            .insert("Tcp.RetransSegs".into(), seq as i64 * 11);
    }
    s.qdiscs = Some(vec![Qdisc {
        ifindex: 3,
        dev: "vnet1".into(),
        kind: "fq_codel".into(),
        handle: "0:".into(),
        parent: "root".into(),
        bytes: seq * 1400,
        packets: seq,
        drops: seq / 5,
        ..Default::default()
    }]);
    s.softnet = Some(
        (0..2)
            .map(|cpu| SoftnetCpu {
                cpu,
                processed: seq * 1000 + cpu as u64,
                dropped: seq / 20,
                backlog_len: Some(seq % 4),
                ..Default::default()
            })
            .collect(),
    );
    s.neighbours = Some(Neighbours {
        by_dev: [("vnet1".to_string(), seq as u32 % 5)].into(),
        total_inet: seq as u32,
        gc_thresh: Some([128, 512, 1024]),
        ..Default::default()
    });
    s.conntrack = (seq % 17 != 5).then(|| Conntrack {
        count: Some(seq * 2),
        max: Some(65536),
        ..Default::default()
    });
    s.probes = Some(hvflight::sample::Probes {
        bridges: vec![hvflight::sample::GatewayProbe {
            bridge: "vnet0".into(),
            uplinks: vec!["eth1".into()],
            gateway: Some("192.0.2.1".into()),
            arp_sent: seq,
            arp_answered: seq - seq / 9,
            large_bytes: 1400,
            last_rtt_us: (seq != 11).then_some(300 + seq),
            ..Default::default()
        }],
        guests: (0..3)
            .map(|g| hvflight::sample::GuestProbe {
                iface: format!("vnet{g}"),
                sent: seq / 10 + g,
                answered: seq / 10,
                paused: if seq == 23 + g {
                    "dhcp".into()
                } else {
                    String::new()
                },
                ..Default::default()
            })
            .collect(),
        errors: vec![],
    });
    s.drops = Some(Drops {
        netns_inode: 4026531840,
        loaded_mono_ns: 5,
        entries: vec![DropCount {
            ifindex: 3,
            interface: "vnet1".into(),
            reason: "NETFILTER_DROP".into(),
            protocol: 0x0800,
            count: seq * 4,
        }],
        missed: seq / 50,
        ..Default::default()
    });
    s
}

/// Every sample of `scan_ref` (cloned) and the `prev` each came with.
fn lent_samples(dir: &Path) -> (Vec<Sample>, Vec<Option<u64>>, ReadReport) {
    let mut report = ReadReport::default();
    let (mut got, mut prevs) = (Vec::new(), Vec::new());
    hvflight::store::scan_ref(
        dir,
        &hvflight::store::Query::range(i64::MIN, i64::MAX),
        &mut report,
        &mut |r| {
            if let hvflight::store::RecordRef::Sample { sample, prev } = r {
                got.push(sample.clone());
                prevs.push(prev.map(|p| p.seq));
            }
            true
        },
    );
    (got, prevs, report)
}

#[test]
fn lent_samples_are_exactly_the_owned_ones_through_churn_and_both_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 0..200 {
        w.write_sample(&churning_sample(i)).unwrap();
        if i % 7 == 0 {
            w.write_events(&[fixture_event(i)]).unwrap();
        }
    }
    drop(w);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store");
    for d in [
        dir.path().to_path_buf(),
        fixtures.join("v1"),
        fixtures.join("v2"),
    ] {
        let (recs, report) = read_range(&d, i64::MIN, i64::MAX);
        assert!(report.warnings.is_empty(), "{report:?}");
        let owned: Vec<Sample> = samples_of(&recs).into_iter().cloned().collect();
        let (lent, prevs, lent_report) = lent_samples(&d);
        assert!(lent_report.warnings.is_empty(), "{lent_report:?}");
        assert_eq!(lent.len(), owned.len(), "{}", d.display());
        for (i, (a, b)) in lent.iter().zip(&owned).enumerate() {
            assert_eq!(a, b, "{}: sample {i}", d.display());
            let want_prev = i.checked_sub(1).map(|p| owned[p].seq);
            assert_eq!(prevs[i], want_prev, "{}: prev of sample {i}", d.display());
        }
    }
    // Damaged records (a keyframe's interval among them, by chance or not):
    // both paths skip and report the same ones.
    let damaged = tempfile::tempdir().unwrap();
    for seg in segments(dir.path()) {
        let mut b = std::fs::read(&seg).unwrap();
        for frac in [0.2, 0.45, 0.7, 0.9] {
            let at = (b.len() as f64 * frac) as usize;
            b[at] ^= 0x55;
        }
        std::fs::write(damaged.path().join(seg.file_name().unwrap()), b).unwrap();
    }
    let (recs, report) = read_range(damaged.path(), i64::MIN, i64::MAX);
    assert!(!report.warnings.is_empty());
    let owned: Vec<Sample> = samples_of(&recs).into_iter().cloned().collect();
    assert!(owned.len() < 200 && owned.len() > 100, "{}", owned.len());
    let (lent, _, lent_report) = lent_samples(damaged.path());
    assert_eq!(lent, owned);
    assert_eq!(lent_report.warnings, report.warnings);
    // The churning store: read by patching but for the records whose rows
    // differ from the ones two before (a one-second blip costs two).
    let (patched, generic) = hvflight::store::scan_ref_stats(
        dir.path(),
        &hvflight::store::Query::range(i64::MIN, i64::MAX),
    );
    assert_eq!(patched + generic, 200);
    assert!(patched >= 100, "patched {patched}, generic {generic}");
    assert!(generic >= 8, "patched {patched}, generic {generic}");
}

#[test]
fn history_shows_every_sample_with_rates_against_the_one_before() {
    // What `hvflight history` prints (lent, patched samples) is what the
    // owned samples give, line by line: rates against the previous sample.
    use hvflight::agent::print;
    use hvflight::model::Model;
    use hvflight::store::history::{history, HistoryQuery};
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(cfg(dir.path())).unwrap();
    for i in 0..150 {
        w.write_sample(&churning_sample(i)).unwrap();
        if i % 9 == 0 {
            w.write_events(&[fixture_event(i)]).unwrap();
        }
    }
    drop(w);
    let mut want = String::new();
    let (recs, _) = read_range(dir.path(), i64::MIN, i64::MAX);
    let mut prev: Option<&Sample> = None;
    for r in &recs {
        match r {
            Record::Sample(s) => {
                let m = Model::new(s, prev);
                want += &print::sample_line(s, &m);
                want.push('\n');
                prev = Some(s);
            }
            Record::Events(evs) => {
                for e in evs {
                    want += &print::event_line(e);
                    want.push('\n');
                }
            }
        }
    }
    let mut out = Vec::new();
    let q = HistoryQuery {
        since_ns: i64::MIN,
        until_ns: i64::MAX,
        ..Default::default()
    };
    let (shown, warnings) = history(dir.path(), &q, &mut out).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(shown, 150 + 17);
    let got = String::from_utf8(out).unwrap();
    assert!(
        got.lines().nth(5).is_some_and(|l| l.contains(" pps")),
        "{got}"
    );
    assert_eq!(got, want);
}
