//! dashboards/ as a fleet's Prometheus and Grafana use it: the rules load and
//! pass their promtool unit tests, every dashboard query parses, the
//! committed dashboards are what generate.py writes, and every metric name
//! the rules and dashboards use — and every metric docs/metrics.md lists —
//! exists in the /metrics of a real agent watching a lab (needs root).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{bin, free_port, RunningAgent};

use hvflight::lab::{Lab, LabConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboards() -> PathBuf {
    repo().join("dashboards")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (tests/tools/install-deps.sh installs it)")
    });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A PromQL query and where it comes from.
#[derive(Debug)]
struct Query {
    place: String,
    expr: String,
}

struct Rules {
    queries: Vec<Query>,
    recorded: BTreeSet<String>,
    alerts: Vec<String>,
}

fn load_yaml(path: &Path) -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(path).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .remove(0)
}

fn rules() -> Rules {
    let doc = load_yaml(&dashboards().join("hvflight.rules.yml"));
    let mut r = Rules {
        queries: vec![],
        recorded: BTreeSet::new(),
        alerts: vec![],
    };
    for g in doc["groups"].as_vec().unwrap() {
        for rule in g["rules"].as_vec().unwrap() {
            let expr = rule["expr"].as_str().unwrap().to_string();
            let name = if let Some(rec) = rule["record"].as_str() {
                r.recorded.insert(rec.to_string());
                rec.to_string()
            } else {
                let a = rule["alert"].as_str().unwrap().to_string();
                r.alerts.push(a.clone());
                a
            };
            r.queries.push(Query {
                place: format!("hvflight.rules.yml {name}"),
                expr,
            });
        }
    }
    r
}

fn dashboard_files() -> Vec<PathBuf> {
    vec![
        dashboards().join("hvflight-node.json"),
        dashboards().join("hvflight-fleet.json"),
    ]
}

fn dashboard_queries() -> Vec<Query> {
    let mut out = vec![];
    for f in dashboard_files() {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Query {
                    place: format!("{file} panel {:?}", p["title"].as_str().unwrap_or("")),
                    expr: t["expr"].as_str().unwrap().to_string(),
                });
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if let Some(q) = v["query"]["query"].as_str() {
                // label_values(EXPR, label): the series selector inside.
                let inner = q
                    .strip_prefix("label_values(")
                    .and_then(|s| s.rsplit_once(','))
                    .map(|(sel, _)| sel.to_string())
                    .unwrap_or_else(|| q.to_string());
                out.push(Query {
                    place: format!("{file} variable {:?}", v["name"].as_str().unwrap_or("")),
                    expr: inner,
                });
            }
        }
    }
    out
}

/// Grafana's variables, replaced by what Grafana would put there.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$__interval", "1m")
        .replace("$instance", "hv1:9469")
        .replace("$job", "hvflight")
}

/// Metric names in a query: identifiers outside string literals that are
/// not followed by `(` (functions) and not Grafana variables. PromQL has no
/// well-kept Rust parser; this only has to find names in our own queries.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut cleaned = String::new();
    let mut in_str = false;
    let mut prev = ' ';
    for c in expr.chars() {
        if c == '"' && prev != '\\' {
            in_str = !in_str;
            cleaned.push(' ');
        } else if !in_str {
            cleaned.push(c);
        }
        prev = c;
    }
    let re = regex::Regex::new(r"\$?[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    re.find_iter(&cleaned)
        .map(|m| m.as_str())
        .filter(|t| !t.starts_with('$'))
        .filter(|t| t.starts_with("hvflight_") || t.contains(':'))
        .map(str::to_string)
        .collect()
}

#[test]
fn rules_pass_promtool_check_and_every_alert_has_unit_tests() {
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dashboards().join("hvflight.rules.yml")));
    assert!(ok, "promtool check rules:\n{out}");
    assert!(!out.contains("WARNING"), "{out}");
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(dashboards().join("hvflight.rules.test.yml")));
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");
    // Each alert is exercised: it fires in some test (and the test file
    // checks each one also stays quiet where it should).
    let tests = load_yaml(&dashboards().join("hvflight.rules.test.yml"));
    let mut fired: BTreeSet<String> = BTreeSet::new();
    let mut evaluated: BTreeSet<String> = BTreeSet::new();
    for t in tests["tests"].as_vec().unwrap() {
        for a in t["alert_rule_test"].as_vec().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_string();
            evaluated.insert(name.clone());
            if !a["exp_alerts"].as_vec().unwrap().is_empty() {
                fired.insert(name);
            }
        }
    }
    let r = rules();
    for a in &r.alerts {
        assert!(
            fired.contains(a),
            "alert {a} has no unit test where it fires"
        );
    }
    assert_eq!(
        evaluated,
        r.alerts.iter().cloned().collect(),
        "tests for alerts that do not exist"
    );
    // The recording rule the fleet relies on for replicas sharing a host.
    assert!(r
        .recorded
        .contains("critical_group:hvflight_colocated_domains:count"));
}

