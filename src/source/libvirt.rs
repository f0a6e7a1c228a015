//! libvirt access on a worker thread. Every libvirt call is blocking FFI and
//! libvirtd may hang (or be stopped), so the calls run on one thread and
//! the sampler waits for its answer with a timeout: a hung libvirtd costs a
//! timeout, never the sampling cadence. The worker reconnects on its own,
//! with exponential backoff. Its read-only connection is the one the events
//! listener uses too (source::libvirt_conn).
//!
//! Cost per round, whatever the number of domains: one
//! virConnectGetAllDomainStats(STATE) RPC (names, UUIDs and ids come with
//! the domain handles, no further RPC), plus one XML fetch per domain that
//! is new, changed state, or whose cached XML is older than the refresh
//! interval (at most `MAX_AGED_REFETCH_PER_ROUND` of the latter per round,
//! so 500 domains defined at once do not all expire in the same second).

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use thiserror::Error;
use virt::connect::Connect;
use virt::domain::Domain;
use virt_sys as sys;

use crate::kernel::domain_xml::{self, DomainXml};
use crate::source::libvirt_conn::SharedConn;

/// Age-based XML re-fetches per round; new domains and state changes are
/// always fetched at once.
pub const MAX_AGED_REFETCH_PER_ROUND: usize = 16;

/// Reconnect delays double after each failure up to this multiple of the
/// configured interval (5 s → at most 40 s between attempts).
pub const BACKOFF_MAX_FACTOR: u32 = 8;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum LibvirtError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("not connected (last error: {last}); next attempt in {retry_in_ms} ms")]
    Backoff { last: String, retry_in_ms: u64 },
    #[error("{call}: {msg}")]
    Call { call: &'static str, msg: String },
    #[error("no answer within {ms} ms")]
    Timeout { ms: u64 },
    #[error("the previous libvirt call has been running for {ms} ms (libvirtd hung?)")]
    Busy { ms: u64 },
    #[error("the libvirt worker thread is gone")]
    WorkerGone,
}

impl LibvirtError {
    /// True when libvirt did not answer in time (as opposed to answering "no").
    pub fn timed_out(&self) -> bool {
        matches!(
            self,
            LibvirtError::Timeout { .. } | LibvirtError::Busy { .. }
        )
    }
}

/// What libvirt says about one domain (no host-side resolution yet).
#[derive(Clone, Debug, PartialEq)]
pub struct RawDomain {
    pub name: String,
    pub uuid: String,
    pub id: Option<u32>,
    pub state: u32,
    pub reason: i32,
    pub xml: DomainXml,
    /// Why `xml` is empty, when the fetch or the parse failed.
    pub xml_error: Option<String>,
}

/// One round's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub domains: Vec<RawDomain>,
    /// Domain XMLs fetched this round (the rest came from the cache).
    pub xml_fetches: u32,
}

type Reply = Result<Snapshot, LibvirtError>;

/// Reconnect pacing: `base` after the first failure, doubling up to `max`;
/// back to immediate after a success. Pure (time is passed in).
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    delay: Duration,
    next_at: Option<Instant>,
}

impl Backoff {
    pub fn new(base: Duration) -> Backoff {
        Backoff {
            base,
            max: base * BACKOFF_MAX_FACTOR,
            delay: base,
            next_at: None,
        }
    }
    /// May we try now?
    pub fn ready(&self, now: Instant) -> bool {
        self.next_at.is_none_or(|t| now >= t)
    }
    /// How long until the next attempt is allowed.
    pub fn retry_in(&self, now: Instant) -> Duration {
        self.next_at
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default()
    }
    pub fn failed(&mut self, now: Instant) {
        self.next_at = Some(now + self.delay);
        self.delay = (self.delay * 2).min(self.max);
    }
    pub fn succeeded(&mut self) {
        self.delay = self.base;
        self.next_at = None;
    }
}

/// The sampler's handle on the worker thread.
pub struct LibvirtWorker {
    pub uri: String,
    tx: Sender<Sender<Reply>>,
    /// The reply channel of a request the worker has not answered yet, and
    /// when it was sent.
    pending: Option<(Receiver<Reply>, Instant)>,
}

