//! The text report: findings with their evidence, the blast radius, the
//! timeline's last minutes, and what could not be checked.

use std::fmt::Write as _;

use crate::analyze::Report;

/// Timeline lines shown in text (the JSON and HTML carry all).
const TIMELINE_LINES: usize = 40;

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "incident {} on {} at {} ({}: {})",
        r.incident.id, r.host, r.incident.ts, r.incident.trigger, r.incident.reason
    );
    let _ = writeln!(
        o,
        "{} samples ({:+.0} s … {:+.0} s around {}), {} events",
        r.samples,
        r.window_rel_s[0],
        r.window_rel_s[1],
        r.moment(),
        r.events
    );
    if r.findings.is_empty() {
        let _ = writeln!(
            o,
            "\nno known cause matched; read the timeline below, `hvflight history` and the bundle's deep state"
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
            let _ = write!(o, "     {:+8.1} s  {}", e.t_rel_s, e.what);
            if let (Some(b), Some(a)) = (e.before, e.after) {
                let _ = write!(o, "  [{} → {}]", num(b), num(a));
            }
            let _ = writeln!(o);
        }
        for n in &f.next {
            let _ = writeln!(o, "     next: {n}");
        }
    }
    let b = &r.blast_radius;
    if !b.domains.is_empty() {
        let _ = writeln!(
            o,
            "\nblast radius: {} of {} running domains cut off",
            b.domains.len(),
            b.running_domains
        );
        for d in &b.domains {
            let nova = if d.nova_instance.is_empty() {
                String::new()
            } else {
                format!("  nova {} / project {}", d.nova_instance, d.nova_project)
            };
            let _ = writeln!(
                o,
                "     {} ({}) on {}{}",
                d.domain,
                d.vnics.join(", "),
                d.bridges.join(", "),
                nova
            );
        }
    }
    for g in &b.critical_groups {
        let _ = writeln!(
            o,
            "\ncritical group {:?}: {} members on this host ({} cut off): {}",
            g.pattern,
            g.members.len(),
            g.cut_off,
            g.members.join(", ")
        );
    }
    if !r.timeline.is_empty() {
        let skip = r.timeline.len().saturating_sub(TIMELINE_LINES);
        let _ = writeln!(
            o,
            "\ntimeline (last {} of {} changes):",
            r.timeline.len() - skip,
            r.timeline.len()
        );
        for c in &r.timeline[skip..] {
            let _ = writeln!(o, "     {:+8.1} s  {:<10} {}", c.t_rel_s, c.source, c.what);
        }
    }
    for c in &r.could_not_check {
        let _ = writeln!(o, "\ncould not check: {c}");
    }
    o
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
