//! The kernel log: every /dev/kmsg record becomes a `kmsg` event, tagged
//! with the catalogue ids it matches, up to a per-second cap (a log storm
//! must not become an agent storm; what the cap cuts is counted in a `loss`
//! event, and so are records the kernel overwrote before we read them).
//! On start it reads the whole buffer, uncapped (the ring bounds it): after
//! a reboot that is the boot's log.
//!
//! Timestamps: a record read live is stamped with its receipt time (exact
//! to the millisecond, on the same clock as every other event); a record
//! from the backlog read at start is stamped receipt time minus its age on
//! the kernel's clock (now − its boot_us), so old lines do not pile up at
//! the agent's start. Every event also keeps the record's own boot_us.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::Worker;
use crate::clock;
use crate::kernel::kmsg::{parse_record, tags, KmsgRecord};
use crate::sample::{Event, EventKind};

/// Opens `path` (normally /dev/kmsg; tests pass a FIFO or a file) and
/// starts the reader thread. At most `max_lines_per_s` lines per second
/// become events; the rest are counted in `loss` events.
pub fn start(path: PathBuf, max_lines_per_s: u64, tx: Sender<Event>) -> std::io::Result<Worker> {
    // Non-blocking so the thread can notice its stop flag; it polls.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)?;
    // /dev/kmsg returns exactly one record per read(); anything else (a
    // file, a FIFO) is a byte stream to be split into records.
    let one_record_per_read = file.metadata()?.file_type().is_char_device();
    Worker::spawn("kmsg", move |stop| {
        Reader {
            file,
            one_record_per_read,
            tx,
            limiter: Limiter::new(max_lines_per_s, Instant::now()),
            backlog: true,
            last_seq: None,
            overrun: false,
            partial: Vec::new(),
            record: Vec::new(),
        }
        .run(&stop)
    })
}

/// Lines per one-second window; what exceeds the cap is counted and
/// reported when the window closes. Pure (time is passed in).
#[derive(Debug)]
pub struct Limiter {
    max_per_s: u64,
    window_start: Instant,
    in_window: u64,
    capped: u64,
}

impl Limiter {
    pub fn new(max_per_s: u64, now: Instant) -> Limiter {
        Limiter {
            max_per_s,
            window_start: now,
            in_window: 0,
            capped: 0,
        }
    }
    /// Closes the window if a second has passed; returns how many lines it
    /// cut, if any.
    pub fn roll(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.window_start) < Duration::from_secs(1) {
            return None;
        }
        let cut = std::mem::take(&mut self.capped);
        self.window_start = now;
        self.in_window = 0;
        (cut > 0).then_some(cut)
    }
    /// Whether one more line may pass in the current window.
    pub fn admit(&mut self) -> bool {
        self.in_window += 1;
        if self.in_window > self.max_per_s {
            self.capped += 1;
            return false;
        }
        true
    }
}

struct Reader {
    file: File,
    one_record_per_read: bool,
    tx: Sender<Event>,
    limiter: Limiter,
    /// Still reading what was in the buffer when we started.
    backlog: bool,
    last_seq: Option<u64>,
    /// read() said EPIPE: the kernel overwrote records we had not read.
    overrun: bool,
    /// Bytes after the last newline (stream input only).
    partial: Vec<u8>,
    /// The record being assembled: header line + continuation lines.
    record: Vec<u8>,
}

/// The receiver is gone: the agent is shutting down.
struct Closed;

