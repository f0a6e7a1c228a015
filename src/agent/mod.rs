//! The agent: resolves settings, builds the sampler and the event sources,
//! and runs the sampling loop at a fixed cadence until told to stop.
//!
//! Cadence: ticks are scheduled on the monotonic clock at start + k·interval,
//! so the loop does not drift; a sample that overruns skips the missed ticks
//! (recorded as an agent event) instead of bursting to catch up. Events are
//! handed on as they arrive, between samples, not batched per second.

pub mod print;
pub mod settings;
pub mod status;
pub mod trim;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::collect::{Collector, Context, Sampler};
use crate::config::Config;
use crate::model::Model;
use crate::sample::{Event, EventKind, Sample};

pub use settings::{resolve, Resolved};

/// What the loop hands to its consumer (printer, store, control socket).
pub enum Output<'a> {
    Sample {
        /// Shared, so a consumer can keep it without a deep copy.
        sample: &'a std::sync::Arc<Sample>,
        model: &'a Model,
    },
    Event(&'a Event),
}

/// A running event source (rtnetlink, kmsg, libvirt) that can be told to stop.
pub trait EventSource: Send {
    fn name(&self) -> &'static str;
    fn stop(&mut self);
}

pub struct Agent {
    pub config: Config,
    sampler: Sampler,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    sources: Vec<Box<dyn EventSource>>,
}

