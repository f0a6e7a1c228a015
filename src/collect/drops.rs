//! The `drops` section: kernel drop reasons per interface of the watched
//! namespace, from the eBPF program on skb:kfree_skb (source/bpf.rs loads
//! it, kernel/drop_reasons.rs decodes its maps).
//!
//! The program sees every namespace of the host; this collector keeps the
//! keys of the namespace the agent watches (by netns inode) and names their
//! interfaces from the same sample's link dump. A host without BTF, without
//! the `reason` field, or an agent without CAP_BPF/CAP_PERFMON gets no
//! section and a failure saying why; loading is retried every
//! `collect.drops_retry_s`, not every sample. Loading runs on its own thread
//! (see `State::Loading`).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{CollectError, Collector, Context};
use crate::kernel::drop_reasons::{DropKey, ReasonNames};
use crate::sample::{DropCount, Drops, Link, Sample};
use crate::source::bpf::{self, DropProbe, LoadOptions};

pub struct DropsCollector {
    state: State,
    opts: LoadOptions,
    retry: Duration,
    loaded_mono_ns: u64,
}

enum State {
    /// A thread loads the program (BTF checks, verifier: ~0.1 s, more on a
    /// busy host), so the sampling cadence does not wait for it.
    Loading {
        rx: Receiver<Result<DropProbe, String>>,
        since: Instant,
    },
    Ready(Box<DropProbe>),
    /// Why the last load failed, and when to try again.
    Failed {
        msg: String,
        retry_at: Instant,
    },
}

fn start_load(opts: &LoadOptions) -> State {
    let (tx, rx) = mpsc::channel();
    let opts = opts.clone();
    let spawned = std::thread::Builder::new()
        .name("hvflight-bpf-load".into())
        .spawn(move || {
            let _ = tx.send(DropProbe::load(&opts).map_err(|e| e.to_string()));
        });
    match spawned {
        Ok(_) => State::Loading {
            rx,
            since: Instant::now(),
        },
        Err(e) => State::Failed {
            msg: format!("cannot start the loader thread: {e}"),
            retry_at: Instant::now(),
        },
    }
}

impl DropsCollector {
    /// Starts loading at once. Samples that find it still loading go
    /// without the section and say so (the agent's cadence never waits);
    /// `hvflight sample` waits for it first (`wait_ready`).
    pub fn new(opts: LoadOptions, retry: Duration) -> Self {
        DropsCollector {
            state: start_load(&opts),
            opts,
            retry,
            loaded_mono_ns: 0,
        }
    }

