//! The control socket server. Threads, not async: an accept thread, and per
//! tail client one writer thread with a bounded queue, so a stuck client
//! blocks only its own thread. Client count is capped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::json;

use super::{Request, MAX_REQUEST_BYTES, PROTOCOL_VERSION};
use crate::wake::Stop;

pub const MAX_CLIENTS: usize = 64;

struct Queue {
    lines: VecDeque<Arc<str>>,
    dropped: u64,
    closed: bool,
}

struct Client {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// What `status` answers: kept current by the agent loop.
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;
/// Takes a bundle now: (reason, case) → (incident id, bundle path) once written.
pub type TriggerFn = Arc<dyn Fn(String, String) -> Result<(String, String), String> + Send + Sync>;

#[derive(Clone)]
pub struct Handlers {
    pub status: StatusFn,
    pub trigger: Option<TriggerFn>,
}

pub struct ControlServer {
    path: PathBuf,
    queue_lines: usize,
    clients: Arc<Mutex<Vec<Arc<Client>>>>,
    stop: Arc<Stop>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket {path}: another agent is listening there")]
    InUse { path: String },
}

fn push(c: &Client, line: &Arc<str>, cap: usize) {
    let mut q = c.queue.lock().unwrap_or_else(|e| e.into_inner());
    if q.lines.len() >= cap {
        q.lines.pop_front();
        q.dropped += 1;
    }
    q.lines.push_back(Arc::clone(line));
    drop(q);
    c.ready.notify_one();
}

impl ControlServer {
    /// Binds the socket (mode 0660, owned by root and `group` when given)
    /// and starts accepting. A group that does not exist (or cannot be
    /// given the socket) leaves the socket root-only, with a warning: the
    /// packaged default names the group the package creates, and an agent
    /// run outside the package must still serve root.
    pub fn start(
        path: &Path,
        group: &str,
        queue_lines: usize,
        handlers: Handlers,
    ) -> Result<ControlServer, ControlError> {
        let p = path.display().to_string();
        let io = |source| ControlError::Io {
            path: p.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse { path: p });
            }
            std::fs::remove_file(path).map_err(io)?; // stale, from a crashed agent
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
        if !group.is_empty() {
            match nix::unistd::Group::from_name(group) {
                Ok(Some(g)) => {
                    if let Err(e) = nix::unistd::chown(path, None, Some(g.gid)) {
                        tracing::warn!(socket = %p, group, error = %e,
                            "cannot give the control socket to its group (CAP_CHOWN?): root only");
                    }
                }
                _ => tracing::warn!(socket = %p, group,
                    "control socket group does not exist (config agent.socket_group): root only"),
            }
        }
        let clients: Arc<Mutex<Vec<Arc<Client>>>> = Arc::default();
        let stop = Arc::new(Stop::new());
        let (c2, s2) = (Arc::clone(&clients), Arc::clone(&stop));
        listener.set_nonblocking(true).map_err(io)?;
        std::thread::Builder::new()
            .name("hvflight-control".into())
            .spawn(move || accept_loop(listener, c2, s2, handlers))
            .map_err(io)?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            queue_lines: queue_lines.max(1),
            clients,
            stop,
        })
    }

    /// Hands a line (one JSON object, no newline) to every tail client. Never blocks on a client.
    pub fn publish(&self, line: String) {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.is_empty() {
            return;
        }
        let line: Arc<str> = Arc::from(line);
        for c in clients.iter() {
            push(c, &line, self.queue_lines);
        }
    }

    pub fn client_count(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn has_clients(&self) -> bool {
        self.client_count() > 0
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.set();
        for c in self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            c.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            c.ready.notify_all();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts until stopped, asleep in poll(2) on the listener and the stop
/// wake-up in between (a 50 ms accept poll was 20 wake-ups a second of an
/// agent nobody talks to).
fn accept_loop(
    listener: UnixListener,
    clients: Arc<Mutex<Vec<Arc<Client>>>>,
    stop: Arc<Stop>,
    handlers: Handlers,
) {
    while !stop.is_set() {
        match listener.accept() {
            Ok((stream, _)) => {
                let (c, s) = (Arc::clone(&clients), handlers.clone());
                let _ = std::thread::Builder::new()
                    .name("hvflight-control-client".into())
                    .spawn(move || serve(stream, c, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [
                    libc::pollfd {
                        fd: listener.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    stop.pollfd(),
                ];
                // Without a stop eventfd (none left) look at the flag twice a second.
                let limit = stop
                    .pollfd()
                    .fd
                    .is_negative()
                    .then(|| Duration::from_millis(500));
                crate::wake::poll(&mut fds, limit);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                stop.sleep(Duration::from_millis(200));
            }
        }
    }
}

fn reply_error(mut stream: &UnixStream, msg: &str) {
    let line = json!({"ts": crate::clock::format_rfc3339(crate::clock::now().unix_ns), "kind": "error", "error": msg, "v": PROTOCOL_VERSION});
    let _ = writeln!(stream, "{line}");
}

fn read_request(stream: &UnixStream) -> Result<Request, String> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = Vec::new();
    let mut r = BufReader::new(stream).take(MAX_REQUEST_BYTES as u64 + 1);
    r.read_until(b'\n', &mut line)
        .map_err(|e| format!("reading request: {e}"))?;
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    let req: Request = serde_json::from_slice(&line)
        .map_err(|e| format!("request is not a JSON object {{\"v\":1,\"cmd\":…}}: {e}"))?;
    if req.v != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} not supported; this agent speaks {PROTOCOL_VERSION}",
            req.v
        ));
    }
    Ok(req)
}