pub fn hostname(cfg: &Config) -> String {
    if !cfg.agent.hostname.is_empty() {
        return cfg.agent.hostname.clone();
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The collectors the config enables, in sampling order (links first: later
/// collectors name interfaces from it).
pub fn collectors(cfg: &Config) -> Vec<Box<dyn Collector>> {
    crate::collect::all(cfg)
}

impl Agent {
    /// Builds the sampler; starts no threads. Call after entering the netns.
    pub fn new(config: Config) -> Agent {
        let ctx = Context {
            proc_root: config.collect.proc_root.clone(),
            sys_root: config.collect.sys_root.clone(),
            bridges: config.agent.bridges.clone(),
        };
        let sampler = Sampler::new(ctx, hostname(&config), collectors(&config));
        let (events_tx, events_rx) = mpsc::channel();
        Agent {
            config,
            sampler,
            events_tx,
            events_rx,
            sources: Vec::new(),
        }
    }

    /// Starts the event sources (rtnetlink, kmsg, libvirt lifecycle). A
    /// source that cannot start is reported as an event; the agent goes on.
    pub fn start_event_sources(&mut self) {
        let (sources, failures) = crate::events::start_all(&self.config, self.events_tx.clone());
        self.sources = sources;
        for (source, error) in failures {
            tracing::warn!(source, %error, "event source not started");
            let _ = self.events_tx.send(Event {
                ts_unix_ns: crate::clock::now().unix_ns,
                mono_ns: crate::clock::now().mono_ns,
                kind: EventKind::Agent {
                    what: format!("{source}_unavailable"),
                    detail: error,
                },
            });
        }
    }

    /// Adds a collector after the configured ones (e.g. the capture's).
    pub fn add_collector(&mut self, c: Box<dyn Collector>) {
        self.sampler.push(c);
    }

    pub fn events_sender(&self) -> Sender<Event> {
        self.events_tx.clone()
    }

    /// Waits at most `timeout` for collectors that load in the background
    /// (one-shot commands, so their samples are complete).
    pub fn wait_ready(&mut self, timeout: Duration) {
        self.sampler.wait_ready(timeout);
    }

    pub fn sample_once(&mut self) -> Sample {
        self.sampler.sample()
    }

    /// Samples every interval until `shutdown` is set or `count` samples were
    /// taken; hands every sample (with its rates) and event to `sink`.
    pub fn run(
        &mut self,
        shutdown: &Arc<AtomicBool>,
        count: Option<u64>,
        mut sink: impl FnMut(Output<'_>),
    ) {
        let interval = Duration::from_millis(self.config.agent.interval_ms);
        let poll = Duration::from_millis(100).min(interval);
        let mut prev: Option<Arc<Sample>> = None;
        // One model, refreshed each sample (its maps are reused).
        let mut model = Model::default();
        let mut next = Instant::now();
        let mut taken = 0u64;
        self.note(
            &mut sink,
            "started",
            format!("interval {} ms", interval.as_millis()),
        );
        while !shutdown.load(Ordering::Relaxed) {
            let lag = Instant::now().saturating_duration_since(next);
            let mut sample = self.sampler.sample();
            sample.lag_us = lag.as_micros() as u64;
            let sample = Arc::new(sample);
            model.refresh(&sample, prev.as_deref());
            sink(Output::Sample {
                sample: &sample,
                model: &model,
            });
            let older = prev.replace(match Arc::try_unwrap(sample) {
                Ok(mut s) => {
                    let kept = for_rates(&mut s);
                    // What the rates do not read goes back to the collectors now.
                    self.sampler.recycle(s);
                    Arc::new(kept)
                }
                // Still held by a consumer (the metrics exporter keeps the
                // latest sample): sharing it costs nothing more.
                Err(shared) => shared,
            });
            // The collectors reuse what nobody holds any more.
            if let Some(older) = older.and_then(|o| Arc::try_unwrap(o).ok()) {
                self.sampler.recycle(older);
            }
            taken += 1;
            if count.is_some_and(|c| taken >= c) {
                break;
            }

            next += interval;
            let now = Instant::now();
            if next < now {
                let behind = now - next;
                let skipped = (behind.as_nanos() / interval.as_nanos()) as u32 + 1;
                next += interval * skipped;
                self.note(
                    &mut sink,
                    "sample_overrun",
                    format!(
                        "skipped {skipped} tick(s), {} ms behind",
                        behind.as_millis()
                    ),
                );
            }
            // Between samples: hand on events as they arrive.
            loop {
                let now = Instant::now();
                if now >= next || shutdown.load(Ordering::Relaxed) {
                    break;
                }
                match self.events_rx.recv_timeout((next - now).min(poll)) {
                    Ok(ev) => sink(Output::Event(&ev)),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(poll),
                }
            }
        }
        while let Ok(ev) = self.events_rx.try_recv() {
            sink(Output::Event(&ev));
        }
        self.note(&mut sink, "stopped", format!("{taken} samples"));
    }

    fn note(&self, sink: &mut impl FnMut(Output<'_>), what: &str, detail: String) {
        let t = crate::clock::now();
        let ev = Event {
            ts_unix_ns: t.unix_ns,
            mono_ns: t.mono_ns,
            kind: EventKind::Agent {
                what: what.into(),
                detail,
            },
        };
        sink(Output::Event(&ev));
    }
}

/// What the next sample's rates need of this one: the parts `Model::new`
/// reads (keep the two in step; the test below compares the models). Kept
/// between samples instead of the whole sample: its FDB, neighbours,
/// libvirt domains, bridges and lookup tables are about half of a sample
/// at 500 vNICs, and would otherwise be held twice while the next one is
/// taken.
fn for_rates(s: &mut Sample) -> Sample {
    Sample {
        version: s.version,
        seq: s.seq,
        ts_unix_ns: s.ts_unix_ns,
        mono_ns: s.mono_ns,
        boot_ns: s.boot_ns,
        links: std::mem::take(&mut s.links),
        qdiscs: std::mem::take(&mut s.qdiscs),
        conntrack: std::mem::take(&mut s.conntrack),
        softnet: std::mem::take(&mut s.softnet),
        system: std::mem::take(&mut s.system),
        drops: std::mem::take(&mut s.drops),
        ..Sample::default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for s in self.sources.iter_mut() {
            s.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rates from the kept part of a sample are the rates from the
    /// whole sample (a field `Model::new` starts to read must be kept).
    #[test]
    fn rates_from_the_kept_part_equal_rates_from_the_whole_sample() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay");
        let base = std::fs::read_to_string(dir.join("base-sample.json")).expect("base sample");
        let sc = crate::analyze::fixture::Scenario::load(
            &dir.join("F3"),
            &base,
            1_425_004_200_000_000_000,
        )
        .expect("fixture");
        let samples: Vec<Sample> = sc.samples().into_iter().map(|(_, s)| s).collect();
        assert!(samples.len() > 2);
        let mut compared = 0;
        for w in samples.windows(2) {
            let whole = Model::new(&w[1], Some(&w[0]));
            let kept = Model::new(&w[1], Some(&for_rates(&mut w[0].clone())));
            assert_eq!(whole, kept);
            compared += usize::from(!whole.links.is_empty());
        }
        assert!(compared > 0, "the fixture has link rates to compare");
    }
}
