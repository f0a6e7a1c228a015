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
    /// The mapped file: st_dev (from smaps' "major:minor") and inode.
    file: (u64, u64),
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
            let _offset = f.next();
            let dev = f
                .next()
                .and_then(|d| d.split_once(':'))
                .and_then(|(ma, mi)| {
                    Some(libc::makedev(
                        u32::from_str_radix(ma, 16).ok()?,
                        u32::from_str_radix(mi, 16).ok()?,
                    ))
                })
                .unwrap_or(0);
            let inode = f.next().and_then(|i| i.parse().ok()).unwrap_or(0);
            let path = f.next().unwrap_or("");
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
                    file: (dev, inode),
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

/// The files (st_dev, inode) of the executable and of the shared objects
/// loaded when the first trim ran, before any thread of the agent: only
/// their mappings are trimmed. Those are never unmapped while the process
/// lives. A library dlopen'ed later could be dlclose'd by another thread
/// between our read of smaps and our madvise, and its address range handed
/// to new anonymous memory: MADV_DONTNEED there would zero live data.
fn startup_objects() -> &'static std::collections::HashSet<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    static OBJECTS: std::sync::OnceLock<std::collections::HashSet<(u64, u64)>> =
        std::sync::OnceLock::new();
    unsafe extern "C" fn name_of(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for each object, and
        // `data` is the Vec given below, alive for the whole call.
        unsafe {
            let names = &mut *(data as *mut Vec<std::ffi::OsString>);
            let name = (*info).dlpi_name;
            if !name.is_null() {
                let n = std::ffi::CStr::from_ptr(name).to_bytes();
                if !n.is_empty() {
                    names.push(std::ffi::OsStr::from_bytes(n).to_owned());
                }
            }
        }
        0
    }
    OBJECTS.get_or_init(|| {
        // The executable's entry has an empty name: /proc/self/exe.
        let mut names = vec![std::ffi::OsString::from("/proc/self/exe")];
        // SAFETY: the callback only reads the info it is given and pushes
        // into `names`, which outlives the call.
        unsafe {
            libc::dl_iterate_phdr(Some(name_of), &mut names as *mut _ as *mut libc::c_void);
        }
        names
            .iter()
            .filter_map(|n| std::fs::metadata(n).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect()
    })
}

/// Unmaps the resident pages of the process's read-only file mappings
/// (see the module comment) of the executable and the libraries loaded
/// with it; safe at any time, meant for after each stage of start-up and
/// once later.
pub fn trim_file_pages() -> std::io::Result<Trimmed> {
    let objects = startup_objects();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut done = Trimmed::default();
    for c in candidates(&smaps)
        .into_iter()
        .filter(|c| objects.contains(&c.file))
    {
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
    spent: std::time::Duration,
}

impl Startup {
    pub fn new(on: bool) -> Startup {
        Startup {
            on,
            done: Trimmed::default(),
            trims: 0,
            spent: std::time::Duration::ZERO,
        }
    }

    /// After one stage of start-up (`stage` names it in the debug log).
    pub fn after(&mut self, stage: &str) {
        if !self.on {
            return;
        }
        let t0 = std::time::Instant::now();
        match trim_file_pages() {
            Ok(t) => {
                let spent = t0.elapsed();
                tracing::debug!(
                    stage,
                    kib = t.kib,
                    us = spent.as_micros() as u64,
                    "start-up: unmapped this stage's file pages"
                );
                self.spent += spent;
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
                ms = self.spent.as_millis() as u64,
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
                    rss_kib: 512,
                    file: (libc::makedev(0xfd, 1), 123),
                },
                Candidate {
                    start: 0x55d0a0100000,
                    len: 0x800000,
                    exec: true,
                    rss_kib: 6000,
                    file: (libc::makedev(0xfd, 1), 123),
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

    #[test]
    fn a_library_loaded_after_the_first_trim_is_never_trimmed() {
        // Such a library may be unloaded by another thread, and its range
        // reused, between reading smaps and madvise (see startup_objects).
        // libBrokenLocale (glibc's, in every Debian) is nothing the test
        // binary links.
        const LIB: &str = "libBrokenLocale.so.1";
        trim_file_pages().unwrap();
        let name = std::ffi::CString::new(LIB).unwrap();
        // SAFETY: a glibc library without constructors with side effects;
        // the handle is kept open (never dlclose'd) for the test's life.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "{LIB} not loadable: is libc6 installed?");
        let resident = || -> u64 {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut in_lib = false;
            let mut kib = 0;
            for l in smaps.lines() {
                if l.split_whitespace().next().is_some_and(|f| f.contains('-')) {
                    in_lib = l.ends_with(LIB) || l.contains(&format!("/{LIB}"));
                } else if let (true, Some(v)) = (in_lib, l.strip_prefix("Rss:")) {
                    kib += v.split_whitespace().next().unwrap().parse::<u64>().unwrap();
                }
            }
            kib
        };
        let before = resident();
        assert!(before > 0, "{LIB} mapped but nothing resident");
        let t = trim_file_pages().unwrap();
        assert!(
            t.mappings > 0,
            "the start-up objects are still trimmed: {t:?}"
        );
        assert_eq!(resident(), before, "{LIB}'s pages were unmapped");
    }
}