#[test]
fn dashboards_are_generated_and_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = run(Command::new("python3")
        .arg(dashboards().join("generate.py"))
        .arg(dir.path()));
    assert!(ok, "{out}");
    let var_re = regex::Regex::new(r"\$(\w+)").unwrap();
    for f in dashboard_files() {
        let name = f.file_name().unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            std::fs::read_to_string(dir.path().join(name)).unwrap(),
            "{} differs from what dashboards/generate.py writes: run it",
            f.display()
        );
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let vars: BTreeSet<String> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        let mut ids = BTreeSet::new();
        let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap().to_string();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name:?}: duplicate id at {title}"
            );
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().unwrap(),
                g["y"].as_u64().unwrap(),
                g["w"].as_u64().unwrap(),
                g["h"].as_u64().unwrap(),
            );
            assert!(x + w <= 24, "{name:?}: {title} wider than the grid");
            for cx in x..x + w {
                for cy in y..y + h {
                    if let Some(other) = cells.insert((cx, cy), title.clone()) {
                        panic!("{name:?}: {title} overlaps {other}");
                    }
                }
            }
            if p["type"] != "row" {
                assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
                assert!(
                    !p["targets"].as_array().unwrap().is_empty(),
                    "{title}: no query"
                );
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap();
                for var in var_re.captures_iter(expr) {
                    let v = &var[1];
                    assert!(
                        v.starts_with("__") || vars.contains(v),
                        "{title}: ${v} is not a dashboard variable"
                    );
                }
            }
        }
    }
}

#[test]
fn every_dashboard_query_parses() {
    // promtool parses PromQL when it checks rules: one recording rule per query.
    let mut y = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let queries = dashboard_queries();
    for (i, q) in queries.iter().enumerate() {
        let expr = as_promql(&q.expr).replace('\'', "''");
        y.push_str(&format!("      - record: q{i}\n        expr: '{expr}'\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("queries.yml");
    std::fs::write(&f, &y).unwrap();
    let (ok, out) = run(Command::new("promtool").args(["check", "rules"]).arg(&f));
    assert!(
        ok,
        "a dashboard query does not parse:\n{out}\nqueries: {:#?}",
        queries
            .iter()
            .enumerate()
            .map(|(i, q)| format!("q{i}: {}", q.place))
            .collect::<Vec<_>>()
    );
    assert!(queries.len() > 50, "{} queries", queries.len());
}

/// What a scrape shows: sample names → label names, and family types.
#[derive(Default)]
struct Scrape {
    series: BTreeMap<String, BTreeSet<String>>,
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape {
            text: text.to_string(),
            ..Default::default()
        };
        let label_re = regex::Regex::new(r#"(\w+)="(?:[^"\\]|\\.)*""#).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    s.types.insert(n.to_string(), t.to_string());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, labels) = match line.find('{') {
                    Some(i) => (&line[..i], &line[i + 1..line.rfind('}').unwrap()]),
                    None => (line.split(' ').next().unwrap(), ""),
                };
                let keys = label_re
                    .captures_iter(labels)
                    .map(|c| c[1].to_string())
                    .collect::<BTreeSet<_>>();
                s.series.entry(name.to_string()).or_default().extend(keys);
            }
        }
        s
    }

    fn merge(mut self, other: Scrape) -> Scrape {
        for (k, v) in other.series {
            self.series.entry(k).or_default().extend(v);
        }
        self.types.extend(other.types);
        self.text.push_str(&other.text);
        self
    }

    fn type_of(&self, sample: &str) -> Option<&str> {
        self.types
            .get(sample)
            .or_else(|| self.types.get(sample.trim_end_matches("_total")))
            .map(String::as_str)
    }
}

fn scrape_in_ns(ns: &str, addr: &str) -> String {
    let (_, out) = run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "python3",
        "-c",
        &format!(
            "import urllib.request;print(urllib.request.urlopen('http://{addr}/metrics', timeout=5).read().decode())"
        ),
    ]));
    out
}

fn scrape_here(addr: &str) -> String {
    let (_, out) = run(Command::new("python3").args([
        "-c",
        &format!(
            "import urllib.request;print(urllib.request.urlopen('http://{addr}/metrics', timeout=5).read().decode())"
        ),
    ]));
    out
}

