//! The analyzer (first rules): reads a bundle's history and ranks likely
//! causes from the failure catalogue, each with its evidence in time order
//! relative to the incident. Text and JSON; HTML, blast radius and the rest
//! of the catalogue come with the analyzer issue.

pub mod drops;
pub mod rules;

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use crate::bundle::Manifest;
use crate::sample::{Event, Sample};

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Evidence {
    /// Seconds relative to the incident (negative: before).
    pub t_rel_s: f64,
    pub what: String,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Finding {
    /// Catalogue id ("F2").
    pub id: String,
    pub cause: String,
    pub confidence: f64,
    pub evidence: Vec<Evidence>,
    pub next: Vec<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Report {
    pub incident: crate::bundle::Incident,
    pub host: String,
    pub samples: usize,
    pub events: usize,
    /// Ranked, most likely first.
    pub findings: Vec<Finding>,
    /// What could not be checked (collector failures, missing sections).
    pub could_not_check: Vec<String>,
}

/// What the analyzer works on: the bundle's manifest and history.
pub struct Input {
    pub manifest: Manifest,
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
}

pub fn load(path: &Path) -> Result<Input, String> {
    let manifest = crate::bundle::verify::manifest(path)?;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ar = tar::Archive::new(zstd::Decoder::new(f).map_err(|e| e.to_string())?);
    let (mut samples, mut events) = (Vec::new(), Vec::new());
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        if e.path()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
            != "history/records.jsonl"
        {
            continue;
        }
        let mut text = String::new();
        e.read_to_string(&mut text).map_err(|e| e.to_string())?;
        for line in text.lines() {
            if line.contains("\"kind\":\"sample\"") {
                if let Ok(s) = serde_json::from_str::<Sample>(line) {
                    samples.push(s);
                }
            } else if let Ok(ev) = serde_json::from_str::<Event>(line) {
                events.push(ev);
            }
        }
    }
    Ok(Input {
        manifest,
        samples,
        events,
    })
}

/// The live store as if an incident happened now (`hvflight analyze --since`).
pub fn load_store(store_dir: &Path, since_ns: i64, host: &str) -> Input {
    let now = crate::clock::now().unix_ns;
    let (records, report) = crate::store::read_range(store_dir, since_ns, i64::MAX);
    let (mut samples, mut events) = (Vec::new(), Vec::new());
    for r in records {
        match r {
            crate::store::Record::Sample(s) => samples.push(*s),
            crate::store::Record::Events(e) => events.extend(e),
        }
    }
    let manifest = Manifest {
        host: host.to_string(),
        incident: crate::bundle::Incident {
            id: "live".into(),
            trigger: "live".into(),
            reason: "analysis of the live store".into(),
            ts_unix_ns: now,
            ts: crate::clock::format_rfc3339(now),
        },
        store_warnings: report.warnings,
        ..Default::default()
    };
    Input {
        manifest,
        samples,
        events,
    }
}

pub fn analyze(input: &Input) -> Report {
    let mut findings = rules::all(input);
    findings.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let mut could_not_check: Vec<String> = input
        .manifest
        .collector_failures
        .iter()
        .map(|f| {
            format!(
                "collector {} failed in {} samples: {}",
                f.collector, f.samples, f.last_error
            )
        })
        .collect();
    if input.samples.is_empty() {
        could_not_check.push("no samples in the bundle's history".into());
    }
    Report {
        incident: input.manifest.incident.clone(),
        host: input.manifest.host.clone(),
        samples: input.samples.len(),
        events: input.events.len(),
        findings,
        could_not_check,
    }
}

pub fn text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "incident {} on {} at {} ({}: {})",
        r.incident.id, r.host, r.incident.ts, r.incident.trigger, r.incident.reason
    );
    let _ = writeln!(
        o,
        "{} samples, {} events in the bundle",
        r.samples, r.events
    );
    if r.findings.is_empty() {
        let _ = writeln!(
            o,
            "\nno known cause matched; read the timeline (hvflight history) and the deep state"
        );
    }
    for (i, f) in r.findings.iter().enumerate() {
        let _ = writeln!(
            o,
            "\n{}. [{}] {} (confidence {:.2})",
            i + 1,
            f.id,
            f.cause,
            f.confidence
        );
        for e in &f.evidence {
            let _ = writeln!(o, "     {:+8.1} s  {}", e.t_rel_s, e.what);
        }
        for n in &f.next {
            let _ = writeln!(o, "     next: {n}");
        }
    }
    for c in &r.could_not_check {
        let _ = writeln!(o, "\ncould not check: {c}");
    }
    o
}
