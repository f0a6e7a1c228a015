//! libvirt domain lifecycle events (started, stopped, crashed, migrated …)
//! and the connection's own state, on a thread that runs libvirt's default
//! event loop. The `virt` crate (0.4) has no safe domain-event
//! registration, so this file calls virt-sys directly; every unsafe block
//! says why it holds.
//!
//! Events: `libvirt` {domain, uuid, event, detail} per lifecycle change;
//! `libvirt_connection` {connected: true} on every (re)connect and
//! {connected: false} once per outage (connect failure, or libvirtd gone).
//! Reconnects back off like the collector's (source::libvirt::Backoff).
//! The connection is the collector's (source::libvirt_conn::SharedConn):
//! one per URI in the process.
//!
//! Note (machine-notes): the test driver delivers lifecycle events only to
//! the connection that made the change, so with `test:///` URIs this source
//! sees the changes made through its own connection (tests use
//! `start_with_opener` for that) and nothing else; a real libvirtd reports all.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt_sys as sys;

use super::Worker;
use crate::kernel::domain_xml::event_name;
use crate::sample::{Event, EventKind};
use crate::source::libvirt::Backoff;
pub use crate::source::libvirt_conn::register_event_loop;
use crate::source::libvirt_conn::{event_loop_ready, SharedConn, LOOP_TICK_MS};

/// Opens the connection the events thread listens on.
pub type Opener = Box<dyn FnMut() -> Result<Connect, virt::error::Error> + Send>;

/// Unanswered keepalive probes after which libvirt declares the daemon
/// dead and closes the connection (libvirt's default is 5).
pub const KEEPALIVE_COUNT: u32 = 3;

/// libvirt's own default keepalive interval, seconds.
pub const DEFAULT_KEEPALIVE_S: u32 = 5;

/// Listens on the process's shared read-only connection to `uri`.
pub fn start(uri: String, reconnect_ms: u64, tx: Sender<Event>) -> std::io::Result<Worker> {
    start_with_keepalive(uri, reconnect_ms, DEFAULT_KEEPALIVE_S, tx)
}

/// Like [`start`], probing libvirtd every `keepalive_s` seconds of silence:
/// a daemon that stops answering (hung, or gone without the connection's
/// EOF reaching us) is declared lost after about
/// (KEEPALIVE_COUNT + 1) × keepalive_s, not only when its socket closes.
pub fn start_with_keepalive(
    uri: String,
    reconnect_ms: u64,
    keepalive_s: u32,
    tx: Sender<Event>,
) -> std::io::Result<Worker> {
    let shared = SharedConn::for_uri(&uri);
    start_opener_keepalive(
        uri,
        Box::new(move || shared.get(true)),
        reconnect_ms,
        keepalive_s,
        tx,
    )
}

/// Listens on whatever connection `open` returns (`uri` only labels the
/// events). Tests pass an opener that keeps a clone of the connection, so
/// they can change domains through it — the test driver tells only the
/// connection that made a change.
pub fn start_with_opener(
    uri: String,
    open: Opener,
    reconnect_ms: u64,
    tx: Sender<Event>,
) -> std::io::Result<Worker> {
    start_opener_keepalive(uri, open, reconnect_ms, DEFAULT_KEEPALIVE_S, tx)
}

fn start_opener_keepalive(
    uri: String,
    open: Opener,
    reconnect_ms: u64,
    keepalive_s: u32,
    tx: Sender<Event>,
) -> std::io::Result<Worker> {
    register_event_loop();
    Worker::spawn("libvirt-events", move |stop| {
        Listener {
            uri,
            open,
            tx,
            backoff: Backoff::new(Duration::from_millis(reconnect_ms)),
            keepalive_s,
            conn: None,
            announced_down: false,
        }
        .run(&stop)
    })
}

fn event(kind: EventKind) -> Event {
    let t = crate::clock::now();
    Event {
        ts_unix_ns: t.unix_ns,
        mono_ns: t.mono_ns,
        kind,
    }
}

/// Handed to libvirt as the lifecycle callback's opaque pointer; freed by
/// `free_lifecycle_data` when libvirt drops the callback.
struct LifecycleData {
    tx: Sender<Event>,
}

/// virConnectDomainEventCallback for VIR_DOMAIN_EVENT_ID_LIFECYCLE.
unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    ev: libc::c_int,
    detail: libc::c_int,
    opaque: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: opaque is the LifecycleData leaked in `subscribe`; libvirt
    // keeps it alive until it calls `free_lifecycle_data`, which happens only
    // after the callback is deregistered, never during a call.
    let data = unsafe { &*(opaque as *const LifecycleData) };
    // SAFETY: dom is valid for the duration of the callback; the name is
    // owned by the domain object and copied out before we return.
    let name = unsafe {
        let p = sys::virDomainGetName(dom);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // VIR_UUID_STRING_BUFLEN is 37; libvirt writes a NUL-terminated string.
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: dom is valid; buf is larger than VIR_UUID_STRING_BUFLEN.
    let uuid = unsafe {
        if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        } else {
            String::new()
        }
    };
    let (event_s, detail_s) = event_name(ev, detail);
    // A closed receiver means the agent is stopping; nothing to do about it here.
    let _ = data.tx.send(event(EventKind::Libvirt {
        domain: name,
        uuid,
        event: event_s,
        detail: detail_s,
    }));
    0
}

unsafe extern "C" fn free_lifecycle_data(opaque: *mut libc::c_void) {
    // SAFETY: called once by libvirt with the pointer leaked in `subscribe`.
    drop(unsafe { Box::from_raw(opaque as *mut LifecycleData) });
}

