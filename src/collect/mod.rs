//! Collectors: one per sample section. The sampler runs them in order once
//! per interval; a collector that fails leaves its section `None` and its
//! error lands in `Sample::failures` — the agent keeps going.
//!
//! Contract for a collector: build the section locally, and assign it to the
//! sample only at the end, on success. Later collectors may read sections
//! filled by earlier ones (qdiscs and libvirt read `sample.links` to name
//! interfaces), so `links` runs first.

use std::path::PathBuf;
use std::time::Instant as StdInstant;

use thiserror::Error;

use crate::sample::{CollectorFailure, Sample};

/// Where a collector finds the OS. Every root is a parameter so tests can
/// point collectors at captured files, and the agent at a namespace.
#[derive(Clone, Debug)]
pub struct Context {
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Bridges to look at; empty = all bridges.
    pub bridges: Vec<String>,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
            bridges: Vec::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum CollectError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Parse {
        path: String,
        line: usize,
        msg: String,
    },
    #[error("netlink {what}: {msg}")]
    Netlink { what: String, msg: String },
    #[error("libvirt {uri}: {msg}")]
    Libvirt { uri: String, msg: String },
    #[error("timed out after {ms} ms: {what}")]
    Timeout { what: String, ms: u64 },
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl CollectError {
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        CollectError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn timed_out(&self) -> bool {
        matches!(self, CollectError::Timeout { .. })
    }
}

pub trait Collector: Send {
    /// Stable name, used in failures, config and metrics ("links", "bridge", …).
    fn name(&self) -> &'static str;
    fn collect(&mut self, ctx: &Context, sample: &mut Sample) -> Result<(), CollectError>;
    /// Waits at most `timeout` for work a collector starts in the
    /// background (the BPF load); one-shot commands call it before sampling.
    fn wait_ready(&mut self, _timeout: std::time::Duration) {}
    /// Takes what it can reuse from a sample nobody holds any more (its
    /// sections' allocations), so the next sample allocates less.
    fn recycle(&mut self, _old: &mut Sample) {}
}

/// Runs collectors in order into a fresh sample.
pub struct Sampler {
    pub ctx: Context,
    pub host: String,
    collectors: Vec<Box<dyn Collector>>,
    seq: u64,
}

impl Sampler {
    pub fn new(ctx: Context, host: String, collectors: Vec<Box<dyn Collector>>) -> Self {
        Sampler {
            ctx,
            host,
            collectors,
            seq: 0,
        }
    }

    /// Adds a collector that runs after the others (the capture collector
    /// reads the links and bridges they filled).
    pub fn push(&mut self, c: Box<dyn Collector>) {
        self.collectors.push(c);
    }

    /// See `Collector::wait_ready`.
    pub fn wait_ready(&mut self, timeout: std::time::Duration) {
        for c in self.collectors.iter_mut() {
            c.wait_ready(timeout);
        }
    }

    /// Hands a sample nobody needs any more back to the collectors (see
    /// `Collector::recycle`).
    pub fn recycle(&mut self, mut old: Sample) {
        for c in self.collectors.iter_mut() {
            c.recycle(&mut old);
        }
    }

    pub fn collector_names(&self) -> Vec<&'static str> {
        self.collectors.iter().map(|c| c.name()).collect()
    }

    pub fn sample(&mut self) -> Sample {
        self.seq += 1;
        let started = StdInstant::now();
        let mut sample = Sample::new(self.seq, &self.host, crate::clock::now());
        for c in self.collectors.iter_mut() {
            let t0 = StdInstant::now();
            let result = c.collect(&self.ctx, &mut sample);
            if let Err(e) = result {
                let duration_us = t0.elapsed().as_micros() as u64;
                tracing::debug!(collector = c.name(), error = %e, "collector failed");
                sample.failures.push(CollectorFailure {
                    collector: c.name().to_string(),
                    error: e.to_string(),
                    duration_us,
                    timed_out: e.timed_out(),
                });
            }
        }
        if self.ctx.bridges.is_empty() {
            scope_to_libvirt_bridges(&mut sample);
        }
        sample.duration_us = started.elapsed().as_micros() as u64;
        sample
    }
}