/// Two real agents: one watching a 3-guest lab with nova metadata and
/// critical groups configured, after a manual trigger (so the bundle and
/// incident families exist), and one on this host's own namespace (the
/// neighbour limits are global sysctls that only the root namespace has).
fn live_scrape() -> (Scrape, Lab) {
    // The gateway is configured, so its probes are answered (and have an RTT).
    let lab = Lab::start(LabConfig {
        guests: 3,
        nova_metadata: true,
        traffic: true,
        ..Default::default()
    })
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    // Upload on, toward a port nothing listens on: the spool and upload
    // metrics are exported (and the bundle waits in the spool).
    let creds_dir = tempfile::tempdir().unwrap();
    let creds = creds_dir.path().join("creds.toml");
    std::fs::write(&creds, "access_key_id = \"k\"\nsecret_access_key = \"s\"\n").unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let agent = RunningAgent::on_lab(
        &format!(
            "[agent]\nmetrics_listen = \"{addr}\"\n[bundle]\nbefore_s = 5\nafter_s = 1\ncommand_timeout_ms = 5000\n\
             [blast_radius]\ncritical_groups = [{{ name = \"webproxy\", pattern = \"^tools-webproxy-\" }}, \
             {{ name = \"inst\", pattern = \"^instance-\" }}]\n\
             [detect]\ngateways = {{ br0 = \"{gw}\" }}\n\
             [upload]\nenabled = true\nendpoint = \"http://127.0.0.1:1\"\nallow_http = true\nbucket = \"hvflight\"\n\
             credentials_file = \"{}\"\n",
            creds.display(),
            gw = lab.gateway_ip
        ),
        &lab,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.socket().exists() {
        assert!(Instant::now() < deadline, "lab agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(600));
    let (ok, out) = run(Command::new(bin())
        .args(["trigger", "--reason", "metrics test", "--socket"])
        .arg(agent.socket()));
    assert!(ok, "trigger: {out}");
    // Bundle counts are refreshed every tenth sample.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lab_text = loop {
        let t = scrape_in_ns(&lab.hv_ns, &addr);
        if t.contains("hvflight_last_incident_timestamp_seconds ")
            && t.contains("hvflight_domain_info{")
            && t.contains("hvflight_gateway_probe_rtt_seconds{")
        {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "bundle/domain metrics never appeared:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let host_addr = format!("127.0.0.1:{}", free_port());
    let host_agent = RunningAgent::start(
        &format!("[agent]\nmetrics_listen = \"{host_addr}\"\n"),
        &["--interval-ms", "200", "--libvirt-uri", "test:///default"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let host_text = loop {
        let t = scrape_here(&host_addr);
        if t.contains("hvflight_neighbour_entries_limit") {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no neighbour limits in the root namespace:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    drop(host_agent);
    drop(agent);
    drop(creds_dir);
    (
        Scrape::parse(&lab_text).merge(Scrape::parse(&host_text)),
        lab,
    )
}

#[test]
fn every_metric_name_in_rules_and_dashboards_exists_in_a_live_agent_needs_root() {
    let (scrape, _lab) = live_scrape();
    let r = rules();
    let mut missing = vec![];
    let mut upload_used = BTreeSet::new();
    for q in r.queries.iter().chain(dashboard_queries().iter()) {
        for name in names_in(&q.expr) {
            if name.contains(':') {
                if !r.recorded.contains(&name) {
                    missing.push(format!(
                        "{}: recorded series {name} is not recorded",
                        q.place
                    ));
                }
            } else if !scrape.series.contains_key(&name) {
                missing.push(format!("{}: {name}", q.place));
            } else if name.starts_with("hvflight_spool_") || name.starts_with("hvflight_upload") {
                upload_used.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "names used but not in /metrics:\n{}\n\n/metrics:\n{}",
        missing.join("\n"),
        scrape.text
    );
    // The spool alert really is built on the upload metrics.
    assert!(
        upload_used.contains("hvflight_spool_bundles")
            && upload_used.contains("hvflight_upload_last_success_timestamp_seconds"),
        "{upload_used:?}"
    );
    // The critical-group labels the colocation rule needs are there.
    assert!(
        scrape
            .text
            .contains("hvflight_critical_group_domains{critical_group=\"inst\"} 2"),
        "{}",
        scrape.text
    );
    assert!(scrape.text.contains("critical_group=\"webproxy\""));
}

/// docs/metrics.md rows: | `name` | type | labels | bound | meaning |
fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let text = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let row = regex::Regex::new(r"^\| `(hvflight_\w+)` \| (\w+) \| ([^|]*) \|").unwrap();
    text.lines()
        .filter_map(|l| row.captures(l))
        .map(|c| {
            let labels = c[3]
                .split(',')
                .map(|s| s.trim().trim_matches('`').to_string())
                .filter(|s| !s.is_empty() && s != "—")
                .collect();
            (c[1].to_string(), (c[2].to_string(), labels))
        })
        .collect()
}

#[test]
fn metrics_reference_lists_exactly_what_a_live_agent_exports_needs_root() {
    let (scrape, _lab) = live_scrape();
    let docs = documented();
    let mut wrong = vec![];
    for (name, labels) in &scrape.series {
        match docs.get(name) {
            None => wrong.push(format!("{name} is exported but not in docs/metrics.md")),
            Some((ty, doc_labels)) => {
                if Some(ty.as_str()) != scrape.type_of(name) {
                    wrong.push(format!(
                        "{name}: documented as {ty}, exported as {:?}",
                        scrape.type_of(name)
                    ));
                }
                if doc_labels != labels {
                    wrong.push(format!(
                        "{name}: documented labels {doc_labels:?}, exported {labels:?}"
                    ));
                }
            }
        }
    }
    for name in docs.keys() {
        if !scrape.series.contains_key(name) {
            wrong.push(format!("{name} is documented but not exported"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