impl Reader {
    fn run(mut self, stop: &AtomicBool) {
        // Larger than any record (the kernel caps them at ~1 KiB of text
        // plus device info); a short buffer would make /dev/kmsg fail EINVAL.
        let mut buf = vec![0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let idle = match self.file.read(&mut buf) {
                Ok(0) => true, // end of a file, or a FIFO without writer
                Ok(n) => {
                    if self.input(&buf[..n]).is_err() {
                        return;
                    }
                    false
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    // Records were overwritten before we read them; the
                    // next read continues at the oldest one still there,
                    // and its sequence number tells how many were lost.
                    self.overrun = true;
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
                Err(e) => {
                    let _ = self.send(EventKind::Loss {
                        source: "kmsg".into(),
                        detail: format!("reading the kernel log failed, reader stopped: {e}"),
                        count: 0,
                    });
                    return;
                }
            };
            if idle {
                // Caught up: a record still being assembled is complete
                // (its writer paused), and the backlog is behind us.
                if self.finish_record().is_err() {
                    return;
                }
                self.backlog = false;
            }
            if let Some(cut) = self.limiter.roll(Instant::now()) {
                if self.report_cap(cut).is_err() {
                    return;
                }
            }
            if idle {
                self.wait_readable(Duration::from_millis(200));
            }
        }
    }

    fn wait_readable(&self, timeout: Duration) {
        if !self.one_record_per_read {
            // poll() says "readable" forever at the end of a regular file
            // and for a FIFO without writer: sleep instead.
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on an fd we own, for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    }

    fn input(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        if self.one_record_per_read {
            self.record.extend_from_slice(bytes);
            return self.finish_record();
        }
        self.partial.extend_from_slice(bytes);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let complete: Vec<u8> = self.partial.drain(..=last_nl).collect();
        for line in complete.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b' ') {
                self.record.extend_from_slice(line); // continuation
            } else if line != b"\n" {
                self.finish_record()?;
                self.record.extend_from_slice(line);
            }
        }
        Ok(())
    }

    fn finish_record(&mut self) -> Result<(), Closed> {
        if self.record.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.record);
        let text = String::from_utf8_lossy(&raw);
        match parse_record(text.trim_end_matches('\n')) {
            Ok(rec) => self.record_event(rec),
            // A malformed record is not fatal; say so once per record.
            Err(e) => {
                tracing::debug!(error = %e, "unparsable kmsg record");
                self.send(EventKind::Loss {
                    source: "kmsg".into(),
                    detail: e.to_string(),
                    count: 1,
                })
            }
        }
    }

    fn record_event(&mut self, rec: KmsgRecord) -> Result<(), Closed> {
        match self.last_seq {
            Some(last) if rec.seq > last + 1 => {
                let detail = if self.overrun {
                    "the kernel log ring overwrote records before they were read"
                } else {
                    "gap in kernel log sequence numbers"
                };
                self.send(EventKind::Loss {
                    source: "kmsg".into(),
                    detail: format!("{detail} (seq {} to {})", last + 1, rec.seq - 1),
                    count: rec.seq - last - 1,
                })?;
            }
            None if rec.seq > 0 => {
                // Not a loss of ours (we were not running), but whoever reads
                // the boot's log should know its start is gone.
                self.send(EventKind::Agent {
                    what: "kmsg_backlog".into(),
                    detail: format!(
                        "the kernel log ring starts at seq {}: older records were overwritten before the agent started",
                        rec.seq
                    ),
                })?;
            }
            _ => {}
        }
        self.overrun = false;
        self.last_seq = Some(rec.seq);
        // The backlog is bounded by the ring's size and is the log we start
        // for (after a reboot: the boot's), so the cap is for live storms.
        if !self.backlog && !self.limiter.admit() {
            return Ok(());
        }
        let now = clock::now();
        let (ts_unix_ns, mono_ns) = if self.backlog {
            backlog_time(now, rec.boot_us)
        } else {
            (now.unix_ns, now.mono_ns)
        };
        let kind = EventKind::Kmsg {
            tags: tags(&rec.text),
            seq: rec.seq,
            priority: rec.priority,
            facility: rec.facility,
            boot_us: rec.boot_us,
            text: rec.text,
        };
        self.tx
            .send(Event {
                ts_unix_ns,
                mono_ns,
                kind,
            })
            .map_err(|_| Closed)
    }

    fn report_cap(&mut self, cut: u64) -> Result<(), Closed> {
        self.send(EventKind::Loss {
            source: "kmsg".into(),
            detail: format!(
                "more than {} kernel log lines in one second; the rest were not recorded",
                self.limiter.max_per_s
            ),
            count: cut,
        })
    }

    fn send(&self, kind: EventKind) -> Result<(), Closed> {
        let t = clock::now();
        self.tx
            .send(Event {
                ts_unix_ns: t.unix_ns,
                mono_ns: t.mono_ns,
                kind,
            })
            .map_err(|_| Closed)
    }
}

