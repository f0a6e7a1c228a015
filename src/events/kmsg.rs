//! The kernel log: every /dev/kmsg record becomes an event, tagged with the
//! catalogue ids it matches, up to a per-second cap (a log storm must not
//! become an agent storm; what is cut is counted in a `loss` event). On
//! start it reads the whole buffer: after a reboot that is the boot's log.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Worker;
use crate::kernel::kmsg::{parse_record, tags};
use crate::sample::{Event, EventKind};

pub fn start(path: PathBuf, max_lines_per_s: u64, tx: Sender<Event>) -> std::io::Result<Worker> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)?;
    Worker::spawn("kmsg", move |stop| run(file, max_lines_per_s, tx, stop))
}

fn wait_readable(file: &File, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

fn run(mut file: File, max_per_s: u64, tx: Sender<Event>, stop: Arc<AtomicBool>) {
    // /dev/kmsg returns one record per read(); a regular file (tests,
    // replay) returns many, split on lines that are not continuations.
    let mut buf = vec![0u8; 16 * 1024];
    let mut window = Instant::now();
    let (mut in_window, mut capped) = (0u64, 0u64);
    let mut pending = String::new();
    while !stop.load(Ordering::Relaxed) {
        match file.read(&mut buf) {
            Ok(0) => {
                std::thread::sleep(Duration::from_millis(100)); // end of a regular file: follow it
                continue;
            }
            Ok(n) => pending.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                // Records were overwritten in the ring before we read them.
                let _ = tx.send(event(EventKind::Loss {
                    source: "kmsg".into(),
                    detail: "kernel log ring overwrote unread records".into(),
                    count: 0,
                }));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_readable(&file, Duration::from_millis(200));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(event(EventKind::Loss {
                    source: "kmsg".into(),
                    detail: format!("read failed: {e}"),
                    count: 0,
                }));
                return;
            }
        }
        // Complete records only; a regular file may end mid-line.
        let Some(end) = pending.rfind('\n') else {
            continue;
        };
        let complete: String = pending.drain(..=end).collect();
        for line in complete
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
        {
            let Some(rec) = parse_record(line) else {
                continue;
            };
            if window.elapsed() >= Duration::from_secs(1) {
                if capped > 0 {
                    let _ = tx.send(event(EventKind::Loss {
                        source: "kmsg".into(),
                        detail: format!("more than {max_per_s} kernel lines per second"),
                        count: capped,
                    }));
                }
                window = Instant::now();
                in_window = 0;
                capped = 0;
            }
            in_window += 1;
            if in_window > max_per_s {
                capped += 1;
                continue;
            }
            let kind = EventKind::Kmsg {
                tags: tags(&rec.text),
                seq: rec.seq,
                priority: rec.priority,
                facility: rec.facility,
                boot_us: rec.boot_us,
                text: rec.text,
            };
            if tx.send(event(kind)).is_err() {
                return;
            }
        }
    }
}

fn event(kind: EventKind) -> Event {
    let t = crate::clock::now();
    Event {
        ts_unix_ns: t.unix_ns,
        mono_ns: t.mono_ns,
        kind,
    }
}
