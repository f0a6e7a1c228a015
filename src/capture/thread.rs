//! The capture thread: owns every pcap handle, polls them (non-blocking:
//! a blocking read with immediate mode never returns on an idle interface
//! with this libpcap), copies what the kernel filter passed into the ring,
//! reopens interfaces that failed, measures its own CPU time every second
//! against the budget and sheds or restores the sampled share.
//!
//! One thread for all interfaces, started after the agent entered its
//! namespace (or entering `netns` itself: setns applies per thread), at a
//! lower scheduling priority than the sampler. Everything it shares sits
//! behind one `Arc<Shared>`; a `CaptureHandle` is a cheap clone of it.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::budget::{Budget, Step};
use super::filter::{self, Insn};
use super::ring::{Class, Packet, Ring, RingLimits};
use super::select::Want;
use super::CaptureConfig;
use crate::sample::capture::{Capture as Section, CaptureIface};
use crate::sample::{Event, EventKind};

/// An interface as the ring knows it (ring id = index in `Shared::ifaces`).
#[derive(Clone, Debug, PartialEq)]
pub struct IfaceInfo {
    pub want: Want,
    /// DLT of the handle (1 = Ethernet).
    pub linktype: i32,
    pub snaplen: u32,
}

/// Packets of a time window with what is needed to describe them.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub from_unix_ns: i64,
    pub to_unix_ns: i64,
    pub ifaces: Vec<IfaceInfo>,
    pub packets: Vec<Packet>,
    /// The ring's state when the snapshot was taken.
    pub section: Section,
    pub filter: String,
    pub snaplen: u32,
    pub sample_share: f64,
    pub headers_only: bool,
}

