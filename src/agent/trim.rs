//! Gives back the pages of the binary and its shared libraries that only
//! start-up used.
//!
//! Start-up runs code the agent never runs again: argument and config
//! parsing, the BPF loader, libvirt's driver set-up, the first full dumps.
//! Its pages stay mapped (and counted in RSS) for the agent's whole life,
//! and the kernel maps up to 16 neighbours of every page touched
//! ("fault-around"), so at 500 vNICs ~33 MiB of the agent's RSS is file
//! pages of which a sample needs about two thirds.
//!
//! After start-up, the agent drops its page-table entries of every
//! read-only file mapping that has no private (copy-on-write) page:
//! `madvise(MADV_DONTNEED)` there only unmaps; the pages stay in the page
//! cache and a later access maps them again (a minor fault, no disk read).
//! Writable mappings and mappings with private pages (relocated data) are
//! never touched: dropping those would lose their contents. Executable
//! mappings also get `MADV_RANDOM`: a page read back from disk brings no
//! read-ahead with it. It does not stop fault-around of cached pages (on
//! 6.18, `MADV_RANDOM` on every file mapping before start-up left the
//! start-up RSS the same, 30.4 MiB of file pages at 500 vNICs), which is
//! why trimming, not advice, is what gives them back.
//!
//! Start-up itself is trimmed too, between its stages ([`Startup`]): every
//! stage (entering the namespace, libvirt's connection, the capture and BPF
//! set-up, the bundle worker, the first full sample) touches code of its
//! own, and kept mapped they add up. At 500 vNICs the peak RSS since start
//! was ~52 MiB with one trim at 10 s, ~33 MiB with a trim after each stage
//! (docs/performance.md). /proc/self/smaps is read by hand: procfs' smaps
//! parser allocates a map per mapping, and this runs a few times.

/// What one trim did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Mappings unmapped.
    pub mappings: usize,
    /// Their resident size before, in KiB.
    pub kib: u64,
}

/// One mapping of /proc/self/smaps that may be dropped.
#[derive(Debug, PartialEq, Eq)]
struct Candidate {
    start: usize,
    len: usize,
    exec: bool,
    rss_kib: u64,
}

/// Read-only file mappings with resident pages and no private ones.
fn candidates(smaps: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut cur: Option<(Candidate, bool)> = None; // (mapping, eligible so far)
    let finish = |c: Option<(Candidate, bool)>, out: &mut Vec<Candidate>| {
        if let Some((c, true)) = c {
            if c.rss_kib > 0 {
                out.push(c);
            }
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            // A mapping header: "start-end perms offset dev inode [path]".
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            finish(cur.take(), &mut out);
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            let eligible = path.starts_with('/')
                && perms.starts_with('r')
                && perms.as_bytes().get(1) == Some(&b'-')
                && perms.ends_with('p');
            cur = Some((
                Candidate {
                    start: a,
                    len: b.saturating_sub(a),
                    exec: perms.as_bytes().get(2) == Some(&b'x'),
                    rss_kib: 0,
                },
                eligible,
            ));
            continue;
        }
        let Some((c, eligible)) = cur.as_mut() else {
            continue;
        };
        let kib = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match first {
            "Rss:" => c.rss_kib = kib,
            // Copy-on-write pages (relocations): unmapping would lose them.
            "Anonymous:" | "Private_Dirty:" | "Shared_Dirty:" if kib > 0 => *eligible = false,
            // mlock'ed: MADV_DONTNEED fails there anyway.
            "Locked:" if kib > 0 => *eligible = false,
            _ => {}
        }
    }
    finish(cur.take(), &mut out);
    out
}

/// Unmaps the resident pages of the process's read-only file mappings
/// (see the module comment); safe at any time, meant once after start-up.
pub fn trim_file_pages() -> std::io::Result<Trimmed> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut done = Trimmed::default();
    for c in candidates(&smaps) {
        // SAFETY: the range is a whole read-only private file mapping with
        // no private pages (checked above; nothing can write to it), so
        // MADV_DONTNEED only drops page-table entries and the next access
        // maps the same file contents again. MADV_RANDOM only changes the
        // kernel's read-ahead for the range.
        unsafe {
            let addr = c.start as *mut libc::c_void;
            if c.exec {
                libc::madvise(addr, c.len, libc::MADV_RANDOM);
            }
            if libc::madvise(addr, c.len, libc::MADV_DONTNEED) == 0 {
                done.mappings += 1;
                done.kib += c.rss_kib;
            }
        }
    }
    Ok(done)
}

