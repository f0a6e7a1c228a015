//! The analyzer: turns a bundle (or the live store) into ranked likely
//! causes from the failure catalogue, each backed by its evidence in time
//! order around the collapse, plus a merged timeline and the blast radius.
//!
//! ```text
//! load (bundle: streamed, every entry checked and capped │ store) ─► View (time-indexed)
//!   ─► rules/ (one per catalogue row, grouped as the catalogue is) ─► ranked findings
//!   ─► timeline (what changed before the collapse)  blast (who was cut off)
//!   ─► report/{text,json,html}
//! ```
//!
//! The JSON report's fields are an interface (docs/analyzer.md): `findings[]`
//! with `id`, `cause`, `confidence`, `evidence[]` (`t_rel_s`, `what`, …) and
//! `next`; fields are only ever added.

pub mod blast;
pub mod drops;
pub mod fixture;
pub mod load;
pub mod packets;
pub mod report;
pub mod rules;
pub mod timeline;
pub mod view;

use serde::Serialize;

pub use load::{load_bundle, load_store, LoadError};
pub use view::View;

/// Version of the report layout (JSON `report_version`): bumped only if a
/// field changes meaning; new fields do not bump it.
pub const REPORT_VERSION: u32 = 1;

/// What one piece of evidence is.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// A counter or gauge series that moved (before/after values given).
    Counter,
    /// An event (rtnetlink, libvirt, the detector, the agent).
    Event,
    /// A kernel log line.
    Kernel,
    /// A state seen in a sample (or a change between two samples).
    #[default]
    State,
    /// Packets from the packet ring.
    Packet,
    /// A log or deep-state file in the bundle.
    File,
}

#[derive(Serialize, Clone, Debug, PartialEq, Default)]
pub struct Evidence {
    /// Seconds relative to the collapse (negative: before).
    pub t_rel_s: f64,
    pub what: String,
    pub kind: EvidenceKind,
    /// The series a counter evidence is about ("uplink0 tx_packets").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// Value at `t_before_rel_s` and at `t_rel_s` (counters and gauges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t_before_rel_s: Option<f64>,
}

impl Evidence {
    pub fn state(t_rel_s: f64, what: impl Into<String>) -> Evidence {
        Evidence {
            t_rel_s,
            what: what.into(),
            kind: EvidenceKind::State,
            ..Default::default()
        }
    }
    pub fn event(t_rel_s: f64, what: impl Into<String>) -> Evidence {
        Evidence {
            kind: EvidenceKind::Event,
            ..Evidence::state(t_rel_s, what)
        }
    }
    pub fn kernel(t_rel_s: f64, line: &str) -> Evidence {
        Evidence {
            kind: EvidenceKind::Kernel,
            ..Evidence::state(t_rel_s, format!("kernel: {line}"))
        }
    }
    pub fn packet(t_rel_s: f64, what: impl Into<String>) -> Evidence {
        Evidence {
            kind: EvidenceKind::Packet,
            ..Evidence::state(t_rel_s, what)
        }
    }
    pub fn file(what: impl Into<String>) -> Evidence {
        Evidence {
            kind: EvidenceKind::File,
            ..Evidence::state(0.0, what)
        }
    }
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Finding {
    /// Catalogue id ("F2").
    pub id: String,
    pub cause: String,
    /// 0.0–1.0; the rule's documented logic (docs/analyzer.md).
    pub confidence: f64,
    /// In time order.
    pub evidence: Vec<Evidence>,
    /// What to check next.
    pub next: Vec<String>,
    /// The catalogue group the rule belongs to ("uplink", "bridge", …).
    pub group: String,
    /// Host interfaces the finding is about (uplinks, bridges, vNICs); the
    /// blast radius reads them.
    pub interfaces: Vec<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Report {
    pub report_version: u32,
    pub incident: crate::bundle::Incident,
    pub host: String,
    /// Where the data came from: a bundle path or "store:<dir>".
    pub source: String,
    pub samples: usize,
    pub events: usize,
    /// The history covered, relative to the collapse.
    pub window_rel_s: [f64; 2],
    /// Ranked, most likely first.
    pub findings: Vec<Finding>,
    /// What changed in the minutes before the collapse, merged across sources.
    pub timeline: Vec<timeline::Change>,
    pub blast_radius: blast::BlastRadius,
    /// What could not be checked (collector failures, missing sections, no packets).
    pub could_not_check: Vec<String>,
    /// Series for the charts (HTML); not serialized into JSON.
    #[serde(skip)]
    pub charts: Vec<report::html::Chart>,
    /// Where the time went (stage, seconds); printed with HVFLIGHT_TIMING=1.
    #[serde(skip)]
    pub timings: Vec<(String, f64)>,
}

impl Report {
    /// What the window is around, in the report's words: a detector
    /// collapse, a degradation, or a manual (or other) trigger.
    pub fn moment(&self) -> &'static str {
        match self.incident.trigger.as_str() {
            "detector" => "the collapse",
            "degradation" => "the degradation",
            _ => "the trigger",
        }
    }
}

/// Analyzer settings (`[analyze]` in the config).
pub use crate::config::AnalyzeConfig;

/// Runs every rule, ranks the findings, builds the timeline and the blast radius.
pub fn analyze(view: &View, cfg: &AnalyzeConfig) -> Report {
    let mut timings = Vec::new();
    let mut t = std::time::Instant::now();
    let mut lap = |name: &str, timings: &mut Vec<(String, f64)>| {
        timings.push((name.to_string(), t.elapsed().as_secs_f64()));
        t = std::time::Instant::now();
    };
    let mut could_not_check = view.notes.clone();
    let mut findings = rules::run_all(view, &mut could_not_check);
    lap("rules", &mut timings);
    // Ranked by confidence; ties keep catalogue order (stable sort).
    findings.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    for f in &mut findings {
        f.evidence.sort_by(|a, b| a.t_rel_s.total_cmp(&b.t_rel_s));
    }
    if view.samples.is_empty() {
        could_not_check
            .push("no samples in the history: no counter, state or table rule could run".into());
    }
    could_not_check.dedup();
    let window_rel_s = match (view.samples.first(), view.samples.last()) {
        (Some(a), Some(b)) => [view.rel(a.ts_unix_ns), view.rel(b.ts_unix_ns)],
        _ => [0.0, 0.0],
    };
    let timeline = timeline::build(view, cfg.timeline_before_s as f64);
    lap("timeline", &mut timings);
    let blast_radius = blast::build(view, &findings, cfg);
    lap("blast radius", &mut timings);
    let charts = report::html::charts(view);
    lap("chart series", &mut timings);
    Report {
        report_version: REPORT_VERSION,
        incident: view.manifest.incident.clone(),
        host: view.manifest.host.clone(),
        source: view.source.clone(),
        samples: view.samples.len(),
        events: view.events.len(),
        window_rel_s,
        timeline,
        blast_radius,
        charts,
        timings,
        findings,
        could_not_check,
    }
}
