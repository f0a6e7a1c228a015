//! libvirt's process-wide state: the default event loop, and one shared
//! read-only connection per URI for the domain-snapshot worker
//! (source::libvirt) and the lifecycle-events listener (events::libvirt).
//!
//! Why shared: a connection is not free. With the in-process test driver
//! (`test:///node.xml`, the lab's and the tests' node) every open parses the
//! node file and keeps a private copy of the whole node: ~7 MiB of heap per
//! connection at 250 domains. With libvirtd it is a socket, a client object
//! in the daemon and a keepalive per connection. libvirt's connections are
//! thread-safe, so both threads use one; each still decides on its own when
//! the connection is dead (and the first to ask after that opens the next).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

use virt::connect::Connect;

/// How often virEventRunDefaultImpl returns when nothing happens, so the
/// events thread sees its stop flag and notices a dead connection.
pub const LOOP_TICK_MS: i32 = 250;

static EVENT_IMPL: Once = Once::new();
/// Whether libvirt's default event loop is registered (and so may be run).
static EVENT_LOOP_READY: AtomicBool = AtomicBool::new(false);

/// Registers libvirt's default event loop implementation, once per process.
/// libvirt wants it before the connections that should deliver events are
/// opened; events::libvirt::start calls it, and the agent starts the event
/// sources before its first sample.
pub fn register_event_loop() {
    EVENT_IMPL.call_once(|| {
        virt::error::clear_error_callback();
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::warn!(error = %e, "libvirt: cannot register the default event loop");
            return;
        }
        // A periodic no-op timer so virEventRunDefaultImpl returns regularly
        // even when no event comes.
        if let Err(e) =
            virt::event::event_add_timeout(LOOP_TICK_MS, |_, _| {}, std::ptr::null_mut())
        {
            tracing::warn!(error = %e, "libvirt: cannot add the event loop tick");
            return;
        }
        EVENT_LOOP_READY.store(true, Ordering::Relaxed);
    });
}

/// Whether the default event loop is registered.
pub fn event_loop_ready() -> bool {
    EVENT_LOOP_READY.load(Ordering::Relaxed)
}

struct Held {
    conn: Connect,
    /// Opened after the event loop was registered (else libvirt delivers
    /// no events on it).
    with_event_loop: bool,
}

/// The connection to one URI that every user in the process shares. Users
/// hold the `Arc`; the connection is closed when the last one drops it.
pub struct SharedConn {
    uri: String,
    held: Mutex<Option<Held>>,
    opens: AtomicU32,
}

/// Live `SharedConn`s by URI (weak: they go when their users do).
static REGISTRY: Mutex<Vec<(String, Weak<SharedConn>)>> = Mutex::new(Vec::new());

impl SharedConn {
    /// The process's shared connection to `uri` (not opened yet if new).
    pub fn for_uri(uri: &str) -> Arc<SharedConn> {
        let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        reg.retain(|(_, w)| w.strong_count() > 0);
        if let Some(s) = reg
            .iter()
            .find(|(u, _)| u == uri)
            .and_then(|(_, w)| w.upgrade())
        {
            return s;
        }
        let s = Arc::new(SharedConn {
            uri: uri.to_string(),
            held: Mutex::new(None),
            opens: AtomicU32::new(0),
        });
        reg.push((uri.to_string(), Arc::downgrade(&s)));
        s
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// How many times a connection was opened for this URI (a connection
    /// shared by every user is opened once).
    pub fn opens(&self) -> u32 {
        self.opens.load(Ordering::Relaxed)
    }

    /// A reference to the live connection (the caller closes it when done),
    /// opening one when none is held, the held one is dead, or `for_events`
    /// and the held one predates the event loop. Opening happens under the
    /// lock: two users that find the connection dead open one, not two.
    pub fn get(&self, for_events: bool) -> Result<Connect, virt::error::Error> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.as_ref() {
            // Local check (no RPC): false once the socket to libvirtd closed.
            let usable = h.conn.is_alive().unwrap_or(false) && (h.with_event_loop || !for_events);
            if usable {
                return Ok(h.conn.clone());
            }
        }
        if let Some(mut h) = held.take() {
            let _ = h.conn.close();
        }
        let with_event_loop = event_loop_ready();
        let conn = Connect::open_read_only(Some(&self.uri))?;
        self.opens.fetch_add(1, Ordering::Relaxed);
        *held = Some(Held {
            conn: conn.clone(),
            with_event_loop,
        });
        Ok(conn)
    }

    /// A call on `conn` failed: stop handing it out, so the next `get`
    /// opens a fresh one (a no-op when another one is held by now).
    pub fn forget(&self, conn: &Connect) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held
            .as_ref()
            .is_some_and(|h| h.conn.as_ptr() == conn.as_ptr())
        {
            if let Some(mut h) = held.take() {
                let _ = h.conn.close();
            }
        }
    }
}

impl Drop for SharedConn {
    fn drop(&mut self) {
        let held = self.held.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut h) = held.take() {
            let _ = h.conn.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_of_one_uri_share_one_connection() {
        // A URI of this test's own (the registry is process-wide).
        let node = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/libvirt/node.xml"
        );
        let uri = &format!("test://{node}");
        let a = SharedConn::for_uri(uri);
        let b = SharedConn::for_uri(uri);
        assert!(Arc::ptr_eq(&a, &b));
        let mut c1 = a.get(false).unwrap();
        let mut c2 = b.get(false).unwrap();
        assert_eq!(c1.as_ptr(), c2.as_ptr());
        assert_eq!(a.opens(), 1);
        // A failed call makes the next user open a fresh one.
        a.forget(&c1);
        let mut c3 = b.get(false).unwrap();
        assert_ne!(c3.as_ptr(), c1.as_ptr());
        assert_eq!(a.opens(), 2);
        for c in [&mut c1, &mut c2, &mut c3] {
            let _ = c.close();
        }
        drop((a, b));
        let fresh = SharedConn::for_uri(uri);
        assert_eq!(fresh.opens(), 0, "gone once its last user dropped it");
    }
}
