//! Event sources: things that happen between samples, each with its own
//! timestamp — rtnetlink multicast, /dev/kmsg, libvirt lifecycle. Each runs
//! on its own OS thread and sends `sample::Event`s into the agent's channel.

use std::sync::mpsc::Sender;

use crate::agent::EventSource;

pub mod kmsg;
pub mod libvirt;
pub mod rtnetlink;
use crate::config::Config;
use crate::sample::Event;

/// Starts every event source the config enables. Returns the running ones
/// and, for those that could not start, (name, why).
pub fn start_all(
    cfg: &Config,
    tx: Sender<Event>,
) -> (Vec<Box<dyn EventSource>>, Vec<(&'static str, String)>) {
    let mut running: Vec<Box<dyn EventSource>> = Vec::new();
    let mut failed = Vec::new();
    match rtnetlink::start(tx.clone()) {
        Ok(s) => running.push(Box::new(s)),
        Err(e) => failed.push(("rtnetlink", e.to_string())),
    }
    if cfg.collect.kmsg {
        match kmsg::start(cfg.collect.kmsg_path.clone(), cfg.collect.kmsg_max_lines_per_s, tx.clone()) {
            Ok(s) => running.push(Box::new(s)),
            Err(e) => failed.push(("kmsg", format!("{}: {e}", cfg.collect.kmsg_path.display()))),
        }
    }
    if !cfg.collect.disabled.iter().any(|d| d == "libvirt") {
        match libvirt::start(cfg.agent.libvirt_uri.clone(), cfg.collect.libvirt_reconnect_ms, tx) {
            Ok(s) => running.push(Box::new(s)),
            Err(e) => failed.push(("libvirt-events", e.to_string())),
        }
    }
    (running, failed)
}