impl LibvirtWorker {
    /// Starts the worker thread. It connects on the first request, not
    /// here: starting never blocks. If the thread cannot be spawned every
    /// request fails with `WorkerGone` (and that lands in the samples).
    pub fn start(uri: String, reconnect: Duration, xml_refresh: Duration) -> LibvirtWorker {
        // libvirt prints every error to stderr by default; ours are
        // recorded in the sample instead.
        virt::error::clear_error_callback();
        let (tx, rx) = mpsc::channel::<Sender<Reply>>();
        let mut st = State {
            shared: SharedConn::for_uri(&uri),
            conn: None,
            backoff: Backoff::new(reconnect),
            last_error: String::new(),
            xml_refresh,
            xml_cache: HashMap::new(),
        };
        let spawned = std::thread::Builder::new()
            .name("hvflight-libvirt".into())
            .spawn(move || {
                // Ends when the collector (the sender) is dropped.
                for reply in rx {
                    let r = st.snapshot();
                    let _ = reply.send(r);
                }
                st.disconnect(false);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the libvirt worker thread");
        }
        LibvirtWorker {
            uri,
            tx,
            pending: None,
        }
    }

    /// Asks the worker for the domains and waits at most `timeout`. While an
    /// earlier request is still running (libvirtd hung), no new one is
    /// queued: the answer is `Busy` at once, so a hung libvirtd costs one
    /// timeout, then nothing, until it answers.
    pub fn domains(&mut self, timeout: Duration) -> Result<Snapshot, LibvirtError> {
        let rx = match self.pending.take() {
            Some((rx, since)) => match rx.try_recv() {
                // The late answer of a request we gave up on: stale, ask anew.
                Ok(_) | Err(mpsc::TryRecvError::Disconnected) => self.request()?,
                Err(mpsc::TryRecvError::Empty) => {
                    let ms = since.elapsed().as_millis() as u64;
                    self.pending = Some((rx, since));
                    return Err(LibvirtError::Busy { ms });
                }
            },
            None => self.request()?,
        };
        let sent = Instant::now();
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                self.pending = Some((rx, sent));
                Err(LibvirtError::Timeout {
                    ms: timeout.as_millis() as u64,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(LibvirtError::WorkerGone),
        }
    }

    fn request(&mut self) -> Result<Receiver<Reply>, LibvirtError> {
        let (rtx, rrx) = mpsc::channel();
        self.tx.send(rtx).map_err(|_| LibvirtError::WorkerGone)?;
        Ok(rrx)
    }
}

struct Cached {
    xml: DomainXml,
    fetched: Instant,
    state: u32,
}

/// Owned by the worker thread only.
struct State {
    shared: std::sync::Arc<SharedConn>,
    conn: Option<Connect>,
    backoff: Backoff,
    last_error: String,
    xml_refresh: Duration,
    /// (uuid, id) → parsed XML. A restart changes the id, so a restarted
    /// domain is fetched again; a state change also forces a fetch.
    xml_cache: HashMap<(String, Option<u32>), Cached>,
}

/// One domain as listed, with a handle for fetching its XML.
struct Listed {
    dom: Domain,
    name: String,
    uuid: String,
    id: Option<u32>,
    state: u32,
    reason: i32,
}

fn err_msg(e: &virt::error::Error) -> String {
    e.message().to_string()
}

impl State {
    /// Drops our reference; `failed`: a call on it failed, so the next
    /// connect opens a fresh one rather than getting it back.
    fn disconnect(&mut self, failed: bool) {
        if let Some(mut c) = self.conn.take() {
            if failed {
                self.shared.forget(&c);
            }
            let _ = c.close();
        }
        self.xml_cache.clear();
    }

    fn connect(&mut self) -> Result<(), LibvirtError> {
        if let Some(c) = &self.conn {
            // Local check (no RPC): false once the socket to libvirtd closed.
            if c.is_alive().unwrap_or(false) {
                return Ok(());
            }
            tracing::warn!(uri = %self.shared.uri(), "libvirt connection lost; reconnecting");
            self.disconnect(false);
        }
        let now = Instant::now();
        if !self.backoff.ready(now) {
            return Err(LibvirtError::Backoff {
                last: self.last_error.clone(),
                retry_in_ms: self.backoff.retry_in(now).as_millis() as u64,
            });
        }
        match self.shared.get(false) {
            Ok(c) => {
                self.conn = Some(c);
                self.backoff.succeeded();
                Ok(())
            }
            Err(e) => {
                self.backoff.failed(Instant::now());
                self.last_error = err_msg(&e);
                Err(LibvirtError::Connect(self.last_error.clone()))
            }
        }
    }

    fn snapshot(&mut self) -> Reply {
        self.connect()?;
        let Some(conn) = self.conn.as_ref() else {
            return Err(LibvirtError::Connect("no connection".into()));
        };
        let listed = match list_with_states(conn) {
            Ok(l) => l,
            Err(e) => {
                // Most likely the connection died; the next round reconnects
                // (at once: the backoff was reset by the last success).
                self.disconnect(true);
                return Err(e);
            }
        };
        let now = Instant::now();
        let mut out = Snapshot {
            domains: Vec::with_capacity(listed.len()),
            xml_fetches: 0,
        };
        let mut aged_refetches = 0;
        let mut seen = std::collections::HashSet::with_capacity(listed.len());
        for d in listed {
            let key = (d.uuid.clone(), d.id);
            let fetch = match self.xml_cache.get(&key) {
                None => true,
                Some(c) if c.state != d.state => true,
                Some(c) if now.duration_since(c.fetched) >= self.xml_refresh => {
                    aged_refetches += 1;
                    aged_refetches <= MAX_AGED_REFETCH_PER_ROUND
                }
                Some(_) => false,
            };
            let mut xml_error = None;
            if fetch {
                out.xml_fetches += 1;
                let parsed = d
                    .dom
                    .get_xml_desc(0)
                    .map_err(|e| format!("virDomainGetXMLDesc: {}", err_msg(&e)))
                    .and_then(|x| domain_xml::parse(&x).map_err(|e| e.to_string()));
                match parsed {
                    Ok(xml) => {
                        self.xml_cache.insert(
                            key.clone(),
                            Cached {
                                xml,
                                fetched: now,
                                state: d.state,
                            },
                        );
                    }
                    // Not cached: tried again next round. A stale XML we
                    // already had is still better than none.
                    Err(e) => xml_error = Some(e),
                }
            }
            let xml = self
                .xml_cache
                .get(&key)
                .map(|c| c.xml.clone())
                .unwrap_or_default();
            seen.insert(key);
            out.domains.push(RawDomain {
                name: d.name,
                uuid: d.uuid,
                id: d.id,
                state: d.state,
                reason: d.reason,
                xml,
                xml_error,
            });
        }
        self.xml_cache.retain(|k, _| seen.contains(k));
        Ok(out)
    }
}

/// All domains with state and reason in one RPC (virConnectGetAllDomainStats
/// with the state group; the `virt` crate's wrapper leaks the records and
/// hides the domain handles, hence virt-sys). Falls back to one
/// virDomainGetState per domain where the driver lacks it.
fn list_with_states(conn: &Connect) -> Result<Vec<Listed>, LibvirtError> {
    let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: conn is a live connection; libvirt allocates the record list
    // and stores it in `recs` on success (n >= 0).
    let n = unsafe {
        sys::virConnectGetAllDomainStats(conn.as_ptr(), sys::VIR_DOMAIN_STATS_STATE, &mut recs, 0)
    };
    if n < 0 {
        let e = virt::error::Error::last_error();
        if matches!(e.code(), virt::error::ErrorNumber::NoSupport) {
            return list_one_by_one(conn);
        }
        return Err(LibvirtError::Call {
            call: "virConnectGetAllDomainStats",
            msg: err_msg(&e),
        });
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: on success `recs` holds n valid record pointers (then NULL).
        let rec = unsafe { &**recs.add(i) };
        let (mut state, mut reason): (libc::c_int, libc::c_int) = (0, 0);
        // SAFETY: params/nparams come from the same record; a missing field
        // leaves the out-value untouched (0 = nostate/unknown).
        unsafe {
            sys::virTypedParamsGetInt(rec.params, rec.nparams, c"state.state".as_ptr(), &mut state);
            sys::virTypedParamsGetInt(
                rec.params,
                rec.nparams,
                c"state.reason".as_ptr(),
                &mut reason,
            );
        }
        // SAFETY: rec.dom is valid while the list lives; the extra reference
        // taken here is released by `Domain`'s Drop, so the handle outlives
        // virDomainStatsRecordListFree below.
        if unsafe { sys::virDomainRef(rec.dom) } < 0 {
            continue;
        }
        let dom = unsafe { Domain::from_ptr(rec.dom) };
        // Name, UUID and id are cached in the handle: no RPC. A domain
        // without them is skipped, not an error.
        let (Ok(name), Ok(uuid)) = (dom.get_name(), dom.get_uuid_string()) else {
            continue;
        };
        let id = dom.get_id();
        out.push(Listed {
            dom,
            name,
            uuid,
            id,
            state: state.max(0) as u32,
            reason,
        });
    }
    // SAFETY: the list came from virConnectGetAllDomainStats and is freed once.
    unsafe { sys::virDomainStatsRecordListFree(recs) };
    Ok(out)
}

fn list_one_by_one(conn: &Connect) -> Result<Vec<Listed>, LibvirtError> {
    let doms = conn.list_all_domains(0).map_err(|e| LibvirtError::Call {
        call: "virConnectListAllDomains",
        msg: err_msg(&e),
    })?;
    Ok(doms
        .into_iter()
        .filter_map(|dom| {
            // A domain that vanishes mid-listing is skipped.
            let (state, reason) = dom.get_state().ok()?;
            Some(Listed {
                name: dom.get_name().ok()?,
                uuid: dom.get_uuid_string().ok()?,
                id: dom.get_id(),
                state,
                reason,
                dom,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_millis(100));
        assert!(b.ready(t0), "the first attempt is immediate");
        let mut t = t0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            b.failed(t);
            assert!(!b.ready(t));
            let d = b.retry_in(t);
            delays.push(d.as_millis());
            t += d;
            assert!(b.ready(t));
        }
        assert_eq!(delays, [100, 200, 400, 800, 800, 800]);
        b.succeeded();
        assert!(b.ready(t));
        b.failed(t);
        assert_eq!(b.retry_in(t), Duration::from_millis(100));
    }
}