struct Shared {
    cfg: CaptureConfig,
    ring: Mutex<Ring>,
    ifaces: Mutex<Vec<IfaceInfo>>,
    section: Mutex<Section>,
    wanted: Mutex<(u64, Vec<Want>)>,
    /// Set by the first `set_wanted`: the thread starts its work then, so
    /// that it does not compete with the agent's own start.
    asked: AtomicBool,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle on the running capture: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct CaptureHandle {
    shared: Arc<Shared>,
}

/// Owns the capture thread: stops and joins it on drop.
pub struct CaptureThread {
    handle: CaptureHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CaptureThread {
    /// Starts the thread. `netns`: a namespace for the thread to enter
    /// (None = the process's). `events`: where capture events go.
    pub fn start(
        cfg: CaptureConfig,
        netns: Option<PathBuf>,
        events: Option<Sender<Event>>,
    ) -> std::io::Result<CaptureThread> {
        let now = crate::clock::now().unix_ns;
        let limits = RingLimits {
            max_bytes: cfg.ring_max_bytes,
            sampled_share: if cfg.sample_share > 0.0 {
                cfg.ring_sampled_share
            } else {
                0.0
            },
            keep_ns: cfg.before_s as i64 * 1_000_000_000,
        };
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring::new(&limits, now)),
            ifaces: Mutex::new(Vec::new()),
            section: Mutex::new(Section {
                cpu_budget_ms_per_s: cfg.cpu_budget_ms_per_s,
                sample_share: cfg.sample_share,
                ..Default::default()
            }),
            wanted: Mutex::new((0, Vec::new())),
            asked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            cfg,
        });
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hvflight-capture".into())
            .spawn(move || run(s2, netns, events))?;
        Ok(CaptureThread {
            handle: CaptureHandle { shared },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> CaptureHandle {
        self.handle.clone()
    }
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        self.handle.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl CaptureHandle {
    pub fn config(&self) -> &CaptureConfig {
        &self.shared.cfg
    }

    /// The interfaces to capture on from now on.
    pub fn set_wanted(&self, w: Vec<Want>) {
        self.shared.asked.store(true, Ordering::Relaxed);
        let mut cur = lock(&self.shared.wanted);
        if cur.1 != w {
            cur.0 += 1;
            cur.1 = w;
        }
    }

    /// Counters for the sample and status.
    pub fn section(&self) -> Section {
        lock(&self.shared.section).clone()
    }

    /// Pins packets from `from_unix_ns` on until released or `deadline_unix_ns`.
    pub fn hold(&self, from_unix_ns: i64, deadline_unix_ns: i64) -> u64 {
        lock(&self.shared.ring).hold(from_unix_ns, deadline_unix_ns)
    }

    pub fn release(&self, id: u64) {
        lock(&self.shared.ring).release(id);
    }

    /// Packets with `from <= ts <= to` and their interfaces (what arrived
    /// in the last `poll_ms` may still sit in the kernel's block).
    pub fn snapshot(&self, from_unix_ns: i64, to_unix_ns: i64) -> Snapshot {
        let mut s = self.snapshot_meta(from_unix_ns, to_unix_ns);
        s.packets = lock(&self.shared.ring).copy_range(from_unix_ns, to_unix_ns);
        s
    }
}

impl CaptureHandle {
    /// Streams the packets with `from <= ts <= to` as pcapng into `out`
    /// without copying them packet by packet: the ring's chunks are copied
    /// raw under the lock, indexed by time and written outside it.
    /// Returns what was written and the snapshot's description (no packets).
    pub fn pcapng_to<W: std::io::Write>(
        &self,
        from_unix_ns: i64,
        to_unix_ns: i64,
        split_unix_ns: i64,
        out: W,
    ) -> Result<(super::pcapng::Summary, Snapshot), pcap_file::PcapError> {
        let mut meta = self.snapshot_meta(from_unix_ns, to_unix_ns);
        let mut raw = lock(&self.shared.ring).raw_range(from_unix_ns, to_unix_ns);
        raw.index();
        let sum = super::pcapng::write_to(&meta, raw.iter(), out, split_unix_ns)?;
        meta.packets.clear();
        Ok((sum, meta))
    }

    fn snapshot_meta(&self, from_unix_ns: i64, to_unix_ns: i64) -> Snapshot {
        // No wait for the kernel's last block (up to poll_ms old): the
        // bundle written at once must not be late; the completed one, made
        // after the post-window, has those packets.
        let cfg = &self.shared.cfg;
        let section = self.section();
        Snapshot {
            from_unix_ns,
            to_unix_ns,
            ifaces: lock(&self.shared.ifaces).clone(),
            packets: Vec::new(),
            sample_share: if section.shedding {
                0.0
            } else {
                cfg.sample_share
            },
            section,
            filter: cfg.control_expr(),
            snaplen: cfg.snaplen_bytes as u32,
            headers_only: cfg.headers_only,
        }
    }
}

/// One open pcap handle.
struct Open {
    want: Want,
    id: u16,
    cap: pcap::Capture<pcap::Active>,
    fd: RawFd,
    control: Vec<Insn>,
    sampled: Vec<Insn>,
    linktype: i32,
}

/// What the thread remembers per interface across handles.
#[derive(Default)]
struct Track {
    status: CaptureIface,
    /// pcap_stats of handles already closed.
    base: (u64, u64, u64),
    /// pcap_stats of the open handle.
    cur: (u64, u64, u64),
    retry_at: Option<Instant>,
}

struct Worker {
    shared: Arc<Shared>,
    events: Option<Sender<Event>>,
    open: Vec<Open>,
    track: HashMap<String, Track>,
    /// Offline copy of the control-plane program, to tell control from sampled.
    classify: Option<pcap::BpfProgram>,
    budget: Budget,
    wanted_gen: u64,
    wanted: Vec<Want>,
    control_total: u64,
    sampled_total: u64,
}

fn thread_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn iface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

fn run(shared: Arc<Shared>, netns: Option<PathBuf>, events: Option<Sender<Event>>) {
    // Capture must not compete with the sampler or the guests: nice 10.
    // SAFETY: plain syscalls on this thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
    let mut w = Worker {
        budget: Budget::new(
            shared.cfg.cpu_budget_ms_per_s,
            shared.cfg.shed_after_s,
            shared.cfg.restore_after_s,
        ),
        shared,
        events,
        open: Vec::new(),
        track: HashMap::new(),
        classify: None,
        wanted_gen: 0,
        wanted: Vec::new(),
        control_total: 0,
        sampled_total: 0,
    };
    while !w.shared.asked.load(Ordering::Relaxed) {
        if w.shared.stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(ns) = &netns {
        if let Err(e) = crate::source::netns::enter_thread(&ns.display().to_string()) {
            w.event("", "unavailable", e.to_string());
            tracing::error!(error = %e, "capture not started");
            return;
        }
    }
    match pcap::Capture::dead(pcap::Linktype::ETHERNET)
        .and_then(|d| d.compile(&w.shared.cfg.control_expr(), true))
    {
        Ok(p) => w.classify = Some(p),
        Err(e) => {
            w.event("", "unavailable", format!("filter: {e}"));
            tracing::error!(error = %e, "capture filter does not compile; capture not started");
            return;
        }
    }
    w.main_loop();
}

impl Worker {
    fn event(&self, iface: &str, what: &str, detail: String) {
        match what {
            "failed" | "unavailable" | "shed" | "over_budget" => {
                tracing::warn!(iface, what, %detail, "capture")
            }
            _ => tracing::info!(iface, what, %detail, "capture"),
        }
        if let Some(tx) = &self.events {
            let t = crate::clock::now();
            let _ = tx.send(Event {
                ts_unix_ns: t.unix_ns,
                mono_ns: t.mono_ns,
                kind: EventKind::Capture {
                    iface: iface.into(),
                    what: what.into(),
                    detail,
                },
            });
        }
    }

    fn main_loop(&mut self) {
        let poll_ms = self.shared.cfg.poll_ms as i32;
        let mut second = Instant::now();
        let mut cpu0 = thread_cpu_ms();
        let mut batch: Vec<(Class, i64, u16, u32, usize, usize)> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.reconcile();
            let mut fds: Vec<libc::pollfd> = self
                .open
                .iter()
                .map(|o| libc::pollfd {
                    fd: o.fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            if fds.is_empty() {
                std::thread::sleep(Duration::from_millis(poll_ms as u64));
            } else {
                // SAFETY: fds is a valid array of pollfd for the call.
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, poll_ms) };
            }
            let mut failed: Vec<(usize, String)> = Vec::new();
            for (i, pfd) in fds.iter().enumerate() {
                if let Err(e) = self.drain(i, &mut batch, &mut bytes) {
                    failed.push((i, e));
                } else if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    // A socket error with nothing to read: the interface went away.
                    failed.push((i, socket_error(pfd.fd)));
                }
            }
            if !batch.is_empty() {
                let mut ring = lock(&self.shared.ring);
                for &(class, ts, id, orig, at, len) in &batch {
                    ring.push(class, ts, id, orig, &bytes[at..at + len]);
                }
                drop(ring);
                batch.clear();
                bytes.clear();
            }
            for (i, e) in failed.into_iter().rev() {
                let o = self.open.remove(i);
                let w = o.want.clone();
                self.fail(&w, e, Some(o));
            }
            let el = second.elapsed();
            if el >= Duration::from_secs(1) {
                let cpu = thread_cpu_ms();
                let per_s = (cpu - cpu0) / el.as_secs_f64();
                cpu0 = cpu;
                second = Instant::now();
                self.each_second(per_s);
            }
        }
    }

    /// Reads everything a handle has (bounded per round, so one busy
    /// interface cannot starve the others).
    fn drain(
        &mut self,
        i: usize,
        batch: &mut Vec<(Class, i64, u16, u32, usize, usize)>,
        bytes: &mut Vec<u8>,
    ) -> Result<(), String> {
        let headers_only = self.shared.cfg.headers_only;
        let o = &mut self.open[i];
        let classify = self.classify.as_ref();
        let mut n = 0u64;
        let mut b = 0u64;
        for _ in 0..20_000 {
            match o.cap.next_packet() {
                Ok(p) => {
                    let ts = p.header.ts.tv_sec * 1_000_000_000 + p.header.ts.tv_usec;
                    let data = p.data;
                    let class = match classify {
                        Some(c) if o.linktype != 1 || c.filter(data) => Class::Control,
                        _ => Class::Sampled,
                    };
                    let keep = if !headers_only {
                        data.len()
                    } else if o.linktype == 1 {
                        super::trim::headers_only(data)
                    } else {
                        data.len().min(64)
                    };
                    let at = bytes.len();
                    bytes.extend_from_slice(&data[..keep]);
                    batch.push((class, ts, o.id, p.header.len, at, keep));
                    n += 1;
                    b += data.len() as u64;
                    match class {
                        Class::Control => self.control_total += 1,
                        Class::Sampled => self.sampled_total += 1,
                    }
                }
                Err(pcap::Error::TimeoutExpired) | Err(pcap::Error::NoMorePackets) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        if let Some(t) = self.track.get_mut(&o.want.name) {
            t.status.packets_total += n;
            t.status.bytes_total += b;
        }
        Ok(())
    }

    fn reconcile(&mut self) {
        let (gen, wanted) = {
            let w = lock(&self.shared.wanted);
            (w.0, w.1.clone())
        };
        if gen != self.wanted_gen {
            self.wanted_gen = gen;
            self.wanted = wanted;
            // Close what is no longer wanted (or was re-created under the same name).
            let mut i = 0;
            while i < self.open.len() {
                let keep = self.wanted.iter().any(|w| {
                    w.name == self.open[i].want.name && w.ifindex == self.open[i].want.ifindex
                });
                if keep {
                    i += 1;
                    continue;
                }
                let o = self.open.remove(i);
                let name = o.want.name.clone();
                if !iface_exists(&name) && o.want.role != super::select::Role::Vnic {
                    let w = o.want.clone();
                    self.fail(&w, "the interface vanished".into(), Some(o));
                } else {
                    self.close(o);
                    if self.wanted.iter().any(|w| w.name == name) {
                        self.event(&name, "reopen", "re-created (new ifindex)".into());
                    } else {
                        self.event(&name, "stopped", "no longer to be captured".into());
                        self.track.remove(&name);
                    }
                }
            }
            // A failed uplink stays visible (as failed) until it is back; a
            // vNIC that is no longer wanted is a guest gone: forget it.
            let names: Vec<String> = self.wanted.iter().map(|w| w.name.clone()).collect();
            self.track.retain(|n, t| {
                names.contains(n) || (t.status.state == "failed" && t.status.role != "vnic")
            });
        }
        let now = Instant::now();
        for w in self.wanted.clone() {
            if self.open.iter().any(|o| o.want.name == w.name) {
                continue;
            }
            if self
                .track
                .get(&w.name)
                .and_then(|t| t.retry_at)
                .is_some_and(|r| r > now)
            {
                continue;
            }
            match self.open_iface(&w) {
                Ok(o) => {
                    let was_failed = self
                        .track
                        .get(&w.name)
                        .is_some_and(|t| t.status.state == "failed");
                    let t = self.track.entry(w.name.clone()).or_default();
                    t.status.name = w.name.clone();
                    t.status.role = w.role.name().into();
                    t.status.bridge = w.bridge.clone();
                    t.status.state = "capturing".into();
                    t.status.error.clear();
                    t.status.since_unix_ns = crate::clock::now().unix_ns;
                    t.retry_at = None;
                    t.cur = (0, 0, 0);
                    let detail = format!(
                        "{}, snaplen {}, sampled share {}",
                        w.description(),
                        self.shared.cfg.snaplen_bytes,
                        if self.budget.shedding {
                            0.0
                        } else {
                            self.shared.cfg.sample_share
                        }
                    );
                    self.event(
                        &w.name,
                        if was_failed { "recovered" } else { "started" },
                        detail,
                    );
                    self.open.push(o);
                }
                Err(e) => self.fail(&w, e, None),
            }
        }
    }

    fn open_iface(&mut self, w: &Want) -> Result<Open, String> {
        let cfg = &self.shared.cfg;
        let snaplen = cfg.snaplen_bytes as i32;
        let mut cap = pcap::Capture::from_device(w.name.as_str())
            .map_err(|e| e.to_string())?
            .promisc(false)
            .snaplen(snaplen)
            // Non-immediate: libpcap then uses TPACKET_V3, whose blocks are
            // handed over when full or after this timeout.
            .immediate_mode(false)
            .timeout(cfg.poll_ms as i32)
            .buffer_size(cfg.kernel_buffer_bytes.min(i32::MAX as u64) as i32)
            .precision(pcap::Precision::Nano)
            .open()
            .map_err(|e| e.to_string())?
            .setnonblock()
            .map_err(|e| e.to_string())?;
        let expr = cfg.control_expr();
        // libpcap's own setfilter first: it also filters what the kernel
        // ring caught before any filter was attached.
        cap.filter(&expr, true)
            .map_err(|e| format!("filter: {e}"))?;
        let control = filter::from_pcap(&cap.compile(&expr, true).map_err(|e| e.to_string())?);
        let sampled = filter::with_sampling(&control, cfg.sample_share, snaplen as u32)
            .map_err(|e| e.to_string())?;
        let fd = cap.as_raw_fd();
        if cfg.sample_share > 0.0 && !self.budget.shedding {
            filter::attach(fd, &sampled, &w.name).map_err(|e| e.to_string())?;
        }
        let linktype = cap.get_datalink().0;
        let id = {
            let mut ifaces = lock(&self.shared.ifaces);
            let info = IfaceInfo {
                want: w.clone(),
                linktype,
                snaplen: snaplen as u32,
            };
            match ifaces.iter().position(|i| i.want.name == w.name) {
                Some(p) => {
                    ifaces[p] = info;
                    p
                }
                None => {
                    ifaces.push(info);
                    ifaces.len() - 1
                }
            }
        };
        Ok(Open {
            want: w.clone(),
            id: id.min(u16::MAX as usize) as u16,
            cap,
            fd,
            control,
            sampled,
            linktype,
        })
    }

    fn fold_stats(&mut self, o: &mut Open) {
        if let (Ok(s), Some(t)) = (o.cap.stats(), self.track.get_mut(&o.want.name)) {
            t.cur = (s.received as u64, s.dropped as u64, s.if_dropped as u64);
        }
    }

    fn close(&mut self, mut o: Open) {
        self.fold_stats(&mut o);
        if let Some(t) = self.track.get_mut(&o.want.name) {
            t.base.0 += t.cur.0;
            t.base.1 += t.cur.1;
            t.base.2 += t.cur.2;
            t.cur = (0, 0, 0);
        }
    }

    fn fail(&mut self, w: &Want, error: String, open: Option<Open>) {
        if let Some(o) = open {
            self.close(o);
        }
        let retry = Duration::from_millis(self.shared.cfg.retry_ms);
        let t = self.track.entry(w.name.clone()).or_default();
        let first = t.status.state != "failed" || t.status.error != error;
        t.status.name = w.name.clone();
        t.status.role = w.role.name().into();
        t.status.bridge = w.bridge.clone();
        if t.status.state != "failed" {
            t.status.since_unix_ns = crate::clock::now().unix_ns;
        }
        t.status.state = "failed".into();
        t.status.error = error.clone();
        t.status.failures_total += 1;
        t.retry_at = Some(Instant::now() + retry);
        if first {
            self.event(
                &w.name,
                "failed",
                format!("{error}; retrying every {} ms", retry.as_millis()),
            );
        }
    }

    fn each_second(&mut self, cpu_ms: f64) {
        match self.budget.observe(cpu_ms) {
            Step::Shed => {
                let mut errs = Vec::new();
                for o in &self.open {
                    if let Err(e) = filter::attach(o.fd, &o.control, &o.want.name) {
                        errs.push(e.to_string());
                    }
                }
                self.event(
                    "",
                    "shed",
                    format!(
                        "capture thread used {cpu_ms:.1} ms/s (budget {} ms/s): sampled share off, control plane only{}",
                        self.budget.ms_per_s,
                        if errs.is_empty() { String::new() } else { format!("; {}", errs.join("; ")) }
                    ),
                );
            }
            Step::Restore => {
                for o in &self.open {
                    if self.shared.cfg.sample_share > 0.0 {
                        let _ = filter::attach(o.fd, &o.sampled, &o.want.name);
                    }
                }
                self.event(
                    "",
                    "restored",
                    format!(
                        "capture thread at {cpu_ms:.1} ms/s: sampled share {} back",
                        self.shared.cfg.sample_share
                    ),
                );
            }
            Step::Keep => {
                if self.budget.shedding
                    && cpu_ms > self.budget.ms_per_s
                    && self.budget.over_while_shed_s == 1
                {
                    self.event(
                        "",
                        "over_budget",
                        format!(
                            "{cpu_ms:.1} ms/s with the control plane only (budget {} ms/s)",
                            self.budget.ms_per_s
                        ),
                    );
                }
            }
        }
        let mut opens = std::mem::take(&mut self.open);
        for o in opens.iter_mut() {
            self.fold_stats(o);
        }
        self.open = opens;
        let now = crate::clock::now().unix_ns;
        let rs = {
            let mut ring = lock(&self.shared.ring);
            ring.expire(now);
            ring.stats()
        };
        let mut ifaces: Vec<CaptureIface> = self
            .track
            .values()
            .map(|t| {
                let mut s = t.status.clone();
                s.kernel_received_total = t.base.0 + t.cur.0;
                s.kernel_dropped_total = t.base.1 + t.cur.1;
                s.interface_dropped_total = t.base.2 + t.cur.2;
                s
            })
            .collect();
        ifaces.sort_by(|a, b| a.name.cmp(&b.name));
        let sec = Section {
            interfaces: ifaces,
            ring_bytes: rs.control.ring_bytes + rs.sampled.ring_bytes,
            ring_max_bytes: rs.control.max_bytes
                + if self.shared.cfg.sample_share > 0.0 {
                    rs.sampled.max_bytes
                } else {
                    0
                },
            ring_packets: rs.control.kept_packets + rs.sampled.kept_packets,
            oldest_unix_ns: rs.oldest_unix_ns,
            newest_unix_ns: rs.newest_unix_ns,
            complete_since_unix_ns: rs.control.complete_since_unix_ns,
            sampled_complete_since_unix_ns: rs.sampled.complete_since_unix_ns,
            control_packets_total: self.control_total,
            sampled_packets_total: self.sampled_total,
            evicted_packets_total: rs.control.evicted_packets + rs.sampled.evicted_packets,
            refused_packets_total: rs.control.refused_packets + rs.sampled.refused_packets,
            cpu_ms_last_s: (cpu_ms * 100.0).round() / 100.0,
            cpu_budget_ms_per_s: self.budget.ms_per_s,
            shedding: self.budget.shedding,
            shed_total: self.budget.shed_count,
            shed_seconds_total: self.budget.shed_seconds,
            over_budget_while_shed_seconds_total: self.budget.over_while_shed_s,
            sample_share: if self.budget.shedding {
                0.0
            } else {
                self.shared.cfg.sample_share
            },
            holds: rs.holds as u64,
        };
        *lock(&self.shared.section) = sec;
    }
}

fn socket_error(fd: RawFd) -> String {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err/len are valid for getsockopt(SO_ERROR).
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if r == 0 && err != 0 {
        std::io::Error::from_raw_os_error(err).to_string()
    } else {
        "capture socket reported an error or hang-up".into()
    }
}
