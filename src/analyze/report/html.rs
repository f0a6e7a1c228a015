//! One self-contained HTML page: the report plus charts of the key series
//! (per-vNIC and uplink packet rates, drops, conntrack vs its maximum,
//! neighbours vs gc_thresh3, softnet drops) with the collapse marked.
//! Charts are drawn by plotters' SVG backend and inlined; the page has no
//! scripts, fonts, images or links to load: it opens offline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;

use crate::analyze::view::{Point, View};
use crate::analyze::Report;
use crate::model::Model;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<Point>,
    /// A limit (max, threshold): drawn dashed.
    pub limit: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chart {
    pub id: String,
    pub title: String,
    pub unit: String,
    pub lines: Vec<Line>,
}

/// Lines per chart at most (the busiest are kept).
const MAX_LINES: usize = 10;

fn busiest(mut m: BTreeMap<String, Vec<Point>>, n: usize) -> Vec<Line> {
    let mut v: Vec<(f64, String, Vec<Point>)> = std::mem::take(&mut m)
        .into_iter()
        .map(|(k, p)| (p.iter().map(|x| x.1).sum::<f64>(), k, p))
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    v.into_iter()
        .take(n)
        .map(|(_, label, points)| Line {
            label,
            points,
            limit: false,
        })
        .collect()
}

/// The chart series, derived from the samples through the rate model.
pub fn charts(view: &View) -> Vec<Chart> {
    let mut vnic: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let mut up: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let mut drops: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let mut softnet = vec![Vec::new(), Vec::new()];
    for w in view.samples.windows(2) {
        let m = Model::new(&w[1], Some(&w[0]));
        if m.interval_s == 0.0 {
            continue;
        }
        let t = view.rel(w[1].ts_unix_ns);
        for (name, r) in &m.links {
            if view.uplinks.contains(name) {
                up.entry(format!("{name} rx"))
                    .or_default()
                    .push((t, r.rx_packets_per_s));
                up.entry(format!("{name} tx"))
                    .or_default()
                    .push((t, r.tx_packets_per_s));
            } else if view.vnics.contains_key(name) {
                let label = match view.vnics.get(name) {
                    Some(v) if !v.domain.is_empty() => format!("{name} ({})", v.domain),
                    _ => name.clone(),
                };
                vnic.entry(label)
                    .or_default()
                    .push((t, r.rx_packets_per_s + r.tx_packets_per_s));
            } else {
                continue;
            }
            drops
                .entry(format!("{name} rx+tx dropped"))
                .or_default()
                .push((t, r.rx_dropped_per_s + r.tx_dropped_per_s));
        }
        for (k, v) in &m.qdisc_drops_per_s {
            drops.entry(format!("qdisc {k}")).or_default().push((t, *v));
        }
        if let Some(d) = m.softnet_dropped_per_s {
            softnet[0].push((t, d));
        }
        if let Some(d) = m.softnet_time_squeeze_per_s {
            softnet[1].push((t, d));
        }
    }
    drops.retain(|_, p| p.iter().any(|x| x.1 > 0.0));
    let mut out = vec![
        Chart {
            id: "vnic-rates".into(),
            title: "Per-vNIC packet rates (rx + tx)".into(),
            unit: "packets/s".into(),
            lines: busiest(vnic, MAX_LINES),
        },
        Chart {
            id: "uplink-rates".into(),
            title: "Uplink packet rates".into(),
            unit: "packets/s".into(),
            lines: busiest(up, MAX_LINES),
        },
        Chart {
            id: "drops".into(),
            title: "Drops (interfaces and qdiscs)".into(),
            unit: "packets/s".into(),
            lines: busiest(drops, MAX_LINES),
        },
    ];
    let gauge = |label: &str, p: Vec<Point>, limit: bool| Line {
        label: label.into(),
        points: p,
        limit,
    };
    out.push(Chart {
        id: "conntrack".into(),
        title: "Conntrack entries vs nf_conntrack_max".into(),
        unit: "entries".into(),
        lines: vec![
            gauge(
                "nf_conntrack_count",
                view.series(|s| s.conntrack.as_ref()?.count.map(|v| v as f64)),
                false,
            ),
            gauge(
                "nf_conntrack_max",
                view.series(|s| s.conntrack.as_ref()?.max.map(|v| v as f64)),
                true,
            ),
        ],
    });
    out.push(Chart {
        id: "neighbours".into(),
        title: "IPv4 neighbours vs gc_thresh3".into(),
        unit: "entries".into(),
        lines: vec![
            gauge(
                "IPv4 neighbours",
                view.series(|s| s.neighbours.as_ref().map(|n| n.total_inet as f64)),
                false,
            ),
            gauge(
                "gc_thresh3",
                view.series(|s| s.neighbours.as_ref()?.gc_thresh.map(|t| t[2] as f64)),
                true,
            ),
        ],
    });
    let [sd, sq]: [Vec<Point>; 2] = softnet.try_into().unwrap_or_default();
    out.push(Chart {
        id: "softnet".into(),
        title: "Softnet backlog drops and time squeeze".into(),
        unit: "per s".into(),
        lines: vec![
            gauge("dropped", sd, false),
            gauge("time_squeeze", sq, false),
        ],
    });
    for c in &mut out {
        c.lines.retain(|l| !l.points.is_empty());
    }
    out
}

