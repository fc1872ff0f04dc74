//! The Grafana dashboard imports cleanly: a datasource variable, a per-service variable,
//! panels with non-overlapping grid positions, and queries only over series rampart exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

const SERIES: &[&str] = &[
    "retry_attempts_total",
    "retry_delay_seconds_bucket",
    "retry_budget_exhausted_total",
    "circuit_breaker_state",
    "circuit_breaker_calls_total",
    "circuit_breaker_transitions_total",
    "dead_letters_total",
    "dead_letter_queue_size",
    "dead_letter_write_failures_total",
];

/// Metric names in a PromQL expression: identifiers directly followed by `{` or `[`.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'{' || *c == b'[' {
            let start = expr[..i]
                .rfind(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .map_or(0, |p| p + 1);
            let name = &expr[start..i];
            if !name.is_empty() && !name.chars().all(|c| c.is_ascii_digit()) {
                out.push(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn dashboard_is_well_formed_and_queries_only_exported_series() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/rampart.json"
    ))
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "rampart-overview");
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(
        (ds["type"].as_str(), ds["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );
    let svc = vars
        .iter()
        .find(|v| v["name"] == "service")
        .expect("a service variable");
    assert_eq!(svc["multi"], true);
    assert_eq!(svc["includeAll"], true);

    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let mut cells = HashSet::new();
    let mut ids = HashSet::new();
    let mut seen = HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{} is wider than the grid", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            let expr = t["expr"].as_str().unwrap();
            for m in metrics_in(expr) {
                assert!(
                    SERIES.contains(&m.as_str()),
                    "{} queries unknown series {m}",
                    p["title"]
                );
            }
            for s in SERIES {
                if expr.contains(s) {
                    seen.insert((*s).to_owned());
                }
            }
        }
    }
    for s in SERIES {
        assert!(seen.contains(*s), "no panel shows {s}");
    }
    let success = panels
        .iter()
        .find(|p| p["title"] == "Retry success rate")
        .unwrap();
    assert_eq!(
        success["targets"][0]["expr"],
        "sum by (service) (rate(retry_attempts_total{status=\"success\",service=~\"$service\"}[5m])) / sum by (service) (rate(retry_attempts_total{service=~\"$service\"}[5m]))"
    );
}

#[test]
fn alert_rules_pass_promtool_when_it_is_installed() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(dir)
        .output()
    else {
        if std::env::var("RAMPART_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("RAMPART_REQUIRE_SERVICES=1 but promtool is not installed");
        }
        eprintln!("SKIPPED: promtool is not installed (Debian package prometheus)");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
