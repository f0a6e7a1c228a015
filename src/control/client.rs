//! Clients of the control socket: `hvflight status` and `hvflight tail`.
//!
//! Exit codes (for scripts and monitoring event handlers):
//! 0 ok · 1 the agent went away during a tail · 2 bad usage or other error ·
//! 3 the agent is not running (no socket, or nobody listening) · 4 permission denied.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::tick::Tick;
use super::{Request, PROTOCOL_VERSION};
use crate::sample::{Event, EventKind};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the agent is not running (no control socket listening at {path})")]
    NotRunning { path: String },
    #[error(
        "permission denied on {path}: be root or in the socket's group (config agent.socket_group)"
    )]
    Denied { path: String },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("agent answered: {0}")]
    Agent(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. } => 3,
            ClientError::Denied { .. } => 4,
            _ => 2,
        }
    }
}

pub fn connect(path: &Path, cmd: &str) -> Result<UnixStream, ClientError> {
    connect_with(
        path,
        Request {
            v: PROTOCOL_VERSION,
            cmd: cmd.into(),
            reason: String::new(),
            case: String::new(),
        },
    )
}

fn connect_with(path: &Path, req: Request) -> Result<UnixStream, ClientError> {
    let p = path.display().to_string();
    let mut s = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { path: p.clone() }
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied { path: p.clone() },
        _ => ClientError::Io {
            path: p.clone(),
            source: e,
        },
    })?;
    let req = serde_json::to_string(&req).expect("request serializes");
    writeln!(s, "{req}").map_err(|e| ClientError::Io { path: p, source: e })?;
    Ok(s)
}

pub fn status(path: &Path) -> Result<serde_json::Value, ClientError> {
    let s = connect(path, "status")?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| ClientError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|_| ClientError::Agent(format!("unreadable answer: {line:?}")))?;
    if v["kind"] == "error" {
        return Err(ClientError::Agent(
            v["error"].as_str().unwrap_or("?").to_string(),
        ));
    }
    Ok(v)
}

/// Asks the agent for a bundle now; returns (incident id, bundle path).
pub fn trigger(
    path: &Path,
    reason: &str,
    case: &str,
    timeout: Duration,
) -> Result<(String, String), ClientError> {
    let s = connect_with(
        path,
        Request {
            v: PROTOCOL_VERSION,
            cmd: "trigger".into(),
            reason: reason.into(),
            case: case.into(),
        },
    )?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| ClientError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|_| ClientError::Agent(format!("unreadable answer: {line:?}")))?;
    if v["kind"] != "triggered" {
        return Err(ClientError::Agent(
            v["error"].as_str().unwrap_or("no answer").to_string(),
        ));
    }
    Ok((
        v["id"].as_str().unwrap_or("").into(),
        v["bundle"].as_str().unwrap_or("").into(),
    ))
}

#[derive(Debug, Clone, Default)]
pub struct TailFilter {
    pub iface: Option<String>,
    pub domain: Option<String>,
    pub events_only: bool,
}

