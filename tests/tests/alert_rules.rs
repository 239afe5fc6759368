//! The shipped Prometheus rules and Grafana dashboard (`packaging/prometheus`,
//! `packaging/grafana`): promtool (Debian's prometheus package) checks and unit-tests the
//! rules, and every metric they or the dashboard name exists in a running agent's /metrics.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use steward_testbed::node::{Agent, NodeSpec};

fn packaging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(packaging().join("prometheus"))
        .output()
        .expect("promtool (Debian's prometheus package; ./scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "redis-steward-rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "redis-steward-rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// `redis_steward_…` names in a text (recording rules, with a `:`, are not metrics).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("redis_steward_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let preceded_by_colon = rest[..at].ends_with(':');
        if !preceded_by_colon && !tail[end..].starts_with(':') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_rules_and_dashboard_use_exists() {
    let rules =
        std::fs::read_to_string(packaging().join("prometheus/redis-steward-rules.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(packaging().join("grafana/redis-steward-dashboard.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is valid JSON");
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(used.len() >= 15, "{used:?}");

    let a = Agent::prepare(NodeSpec::new("metrics")).unwrap();
    a.start().unwrap();
    a.wait_healthy(Duration::from_secs(20)).unwrap();
    let exposed = a.api_get("/metrics").expect("/metrics answers");
    let names: BTreeSet<String> = exposed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the rules or the dashboard use metrics the agent does not export: {missing:?}\n{exposed}"
    );
}
