//! `/metrics` as Prometheus scrapes it: valid for `promtool`, no four-tuple labels, bounded
//! cardinality under a thousand connections, per-connection series only for the top K by error
//! ratio (naming the failing connection with its exact counts, and gone when the errors stop),
//! query strings kept out of targets unless asked for, and a `--metrics-listen` listener that
//! serves the aggregates alone.
//!
//! Ground truth: the traffic each test sends itself (curl's `--write-out`, the statuses of raw
//! keep-alive clients whose ports the test knows), the proxy's and upstream's access logs, and
//! `promtool check metrics`.
use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use observer_tests::{
    addr::{self, http_base, proxy_urls as urls, proxy_v4},
    curl, inbound,
    observer::WAIT,
    operator::{promtool_check_metrics, raise_nofile, wait_json, wait_metrics, Exposition, KeepAlive},
    outbound_of, root_or_skip, Lab,
};

/// The families of per-connection series, the only ones allowed `local` and `remote` labels.
const PER_CONNECTION: [&str; 3] = ["observer_connection_error_ratio", "observer_connection_requests_10s", "observer_connection_failed_10s"];

/// Label names that would (or could) carry one end of a four-tuple.
const FOUR_TUPLE_LABELS: &[&str] = &[
    "local",
    "remote",
    "src",
    "dst",
    "source",
    "destination",
    "saddr",
    "daddr",
    "sport",
    "dport",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "local_port",
    "remote_port",
    "local_addr",
    "remote_addr",
    "address",
    "addr",
    "ip",
    "peer",
    "client",
    "server",
    "endpoint",
    "connection",
    "tuple",
];

fn is_endpoint_or_address(v: &str) -> bool {
    v.parse::<SocketAddr>().is_ok() || v.parse::<IpAddr>().is_ok()
}

/// Lines of the per-connection series (`observer_connection_error_ratio{`).
fn per_connection_lines(e: &Exposition) -> usize {
    e.named(PER_CONNECTION[0]).count()
}