/// True when our stdout's reader is gone (ssh client closed): without a
/// pty we would otherwise learn it only on the next write.
fn stdout_gone() -> bool {
    let mut pfd = libc::pollfd {
        fd: std::io::stdout().as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
}

fn event_ifaces(e: &Event) -> Option<&str> {
    match &e.kind {
        EventKind::Link { name, .. } => Some(name),
        EventKind::Fdb { port, .. } => Some(port),
        EventKind::Neigh { dev, .. } | EventKind::Addr { dev, .. } => Some(dev),
        _ => None,
    }
}

/// "NETFILTER_DROP 12/s, NO_SOCKET 0.5/s": the `n` busiest kernel drop reasons.
pub fn reasons_text(r: &std::collections::BTreeMap<String, f64>, n: usize) -> String {
    let mut v: Vec<(&String, &f64)> = r.iter().filter(|(_, x)| **x > 0.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let more = v.len().saturating_sub(n);
    let mut s: Vec<String> = v
        .iter()
        .take(n)
        .map(|(k, x)| {
            if **x >= 10.0 {
                format!("{k} {x:.0}/s")
            } else {
                format!("{k} {x:.1}/s")
            }
        })
        .collect();
    if more > 0 {
        s.push(format!("+{more} more"));
    }
    s.join(", ")
}

pub fn tick_line(t: &Tick, f: &TailFilter) -> Option<String> {
    let hms = &t.ts[11..23];
    let mut out = hms.to_string();
    let shown: Vec<(&String, &super::tick::IfaceTick)> = t
        .ifaces
        .iter()
        .filter(|(n, i)| {
            f.iface.as_ref().is_none_or(|x| x == *n)
                && f.domain.as_ref().is_none_or(|d| &i.domain == d)
        })
        .collect();
    if f.iface.is_some() || f.domain.is_some() {
        if shown.is_empty() {
            return None;
        }
        for (n, i) in shown {
            let carrier = if i.carrier == Some(false) {
                " NO-CARRIER"
            } else {
                ""
            };
            out.push_str(&format!(
                " | {n} {}{carrier} rx {:.0} tx {:.0} pps drop {:.1}/s",
                i.operstate,
                i.rx_pps,
                i.tx_pps,
                i.rx_drop_ps + i.tx_drop_ps
            ));
            if !i.drop_reasons_ps.is_empty() {
                out.push_str(&format!(
                    " (kernel: {})",
                    reasons_text(&i.drop_reasons_ps, 4)
                ));
            }
        }
        return Some(out);
    }
    let bridges: BTreeSet<&str> = t
        .ifaces
        .values()
        .map(|i| i.bridge.as_str())
        .filter(|b| !b.is_empty())
        .collect();
    for b in bridges {
        if let Some(i) = t.ifaces.get(b) {
            out.push_str(&format!(" | {b} rx {:.0} tx {:.0} pps", i.rx_pps, i.tx_pps));
            if !i.drop_reasons_ps.is_empty() {
                out.push_str(&format!(
                    " (kernel drops: {})",
                    reasons_text(&i.drop_reasons_ps, 3)
                ));
            }
        }
        for (n, i) in t
            .ifaces
            .iter()
            .filter(|(_, i)| i.bridge == b && i.role == "uplink")
        {
            let carrier = if i.carrier == Some(false) {
                " NO-CARRIER"
            } else {
                ""
            };
            let state = match i.port_state {
                Some(3) | None => String::new(),
                Some(s) => format!(" port-state {s}"),
            };
            out.push_str(&format!(
                " · uplink {n} rx {:.0} tx {:.0} pps drop {:.1}/s{carrier}{state}",
                i.rx_pps,
                i.tx_pps,
                i.rx_drop_ps + i.tx_drop_ps
            ));
            if !i.drop_reasons_ps.is_empty() {
                out.push_str(&format!(
                    " (kernel: {})",
                    reasons_text(&i.drop_reasons_ps, 3)
                ));
            }
        }
        let mut vnics: Vec<(&String, &super::tick::IfaceTick)> = t
            .ifaces
            .iter()
            .filter(|(_, i)| i.bridge == b && i.role == "vnic")
            .collect();
        let drops: f64 = vnics.iter().map(|(_, i)| i.rx_drop_ps + i.tx_drop_ps).sum();
        let silent: Vec<&str> = vnics
            .iter()
            .filter(|(_, i)| i.rx_pps == 0.0 && i.tx_pps == 0.0)
            .map(|(n, _)| n.as_str())
            .collect();
        vnics.sort_by(|a, b| (b.1.rx_pps + b.1.tx_pps).total_cmp(&(a.1.rx_pps + a.1.tx_pps)));
        out.push_str(&format!(" · vnics {} drop {drops:.1}/s", vnics.len()));
        let mut reasons: std::collections::BTreeMap<String, f64> = Default::default();
        let mut worst: Option<(&str, f64)> = None;
        for (n, i) in &vnics {
            let sum: f64 = i.drop_reasons_ps.values().sum();
            if sum > 0.0 && worst.is_none_or(|(_, w)| sum > w) {
                worst = Some((n.as_str(), sum));
            }
            for (r, x) in &i.drop_reasons_ps {
                *reasons.entry(r.clone()).or_default() += x;
            }
        }
        if let Some((w, _)) = worst {
            out.push_str(&format!(
                " (kernel: {}; most on {w})",
                reasons_text(&reasons, 3)
            ));
        }
        if let Some((n, i)) = vnics.first().filter(|(_, i)| i.rx_pps + i.tx_pps > 0.0) {
            out.push_str(&format!(" busiest {n} {:.0} pps", i.rx_pps + i.tx_pps));
        }
        if !silent.is_empty() {
            let more = if silent.len() > 5 {
                format!(" +{}", silent.len() - 5)
            } else {
                String::new()
            };
            out.push_str(&format!(
                " silent {}{more}",
                silent[..silent.len().min(5)].join(" ")
            ));
        }
    }
    if t.domains_total > 0 {
        out.push_str(&format!(
            " · domains {}/{} running",
            t.domains_running, t.domains_total
        ));
    }
    if !t.detector.is_empty() {
        let state = if t.detector == "healthy" {
            t.detector.clone()
        } else {
            t.detector.to_uppercase()
        };
        out.push_str(&format!(
            " · detector {state} ({} eligible)",
            t.eligible_guests
        ));
    }
    if !t.failures.is_empty() {
        out.push_str(&format!(" · FAILED: {}", t.failures.join(",")));
    }
    Some(out)
}

/// Streams from the agent until it goes away (Err) or our reader does (Ok).
pub fn tail(
    path: &Path,
    f: &TailFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let s = connect(path, "tail")?;
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    let mut domain_ifaces: BTreeSet<String> = BTreeSet::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => {
                return Err(ClientError::Agent(
                    "the agent stopped (it closed the connection)".into(),
                ))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stdout_gone() {
                    return Ok(());
                }
                continue;
            }
            Err(e) => {
                return Err(ClientError::Io {
                    path: path.display().to_string(),
                    source: e,
                })
            }
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim_end()) else {
            continue;
        };
        let kind = v["kind"].as_str().unwrap_or("");
        let printed: Option<String> = match kind {
            "heartbeat" => None,
            "error" => {
                return Err(ClientError::Agent(
                    v["error"].as_str().unwrap_or("?").into(),
                ))
            }
            "dropped" => Some(if json {
                line.trim_end().to_string()
            } else {
                format!(
                    "-- {} lines dropped: this client fell behind --",
                    v["count"]
                )
            }),
            "tick" => {
                let Ok(t) = serde_json::from_value::<Tick>(v.clone()) else {
                    continue;
                };
                if let Some(d) = &f.domain {
                    domain_ifaces = t
                        .ifaces
                        .iter()
                        .filter(|(_, i)| &i.domain == d)
                        .map(|(n, _)| n.clone())
                        .collect();
                }
                if f.events_only {
                    None
                } else if json {
                    if f.iface.is_some() || f.domain.is_some() {
                        let mut t2 = t.clone();
                        t2.ifaces.retain(|n, i| {
                            f.iface.as_ref().is_none_or(|x| x == n)
                                && f.domain.as_ref().is_none_or(|d| &i.domain == d)
                        });
                        serde_json::to_string(&t2).ok()
                    } else {
                        Some(line.trim_end().to_string())
                    }
                } else {
                    tick_line(&t, f)
                }
            }
            _ => {
                let Ok(e) = serde_json::from_value::<Event>(v.clone()) else {
                    continue;
                };
                let iface_ok = f
                    .iface
                    .as_ref()
                    .is_none_or(|x| event_ifaces(&e) == Some(x.as_str()));
                let domain_ok = f.domain.as_ref().is_none_or(|d| match &e.kind {
                    EventKind::Libvirt { domain, uuid, .. } => domain == d || uuid == d,
                    _ => event_ifaces(&e).is_some_and(|i| domain_ifaces.contains(i)),
                });
                if !(iface_ok && domain_ok) {
                    None
                } else if json {
                    Some(line.trim_end().to_string())
                } else {
                    Some(crate::agent::print::event_line(&e))
                }
            }
        };
        if let Some(p) = printed {
            // Our reader went away (ssh closed, `| head`): stop quietly.
            if writeln!(out, "{p}").and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
}
