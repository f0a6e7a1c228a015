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

/// A source's thread and its stop flag; `stop` joins the thread.
pub struct Worker {
    name: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Spawns `body` on a named thread; it should return soon after the flag is set.
    pub fn spawn(
        name: &'static str,
        body: impl FnOnce(std::sync::Arc<std::sync::atomic::AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("hvflight-{name}"))
            .spawn(move || body(flag))?;
        Ok(Worker {
            name,
            stop,
            thread: Some(thread),
        })
    }
}

impl EventSource for Worker {
    fn name(&self) -> &'static str {
        self.name
    }
    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Running sources, and (name, why) for those that could not start.
pub type Started = (Vec<Box<dyn EventSource>>, Vec<(&'static str, String)>);

/// Starts every event source the config enables. Returns the running ones
/// and, for those that could not start, (name, why).
pub fn start_all(cfg: &Config, tx: Sender<Event>) -> Started {
    let mut running: Vec<Box<dyn EventSource>> = Vec::new();
    let mut failed = Vec::new();
    match rtnetlink::start(tx.clone()) {
        Ok(s) => running.push(Box::new(s)),
        Err(e) => failed.push(("rtnetlink", e.to_string())),
    }
    if cfg.collect.kmsg {
        match kmsg::start(
            cfg.collect.kmsg_path.clone(),
            cfg.collect.kmsg_max_lines_per_s,
            tx.clone(),
        ) {
            Ok(s) => running.push(Box::new(s)),
            Err(e) => failed.push(("kmsg", format!("{}: {e}", cfg.collect.kmsg_path.display()))),
        }
    }
    if !cfg.collect.disabled.iter().any(|d| d == "libvirt") {
        match libvirt::start_with_keepalive(
            cfg.agent.libvirt_uri.clone(),
            cfg.collect.libvirt_reconnect_ms,
            cfg.collect.libvirt_keepalive_s,
            tx,
        ) {
            Ok(s) => running.push(Box::new(s)),
            Err(e) => failed.push(("libvirt-events", e.to_string())),
        }
    }
    (running, failed)
}