#[test]
fn metrics_pass_promtool_and_carry_no_four_tuple_labels() {
    const TEST: &str = "metrics_pass_promtool_and_carry_no_four_tuple_labels";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    // Keep-alive over IPv4 (one 5xx among them), one over IPv6, two with Connection: close, and
    // one SYN to a port nobody listens on (a refused connection): every label family gets values.
    let v4 = curl(&lab.topo.client, &urls(&["/ok", "/status/500", "/status/404", "/size/1000"]), &[]);
    let v6 = curl(&lab.topo.client, &[format!("{}/ok", http_base(addr::GATEWAY_CLIENT_SIDE_V6.into()))], &[]);
    let close = curl(&lab.topo.client, &urls(&["/ok", "/status/503"]), &["--header", "Connection: close"]);
    let refused = lab.topo.client.enter(|| TcpStream::connect_timeout(&SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 81), WAIT).map(drop)).unwrap();
    assert_eq!(refused.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionRefused));
    let requests = (v4.len() + v6.len() + close.len()) as f64;

    // Exact aggregates first: one request per transfer on each side of the proxy (the proxy opens
    // one upstream connection per request), one 500 and one 503 on each side.
    let m = wait_metrics(&lab.observer, &format!("{requests} inbound and outbound requests and all responses"), WAIT, |m| {
        let req = |role| m.value("observer_http_requests_total", &[("role", role), ("port", "80")]);
        let resp: f64 = m.named("observer_http_responses_total").map(|s| s.value).sum();
        req("inbound") == Some(requests) && req("outbound") == Some(requests) && resp == 2.0 * requests
    });
    for role in ["inbound", "outbound"] {
        for (code, n) in [("200", 4.0), ("404", 1.0), ("500", 1.0), ("503", 1.0)] {
            let class = format!("{}xx", &code[..1]);
            assert_eq!(
                m.value("observer_http_responses_total", &[("role", role), ("port", "80"), ("class", &class), ("code", code)]),
                Some(n),
                "{role} {code}:\n{}",
                m.text
            );
        }
    }

    let report = promtool_check_metrics(&m.text);
    if !report.output.trim().is_empty() {
        eprintln!("{TEST}: promtool check metrics printed (lint findings):\n{}", report.output);
    }
    assert!(report.status.success(), "promtool check metrics failed ({}):\n{}\n--- the text ---\n{}", report.status, report.output, m.text);

    assert!(!m.samples.is_empty());
    for family in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"] {
        assert!(m.value(family, &[]).is_some_and(|v| v > 0.0), "{family} is exported and positive:\n{}", m.text);
    }
    for s in &m.samples {
        let family = m.family_of(&s.name);
        // Ours, and the standard process metrics every client library exports.
        assert!(family.starts_with("observer_") || family.starts_with("process_"), "metric {} does not start with observer_ or process_", s.name);
        let kind = m.types.get(family).unwrap_or_else(|| panic!("no # TYPE for {family} (line {:?})", s.line));
        if kind == "counter" {
            assert!(family.ends_with("_total"), "counter {family} does not end in _total");
        }
        let per_connection = PER_CONNECTION.contains(&family);
        if per_connection {
            let names: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(names, ["local", "remote"], "{}", s.line);
            assert!(s.labels.values().all(|v| v.parse::<SocketAddr>().is_ok()), "per-connection labels are endpoints: {}", s.line);
        } else {
            for (k, v) in &s.labels {
                assert!(!FOUR_TUPLE_LABELS.contains(&k.as_str()), "{family} has a four-tuple-like label {k:?}: {}", s.line);
                // The one address an aggregate may carry: an upstream server's endpoint, in the
                // bounded `upstream` label (here the gateway's one upstream), never a client's.
                if k == "upstream" {
                    assert!(family.starts_with("observer_upstream_") && (v == "198.18.2.2:80" || v == "other"), "{}", s.line);
                    continue;
                }
                assert!(!is_endpoint_or_address(v), "{family} has an address in label {k}={v:?}: {}", s.line);
            }
        }
    }
    // The per-connection families are there (traffic had errors), each with the same series.
    let label_sets = |name: &str| m.named(name).map(|s| s.labels.clone()).collect::<BTreeSet<_>>();
    assert!(!label_sets(PER_CONNECTION[0]).is_empty(), "{}", m.text);
    for f in &PER_CONNECTION[1..] {
        assert_eq!(label_sets(f), label_sets(PER_CONNECTION[0]), "{f} vs {}", PER_CONNECTION[0]);
    }
    for f in PER_CONNECTION {
        assert_eq!(m.types.get(f).map(String::as_str), Some("gauge"), "{f}");
    }
}

/// Metric families whose label sets appear with traffic (absent on an idle daemon), with the
/// labels they carry. With the traffic of [`per_connection_series_stay_within_top_k`] the label
/// values are bounded by: role ∈ {inbound, outbound, unknown} (3), port ∈ {80} (the proxy's port
/// for inbound connections, the upstream's for outbound ones: 1), code ∈ {200, 500} (2), class ∈
/// {2xx, 5xx} (2, determined by code), reason ∈ {normal, reset_sent, reset_received, refused,
/// timed_out} (5), protocol ∈ {http1, tls, h2, other, unknown} (5).
const GROWING: &[(&str, &[&str])] = &[
    ("observer_connections_opened_total", &["role", "port"]),
    ("observer_connections_closed_total", &["role", "port", "reason", "protocol"]),
    ("observer_http_requests_total", &["role", "port"]),
    ("observer_http_responses_total", &["role", "port", "code"]),
    ("observer_http_requests_unanswered_total", &["role", "port"]),
    ("observer_handshake_rtt_seconds", &["role"]),
    ("observer_http_response_latency_seconds", &["role", "port", "class"]),
];

fn label_bound(label: &str) -> usize {
    match label {
        "role" => 3,
        "port" => 1,
        "code" | "class" => 2,
        "reason" => 5,
        "protocol" => 5,
        other => panic!("no bound for label {other}"),
    }
}

