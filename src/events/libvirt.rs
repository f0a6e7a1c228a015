//! libvirt domain lifecycle events (started, stopped, crashed, migrated …)
//! and the connection's own state, on a thread that runs libvirt's default
//! event loop. The `virt` crate (0.4) has no safe event registration, so
//! this file calls virt-sys directly; every unsafe block says why it holds.
//!
//! Note (machine-notes): the test driver delivers lifecycle events only to
//! the connection that made the change, so with `test:///` URIs this source
//! reports the connection and little else; a real libvirtd reports all.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt_sys as sys;

use super::Worker;
use crate::kernel::domain_xml::event_name;
use crate::sample::{Event, EventKind};

static EVENT_IMPL: Once = Once::new();

/// Must run before any connection is opened (libvirt's rule): called by
/// `start`, which the agent runs before its first sample.
pub fn register_event_loop() {
    EVENT_IMPL.call_once(|| {
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::warn!(error = %e, "libvirt: cannot register the default event loop");
        }
        // A periodic timer so virEventRunDefaultImpl returns regularly and
        // the thread can notice its stop flag even when nothing happens.
        let _ = virt::event::event_add_timeout(250, |_, _| {}, std::ptr::null_mut());
    });
}

pub fn start(uri: String, reconnect_ms: u64, tx: Sender<Event>) -> std::io::Result<Worker> {
    register_event_loop();
    Worker::spawn("libvirt-events", move |stop| {
        run(uri, Duration::from_millis(reconnect_ms), tx, stop)
    })
}

struct CallbackData {
    tx: Sender<Event>,
}

fn event(kind: EventKind) -> Event {
    let t = crate::clock::now();
    Event {
        ts_unix_ns: t.unix_ns,
        mono_ns: t.mono_ns,
        kind,
    }
}

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    ev: libc::c_int,
    detail: libc::c_int,
    opaque: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: opaque is the CallbackData boxed in `subscribe`, alive until
    // libvirt calls `free_cb` after deregistration; dom is valid for the call.
    let data = unsafe { &*(opaque as *const CallbackData) };
    let name = unsafe {
        let p = sys::virDomainGetName(dom);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let mut buf = [0 as libc::c_char; 64];
    let uuid = unsafe {
        if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        } else {
            String::new()
        }
    };
    let (event_s, detail_s) = event_name(ev, detail);
    let _ = data.tx.send(event(EventKind::Libvirt {
        domain: name,
        uuid,
        event: event_s,
        detail: detail_s,
    }));
    0
}

unsafe extern "C" fn free_cb(opaque: *mut libc::c_void) {
    // SAFETY: called once by libvirt with the pointer we leaked in `subscribe`.
    drop(unsafe { Box::from_raw(opaque as *mut CallbackData) });
}

unsafe extern "C" fn close_cb(
    _conn: sys::virConnectPtr,
    _reason: libc::c_int,
    opaque: *mut libc::c_void,
) {
    // SAFETY: opaque is the AtomicBool of `run`, which outlives the connection.
    let closed = unsafe { &*(opaque as *const AtomicBool) };
    closed.store(true, Ordering::Relaxed);
}

/// Registers the lifecycle callback; returns its id.
fn subscribe(
    conn: &Connect,
    tx: Sender<Event>,
    closed: &AtomicBool,
) -> Result<libc::c_int, String> {
    let data = Box::into_raw(Box::new(CallbackData { tx }));
    // SAFETY: the lifecycle callback has the virConnectDomainEventCallback
    // signature; libvirt's own VIR_DOMAIN_EVENT_CALLBACK macro casts it to
    // the generic type in the same way. `data` is freed by free_cb.
    let id = unsafe {
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
            Some(free_cb),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, libvirt did not take ownership.
        drop(unsafe { Box::from_raw(data) });
        return Err(virt::error::Error::last_error().to_string());
    }
    // SAFETY: `closed` lives in `run`'s frame for as long as the connection.
    unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_cb),
            closed as *const AtomicBool as *mut libc::c_void,
            None,
        );
    }
    Ok(id)
}

fn run(uri: String, reconnect: Duration, tx: Sender<Event>, stop: Arc<AtomicBool>) {
    let closed = AtomicBool::new(false);
    let mut conn: Option<(Connect, libc::c_int)> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut announced_down = false;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() && last_attempt.is_none_or(|t| t.elapsed() >= reconnect) {
            last_attempt = Some(Instant::now());
            closed.store(false, Ordering::Relaxed);
            match Connect::open_read_only(Some(&uri))
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    let id = subscribe(&c, tx.clone(), &closed)?;
                    Ok((c, id))
                }) {
                Ok(c) => {
                    conn = Some(c);
                    announced_down = false;
                    let _ = tx.send(event(EventKind::LibvirtConnection {
                        uri: uri.clone(),
                        connected: true,
                        error: String::new(),
                    }));
                }
                Err(e) if !announced_down => {
                    announced_down = true;
                    let _ = tx.send(event(EventKind::LibvirtConnection {
                        uri: uri.clone(),
                        connected: false,
                        error: e,
                    }));
                }
                Err(_) => {}
            }
        }
        if conn.is_some() {
            if virt::event::event_run_default_impl().is_err() {
                std::thread::sleep(Duration::from_millis(250));
            }
        } else {
            std::thread::sleep(Duration::from_millis(250));
        }
        let lost = closed.load(Ordering::Relaxed)
            || conn
                .as_ref()
                .is_some_and(|(c, _)| !uri.starts_with("test:") && !c.is_alive().unwrap_or(false));
        if lost {
            if let Some((mut c, id)) = conn.take() {
                // SAFETY: valid connection and callback id from `subscribe`.
                unsafe {
                    sys::virConnectDomainEventDeregisterAny(c.as_ptr(), id);
                    sys::virConnectUnregisterCloseCallback(c.as_ptr(), Some(close_cb));
                }
                let _ = c.close();
            }
            announced_down = true;
            let _ = tx.send(event(EventKind::LibvirtConnection {
                uri: uri.clone(),
                connected: false,
                error: "connection closed".into(),
            }));
        }
    }
    if let Some((mut c, id)) = conn.take() {
        // SAFETY: as above.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(c.as_ptr(), id);
            sys::virConnectUnregisterCloseCallback(c.as_ptr(), Some(close_cb));
        }
        let _ = c.close();
    }
}
