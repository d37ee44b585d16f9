//! The dashboard and the alert rules against a real Prometheus (Debian's package): a server in
//! the gateway namespace scrapes the daemon every second, with the alert rules loaded, while
//! clients keep traffic going through the proxy (one in three requests answered 503). Every
//! query of every dashboard panel must return series; every alert rule must load and evaluate
//! healthily; the 5xx alert's expression must hold for port 80, and the stale-scrape alert's
//! must not (the daemon is up).
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use observer_tests::{addr::proxy_url, curl, poll, root_or_skip, workspace_root, Lab, Netns};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);
const PROMETHEUS: &str = "127.0.0.1:9090";

/// `expr` evaluated now by the Prometheus in `ns`: its `data.result`, or the error it gave.
fn query(ns: &Netns, expr: &str) -> Result<Vec<Value>, String> {
    let args: Vec<std::ffi::OsString> =
        ["-sS", "--max-time", "10", "--data-urlencode", &format!("query={expr}"), &format!("http://{PROMETHEUS}/api/v1/query")].map(Into::into).to_vec();
    let out = ns.exec("curl", &args);
    if !out.status.success() {
        return Err(format!("{expr}: curl: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("not JSON ({e}): {out}"))?;
    if v["status"] != "success" {
        return Err(format!("{expr}: {out}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join("dist/grafana/observer-dashboard.json")).expect("the dashboard");
    let d: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "the dashboard's panels");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a query per target").to_owned())
        .collect()
}

#[test]
fn every_dashboard_and_alert_query_has_results_on_a_real_prometheus() {
    const TEST: &str = "every_dashboard_and_alert_query_has_results_on_a_real_prometheus";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let rules = workspace_root().join("dist/prometheus/observer-alerts.yml");
    let config = lab.topo.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: observer\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            observer_tests::observer::API
        ),
    )
    .expect("the Prometheus configuration");
    let data = lab.topo.path("prometheus-data");
    let _prometheus = lab.topo.gateway.spawn(
        "prometheus",
        "prometheus",
        [format!("--config.file={}", config.display()), format!("--storage.tsdb.path={}", data.display()), format!("--web.listen-address={PROMETHEUS}")],
        &lab.topo.path("prometheus.log"),
    );

    // Traffic until the end: keep-alive connections with a 503 among every three requests.
    let stop = Arc::new(AtomicBool::new(false));
    let client = lab.topo.client.clone();
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Ends quietly if the lab is gone (the test failed first).
                let urls = ["/ok", "/status/503", "/size/1000"].map(proxy_url);
                if std::panic::catch_unwind(|| curl(&client, &urls, &[])).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let ns = &lab.topo.gateway;
    let queries = dashboard_queries();
    let mut missing = Vec::new();
    let done = poll(WAIT, Duration::from_secs(1), || {
        missing = queries.iter().filter(|q| query(ns, q).map_or(true, |r| r.is_empty())).cloned().collect();
        missing.is_empty().then_some(())
    });
    let log = || std::fs::read_to_string(lab.topo.path("prometheus.log")).unwrap_or_default();
    assert!(done.is_some(), "dashboard queries without results after {WAIT:?}:\n{}\n--- prometheus ---\n{}", missing.join("\n"), log());

    // The rules loaded and evaluate without error; the 5xx one holds for port 80, the stale one not.
    let out = ns.run("curl", ["-sS", &format!("http://{PROMETHEUS}/api/v1/rules")]);
    let v: Value = serde_json::from_str(&out).expect("rules as JSON");
    let rules: Vec<&Value> = v["data"]["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
    assert_eq!(rules.len(), 5, "the alert rules Prometheus loaded: {out}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {} evaluates: {r}", r["name"]);
        let expr = r["query"].as_str().expect("its expression");
        let result = query(ns, expr).unwrap_or_else(|e| panic!("alert {}: {e}", r["name"]));
        match r["name"].as_str() {
            Some("ObserverHigh5xxRatio") => {
                assert!(result.iter().any(|s| s["metric"]["port"] == "80"), "a third of the requests fail on port 80: {result:?}");
            }
            Some("ObserverScrapeStale") | Some("ObserverProgramsDetached") => assert!(result.is_empty(), "{}: {result:?}", r["name"]),
            _ => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("the traffic thread");
}