#[test]
fn per_connection_series_stay_within_top_k_under_a_thousand_connections() {
    const TEST: &str = "per_connection_series_stay_within_top_k_under_a_thousand_connections";
    const CONNECTIONS: usize = 1000;
    const TOP_K: usize = 5;
    if !root_or_skip(TEST) {
        return;
    }
    raise_nofile(8192);
    let lab = Lab::start_with_worker_connections(TEST, 4096, &["--top-k", &TOP_K.to_string()]);

    // The bound's base: every series line of a daemon that has seen no traffic.
    let idle = Exposition::parse(&lab.observer.metrics());
    assert_eq!(per_connection_lines(&idle), 0, "no traffic, no per-connection series:\n{}", idle.text);
    for (family, _) in GROWING {
        assert!(!idle.samples.iter().any(|s| idle.family_of(&s.name) == *family), "{family} has series before any traffic:\n{}", idle.text);
    }

    // 1000 connections held open at once, one request each; every other one gets a 500.
    let mut conns = KeepAlive::open_many(&lab.topo.client, proxy_v4(), CONNECTIONS).expect("opening 1000 connections to the proxy");
    let mut failing = BTreeSet::new();
    for (batch_no, batch) in conns.chunks_mut(50).enumerate() {
        let paths: Vec<&str> = (0..batch.len()).map(|i| if (batch_no * 50 + i) % 2 == 0 { "/status/500" } else { "/ok" }).collect();
        for (c, p) in batch.iter_mut().zip(&paths) {
            c.send(p).expect("sending a request");
        }
        for (c, p) in batch.iter_mut().zip(&paths) {
            let (status, line, _) = c.receive().expect("reading a response");
            let want = if *p == "/ok" { 200 } else { 500 };
            assert_eq!(status, want, "{p} on {}: {line}", c.local());
            if want == 500 {
                failing.insert(format!("{} {}", proxy_v4(), c.local()));
            }
        }
    }
    let last_error = Instant::now();
    assert_eq!(failing.len(), CONNECTIONS / 2);

    // The observer has all of it: exact request and response counts on both sides, and the
    // 1000 client connections open at once.
    let n = CONNECTIONS as f64;
    let m = wait_metrics(&lab.observer, "1000 requests on each side and 1000 open inbound connections", Duration::from_secs(30), |m| {
        let v = |name, labels: &[(&str, &str)]| m.value(name, labels).unwrap_or(0.0);
        v("observer_http_requests_total", &[("role", "inbound"), ("port", "80")]) == n
            && v("observer_http_requests_total", &[("role", "outbound"), ("port", "80")]) == n
            && v("observer_http_responses_total", &[("role", "inbound"), ("port", "80"), ("class", "5xx"), ("code", "500")]) == n / 2.0
            && v("observer_http_responses_total", &[("role", "outbound"), ("port", "80"), ("class", "5xx"), ("code", "500")]) == n / 2.0
            && v("observer_connections_active", &[("role", "inbound")]) == n
    });
    let open = lab.observer.get_json("/api/v1/connections?role=inbound&state=open&window=lifetime&min_requests=1");
    assert_eq!(open["count"], CONNECTIONS, "open inbound connections with a request");

    // Exactly K per-connection series (500 client connections and 500 upstream connections have
    // error ratio 1), each naming a connection that got a 500, with its exact counts.
    let upstream_log = lab.upstream.wait_for_requests(CONNECTIONS);
    let failing_upstream: BTreeSet<String> = upstream_log.entries.iter().filter(|e| e.status == 500).map(|e| outbound_of(e.remote_port)).collect();
    assert_eq!(failing_upstream.len(), CONNECTIONS / 2, "{}", upstream_log.raw);
    let top: Vec<_> = m.named(PER_CONNECTION[0]).collect();
    assert_eq!(top.len(), TOP_K, "per-connection series:\n{}", m.text);
    for s in &top {
        let (local, remote) = (&s.labels["local"], &s.labels["remote"]);
        let conn = format!("{local} {remote}");
        assert!(failing.contains(&conn) || failing_upstream.contains(&conn), "{conn} never got a 500 but is in the top K:\n{}", m.text);
        let l = [("local", local.as_str()), ("remote", remote.as_str())];
        assert_eq!(
            (s.value, m.value("observer_connection_requests_10s", &l), m.value("observer_connection_failed_10s", &l)),
            (1.0, Some(1.0), Some(1.0)),
            "{conn}: one request, one 500"
        );
    }
    for f in PER_CONNECTION {
        assert_eq!(m.named(f).count(), TOP_K, "{f}:\n{}", m.text);
    }

    // The whole exposition stays bounded: idle lines + what the bounded label sets can add + 3K.
    // A histogram series is one line per bucket (+Inf included) plus _sum and _count.
    let mut bound = idle.samples.len() + 3 * TOP_K;
    let mut explained = String::new();
    for (family, labels) in GROWING {
        let sets: usize = labels.iter().map(|l| label_bound(l)).product();
        let lines_per_set = if m.types.get(*family).map(String::as_str) == Some("histogram") {
            let bucket = format!("{family}_bucket");
            let les: BTreeSet<&str> = m.named(&bucket).map(|s| s.labels["le"].as_str()).collect();
            assert!(!les.is_empty(), "{family} has no buckets:\n{}", m.text);
            les.len() + 2
        } else {
            1
        };
        bound += sets * lines_per_set;
        explained.push_str(&format!("\n  {family}: {sets} label sets x {lines_per_set} lines"));
    }
    let total = m.samples.len();
    assert!(
        total <= bound,
        "{total} series lines after {CONNECTIONS} connections; bound {bound} = {} idle + 3x{TOP_K} per-connection +{explained}\n{}",
        idle.samples.len(),
        m.text
    );
    eprintln!("{TEST}: {total} series lines with {CONNECTIONS} connections open (idle {}, bound {bound})", idle.samples.len());

    // No more errors: once the 10 s window has passed them, the per-connection series go.
    let m = wait_metrics(&lab.observer, "no per-connection series 10 s after the last error", Duration::from_secs(30), |m| per_connection_lines(m) == 0);
    let after = last_error.elapsed();
    assert!(after >= Duration::from_millis(8500), "the per-connection series went {after:?} after the last error: before the 10 s window passed");
    for f in PER_CONNECTION {
        assert_eq!(m.named(f).count(), 0, "{f}:\n{}", m.text);
    }
    assert_eq!(m.value("observer_connections_active", &[("role", "inbound")]), Some(n), "the connections are still open");
    drop(conns);
}

