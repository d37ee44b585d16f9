//! The alert rules in dist/prometheus: valid (`promtool check rules`), right on hand-made series
//! (`promtool test rules` with observer-alerts.test.yml), and right on series recorded from a
//! live daemon: real traffic through the gateway (3 × 200 and 1 × 503 on port 80), two scrapes of
//! its `/metrics`, replayed to promtool as a steady rate; the 5xx alert must fire for port 80 with
//! the ratio the clients saw (25 %), and no other port.
use std::{path::Path, process::Command, time::Duration};

use observer_tests::{
    addr::{proxy_url, proxy_v4},
    curl,
    http_view::Metrics,
    root_or_skip, workspace_root, Lab,
};

const WAIT: Duration = Duration::from_secs(30);

fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("promtool (the prometheus package) is needed: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let dir = workspace_root().join("dist/prometheus");
    let check = promtool(&dir, &["check", "rules", "observer-alerts.yml"]);
    assert!(check.contains("SUCCESS: 5 rules found"), "{check}");
    promtool(&dir, &["test", "rules", "observer-alerts.test.yml"]);
}

/// The samples of `family` in an exposition: (labels inside the braces, value).
fn samples<'a>(text: &'a str, family: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(family)?.strip_prefix('{')?.strip_suffix('}')?;
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_5xx_alert_fires_on_series_recorded_from_a_live_daemon() {
    const TEST: &str = "the_5xx_alert_fires_on_series_recorded_from_a_live_daemon";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let before = lab.observer.metrics();
    let t = curl(&lab.topo.client, &["/ok", "/ok", "/status/503", "/ok"].map(proxy_url), &[]);
    assert_eq!(t.iter().map(|t| t.http_code).collect::<Vec<_>>(), vec![200, 200, 503, 200]);
    let mut after = String::new();
    observer_tests::poll(WAIT, Duration::from_millis(50), || {
        after = lab.observer.metrics();
        let m = Metrics::new(after.clone());
        (m.count("observer_http_requests_total", &[("role", "inbound"), ("port", "80")]) == 4
            && m.count("observer_http_responses_total", &[("role", "inbound")]) == 4)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("4 inbound requests and responses on port 80 (the proxy at {}):\n{after}", proxy_v4()));

    // Each series grows each minute by what it grew between the two scrapes.
    let mut series = String::new();
    for family in ["observer_http_requests_total", "observer_http_responses_total", "observer_http_requests_unanswered_total"] {
        for (labels, v1) in samples(&after, family) {
            let v0 = samples(&before, family).into_iter().find(|(l, _)| *l == labels).map_or(0.0, |(_, v)| v);
            series += &format!("      - series: '{family}{{{labels},instance=\"live\",job=\"observer\"}}'\n        values: '{v0}+{}x30'\n", v1 - v0);
        }
    }
    let rules = workspace_root().join("dist/prometheus/observer-alerts.yml");
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n      - eval_time: 15m\n        alertname: ObserverHigh5xxRatio\n        exp_alerts:\n          - exp_labels: {{ severity: page, instance: live, port: \"80\" }}\n            exp_annotations:\n              summary: \"live: 25% of requests on port 80 fail (5xx or unanswered)\"\n              description: \"Find the connections: `observer top` on the host, or the observer_connection_error_ratio series.\"\n",
        rules.display()
    );
    let path = lab.topo.path("live-alerts.test.yml");
    std::fs::write(&path, &test).expect("the promtool test file");
    let dir = path.parent().expect("a directory").to_owned();
    let out = Command::new("promtool").args(["test", "rules"]).arg(&path).current_dir(&dir).output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool test rules on live series failed:\n{}{}\n--- test ---\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