    /// Moves the load along, waiting for it at most `wait`; Ok once the
    /// program is attached.
    fn ready(&mut self, wait: Duration) -> Result<(), CollectError> {
        if let State::Failed { retry_at, .. } = &self.state {
            if Instant::now() >= *retry_at {
                self.state = start_load(&self.opts);
            }
        }
        if let State::Loading { rx, since } = &self.state {
            let got = match rx.recv_timeout(wait) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(CollectError::Unavailable(format!(
                        "the drop-reason program is still loading ({} ms so far)",
                        since.elapsed().as_millis()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => Err("the loader thread died".to_string()),
            };
            self.state = match got {
                Ok(p) => {
                    tracing::info!(
                        reasons = p.names.len(),
                        max_entries = p.max_entries,
                        load_ms = since.elapsed().as_millis() as u64,
                        "drop-reason program attached to skb:kfree_skb"
                    );
                    self.loaded_mono_ns = crate::clock::now().mono_ns;
                    State::Ready(Box::new(p))
                }
                Err(msg) => {
                    tracing::warn!(error = %msg, "drop reasons unavailable");
                    State::Failed {
                        msg,
                        retry_at: Instant::now() + self.retry,
                    }
                }
            };
        }
        match &self.state {
            State::Ready(_) => Ok(()),
            State::Failed { msg, .. } => Err(CollectError::Unavailable(msg.clone())),
            State::Loading { .. } => unreachable!("resolved above"),
        }
    }
}

/// Builds the section from one read of the map: keys of namespace `netns`
/// only, interfaces named from `links`. Also returns the keys worth
/// deleting when the map runs full (other namespaces, interfaces gone).
pub fn section(
    counts: &[(DropKey, u64)],
    names: &ReasonNames,
    netns: u64,
    links: &[Link],
) -> (Drops, Vec<DropKey>) {
    let by_index: rustc_hash::FxHashMap<u32, &str> =
        links.iter().map(|l| (l.ifindex, l.name.as_str())).collect();
    let mut d = Drops {
        netns_inode: netns,
        map_entries: counts.len() as u32,
        ..Default::default()
    };
    let mut stale = Vec::new();
    for (k, n) in counts {
        if k.netns == 0 {
            d.unattributed += n;
            continue;
        }
        if k.netns as u64 != netns {
            stale.push(*k);
            continue;
        }
        let interface = match k.ifindex {
            0 => String::new(),
            i => match by_index.get(&i) {
                Some(name) => name.to_string(),
                None => {
                    stale.push(*k);
                    String::new()
                }
            },
        };
        d.entries.push(DropCount {
            ifindex: k.ifindex,
            interface,
            reason: names.name(k.reason),
            protocol: k.protocol,
            count: *n,
        });
    }
    d.entries.sort_by(|a, b| {
        (&a.interface, a.ifindex, &a.reason, a.protocol).cmp(&(
            &b.interface,
            b.ifindex,
            &b.reason,
            b.protocol,
        ))
    });
    (d, stale)
}

impl Collector for DropsCollector {
    fn name(&self) -> &'static str {
        "drops"
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let _ = self.ready(timeout);
    }

    fn collect(&mut self, _ctx: &Context, sample: &mut Sample) -> Result<(), CollectError> {
        self.ready(Duration::ZERO)?;
        let loaded_mono_ns = self.loaded_mono_ns;
        let State::Ready(probe) = &mut self.state else {
            unreachable!("ready() returned Ok")
        };
        let raw = probe
            .read()
            .map_err(|e| CollectError::Unavailable(e.to_string()))?;
        let netns = bpf::current_netns_inode()
            .map_err(|e| CollectError::io("/proc/thread-self/ns/net", e))?;
        let links = sample.links.as_deref().unwrap_or(&[]);
        let (mut d, stale) = section(&raw.counts, &probe.names, netns, links);
        d.loaded_mono_ns = loaded_mono_ns;
        d.overflow = raw.overflow;
        d.missed = raw.missed;
        d.map_max_entries = probe.max_entries;
        // Half full: make room. Deleted keys of our namespace belong to
        // interfaces that are gone (a re-created one gets a new ifindex);
        // other namespaces' keys come back at their next drop.
        if sample.links.is_some() && d.map_entries as u64 * 2 >= probe.max_entries as u64 {
            probe.delete(&stale);
        }
        sample.drops = Some(d);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, ifindex: u32) -> Link {
        Link {
            name: name.into(),
            ifindex,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_watched_namespace_and_names_interfaces() {
        let names = ReasonNames::from_members([
            ("SKB_DROP_REASON_NETFILTER_DROP", 11),
            ("SKB_DROP_REASON_NO_SOCKET", 3),
        ]);
        let k = |netns, ifindex, reason| DropKey {
            netns,
            ifindex,
            reason,
            protocol: 0x0800,
        };
        let counts = vec![
            (k(100, 5, 11), 7),
            (k(100, 0, 3), 2),
            (k(200, 5, 11), 1000), // another namespace
            (k(0, 0, 3), 4),       // no device, no socket
            (k(100, 9, 11), 1),    // interface gone
        ];
        let (d, stale) = section(&counts, &names, 100, &[link("uplink0", 5)]);
        assert_eq!(d.unattributed, 4);
        assert_eq!(d.map_entries, 5);
        let got: Vec<(&str, u32, &str, u64)> = d
            .entries
            .iter()
            .map(|e| (e.interface.as_str(), e.ifindex, e.reason.as_str(), e.count))
            .collect();
        assert_eq!(
            got,
            vec![
                ("", 0, "NO_SOCKET", 2),
                ("", 9, "NETFILTER_DROP", 1),
                ("uplink0", 5, "NETFILTER_DROP", 7)
            ]
        );
        assert_eq!(stale, vec![k(200, 5, 11), k(100, 9, 11)]);
        assert_eq!(d.by_reason("uplink0").get("NETFILTER_DROP"), Some(&7));
    }
}