/// When a record from the backlog was logged, on the wall clock: its age
/// on the kernel's clock (printk's clock runs like CLOCK_MONOTONIC, both
/// stop in suspend) subtracted from now. A boot_us ahead of the monotonic
/// clock (a replayed file from a longer-running host) is clamped to now.
pub fn backlog_time(now: clock::Instant, boot_us: u64) -> (i64, u64) {
    let logged_mono_ns = boot_us.saturating_mul(1000).min(now.mono_ns);
    let age_ns = now.mono_ns - logged_mono_ns;
    (now.unix_ns - age_ns as i64, logged_mono_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_per_window_and_reports_the_cut() {
        let t0 = Instant::now();
        let mut l = Limiter::new(3, t0);
        let admitted = (0..10).filter(|_| l.admit()).count();
        assert_eq!(admitted, 3);
        assert_eq!(
            l.roll(t0 + Duration::from_millis(500)),
            None,
            "window still open"
        );
        assert_eq!(l.roll(t0 + Duration::from_secs(1)), Some(7));
        assert!(l.admit(), "a new window admits again");
        assert_eq!(l.roll(t0 + Duration::from_secs(3)), None, "nothing cut");
    }

    #[test]
    fn backlog_records_are_placed_at_their_age() {
        let now = clock::Instant {
            unix_ns: 1_800_000_000_000_000_000,
            mono_ns: 100_000_000_000, // up 100 s
            boot_ns: 100_000_000_000,
        };
        // Logged 10 s after boot = 90 s ago.
        assert_eq!(
            backlog_time(now, 10_000_000),
            (now.unix_ns - 90_000_000_000, 10_000_000_000)
        );
        // From the future (another host's file): now.
        assert_eq!(backlog_time(now, u64::MAX), (now.unix_ns, now.mono_ns));
    }

    use std::io::Write;
    use std::sync::mpsc::{self, Receiver};

    use crate::agent::EventSource;

    /// Real records of this machine (tests/fixtures/kmsg/lab.txt).
    const LAB: &str = include_str!("../../tests/fixtures/kmsg/lab.txt");

    fn next_kind(rx: &Receiver<Event>) -> EventKind {
        rx.recv_timeout(Duration::from_secs(3))
            .expect("an event within 3 s")
            .kind
    }

    fn fifo(dir: &std::path::Path) -> PathBuf {
        let p = dir.join("kmsg.fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    #[test]
    fn fifo_records_become_tagged_events_and_gaps_become_losses() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        let (tx, rx) = mpsc::channel();
        let mut worker = start(path.clone(), 1000, tx).unwrap();
        // Let the reader find the FIFO empty first: what comes after that
        // is live, not backlog.
        std::thread::sleep(Duration::from_millis(300));
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let lab: Vec<&str> = crate::kernel::kmsg::split_records(LAB).take(20).collect();
        let first_seq = parse_record(lab[0]).unwrap().seq;
        let t_write = clock::now().unix_ns;
        for rec in &lab {
            writeln!(w, "{rec}").unwrap();
        }
        // The ring's older records were gone when we started.
        match next_kind(&rx) {
            EventKind::Agent { what, detail } => {
                assert_eq!(what, "kmsg_backlog");
                assert!(detail.contains(&format!("seq {first_seq}")), "{detail}");
            }
            k => panic!("{k:?}"),
        }
        for rec in &lab {
            let want = parse_record(rec).unwrap();
            let ev = rx.recv_timeout(Duration::from_secs(3)).unwrap();
            match ev.kind {
                EventKind::Kmsg {
                    seq,
                    text,
                    tags: t,
                    boot_us,
                    ..
                } => {
                    assert_eq!((seq, boot_us), (want.seq, want.boot_us));
                    assert_eq!(t, tags(&want.text));
                    assert_eq!(text, want.text);
                }
                k => panic!("{k:?}"),
            }
            assert!(
                ev.ts_unix_ns >= t_write,
                "live records carry their receipt time"
            );
        }
        // A catalogue line (constructed) with device info, written in two
        // pieces; then a gap of 5 sequence numbers.
        let last = parse_record(lab[19]).unwrap().seq;
        write!(
            w,
            "3,{},{},-;NETDEV WATCHDOG: eth0 (ixgbe): transmit",
            last + 1,
            1
        )
        .unwrap();
        w.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        writeln!(w, " queue 3 timed out 5184 ms\n SUBSYSTEM=net\n DEVICE=n2").unwrap();
        writeln!(w, "6,{},{},-;after the gap", last + 7, 2).unwrap();
        match next_kind(&rx) {
            EventKind::Kmsg {
                text,
                tags,
                priority,
                ..
            } => {
                assert_eq!(
                    text,
                    "NETDEV WATCHDOG: eth0 (ixgbe): transmit queue 3 timed out 5184 ms"
                );
                assert_eq!((tags, priority), (vec!["F1".to_string()], 3));
            }
            k => panic!("{k:?}"),
        }
        match next_kind(&rx) {
            EventKind::Loss { count, source, .. } => {
                assert_eq!((count, source.as_str()), (5, "kmsg"))
            }
            k => panic!("{k:?}"),
        }
        assert!(matches!(next_kind(&rx), EventKind::Kmsg { text, .. } if text == "after the gap"));
        let t0 = Instant::now();
        worker.stop();
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "stop took {:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn a_log_storm_is_capped_and_the_cut_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path());
        let (tx, rx) = mpsc::channel();
        let mut worker = start(path.clone(), 10, tx).unwrap();
        std::thread::sleep(Duration::from_millis(300)); // past the (empty) backlog
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let mut storm = String::new();
        for seq in 0..50 {
            storm.push_str(&format!("4,{seq},{seq},-;storm line {seq}\n"));
        }
        w.write_all(storm.as_bytes()).unwrap();
        let (mut lines, mut cut) = (0, 0);
        // The cut is reported when the one-second window closes, even
        // though nothing else arrives.
        while cut == 0 {
            match next_kind(&rx) {
                EventKind::Kmsg { .. } => lines += 1,
                EventKind::Loss { count, .. } => cut = count,
                k => panic!("{k:?}"),
            }
        }
        assert_eq!((lines, cut), (10, 40));
        worker.stop();
    }

    #[test]
    fn the_backlog_is_placed_at_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg.txt");
        let up_us = clock::now().mono_ns / 1000;
        // Two records already in the "ring": 60 s and 5 s old.
        std::fs::write(
            &path,
            format!(
                "6,0,{},-;old\n6,1,{},-;recent\n",
                up_us - 60_000_000,
                up_us - 5_000_000
            ),
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        // A cap of 1 line/s: the backlog is not capped (the ring bounds it).
        let mut worker = start(path.clone(), 1, tx).unwrap();
        let now = clock::now().unix_ns;
        for (want, age_s) in [("old", 60), ("recent", 5)] {
            let ev = rx.recv_timeout(Duration::from_secs(3)).unwrap();
            assert!(matches!(&ev.kind, EventKind::Kmsg { text, .. } if text == want));
            let age_ns = now - ev.ts_unix_ns;
            assert!(
                (age_s * 1_000_000_000 - 1_000_000_000..age_s * 1_000_000_000 + 1_000_000_000)
                    .contains(&age_ns),
                "{want}: {age_ns} ns old"
            );
        }
        // Appended later: live, stamped on receipt.
        let t_write = clock::now().unix_ns;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(format!("6,2,{up_us},-;live\n").as_bytes())
            .unwrap();
        let ev = rx.recv_timeout(Duration::from_secs(3)).unwrap();
        assert!(matches!(&ev.kind, EventKind::Kmsg { text, .. } if text == "live"));
        assert!(ev.ts_unix_ns >= t_write);
        worker.stop();
    }

    #[test]
    fn reads_the_real_device_needs_root() {
        // The whole ring first (one record per read()), then a line we log.
        let (tx, rx) = mpsc::channel();
        let mut worker = start("/dev/kmsg".into(), 1_000_000, tx).unwrap();
        let marker = format!("hvflight test marker {}", std::process::id());
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .unwrap()
            .write_all(format!("<6>{marker}\n").as_bytes())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut backlog, mut last_seq) = (0, None::<u64>);
        loop {
            assert!(
                Instant::now() < deadline,
                "marker not seen; {backlog} records before"
            );
            let ev = rx.recv_timeout(Duration::from_secs(5)).expect("events");
            if let EventKind::Kmsg {
                text,
                seq,
                facility,
                priority,
                ..
            } = ev.kind
            {
                if let Some(l) = last_seq {
                    assert!(seq > l, "in order");
                }
                last_seq = Some(seq);
                if text == marker {
                    // Userspace lines get facility user.
                    assert_eq!((facility, priority), (1, 6));
                    break;
                }
                backlog += 1;
            }
        }
        assert!(backlog > 0, "the existing buffer is read too");
        worker.stop();
    }
}