/// virConnectCloseFunc: libvirtd went away (EOF, keepalive timeout).
unsafe extern "C" fn close_cb(
    _conn: sys::virConnectPtr,
    _reason: libc::c_int,
    opaque: *mut libc::c_void,
) {
    // SAFETY: opaque is the Arc<AtomicBool> leaked in `subscribe`; it is
    // released by `free_closed_flag` only after the callback is unregistered.
    let closed = unsafe { &*(opaque as *const AtomicBool) };
    closed.store(true, Ordering::Relaxed);
}

unsafe extern "C" fn free_closed_flag(opaque: *mut libc::c_void) {
    // SAFETY: the pointer came from Arc::into_raw in `subscribe`, released once.
    drop(unsafe { Arc::from_raw(opaque as *const AtomicBool) });
}

/// A connection with our callbacks registered on it.
struct Subscribed {
    conn: Connect,
    callback_id: libc::c_int,
    /// Set by libvirt's close callback.
    closed: Arc<AtomicBool>,
}

impl Subscribed {
    fn new(conn: Connect, tx: Sender<Event>) -> Result<Subscribed, String> {
        let data = Box::into_raw(Box::new(LifecycleData { tx }));
        // SAFETY: lifecycle_cb has the virConnectDomainEventCallback
        // signature; libvirt's VIR_DOMAIN_EVENT_CALLBACK() macro casts such
        // callbacks to the generic type exactly like this, and libvirt
        // calls it back with the lifecycle signature for
        // VIR_DOMAIN_EVENT_ID_LIFECYCLE. `data` is owned by libvirt from
        // here on and freed through free_lifecycle_data.
        let callback_id = unsafe {
            let cb: sys::virConnectDomainEventGenericCallback = Some(std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    libc::c_int,
                    libc::c_int,
                    *mut libc::c_void,
                ) -> libc::c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut libc::c_void),
            >(lifecycle_cb));
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as libc::c_int,
                cb,
                data as *mut libc::c_void,
                Some(free_lifecycle_data),
            )
        };
        if callback_id < 0 {
            let e = virt::error::Error::last_error();
            // SAFETY: registration failed, so libvirt did not take `data`.
            drop(unsafe { Box::from_raw(data) });
            let mut conn = conn;
            let _ = conn.close();
            return Err(e.message().to_string());
        }
        let closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::into_raw(Arc::clone(&closed));
        // SAFETY: conn is live; the flag pointer stays valid until libvirt
        // calls free_closed_flag. Drivers without close callbacks (the test
        // driver) fail here harmlessly: then liveness comes from is_alive.
        let rc = unsafe {
            sys::virConnectRegisterCloseCallback(
                conn.as_ptr(),
                Some(close_cb),
                flag as *mut libc::c_void,
                Some(free_closed_flag),
            )
        };
        if rc < 0 {
            // SAFETY: not registered, so libvirt will never free it: we do.
            drop(unsafe { Arc::from_raw(flag) });
        }
        Ok(Subscribed {
            conn,
            callback_id,
            closed,
        })
    }

    fn alive(&self) -> bool {
        !self.closed.load(Ordering::Relaxed) && self.conn.is_alive().unwrap_or(false)
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        // SAFETY: the connection is still open and the id came from
        // virConnectDomainEventRegisterAny on it. Failures (connection
        // already dead) leave freeing to libvirt's connection teardown.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.callback_id);
            sys::virConnectUnregisterCloseCallback(self.conn.as_ptr(), Some(close_cb));
        }
        let _ = self.conn.close();
    }
}

struct Listener {
    uri: String,
    open: Opener,
    tx: Sender<Event>,
    backoff: Backoff,
    keepalive_s: u32,
    conn: Option<Subscribed>,
    announced_down: bool,
}

impl Listener {
    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if self.conn.is_none() && self.backoff.ready(Instant::now()) {
                self.connect();
            }
            // Dispatches our callbacks, and every other connection's
            // keepalive and I/O (the collector's too), connected or not;
            // returns after at most one loop tick.
            let ran = event_loop_ready() && virt::event::event_run_default_impl().is_ok();
            if !ran {
                std::thread::sleep(Duration::from_millis(LOOP_TICK_MS as u64));
            }
            if self.conn.as_ref().is_some_and(|c| !c.alive()) {
                self.conn = None;
                self.backoff.failed(Instant::now());
                self.down("connection to libvirt lost".into());
            }
        }
        self.conn = None;
    }

    fn connect(&mut self) {
        let subscribed = (self.open)()
            .map_err(|e| e.message().to_string())
            .and_then(|c| Subscribed::new(c, self.tx.clone()));
        match subscribed {
            Ok(s) => {
                // Drivers without keepalive (the in-process test driver)
                // refuse; their liveness comes from is_alive alone.
                let _ = s
                    .conn
                    .set_keep_alive(self.keepalive_s.max(1) as i32, KEEPALIVE_COUNT);
                self.conn = Some(s);
                self.backoff.succeeded();
                self.announced_down = false;
                let _ = self.tx.send(event(EventKind::LibvirtConnection {
                    uri: self.uri.clone(),
                    connected: true,
                    error: String::new(),
                }));
            }
            Err(e) => {
                self.backoff.failed(Instant::now());
                self.down(e);
            }
        }
    }

    /// One `connected: false` per outage, not one per failed attempt.
    fn down(&mut self, error: String) {
        if self.announced_down {
            return;
        }
        self.announced_down = true;
        let _ = self.tx.send(event(EventKind::LibvirtConnection {
            uri: self.uri.clone(),
            connected: false,
            error,
        }));
    }
}