/// Trims between the stages of start-up (see the module comment), so that
/// the file pages of one stage are not still mapped when the next adds its
/// own. Off, every call does nothing.
#[derive(Debug)]
pub struct Startup {
    on: bool,
    done: Trimmed,
    trims: usize,
}

impl Startup {
    pub fn new(on: bool) -> Startup {
        Startup {
            on,
            done: Trimmed::default(),
            trims: 0,
        }
    }

    /// After one stage of start-up (`stage` names it in the debug log).
    pub fn after(&mut self, stage: &str) {
        if !self.on {
            return;
        }
        match trim_file_pages() {
            Ok(t) => {
                tracing::debug!(
                    stage,
                    kib = t.kib,
                    "start-up: unmapped this stage's file pages"
                );
                self.trims += 1;
                self.done.mappings += t.mappings;
                self.done.kib += t.kib;
            }
            Err(e) => {
                // Without smaps no later stage can trim either.
                tracing::warn!(error = %e, stage, "could not read /proc/self/smaps to trim file pages");
                self.on = false;
            }
        }
    }

    /// Start-up is over: one log line with what the stages gave back.
    pub fn finish(&mut self) {
        if self.on && self.trims > 0 {
            tracing::info!(
                stages = self.trims,
                kib = self.done.kib,
                "start-up: unmapped the file pages each stage touched"
            );
        }
        self.on = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 123 /usr/bin/hvflight
Size:               1024 kB
Rss:                 512 kB
Shared_Dirty:          0 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Locked:                0 kB
55d0a0100000-55d0a0900000 r-xp 00100000 fd:01 123 /usr/bin/hvflight
Size:               8192 kB
Rss:                6000 kB
Anonymous:             0 kB
55d0a0900000-55d0a0a00000 r--p 00900000 fd:01 123 /usr/bin/hvflight
Size:               1024 kB
Rss:                 600 kB
Private_Dirty:       600 kB
Anonymous:           600 kB
55d0a0a00000-55d0a0a10000 rw-p 00a00000 fd:01 123 /usr/bin/hvflight
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
Anonymous:          1024 kB
7f0000100000-7f0000200000 r-xp 00000000 fd:01 456 /usr/lib/libfoo.so
Size:               1024 kB
Rss:                   0 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-s 00000000 00:08 789 socket:[1234]
Size:               1024 kB
Rss:                1024 kB
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
";

    #[test]
    fn only_read_only_file_mappings_without_private_pages_are_dropped() {
        let c = candidates(SMAPS);
        assert_eq!(
            c,
            vec![
                Candidate {
                    start: 0x55d0a0000000,
                    len: 0x100000,
                    exec: false,
                    rss_kib: 512
                },
                Candidate {
                    start: 0x55d0a0100000,
                    len: 0x800000,
                    exec: true,
                    rss_kib: 6000
                },
            ],
            "relocated data, writable data, anonymous memory, sockets, the \
             vdso and mappings with nothing resident are left alone"
        );
    }

    #[test]
    fn trimming_itself_keeps_the_process_working_and_lowers_file_rss() {
        fn rss_file_kib() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            s.lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap()
        }
        let before = rss_file_kib();
        let t = trim_file_pages().unwrap();
        let after = rss_file_kib();
        assert!(t.mappings > 0 && t.kib > 0, "{t:?}");
        assert!(after < before, "RssFile {before} -> {after} KiB");
        // Code and constants come back on use: formatting, parsing and
        // allocation (libc, the test binary) still work.
        let v: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(v[255], "ff");
        assert_eq!(u64::from_str_radix(&v[999], 16).unwrap(), 999);
    }
}