/// With no bridges configured, watch the bridges libvirt's domains use —
/// else all bridges (a host whose libvirt is down still gets sampled).
/// Links stay complete: an uplink may sit under a bond or VLAN.
pub fn scope_to_libvirt_bridges(sample: &mut Sample) {
    let Some(used) = libvirt_bridges(sample) else {
        return;
    };
    let Some(bridges) = &mut sample.bridges else {
        return;
    };
    bridges.retain(|b| used.contains(&b.name));
    let kept: Vec<u32> = bridges.iter().map(|b| b.ifindex).collect();
    if let Some(fdb) = &mut sample.fdb {
        fdb.retain(|e| e.master.is_none_or(|m| kept.contains(&m)));
    }
}

/// The bridges libvirt's domains use, when at least one of them is in the
/// sample's bridges section; None = watch all bridges of the section.
pub fn libvirt_bridges(sample: &Sample) -> Option<Vec<String>> {
    let used: Vec<String> = sample
        .libvirt
        .iter()
        .flat_map(|l| &l.domains)
        .flat_map(|d| &d.vnics)
        .map(|v| v.bridge.clone())
        .collect();
    let bridges = sample.bridges.as_ref()?;
    if !bridges.iter().any(|b| used.contains(&b.name)) {
        return None;
    }
    Some(used)
}

/// The enabled collectors, in sampling order (links first: later ones name
/// interfaces from it). Disabled ones are not even built (the libvirt one
/// starts a worker thread).
pub fn all(cfg: &crate::config::Config) -> Vec<Box<dyn Collector>> {
    let timeout = std::time::Duration::from_millis(cfg.collect.netlink_timeout_ms);
    let on = |name: &str| !cfg.collect.disabled.iter().any(|d| d == name);
    let mut v: Vec<Box<dyn Collector>> = Vec::new();
    if on("links") {
        v.push(Box::new(
            links::LinksCollector::new(timeout, on("bridge"))
                .full_dump_every(std::time::Duration::from_millis(
                    cfg.collect.links_full_dump_ms,
                ))
                .bridges_every(std::time::Duration::from_millis(
                    cfg.collect.bridges_refresh_ms,
                )),
        ));
    }
    if on("fdb") {
        v.push(Box::new(
            fdb::FdbCollector::new(timeout, cfg.collect.fdb_max_entries as usize).full_dump_every(
                std::time::Duration::from_millis(cfg.collect.fdb_full_dump_ms),
            ),
        ));
    }
    if on("neighbours") {
        v.push(Box::new(neigh::NeighCollector::new(timeout)));
    }
    if on("qdisc") {
        v.push(Box::new(qdisc::QdiscCollector::new(timeout)));
    }
    v.extend(proc_all::proc_collectors_where(on));
    if on("libvirt") {
        v.push(Box::new(
            libvirt::LibvirtCollector::new(
                cfg.agent.libvirt_uri.clone(),
                cfg.collect.libvirt_timeout_ms,
                cfg.collect.libvirt_reconnect_ms,
                cfg.collect.libvirt_xml_refresh_s,
            )
            .poll_every(std::time::Duration::from_millis(
                cfg.collect.libvirt_interval_ms,
            )),
        ));
    }
    // Last: it reads the links, bridges, FDB and libvirt sections.
    if on("probes") && cfg.detect.enabled && (cfg.detect.gateway_probes || cfg.detect.guest_probes)
    {
        v.push(Box::new(probes::ProbesCollector::new(cfg.detect.clone())));
    }
    if on("drops") {
        v.push(Box::new(drops::DropsCollector::new(
            crate::source::bpf::LoadOptions {
                btf_path: cfg.collect.drops_btf_path.clone(),
                max_entries: cfg.collect.drops_max_entries,
            },
            std::time::Duration::from_secs(cfg.collect.drops_retry_s),
        )));
    }
    v
}

pub mod conntrack;
pub mod drops;
pub mod fdb;
pub mod libvirt;
pub mod links;
pub mod neigh;
pub mod neigh_limits;
pub mod netfilter;
pub mod probes;
pub mod proc_all;
pub mod qdisc;
pub mod snmp;
pub mod softnet;
pub mod system;