/// One chart as an SVG element (plotters' SVG backend).
pub fn svg(c: &Chart, x_range: (f64, f64)) -> Result<String, String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (900, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let ymax = c
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let ymax = if ymax > 0.0 { ymax * 1.1 } else { 1.0 };
        let (x0, x1) = if x_range.1 > x_range.0 {
            x_range
        } else {
            (x_range.0 - 1.0, x_range.0 + 1.0)
        };
        let mut ch = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        ch.configure_mesh()
            .x_desc("seconds relative to the collapse")
            .y_desc(&c.unit)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, l) in c.lines.iter().enumerate() {
            let color = Palette99::pick(i + 1).to_rgba();
            let pts: Vec<(f64, f64)> = l
                .points
                .iter()
                .copied()
                .filter(|p| p.0 >= x0 && p.0 <= x1)
                .collect();
            if l.limit {
                ch.draw_series(DashedLineSeries::new(pts, 6, 4, color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(l.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            } else {
                ch.draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(l.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            }
        }
        if x0 <= 0.0 && x1 >= 0.0 {
            ch.draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (0.0, ymax)],
                4,
                3,
                RED.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label("collapse")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        ch.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// Escapes text for HTML (five characters; not worth a crate).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1000px}\
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:.9em;width:100%}td,th{border-bottom:1px solid #eee;padding:2px 6px;text-align:left;vertical-align:top}\
td.t{white-space:nowrap;text-align:right;font-family:monospace}.f{margin:1em 0;padding:.5em 1em;border-left:4px solid #c33;background:#fafafa}\
.conf{color:#666}.nodata{color:#888;font-style:italic}svg{display:block;margin:.5em 0}code{font-size:.9em}";

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>hvflight: incident {} on {}</title><style>{STYLE}</style></head><body>\n",
        esc(&r.incident.id),
        esc(&r.host)
    );
    let _ = write!(
        o,
        "<h1>Incident {} on {}</h1><p>{} ({}: {}) — {} samples from {:+.0} s to {:+.0} s around {}, {} events. Source: <code>{}</code></p>",
        esc(&r.incident.id),
        esc(&r.host),
        esc(&r.incident.ts),
        esc(&r.incident.trigger),
        esc(&r.incident.reason),
        r.samples,
        r.window_rel_s[0],
        r.window_rel_s[1],
        r.moment(),
        r.events,
        esc(&r.source)
    );
    o.push_str("<h2>Likely causes</h2>\n");
    if r.findings.is_empty() {
        o.push_str("<p>No known cause matched: read the timeline and the charts.</p>\n");
    }
    for (i, f) in r.findings.iter().enumerate() {
        let _ = write!(
            o,
            "<div class=\"f\" id=\"finding-{}\"><b>{}. [{}] {}</b> <span class=\"conf\">confidence {:.2}</span><table>",
            esc(&f.id),
            i + 1,
            esc(&f.id),
            esc(&f.cause),
            f.confidence
        );
        for e in &f.evidence {
            let ba = match (e.before, e.after) {
                (Some(b), Some(a)) => format!(" <span class=\"conf\">[{b} → {a}]</span>"),
                _ => String::new(),
            };
            let _ = write!(
                o,
                "<tr><td class=\"t\">{:+.1} s</td><td>{}{ba}</td></tr>",
                e.t_rel_s,
                esc(&e.what)
            );
        }
        o.push_str("</table><ul>");
        for n in &f.next {
            let _ = write!(o, "<li>next: {}</li>", esc(n));
        }
        o.push_str("</ul></div>\n");
    }
    let b = &r.blast_radius;
    o.push_str("<h2>Blast radius</h2>\n");
    if b.domains.is_empty() {
        o.push_str("<p>No domain identified as cut off.</p>");
    } else {
        let _ = write!(o, "<p>{} of {} running domains cut off.</p><table><tr><th>domain</th><th>nova instance</th><th>project</th><th>vNICs</th><th>bridge</th></tr>", b.domains.len(), b.running_domains);
        for d in &b.domains {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.domain),
                esc(&d.nova_instance),
                esc(&d.nova_project),
                esc(&d.vnics.join(", ")),
                esc(&d.bridges.join(", "))
            );
        }
        o.push_str("</table>\n");
    }
    for g in &b.critical_groups {
        let _ = write!(
            o,
            "<p class=\"f\"><b>Critical group <code>{}</code></b>: {} members on this host, {} cut off: {}</p>",
            esc(&g.pattern),
            g.members.len(),
            g.cut_off,
            esc(&g.members.join(", "))
        );
    }
    o.push_str("<h2>Charts</h2>\n");
    let x_range = (r.window_rel_s[0], r.window_rel_s[1]);
    for c in &r.charts {
        let _ = write!(o, "<div class=\"chart\" id=\"chart-{}\">", esc(&c.id));
        if c.lines.is_empty() {
            let _ = write!(o, "<p class=\"nodata\">{}: no data in this history (section missing or collector failed)</p>", esc(&c.title));
        } else {
            match svg(c, x_range) {
                Ok(s) => o.push_str(&s),
                Err(e) => {
                    let _ = write!(
                        o,
                        "<p class=\"nodata\">{}: chart failed: {}</p>",
                        esc(&c.title),
                        esc(&e)
                    );
                }
            }
        }
        o.push_str("</div>\n");
    }
    o.push_str("<h2>Timeline</h2>\n<table>");
    for c in &r.timeline {
        let _ = write!(
            o,
            "<tr><td class=\"t\">{:+.1} s</td><td>{}</td><td>{}</td></tr>",
            c.t_rel_s,
            esc(&c.source),
            esc(&c.what)
        );
    }
    o.push_str("</table>\n<h2>Could not check</h2>\n<ul>");
    for c in &r.could_not_check {
        let _ = write!(o, "<li>{}</li>", esc(c));
    }
    o.push_str("</ul>\n</body></html>\n");
    o
}