#[test]
fn top_k_series_name_the_failing_connection_with_its_exact_counts() {
    const TEST: &str = "top_k_series_name_the_failing_connection_with_its_exact_counts";
    const BAD_REQUESTS: usize = 7;
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start_with(TEST, &["--top-k", "3"]);
    // Healthy clients in parallel with the failing one.
    let client = lab.topo.client.clone();
    let healthy = std::thread::spawn(move || (0..3).map(|_| curl(&client, &urls(&["/ok", "/ok"]), &[])).collect::<Vec<_>>());
    let mut bad = KeepAlive::open(&lab.topo.client, proxy_v4()).unwrap();
    for _ in 0..BAD_REQUESTS {
        assert_eq!(bad.get("/status/502").unwrap().status, 502);
    }
    let healthy = healthy.join().expect("healthy clients");
    let bad_conn = format!("{} {}", proxy_v4(), bad.local());
    let (local, remote) = (proxy_v4().to_string(), bad.local().to_string());
    let labels = [("local", local.as_str()), ("remote", remote.as_str())];

    // Ground truth: the proxy logged exactly BAD_REQUESTS 502s from that client port.
    let log = lab.proxy.wait_for_requests(BAD_REQUESTS + 6);
    let from_bad: Vec<_> = log.entries.iter().filter(|e| e.remote() == bad.local()).collect();
    assert_eq!(from_bad.len(), BAD_REQUESTS, "{}", log.raw);
    assert!(from_bad.iter().all(|e| e.status == 502), "{}", log.raw);

    let m = wait_metrics(&lab.observer, &format!("{bad_conn} with {BAD_REQUESTS} requests"), WAIT, |m| {
        m.value("observer_connection_requests_10s", &labels) == Some(BAD_REQUESTS as f64)
    });
    assert_eq!(m.value("observer_connection_error_ratio", &labels), Some(1.0), "{}", m.text);
    assert_eq!(m.value("observer_connection_failed_10s", &labels), Some(BAD_REQUESTS as f64), "{}", m.text);
    // K = 3: the bad connection and two of the seven upstream connections that carried a 502
    // (error ratio 1 each); none of the healthy client connections.
    let top: Vec<_> = m.named(PER_CONNECTION[0]).collect();
    assert_eq!(top.len(), 3, "{}", m.text);
    assert!(top.iter().all(|s| s.value == 1.0), "only connections with error ratio 1 are in the top 3:\n{}", m.text);
    for t in healthy.iter().flatten() {
        assert!(!top.iter().any(|s| s.labels["remote"] == t.local.to_string()), "healthy {} in the top K:\n{}", t.local, m.text);
    }
    let upstream_log = lab.upstream.wait_for_requests(BAD_REQUESTS + 6);
    let failing_upstream: BTreeSet<String> = upstream_log.entries.iter().filter(|e| e.status == 502).map(|e| outbound_of(e.remote_port)).collect();
    for s in top.iter().filter(|s| s.labels["remote"] != remote) {
        let conn = format!("{} {}", s.labels["local"], s.labels["remote"]);
        assert!(failing_upstream.contains(&conn), "{conn} is not an upstream connection that carried a 502:\n{}\n{}", m.text, upstream_log.raw);
    }
}

