//! The monitoring that ships with the relay stays valid: Prometheus' config and alert
//! rules pass `promtool` (including the rules' unit tests), the Grafana dashboard is
//! JSON Grafana can provision, and every `relay_*` metric they name is one the relay
//! exports (a const in relay-cdc/src/metrics.rs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn promtool(args: &[&str], dir: &str) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join(dir))
        .output()
        .expect("promtool not found (Debian package `prometheus`; scripts/test installs it)");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names relay-cdc defines: `pub const X: &str = "relay_...";`.
fn exported_metrics() -> BTreeSet<String> {
    read("relay-cdc/src/metrics.rs")
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const") && l.contains("&str"))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|n| n.starts_with("relay_"))
        .map(str::to_string)
        .collect()
}

/// Every `relay_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while let Some(pos) = text[i..].find("relay_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !ident(bytes[start - 1]) {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// Names in `used` that the relay does not export (histogram series may add
/// `_bucket`, `_sum` or `_count` to a defined name).
fn unknown(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            !exported.contains(n.as_str()) && !exported.contains(base)
        })
        .cloned()
        .collect()
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    promtool(&["check", "config", "prometheus.yml"], "docker/prometheus");
    promtool(&["check", "rules", "alerts.yml"], "docker/prometheus");
    promtool(&["test", "rules", "alerts_test.yml"], "docker/prometheus");
}

#[test]
fn alerts_and_dashboard_only_use_metrics_the_relay_exports() {
    let exported = exported_metrics();
    assert!(
        exported.len() >= 15 && exported.contains("relay_replication_lag_bytes"),
        "could not read the metric consts: {exported:?}"
    );
    for file in [
        "docker/prometheus/alerts.yml",
        "docker/grafana/dashboards/relay-cdc.json",
    ] {
        let used = metric_names(&read(file));
        assert!(!used.is_empty(), "{file} names no relay metric");
        let bad = unknown(&used, &exported);
        assert!(
            bad.is_empty(),
            "{file} uses metrics relay-cdc does not export: {bad:?}"
        );
    }
}

#[test]
fn the_name_check_catches_a_metric_that_does_not_exist() {
    let exported = exported_metrics();
    let used = metric_names("rate(relay_events_published_total[5m]) + relay_commit_to_ack_seconds_bucket + relay_made_up_total");
    assert_eq!(unknown(&used, &exported), vec!["relay_made_up_total"]);
}

#[test]
fn the_dashboard_is_provisioned_json_with_lag_throughput_latency_and_errors() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("docker/grafana/dashboards/relay-cdc.json"))
            .expect("the dashboard is valid JSON");
    assert_eq!(dash["uid"], "relay-cdc");
    let panels = dash["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for needle in [
        "relay_replication_lag_bytes",
        "relay_replication_lag_seconds",
        "rate(relay_events_published_total",
        "histogram_quantile(0.99, sum by (source, le) (rate(relay_commit_to_ack_seconds_bucket",
        "relay_records_in_flight",
        "relay_publish_failures_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needle)),
            "no panel queries {needle}"
        );
    }
    // Per source: every query is filtered by the dashboard's `source` variable.
    assert!(exprs.iter().all(|e| e.contains("source=~\"$source\"")));
    assert_eq!(dash["templating"]["list"][0]["name"], "source");

    // The data source the panels name is the one provisioned, and the provider reads
    // the folder docker-compose mounts the dashboards into.
    let datasources = read("docker/grafana/provisioning/datasources/prometheus.yml");
    for p in panels {
        let uid = p["datasource"]["uid"]
            .as_str()
            .expect("panel data source uid");
        assert!(
            datasources.contains(&format!("uid: {uid}")),
            "unknown data source {uid}"
        );
    }
    let provider = read("docker/grafana/provisioning/dashboards/relay-cdc.yml");
    let compose = read("docker-compose.yml");
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(compose.contains("./docker/grafana/dashboards:/var/lib/grafana/dashboards"));
    assert!(compose.contains("./docker/grafana/provisioning:/etc/grafana/provisioning"));
    assert!(compose.contains("./docker/prometheus/alerts.yml:/etc/prometheus/alerts.yml"));
}
