//! libvirt access on a worker thread. Every libvirt call is blocking FFI and
//! libvirtd may hang (or be stopped), so one thread owns the read-only
//! connection and the sampler waits for it with a timeout: a hung libvirtd
//! costs a timeout, never the sampling cadence. The worker reconnects on its
//! own, no more often than the reconnect interval.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use virt::connect::Connect;

use crate::kernel::domain_xml;

/// What libvirt says about one domain (no host-side resolution yet).
#[derive(Clone, Debug)]
pub struct RawDomain {
    pub name: String,
    pub uuid: String,
    pub id: Option<u32>,
    pub state: u32,
    pub reason: i32,
    pub xml: domain_xml::DomainXml,
}

type Reply = Result<Vec<RawDomain>, String>;

pub struct LibvirtWorker {
    pub uri: String,
    tx: Sender<Sender<Reply>>,
    /// The reply channel of a request the worker has not answered yet.
    pending: Option<(Receiver<Reply>, Instant)>,
}

struct State {
    uri: String,
    conn: Option<Connect>,
    last_attempt: Option<Instant>,
    reconnect: Duration,
    xml_refresh: Duration,
    /// (uuid, id) → (parsed XML, when fetched)
    xml_cache: HashMap<(String, Option<u32>), (domain_xml::DomainXml, Instant)>,
}

impl LibvirtWorker {
    pub fn start(uri: String, reconnect: Duration, xml_refresh: Duration) -> LibvirtWorker {
        // libvirt prints every error to stderr by default; ours are recorded
        // in the sample instead.
        virt::error::clear_error_callback();
        let (tx, rx) = mpsc::channel::<Sender<Reply>>();
        let mut st = State {
            uri: uri.clone(),
            conn: None,
            last_attempt: None,
            reconnect,
            xml_refresh,
            xml_cache: HashMap::new(),
        };
        let spawned = std::thread::Builder::new()
            .name("hvflight-libvirt".into())
            .spawn(move || {
                for reply in rx {
                    let r = st.snapshot();
                    let _ = reply.send(r);
                }
                if let Some(mut c) = st.conn.take() {
                    let _ = c.close();
                }
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

    /// Asks the worker for the domains and waits at most `timeout`. If an
    /// earlier request is still running (libvirtd hung), no new one is queued.
    pub fn domains(&mut self, timeout: Duration) -> Result<Vec<RawDomain>, (String, bool)> {
        let rx = match self.pending.take() {
            Some((rx, since)) => {
                match rx.try_recv() {
                    Ok(_) | Err(mpsc::TryRecvError::Disconnected) => self.request()?, // stale answer: ask anew
                    Err(mpsc::TryRecvError::Empty) => {
                        let waited = since.elapsed();
                        self.pending = Some((rx, since));
                        return Err((
                            format!(
                                "previous libvirt call still running after {} ms",
                                waited.as_millis()
                            ),
                            true,
                        ));
                    }
                }
            }
            None => self.request()?,
        };
        match rx.recv_timeout(timeout) {
            Ok(r) => r.map_err(|e| (e, false)),
            Err(RecvTimeoutError::Timeout) => {
                self.pending = Some((rx, Instant::now() - timeout));
                Err((
                    format!("no answer from libvirt within {} ms", timeout.as_millis()),
                    true,
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(("libvirt worker thread is gone".into(), false))
            }
        }
    }

    fn request(&mut self) -> Result<Receiver<Reply>, (String, bool)> {
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .send(rtx)
            .map_err(|_| ("libvirt worker thread is gone".to_string(), false))?;
        Ok(rrx)
    }
}

impl State {
    fn connect(&mut self) -> Result<(), String> {
        if let Some(c) = &self.conn {
            if c.is_alive().unwrap_or(false) || self.uri.starts_with("test:") {
                return Ok(());
            }
            tracing::warn!(uri = %self.uri, "libvirt connection lost; reconnecting");
            if let Some(mut c) = self.conn.take() {
                let _ = c.close();
            }
            self.xml_cache.clear();
        }
        if let Some(t) = self.last_attempt {
            if t.elapsed() < self.reconnect {
                return Err(format!(
                    "not connected; next attempt in {} ms",
                    (self.reconnect - t.elapsed()).as_millis()
                ));
            }
        }
        self.last_attempt = Some(Instant::now());
        let c = Connect::open_read_only(Some(&self.uri)).map_err(|e| e.to_string())?;
        self.conn = Some(c);
        Ok(())
    }

    fn snapshot(&mut self) -> Reply {
        self.connect()?;
        let conn = self.conn.as_ref().expect("connected");
        let doms = match conn.list_all_domains(0) {
            Ok(d) => d,
            Err(e) => {
                // Drop the connection: the next round reconnects.
                if let Some(mut c) = self.conn.take() {
                    let _ = c.close();
                }
                return Err(e.to_string());
            }
        };
        let mut out = Vec::with_capacity(doms.len());
        let mut seen = Vec::with_capacity(doms.len());
        for d in doms {
            // A domain that vanishes mid-listing is skipped, not an error.
            let (Ok(name), Ok(uuid)) = (d.get_name(), d.get_uuid_string()) else {
                continue;
            };
            let id = d.get_id();
            let (state, reason) = d.get_state().unwrap_or((0, 0));
            let key = (uuid.clone(), id);
            let fresh = self
                .xml_cache
                .get(&key)
                .filter(|(_, t)| t.elapsed() < self.xml_refresh)
                .map(|(x, _)| x);
            let xml = match fresh {
                Some(x) => x.clone(),
                None => {
                    let parsed = d
                        .get_xml_desc(0)
                        .ok()
                        .and_then(|x| domain_xml::parse(&x).ok())
                        .unwrap_or_default();
                    self.xml_cache
                        .insert(key.clone(), (parsed.clone(), Instant::now()));
                    parsed
                }
            };
            seen.push(key);
            out.push(RawDomain {
                name,
                uuid,
                id,
                state,
                reason,
                xml,
            });
        }
        self.xml_cache.retain(|k, _| seen.contains(k));
        Ok(out)
    }
}