use std::io::Read as _;

fn serve(stream: UnixStream, clients: Arc<Mutex<Vec<Arc<Client>>>>, handlers: Handlers) {
    let req = match read_request(&stream) {
        Ok(r) => r,
        Err(e) => return reply_error(&stream, &e),
    };
    match req.cmd.as_str() {
        "status" => {
            let mut s = (handlers.status)();
            if let Some(o) = s.as_object_mut() {
                o.insert("kind".into(), "status".into());
                o.insert(
                    "ts".into(),
                    crate::clock::format_rfc3339(crate::clock::now().unix_ns).into(),
                );
            }
            let _ = writeln!(&stream, "{s}");
        }
        "tail" => {
            let client = Arc::new(Client {
                queue: Mutex::new(Queue {
                    lines: VecDeque::new(),
                    dropped: 0,
                    closed: false,
                }),
                ready: Condvar::new(),
            });
            {
                let mut all = clients.lock().unwrap_or_else(|e| e.into_inner());
                if all.len() >= MAX_CLIENTS {
                    drop(all);
                    return reply_error(
                        &stream,
                        &format!("too many clients (at most {MAX_CLIENTS})"),
                    );
                }
                all.push(Arc::clone(&client));
            }
            write_loop(&stream, &client);
            clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|c| !Arc::ptr_eq(c, &client));
        }
        "trigger" => {
            let Some(t) = &handlers.trigger else {
                return reply_error(&stream, "this agent takes no bundles");
            };
            let reason = if req.reason.trim().is_empty() {
                "manual trigger".to_string()
            } else {
                req.reason.clone()
            };
            if !req.case.is_empty() {
                if let Err(e) = crate::upload::key::check_case(&req.case) {
                    return reply_error(&stream, &e);
                }
            }
            match t(reason, req.case.clone()) {
                Ok((id, bundle)) => {
                    let now = crate::clock::format_rfc3339(crate::clock::now().unix_ns);
                    let _ = writeln!(
                        &stream,
                        "{}",
                        json!({"ts": now, "kind": "triggered", "id": id, "bundle": bundle})
                    );
                }
                Err(e) => reply_error(&stream, &e),
            }
        }
        other => reply_error(
            &stream,
            &format!("unknown command {other:?}; known: status, tail, trigger"),
        ),
    }
}

/// Sends queued lines to one tail client, a heartbeat when idle for a
/// second (so a client behind SSH notices a dead peer), and returns when
/// the client goes away.
fn write_loop(stream: &UnixStream, client: &Client) {
    let _ = stream.set_write_timeout(None);
    // A small kernel buffer per client: what a stuck client holds is bounded
    // by it plus our queue, and falling behind shows up as dropped lines soon.
    let size: libc::c_int = 16 * 1024;
    // SAFETY: valid socket fd and a pointer to a c_int of the size passed.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let mut w = std::io::BufWriter::new(stream);
    loop {
        let (batch, dropped) = {
            let mut q = client.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.lines.is_empty() && !q.closed {
                q = client
                    .ready
                    .wait_timeout(q, Duration::from_secs(1))
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            if q.closed {
                return;
            }
            let dropped = std::mem::take(&mut q.dropped);
            (q.lines.drain(..).collect::<Vec<_>>(), dropped)
        };
        let now = crate::clock::format_rfc3339(crate::clock::now().unix_ns);
        let mut res = Ok(());
        if dropped > 0 {
            res = res.and_then(|_| {
                writeln!(
                    w,
                    "{}",
                    json!({"ts": now, "kind": "dropped", "count": dropped})
                )
            });
        }
        if batch.is_empty() && dropped == 0 {
            res = res.and_then(|_| writeln!(w, "{}", json!({"ts": now, "kind": "heartbeat"})));
        }
        for l in &batch {
            res = res
                .and_then(|_| w.write_all(l.as_bytes()))
                .and_then(|_| w.write_all(b"\n"));
        }
        if res.and_then(|_| w.flush()).is_err() {
            return; // client gone
        }
    }
}