/// Query strings (where tokens hide) stay out of the API unless asked for; `--metrics-listen`
/// serves the aggregates without a single four-tuple, and nothing else.
#[test]
fn targets_lose_their_query_unless_asked_and_the_metrics_listener_has_no_four_tuples() {
    const TEST: &str = "targets_lose_their_query_unless_asked_and_the_metrics_listener_has_no_four_tuples";
    if !root_or_skip(TEST) {
        return;
    }
    for (extra, shown) in [(&["--metrics-listen", "127.0.0.1:9480"][..], "/ok?…"), (&["--show-query"][..], "/ok?token=s3cret")] {
        let lab = Lab::start_with(TEST, extra);
        let t = curl(&lab.topo.client, &urls(&["/ok?token=s3cret"]), &[]);
        assert_eq!(t[0].http_code, 200);
        let path = format!("/api/v1/connections/{}", inbound(&t[0]).replace(' ', "%20"));
        let v = wait_json(&lab.observer, &path, "the connection with its exchange", WAIT, |v| v["http"]["recent"].as_array().is_some_and(|r| r.len() == 1));
        assert_eq!(v["http"]["recent"][0]["target"], shown, "with {extra:?}: {v:#}");
        if extra[0] != "--metrics-listen" {
            continue;
        }
        let main = lab.observer.metrics();
        assert!(main.contains("remote=\""), "the API listener's /metrics has the per-connection series:\n{main}");
        let aggregates = lab.topo.gateway.run("curl", ["-sS", "http://127.0.0.1:9480/metrics"]);
        assert!(aggregates.contains("observer_http_requests_total{"), "{aggregates}");
        assert!(!aggregates.contains("remote=\"") && !aggregates.contains("local=\""), "a four-tuple label on the metrics listener:\n{aggregates}");
        let api = lab.topo.gateway.run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9480/api/v1/connections"]);
        assert_eq!(api, "404", "the metrics listener serves no API");
    }
}
