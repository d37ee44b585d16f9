//! What operators use: `/metrics` (valid for `promtool`, bounded cardinality, per-connection
//! series only for the top K by error ratio, and gone when the errors stop), the JSON API (routes,
//! filters, sorts, errors as JSON, never a panic), the CLI (`connections`, `status`, `top` as plain
//! snapshots and in a real pseudo-terminal under tmux) and the default listen address (loopback).
//!
//! Ground truth: the traffic each test sends itself (curl's `--write-out`, the exact bytes and
//! statuses of a raw keep-alive client whose port the test knows), the proxy's and upstream's
//! access logs, `promtool check metrics`, and the daemon's own API for what the CLI must print.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use observer_tests::{
    addr::{self, http_base, GW_CLIENT_IF, GW_UPSTREAM_IF},
    curl,
    observer::{observer_bin, STARTUP, WAIT},
    operator::{bpf_conn_keys, bpf_maps_of, daemon_pid, promtool_check_metrics, raise_nofile, Exposition, KeepAlive, Tmux},
    poll, root_or_skip, Lab, Netns, Nginx, Observer, Topology, Transfer,
};
use serde_json::Value;

/// The proxy's IPv4 endpoint, as the client reaches it.
fn proxy_v4() -> SocketAddr {
    SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 80)
}

fn url(path: &str) -> String {
    format!("{}{path}", http_base(addr::GATEWAY_CLIENT_SIDE_V4.into()))
}

fn urls(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| url(p)).collect()
}

/// The written form of the inbound connection of a client transfer: `LOCAL REMOTE` from the
/// gateway's side.
fn inbound(t: &Transfer) -> String {
    format!("{} {}", t.remote, t.local)
}

/// The written form of an upstream (outbound) connection from the upstream's access log line.
fn outbound_of(remote_port: u16) -> String {
    format!("{}:{remote_port} {}:80", addr::GATEWAY_UPSTREAM_SIDE_V4, addr::UPSTREAM_V4)
}

/// A lab whose observer gets `extra` arguments (e.g. `--top-k 3`).
fn lab_with(test: &str, extra: &[&str]) -> Lab {
    let topo = Topology::new(test);
    let upstream = Nginx::upstream(&topo);
    let proxy = Nginx::proxy(&topo);
    let observer = Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], extra);
    Lab { observer, proxy, upstream, topo }
}

/// `observer ARGS` (a CLI subcommand) run inside the gateway namespace, stdout piped.
fn cli(ns: &Netns, args: &[&str]) -> Output {
    ns.exec(observer_bin().to_str().expect("a UTF-8 path"), args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `GET path` until `done` holds for its JSON; panics with the last answer.
fn wait_json(obs: &Observer, path: &str, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    poll(timeout, Duration::from_millis(50), || {
        last = obs.get_json(path);
        done(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("waited {timeout:?} for {what}; GET {path} answered:\n{}", serde_json::to_string_pretty(&last).unwrap_or_default()))
}

/// Polls until every connection is closed and the HTTP framing has counted every request and
/// response (`requests` on each side of the proxy): the daemon frames HTTP as payload records
/// arrive, apart from the socket events that close a connection.
fn wait_closed_and_counted(obs: &Observer, connections: usize, requests: u64) -> Value {
    wait_json(obs, "/api/v1/connections?state=closed", &format!("{connections} closed connections with {requests} requests and responses on each side"), WAIT, |v| {
        let conns = v["connections"].as_array().unwrap();
        let sum = |role: &str, key: &str| conns.iter().filter(|c| c["role"] == role).map(|c| c["http"]["lifetime"][key].as_u64().unwrap_or(0)).sum::<u64>();
        let responses = |role: &str| ["responses_1xx", "responses_2xx", "responses_3xx", "responses_4xx", "responses_5xx"].iter().map(|k| sum(role, k)).sum::<u64>();
        v["count"] == connections && ["inbound", "outbound"].iter().all(|r| sum(r, "requests") == requests && responses(r) == requests)
    })
}

/// Polls `/metrics` until `done` holds; panics with the last text.
fn wait_metrics(obs: &Observer, what: &str, timeout: Duration, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let mut last = Exposition::default();
    poll(timeout, Duration::from_millis(100), || {
        last = Exposition::parse(&obs.metrics());
        done(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("waited {timeout:?} for /metrics to show {what}; it has:\n{}", last.text))
}

/// The `connection` strings of an API answer, in order.
fn conn_names(v: &Value) -> Vec<String> {
    v["connections"].as_array().unwrap_or_else(|| panic!("no connections in {v}")).iter().map(|c| c["connection"].as_str().expect("connection").to_owned()).collect()
}

fn conn_set(v: &Value) -> BTreeSet<String> {
    conn_names(v).into_iter().collect()
}

/// The socket tracepoints the architecture names.
const TRACEPOINTS: [&str; 4] = ["sock:inet_sock_set_state", "tcp:tcp_retransmit_skb", "tcp:tcp_send_reset", "tcp:tcp_receive_reset"];

/// The families of per-connection series, the only ones allowed `local` and `remote` labels.
const PER_CONNECTION: [&str; 3] = ["observer_connection_error_ratio", "observer_connection_requests_10s", "observer_connection_failed_10s"];

/// Label names that would (or could) carry one end of a four-tuple.
const FOUR_TUPLE_LABELS: &[&str] = &[
    "local", "remote", "src", "dst", "source", "destination", "saddr", "daddr", "sport", "dport", "src_ip", "dst_ip", "src_port", "dst_port", "local_port", "remote_port",
    "local_addr", "remote_addr", "address", "addr", "ip", "peer", "client", "server", "endpoint", "connection", "tuple",
];

fn is_endpoint_or_address(v: &str) -> bool {
    v.parse::<SocketAddr>().is_ok() || v.parse::<IpAddr>().is_ok()
}

/// Lines of the per-connection series (`observer_connection_error_ratio{`).
fn per_connection_lines(e: &Exposition) -> usize {
    e.named(PER_CONNECTION[0]).count()
}

// ---------------------------------------------------------------------------------------------
// /metrics

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
            assert_eq!(m.value("observer_http_responses_total", &[("role", role), ("port", "80"), ("class", &class), ("code", code)]), Some(n), "{role} {code}:\n{}", m.text);
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
    let topo = Topology::new(TEST);
    let upstream = Nginx::upstream(&topo);
    let proxy = Nginx::proxy_with_worker_connections(&topo, 4096);
    let observer = Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &["--top-k", &TOP_K.to_string()]);
    let lab = Lab { observer, proxy, upstream, topo };

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
    assert!(total <= bound, "{total} series lines after {CONNECTIONS} connections; bound {bound} = {} idle + 3x{TOP_K} per-connection +{explained}\n{}", idle.samples.len(), m.text);
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
    let lab = lab_with(TEST, &["--top-k", "3"]);
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

    let m = wait_metrics(&lab.observer, &format!("{bad_conn} with {BAD_REQUESTS} requests"), WAIT, |m| m.value("observer_connection_requests_10s", &labels) == Some(BAD_REQUESTS as f64));
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

// ---------------------------------------------------------------------------------------------
// JSON API

/// Three client connections with known HTTP counts: A 5×200, B one 500 then one 200, C 3×503.
struct Three {
    a: Vec<Transfer>,
    b: Vec<Transfer>,
    c: Vec<Transfer>,
}

impl Three {
    fn send(lab: &Lab) -> Three {
        let a = curl(&lab.topo.client, &urls(&["/ok"; 5]), &[]);
        let b = curl(&lab.topo.client, &urls(&["/status/500", "/ok"]), &[]);
        let c = curl(&lab.topo.client, &urls(&["/status/503"; 3]), &[]);
        for t in [&a, &b, &c] {
            assert_eq!(t.iter().map(|t| t.num_connects).sum::<u32>(), 1, "one connection per curl: {t:?}");
        }
        Three { a, b, c }
    }

    fn names(&self) -> [String; 3] {
        [inbound(&self.a[0]), inbound(&self.b[0]), inbound(&self.c[0])]
    }
}

#[test]
fn api_filters_and_sorts_connections_by_their_http_counts() {
    const TEST: &str = "api_filters_and_sorts_connections_by_their_http_counts";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let three = Three::send(&lab);
    let [a, b, c] = three.names();
    let obs = &lab.observer;
    // 3 client connections and 10 upstream ones (one per request), all closed by their clients.
    let all = wait_closed_and_counted(obs, 13, 10);
    assert_eq!(all["count"], 13);
    let upstream_log = lab.upstream.wait_for_requests(10);
    let upstream: BTreeSet<String> = upstream_log.entries.iter().map(|e| outbound_of(e.remote_port)).collect();
    assert_eq!(upstream.len(), 10, "{}", upstream_log.raw);

    let q = |query: &str| obs.get_json(&format!("/api/v1/connections?{query}"));
    let names = |query: &str| conn_names(&q(query));
    let set = |query: &str| conn_set(&q(query));
    let clients: BTreeSet<String> = [a.clone(), b.clone(), c.clone()].into();

    // Sorts over the HTTP window (60 s here, so a slow machine cannot age them out).
    assert_eq!(names("role=inbound&window=60s&sort=requests"), [a.as_str(), c.as_str(), b.as_str()], "A 5, C 3, B 2 requests");
    assert_eq!(names("role=inbound&window=60s&sort=requests&order=asc"), [b.as_str(), c.as_str(), a.as_str()]);
    assert_eq!(names("role=inbound&window=60s&sort=error_ratio"), [c.as_str(), b.as_str(), a.as_str()], "C 1.0, B 0.5, A 0");
    assert_eq!(names("role=inbound&window=60s&sort=failed"), [c.as_str(), b.as_str(), a.as_str()], "C 3, B 1, A 0");
    let ratios: Vec<f64> = q("role=inbound&window=60s&sort=error_ratio")["connections"].as_array().unwrap().iter().map(|c| c["http"]["last_60s"]["error_ratio"].as_f64().unwrap()).collect();
    assert_eq!(ratios, [1.0, 0.5, 0.0]);
    let limited = q("window=60s&sort=requests&limit=1");
    assert_eq!((limited["count"].as_u64(), conn_names(&limited)), (Some(1), vec![a.clone()]), "the busiest of all 13");
    assert_eq!(names("window=lifetime&sort=failed&limit=2"), [c.as_str(), b.as_str()], "failed: C 3, B 1, every upstream connection at most 1");
    // min_requests counts in the window asked for.
    assert_eq!(set("window=60s&min_requests=3"), BTreeSet::from([a.clone(), c.clone()]));
    assert_eq!(set("window=lifetime&min_requests=2"), clients);
    assert_eq!(q("window=60s&min_requests=6")["count"], 0);
    // Filters by role, address and port.
    assert_eq!(set("role=inbound"), clients);
    assert_eq!(set("role=outbound"), upstream);
    assert_eq!(set(&format!("address={}", addr::CLIENT_V4)), clients);
    assert_eq!(set(&format!("address={}", addr::UPSTREAM_V4)), upstream);
    assert_eq!(set("local_port=80"), clients);
    assert_eq!(set("remote_port=80"), upstream);
    assert_eq!(q("port=80")["count"], 13);
    assert_eq!(set(&format!("port={}", three.b[0].local.port())), BTreeSet::from([b.clone()]));
    assert_eq!(q("state=open")["count"], 0);

    // The 10 s window empties while the 60 s one still counts every request.
    wait_json(obs, "/api/v1/connections?role=inbound&window=10s&min_requests=1", "the 10 s window to pass", WAIT, |v| v["count"] == 0);
    assert_eq!(set("role=inbound&window=60s&min_requests=1"), clients);
    let v = q("role=inbound&window=60s&sort=requests");
    let counts: Vec<(u64, u64)> = v["connections"].as_array().unwrap().iter().map(|c| (c["http"]["last_10s"]["requests"].as_u64().unwrap(), c["http"]["last_60s"]["requests"].as_u64().unwrap())).collect();
    assert_eq!(counts, [(0, 5), (0, 3), (0, 2)]);
}

#[test]
fn api_shows_one_connection_with_its_http_history() {
    const TEST: &str = "api_shows_one_connection_with_its_http_history";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let three = Three::send(&lab);
    let [_, b, _] = three.names();
    let path = format!("/api/v1/connections/{}", b.replace(' ', "%20"));
    let v = wait_json(&lab.observer, &path, "B closed with two exchanges", WAIT, |v| v["status"] == "closed" && v["http"]["recent"].as_array().is_some_and(|r| r.len() == 2));
    assert_eq!(v["connection"], b.as_str());
    assert_eq!((v["local"].as_str(), v["remote"].as_str()), (Some(proxy_v4().to_string().as_str()), Some(three.b[0].local.to_string().as_str())));
    assert_eq!(v["role"], "inbound");
    let recent: Vec<(String, String, u64)> = v["http"]["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["method"].as_str().unwrap().to_owned(), e["target"].as_str().unwrap().to_owned(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(recent, [("GET".into(), "/status/500".into(), 500), ("GET".into(), "/ok".into(), 200)]);
    assert!(v["http"]["recent"].as_array().unwrap().iter().all(|e| e["latency_ms"].as_f64().is_some_and(|l| l >= 0.0) && e["time"].as_f64().is_some()), "{v:#}");
    let life = &v["http"]["lifetime"];
    assert_eq!((life["requests"].as_u64(), life["responses_2xx"].as_u64(), life["responses_5xx"].as_u64(), life["failed"].as_u64(), life["error_ratio"].as_f64()), (Some(2), Some(1), Some(1), Some(1), Some(0.5)), "{v:#}");
    assert_eq!(v["http"]["last_status"], 200);
    let sent: u64 = three.b.iter().map(|t| t.size_request).sum();
    let received: u64 = three.b.iter().map(Transfer::response_bytes).sum();
    assert_eq!((v["bytes_in"].as_u64(), v["bytes_out"].as_u64()), (Some(sent), Some(received)), "bytes vs curl's sizes");
    // The comma form names the same connection.
    let comma = lab.observer.get_json(&format!("/api/v1/connections/{}", b.replace(' ', ",")));
    assert_eq!(comma["connection"], b.as_str());
    // Same history, to the last digit: a past exchange's time does not move between requests.
    assert_eq!(comma["http"]["recent"], v["http"]["recent"]);
    assert_eq!((comma["first_seen"].as_f64(), comma["closed"].as_f64()), (v["first_seen"].as_f64(), v["closed"].as_f64()));
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
        let lab = lab_with(TEST, extra);
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

/// A thousand idle sockets and a hundred traces at once: the daemon serves at most 256 API
/// connections, gives each 10 s to send a request head, and keeps at most 64 live traces; each
/// refusal is counted, and the API answers throughout.
#[test]
fn idle_sockets_and_trace_floods_are_bounded_and_the_api_keeps_answering() {
    const TEST: &str = "idle_sockets_and_trace_floods_are_bounded_and_the_api_keeps_answering";
    const IDLE: usize = 1000;
    const TRACES: usize = 100;
    if !root_or_skip(TEST) {
        return;
    }
    raise_nofile(4096);
    let lab = Lab::start(TEST);
    let api: SocketAddr = observer_tests::observer::API.parse().unwrap();
    let rss = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default().lines().find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())).unwrap_or(0);
    let rss_before = rss(lab.observer.pid());
    assert_eq!(lab.observer.get("/healthz").0, 200, "the harness's kept-alive connection is open first");

    // Idle sockets: connected, silent.
    let idle: Vec<TcpStream> = lab.topo.gateway.enter(move || (0..IDLE).map(|_| TcpStream::connect(api).expect("connecting to the API")).collect()).unwrap();
    let m = wait_metrics(&lab.observer, "refused API connections", WAIT, |m| m.value("observer_api_connections_refused_total", &[]).is_some_and(|v| v >= (IDLE - 256) as f64));
    let refused = m.value("observer_api_connections_refused_total", &[]).unwrap();
    assert!(refused <= (IDLE - 255) as f64, "{refused} refused: more than the idle sockets beyond the 256 places");
    // The daemon closes the silent ones after 10 s; then new clients get in again.
    let closed = poll(Duration::from_secs(30), Duration::from_millis(500), || {
        idle.iter()
            .all(|s| {
                s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                match io::Read::read(&mut &*s, &mut [0u8; 1]) {
                    Ok(0) => true,
                    Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
                    Ok(_) => false,
                }
            })
            .then_some(())
    });
    assert!(closed.is_some(), "the idle sockets are still open 30 s later");
    drop(idle);
    let fresh = lab.topo.gateway.run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{api}/metrics")]);
    assert_eq!(fresh, "200", "a new client after the idle sockets went");

    // Traces: 64 follow, the rest are told why not.
    let traces: Vec<(TcpStream, u16)> = lab
        .topo
        .gateway
        .enter(move || {
            (0..TRACES)
                .map(|_| {
                    let mut s = TcpStream::connect(api).expect("connecting to the API");
                    io::Write::write_all(&mut s, b"GET /api/v1/trace?local_port=80 HTTP/1.1\r\nHost: observer\r\n\r\n").unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n") {
                        assert_eq!(io::Read::read(&mut s, &mut b).expect("a status line"), 1, "the connection ended: {:?}", String::from_utf8_lossy(&head));
                        head.push(b[0]);
                    }
                    let code = String::from_utf8_lossy(&head).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                    (s, code)
                })
                .collect()
        })
        .unwrap();
    let ok = traces.iter().filter(|(_, c)| *c == 200).count();
    let refused_traces = traces.iter().filter(|(_, c)| *c == 503).count();
    assert_eq!((ok, refused_traces), (64, TRACES - 64), "200s and 503s to {TRACES} trace requests");
    let m = wait_metrics(&lab.observer, "refused traces", WAIT, |m| m.value("observer_trace_refused_total", &[]) == Some((TRACES - 64) as f64));
    assert_eq!(lab.observer.status()["traces_active"], 64, "{}", m.text);
    drop(traces);
    let rss_after = rss(lab.observer.pid());
    eprintln!("{TEST}: RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(rss_after < rss_before + 64 * 1024, "the daemon grew from {rss_before} to {rss_after} KiB");
}

/// Least privilege: a daemon started without CAP_PERFMON (nor CAP_SYS_ADMIN, which stands in for
/// it) says exactly that; one started as root
/// keeps only CAP_BPF once its programs are attached, and goes on counting and tracing.
#[test]
fn the_daemon_needs_named_capabilities_and_keeps_only_cap_bpf() {
    const TEST: &str = "the_daemon_needs_named_capabilities_and_keeps_only_cap_bpf";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    // (`timeout`: a daemon that wrongly starts must not hang the test.)
    let out = topo.gateway.exec(
        "timeout",
        ["20", "capsh", "--drop=cap_perfmon,cap_sys_admin", "--", "-c", &format!("exec {} run --interface {GW_CLIENT_IF} --ephemeral", observer_bin().display())].map(std::ffi::OsString::from),
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "started without CAP_PERFMON: {err}");
    assert!(err.contains("lacks CAP_PERFMON:"), "names the missing one, and only it: {err}");
    drop(topo);

    let lab = Lab::start(TEST);
    let status = std::fs::read_to_string(format!("/proc/{}/status", lab.observer.pid())).expect("the daemon's status");
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|v| u64::from_str_radix(v.trim(), 16).expect("hex")).expect("CapEff");
    let prm = status.lines().find_map(|l| l.strip_prefix("CapPrm:")).map(|v| u64::from_str_radix(v.trim(), 16).expect("hex")).expect("CapPrm");
    assert_eq!((eff, prm), (1 << 39, 1 << 39), "effective and permitted: CAP_BPF (bit 39) alone");
    assert_eq!(lab.observer.status()["capabilities"], serde_json::json!(["CAP_BPF"]));
    // Still counting, reading its maps, and tracing (a kernel filter written through its map).
    let t = curl(&lab.topo.client, &urls(&["/ok", "/status/503"]), &[]);
    let v = wait_json(&lab.observer, &format!("/api/v1/connections/{}", inbound(&t[0]).replace(' ', "%20")), "two requests", WAIT, |v| v["http"]["lifetime"]["requests"] == 2);
    assert_eq!(v["http"]["lifetime"]["responses_5xx"], 1, "{v:#}");
    let trace = cli(&lab.topo.gateway, &["trace", "--local-port", "80", "--count", "1", "--duration", "5", "--json"]);
    assert!(trace.status.success(), "observer trace: {}", text(&trace.stderr));
    assert!(lab.observer.status()["programs"].as_array().is_some_and(|p| !p.is_empty()), "program stats through their own descriptors");
}

/// `/readyz`: ready while everything attached observes; an interface that goes away makes it
/// say so (503), while `/healthz` stays ok.
#[test]
fn readyz_says_when_an_observed_interface_is_gone() {
    const TEST: &str = "readyz_says_when_an_observed_interface_is_gone";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let (code, body) = lab.observer.get("/readyz");
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()), (200, serde_json::json!({"ready": true, "problems": []})), "{body}");
    lab.topo.gateway.run("ip", ["link", "del", GW_UPSTREAM_IF]);
    let (code, body) = lab.observer.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    let problems = v["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{v:#}");
    assert!(problems[0].as_str().unwrap().contains(&format!("interface {GW_UPSTREAM_IF} is gone")), "{v:#}");
    assert_eq!(lab.observer.get("/healthz").0, 200, "liveness is not readiness");
}

/// `GET path` over the daemon's Unix socket (HTTP/1.0: the body ends with the connection).
fn unix_get(socket: &Path, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    io::Read::read_to_string(&mut s, &mut answer).unwrap_or_else(|e| panic!("GET {path} on {}: {e}", socket.display()));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("GET {path}: no head in {answer:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("GET {path}: {head:?}"));
    (status, body.to_owned())
}

/// `--unix-socket`: the whole API on a socket only root may open (mode 0600), replacing a stale
/// socket file left by a daemon that did not exit cleanly; the CLI reaches it with
/// `--server unix:PATH`; the daemon removes it on exit. Also: every ring buffer is drained, with
/// its lag in /api/v1/status, while the daemon keeps up.
#[test]
fn the_api_on_a_unix_socket_is_roots_alone_and_serves_the_cli() {
    const TEST: &str = "the_api_on_a_unix_socket_is_roots_alone_and_serves_the_cli";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let socket = topo.path("api.sock");
    // A daemon killed with its socket still there: nothing answers on it.
    drop(UnixListener::bind(&socket).expect("a stale socket"));
    let upstream = Nginx::upstream(&topo);
    let proxy = Nginx::proxy(&topo);
    let observer = Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &["--unix-socket", socket.to_str().expect("a UTF-8 path")]);
    let mut lab = Lab { observer, proxy, upstream, topo };

    assert!(lab.observer.log().contains("removed the stale socket"), "{}", lab.observer.log());
    let m = std::fs::symlink_metadata(&socket).expect("the socket");
    assert!(m.file_type().is_socket(), "{} is not a socket: {m:?}", socket.display());
    assert_eq!((m.permissions().mode() & 0o7777, m.uid()), (0o600, 0), "mode 0600, owned by root");
    // Another user is refused by the mode (the directory is open to them).
    let dir_mode = std::fs::metadata(&lab.topo.dir).unwrap().permissions().mode();
    let as_nobody = |args: &[&std::ffi::OsStr]| std::process::Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]).args(args).output().expect("setpriv");
    let curl_runs = as_nobody(&["--version".as_ref()]);
    assert!(curl_runs.status.success(), "curl as nobody: {}", text(&curl_runs.stderr));
    let refused = as_nobody(&["-sS".as_ref(), "--max-time".as_ref(), "10".as_ref(), "--unix-socket".as_ref(), socket.as_os_str(), "http://localhost/healthz".as_ref()]);
    assert!(!refused.status.success(), "nobody reached the API through {} (directory mode {dir_mode:o}): {}", socket.display(), text(&refused.stdout));
    assert_eq!(unix_get(&socket, "/healthz"), (200, "ok\n".to_owned()), "root reaches it");

    // Traffic, then the same connections through either door.
    let t = curl(&lab.topo.client, &urls(&["/ok", "/status/503"]), &[]);
    let tcp = wait_closed_and_counted(&lab.observer, 3, 2);
    let server = format!("unix:{}", socket.display());
    let out = cli(&lab.topo.gateway, &["connections", "--json", "--server", &server]);
    assert!(out.status.success(), "observer connections --server {server}: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!((v["count"].as_u64(), v["matched"].as_u64(), conn_set(&v)), (Some(3), Some(3), conn_set(&tcp)));
    assert!(conn_set(&v).contains(&inbound(&t[0])), "{v:#}");
    let out = cli(&lab.topo.gateway, &["status", "--server", &server]);
    assert!(out.status.success(), "observer status --server {server}: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("observer {}", env!("CARGO_PKG_VERSION"))), "{}", text(&out.stdout));
    let (code, body) = unix_get(&socket, &format!("/api/v1/connections/{}", inbound(&t[0]).replace(' ', "%20")));
    assert_eq!(code, 200, "{body}");
    let one: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["http"]["lifetime"]["requests"], 2, "{one:#}");

    // Rings: each reported; quiet now, so drained: their lag is about zero (it must not stay at
    // what it was during the traffic), and the daemon is ready.
    let rings = |status: &Value| -> BTreeMap<String, f64> {
        status["rings"].as_array().expect("rings").iter().map(|r| (r["ring"].as_str().unwrap().to_owned(), r["lag_seconds"].as_f64().unwrap())).collect()
    };
    let status = poll(WAIT, Duration::from_millis(100), || {
        let (code, body) = unix_get(&socket, "/api/v1/status");
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        rings(&status).values().all(|lag| *lag < 0.1).then_some(status)
    })
    .unwrap_or_else(|| panic!("rings still lag {WAIT:?} after the traffic: {}", unix_get(&socket, "/api/v1/status").1));
    assert_eq!(rings(&status).keys().map(String::as_str).collect::<Vec<_>>(), ["events", "payload", "trace"], "{status:#}");
    assert_eq!(status["config"]["ready_max_lag_seconds"], 1.0, "{status:#}");
    let ready = poll(WAIT, Duration::from_millis(100), || (unix_get(&socket, "/readyz").0 == 200).then_some(()));
    assert!(ready.is_some(), "/readyz: {}", unix_get(&socket, "/readyz").1);

    // Gone with the daemon.
    let exit = lab.observer.stop();
    assert!(exit.is_some_and(|s| s.success()), "observer did not exit cleanly ({exit:?}):\n{}", lab.observer.log());
    assert!(!socket.exists(), "{} is left after the daemon exited", socket.display());
    let out = cli(&lab.topo.gateway, &["status", "--server", &server]);
    assert!(text(&out.stderr).contains(&format!("no daemon at {server}")), "{}", text(&out.stderr));
}

/// `/api/v1/connections` is written as it is sent (chunked, never whole in memory): a list of
/// thousands of connections still parses as one JSON object, with `count` and `matched` exact.
#[test]
fn a_long_connection_list_is_streamed_as_valid_json() {
    const TEST: &str = "a_long_connection_list_is_streamed_as_valid_json";
    const CONNECTIONS: usize = 2000;
    if !root_or_skip(TEST) {
        return;
    }
    raise_nofile(8192);
    let topo = Topology::new(TEST);
    let upstream = Nginx::upstream(&topo);
    let proxy = Nginx::proxy_with_worker_connections(&topo, 4096);
    let observer = Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &[]);
    let lab = Lab { observer, proxy, upstream, topo };
    let conns = KeepAlive::open_many(&lab.topo.client, proxy_v4(), CONNECTIONS).expect("opening 2000 connections to the proxy");
    let clients: BTreeSet<String> = conns.iter().map(|c| format!("{} {}", proxy_v4(), c.local())).collect();
    assert_eq!(clients.len(), CONNECTIONS);
    wait_json(&lab.observer, "/api/v1/connections?role=inbound&state=open&limit=1", "2000 open inbound connections", WAIT, |v| v["matched"] == CONNECTIONS);

    let all = lab.observer.get_json("/api/v1/connections?role=inbound&state=open&limit=100000");
    assert_eq!((all["count"].as_u64(), all["matched"].as_u64()), (Some(CONNECTIONS as u64), Some(CONNECTIONS as u64)));
    let names = conn_names(&all);
    assert_eq!(names.len(), CONNECTIONS);
    assert_eq!(names.iter().cloned().collect::<BTreeSet<_>>(), clients, "each connection once");
    assert!(all["connections"].as_array().unwrap().iter().all(|c| c["status"] == "open" && c["role"] == "inbound" && c["local"] == proxy_v4().to_string()));
    let some = lab.observer.get_json("/api/v1/connections?role=inbound&limit=1500&sort=first_seen&order=asc");
    assert_eq!((some["count"].as_u64(), some["matched"].as_u64(), conn_names(&some).len()), (Some(1500), Some(CONNECTIONS as u64), 1500));

    // Sent as it is written: chunked, without a length known in advance.
    let head = lab.topo.gateway.run("curl", ["-sS", "-o", "/dev/null", "-D", "-", &format!("http://{}/api/v1/connections?limit=100000", observer_tests::observer::API)]);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("content-length"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    drop(conns);
}

#[test]
fn api_status_reports_attachments_tracepoints_and_exact_kernel_counters() {
    const TEST: &str = "api_status_reports_attachments_tracepoints_and_exact_kernel_counters";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let t = curl(&lab.topo.client, &urls(&["/ok", "/size/1000"]), &[]);
    assert_eq!(t.iter().map(|t| t.num_connects).sum::<u32>(), 1);
    // One client connection and two upstream connections, all closed.
    wait_closed_and_counted(&lab.observer, 3, 2);
    assert_eq!(lab.observer.get("/healthz"), (200, "ok\n".to_owned()));

    // Archived (kept for post-mortems) once the close grace has passed.
    let s = wait_json(&lab.observer, "/api/v1/status", "3 closed connections kept", WAIT, |s| s["table"]["closed_kept"] == 3);
    // Archived entries are final. `state=closed` also lists entries still `closing` (their last
    // ACK or reset may not be counted yet): read them again now that all three are archived, for
    // the comparison of their packets with the kernel's counter below.
    let conns = lab.observer.get_json("/api/v1/connections?state=closed");
    assert!(conns["connections"].as_array().unwrap().iter().all(|c| c["status"] == "closed"), "every entry archived:\n{conns:#}");
    let attachments: BTreeSet<(String, String)> =
        s["attachments"].as_array().expect("attachments").iter().map(|a| (a["interface"].as_str().unwrap().to_owned(), a["direction"].as_str().unwrap().to_owned())).collect();
    let want: BTreeSet<(String, String)> = [GW_CLIENT_IF, GW_UPSTREAM_IF].iter().flat_map(|i| ["ingress", "egress"].map(|d| (i.to_string(), d.to_owned()))).collect();
    assert_eq!(attachments, want, "{s:#}");
    assert_eq!(s["attachments"].as_array().unwrap().len(), 4, "{s:#}");
    assert!(s["attachments"].as_array().unwrap().iter().all(|a| a["mode"] == "tcx" || a["mode"] == "clsact"), "{s:#}");
    let tracepoints: BTreeMap<String, bool> =
        s["tracepoints"].as_array().expect("tracepoints").iter().map(|t| (t["tracepoint"].as_str().unwrap().to_owned(), t["attached"].as_bool().unwrap())).collect();
    // The four the architecture names (more may come); on this kernel each one attaches.
    for t in TRACEPOINTS {
        assert_eq!(tracepoints.get(t), Some(&true), "{t}: {s:#}");
    }
    assert!(tracepoints.values().all(|a| *a), "every tracepoint attached: {s:#}");
    assert_eq!(s["netns_filter"], true);
    assert_eq!(s["traces_active"], 0);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));

    // Kernel counters, exact: every TCP segment of the 3 connections is one packet seen (the rest
    // are ARP / neighbour discovery: not TCP); nothing evicted, so every insert is an entry.
    let k = &s["kernel_counters"];
    for key in ["packets_seen", "not_tcp", "parse_failures", "conn_insert_failures", "conn_inserts", "events_lost", "resets_sent", "resets_received", "retransmits", "payload_lost", "payload_sent", "payload_skipped", "not_http"] {
        assert!(k[key].is_u64(), "kernel_counters.{key} missing: {s:#}");
    }
    assert_eq!(k["conn_inserts"], s["connections_tracked"], "nothing evicted: every insert is still an entry:\n{s:#}");
    assert_eq!(k["conn_insert_failures"], 0);
    // The map itself (bpftool, this daemon's CONNS): exactly the 3 connections, besides the
    // daemon's own API connections on loopback, which the socket tracepoints see too (the API
    // hides them; how many there are depends on the harness's health probes while the daemon
    // loaded: a probe that timed out changed state after the programs attached).
    let gw = &lab.topo.gateway;
    let conns_map = *bpf_maps_of(gw, daemon_pid(gw)).get("CONNS").expect("the daemon holds a CONNS map");
    let keys = bpf_conn_keys(gw, conns_map);
    let (own, observed): (Vec<_>, Vec<_>) = keys.iter().partition(|(l, r)| l.ip().is_loopback() && r.ip().is_loopback());
    assert!(own.iter().all(|(l, r)| l.port() == 9470 || r.port() == 9470), "loopback entries are API connections: {own:?}");
    let observed: BTreeSet<String> = observed.iter().map(|(l, r)| format!("{l} {r}")).collect();
    assert_eq!(observed, conn_set(&conns), "the kernel map's entries vs the API's connections");
    assert!(k["conn_inserts"].as_u64().unwrap() >= 3);
    assert_eq!((k["events_lost"].as_u64(), k["payload_lost"].as_u64(), k["parse_failures"].as_u64(), k["not_http"].as_u64()), (Some(0), Some(0), Some(0), Some(0)), "{s:#}");
    let tcp_packets: u64 = conns["connections"].as_array().unwrap().iter().map(|c| c["packets_in"].as_u64().unwrap() + c["packets_out"].as_u64().unwrap()).sum();
    assert_eq!(k["packets_seen"].as_u64().unwrap() - k["not_tcp"].as_u64().unwrap(), tcp_packets, "packets seen - not TCP = the connections' packets:\n{s:#}\n{conns:#}");
    let retransmits = lab.topo.tcp_retransmitted_segments();
    if retransmits == 0 {
        assert_eq!((k["retransmits"].as_u64(), k["resets_sent"].as_u64(), k["resets_received"].as_u64()), (Some(0), Some(0), Some(0)), "{s:#}");
    }
    assert_eq!((s["table"]["closed_kept"].as_u64(), s["table"]["open_inbound"].as_u64(), s["table"]["open_outbound"].as_u64()), (Some(3), Some(0), Some(0)), "{s:#}");
    assert_eq!(s["config"]["max_connections"], 65536);
    assert_eq!(s["config"]["http_framing"], "kernel", "the default");
    // Every option that shapes what is observed, as the daemon runs with it (Lab's defaults).
    let c = &s["config"];
    assert_eq!((c["top_k"].as_u64(), c["lifecycle_hook"].as_str(), c["listen"].as_str()), (Some(20), Some("auto"), Some("127.0.0.1:9470")), "{s:#}");
    assert_eq!((c["payload_bytes"].as_u64(), c["state_dir"].as_str(), c["metrics_listen"].as_str()), (Some(4 * 1024 * 1024), Some("/sys/fs/bpf/observer"), None), "{s:#}");
    assert_eq!(c["http_ports"], serde_json::json!([]), "every port: {s:#}");
}

#[test]
fn api_refuses_bad_input_with_json_errors_and_keeps_answering() {
    const TEST: &str = "api_refuses_bad_input_with_json_errors_and_keeps_answering";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let t = curl(&lab.topo.client, &urls(&["/ok"]), &[]);
    let known = inbound(&t[0]).replace(' ', "%20");
    lab.observer.wait_for("the client connection", WAIT, |s| s.with_remote(t[0].local).iter().any(|c| c.closed()));
    assert_eq!(lab.observer.get(&format!("/api/v1/connections/{known}")).0, 200);

    let cases: &[(&str, u16, &str)] = &[
        ("/api/v1/connections?sort=cost", 400, "error_ratio"),
        ("/api/v1/connections?port=http", 400, "0 to 65535"),
        ("/api/v1/connections?port=70000", 400, "0 to 65535"),
        ("/api/v1/connections?local_port=-1", 400, "0 to 65535"),
        ("/api/v1/connections?limit=-1", 400, "whole number"),
        ("/api/v1/connections?limit=ten", 400, "whole number"),
        ("/api/v1/connections?min_requests=x", 400, "whole number"),
        ("/api/v1/connections?window=5m", 400, "10s, 60s or lifetime"),
        ("/api/v1/connections?role=sideways", 400, "inbound, outbound"),
        ("/api/v1/connections?address=198.18.1", 400, "IP address"),
        ("/api/v1/connections?order=up", 400, "asc or desc"),
        ("/api/v1/connections?colour=red", 400, "min_requests"),
        ("/api/v1/connections/foo", 400, "LOCAL REMOTE"),
        ("/api/v1/connections/198.18.1.1:80", 400, "LOCAL REMOTE"),
        ("/api/v1/connections/198.18.1.1:80%20198.18.1.2:1%20198.18.1.3:2", 400, "LOCAL REMOTE"),
        ("/api/v1/connections/198.18.1.1%20198.18.1.2:1", 400, "ADDRESS:PORT"),
        ("/api/v1/connections/198.18.1.1:80%20198.18.1.2:99999", 400, "ADDRESS:PORT"),
        ("/api/v1/connections/198.18.1.1:80%20[2001:db8:1::2]:1", 400, "both endpoints"),
        ("/api/v1/connections/%FF%FE", 400, "LOCAL REMOTE"),
        ("/api/v1/connections/198.18.1.1:80%20198.18.1.2:1", 404, "no connection"),
        ("/api/v1/connections/[2001:db8:1::1]:80%20[2001:db8:1::2]:1", 404, "no connection"),
        ("/api/v1/nothing", 404, "no such route"),
        ("/metrics/extra", 404, "no such route"),
        ("/", 404, "no such route"),
        ("/api/v1/trace", 400, "expected connection="),
        ("/api/v1/trace?remote=nonsense", 400, "expected an address"),
        ("/api/v1/trace?local_port=99999", 400, "0 to 65535"),
        ("/api/v1/trace?connection=198.18.1.1:80", 400, "LOCAL REMOTE"),
        ("/api/v1/trace?connection=198.18.1.1:80%20198.18.1.2:1&remote=198.18.1.2", 400, "expected connection="),
        ("/api/v1/trace?colour=red", 400, "expected connection="),
    ];
    for (path, status, needle) in cases {
        let (got, body) = lab.observer.get(path);
        assert_eq!(got, *status, "GET {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {got} but not JSON ({e}): {body}"));
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("GET {path}: no error message: {body}"));
        assert!(msg.contains(needle), "GET {path}: the message {msg:?} should say {needle:?}");
        // Never a panic: the daemon keeps answering, on the same connection.
        assert_eq!(lab.observer.get("/healthz"), (200, "ok\n".to_owned()), "after GET {path}");
    }
    assert_eq!(lab.observer.get(&format!("/api/v1/connections/{known}")).0, 200);
    assert_eq!(lab.observer.connections().count, 2, "the client connection and its upstream connection");
    let log = lab.observer.log();
    assert!(!log.contains("panicked"), "the daemon's log shows a panic:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// CLI

#[test]
fn cli_connections_prints_one_row_per_connection_and_sorts() {
    const TEST: &str = "cli_connections_prints_one_row_per_connection_and_sorts";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let busy = curl(&lab.topo.client, &urls(&["/ok"; 5]), &[]);
    let quiet = curl(&lab.topo.client, &urls(&["/ok", "/status/404"]), &[]);
    // 2 client connections and 7 upstream connections.
    let api = wait_closed_and_counted(&lab.observer, 9, 7);
    let all = conn_set(&api);
    let gw = &lab.topo.gateway;

    let out = cli(gw, &["connections"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    for col in ["CONNECTION (local remote)", "ROLE", "STATE", "REQ", "5XX", "ERR%", "IN", "OUT"] {
        assert!(header.contains(col), "header {header:?} lacks {col:?}");
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 9, "one row per connection:\n{table}");
    let row_conns: BTreeSet<String> = rows.iter().map(|r| r.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(row_conns, all, "{table}");

    let out = cli(gw, &["connections", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!((v["count"].as_u64(), conn_set(&v)), (Some(9), all.clone()));

    // The busiest: 5 requests on one connection; everything else has 2 or 1. (Over the 60 s
    // window: a slow machine may take more than 10 s to get here.)
    let out = cli(gw, &["connections", "--sort", "requests", "--limit", "1", "--window", "60s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{table}");
    assert!(rows[0].starts_with(&format!("{} ", inbound(&busy[0]))), "the busiest connection first:\n{table}");
    assert!(rows[0].split_whitespace().any(|f| f == "5"), "its 5 requests:\n{table}");
    let out = cli(gw, &["connections", "--sort", "requests", "--limit", "1", "--window", "lifetime", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(conn_names(&v), [inbound(&busy[0])]);
    // Filters pass through.
    let out = cli(gw, &["connections", "--role", "inbound", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(conn_set(&v), BTreeSet::from([inbound(&busy[0]), inbound(&quiet[0])]));
    // A bad value comes back as the daemon's message.
    let out = cli(gw, &["connections", "--sort", "cost"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("error_ratio"), "{}", text(&out.stderr));
}

#[test]
fn cli_status_lists_interfaces_and_tracepoints() {
    const TEST: &str = "cli_status_lists_interfaces_and_tracepoints";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let out = cli(&lab.topo.gateway, &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.starts_with(&format!("observer {}", env!("CARGO_PKG_VERSION"))), "{s}");
    for interface in [GW_CLIENT_IF, GW_UPSTREAM_IF] {
        for direction in ["ingress", "egress"] {
            assert!(
                s.lines().any(|l| { let f: Vec<&str> = l.split_whitespace().collect(); f.first() == Some(&"tc") && f.get(1) == Some(&interface) && f.get(2) == Some(&direction) }),
                "no tc line for {interface} {direction}:\n{s}"
            );
        }
    }
    // Every tracepoint the daemon reports, the four named in the architecture among them.
    let out = cli(&lab.topo.gateway, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json ({e}): {}", text(&out.stdout)));
    assert_eq!(v["netns_filter"], true);
    let reported: Vec<&str> = v["tracepoints"].as_array().unwrap().iter().map(|t| t["tracepoint"].as_str().unwrap()).collect();
    for tp in TRACEPOINTS {
        assert!(reported.contains(&tp), "{tp} not in {reported:?}");
    }
    for tp in reported {
        assert!(s.lines().any(|l| l.split_whitespace().eq(["tracepoint", tp, "attached"])), "no `tracepoint {tp} attached` line:\n{s}");
    }
    assert_eq!(s.lines().filter(|l| l.trim_start().starts_with("tc ")).count(), 4, "{s}");
}

#[test]
fn cli_without_a_daemon_says_where_it_looked() {
    const TEST: &str = "cli_without_a_daemon_says_where_it_looked";
    if !root_or_skip(TEST) {
        return;
    }
    // A namespace where nothing listens at all.
    let topo = Topology::new(TEST);
    for args in [&["connections", "--server", "127.0.0.1:1"][..], &["status", "--server", "127.0.0.1:1"], &["connections"], &["trace", "--local-port", "80", "--server", "127.0.0.1:1"]] {
        let out = cli(&topo.gateway, args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "observer {args:?} succeeded without a daemon: {}", text(&out.stdout));
        let server = args.iter().position(|a| *a == "--server").map_or("127.0.0.1:9470", |i| args[i + 1]);
        assert!(err.contains(&format!("no daemon at {server}")), "observer {args:?}: {err}");
        assert!(err.contains("observer run"), "observer {args:?} should say how to start one: {err}");
    }
}

#[test]
fn cli_top_prints_plain_snapshots_when_not_on_a_terminal() {
    const TEST: &str = "cli_top_prints_plain_snapshots_when_not_on_a_terminal";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let busy = curl(&lab.topo.client, &urls(&["/status/500"; 4]), &[]);
    let busy = inbound(&busy[0]);
    wait_closed_and_counted(&lab.observer, 5, 4);
    let started = Instant::now();
    let out = cli(&lab.topo.gateway, &["top", "--iterations", "2"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let screen = text(&out.stdout);
    assert!(!screen.contains('\x1b'), "no terminal control sequences when stdout is not a terminal:\n{screen:?}");
    let lines: Vec<&str> = screen.lines().collect();
    let headers: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.starts_with("observer top")).map(|(i, _)| i).collect();
    assert_eq!(headers.len(), 2, "two snapshots:\n{screen}");
    for &h in &headers {
        assert!(lines[h].contains("sort: error_ratio (10s)"), "{}", lines[h]);
        assert!(lines[h + 1].starts_with("CONNECTION (local remote)"), "column header after {}:\n{screen}", lines[h]);
        // Sorted by error ratio: the connection with 4 × 500 first (ties with its upstream
        // connections at ratio 1, which have fewer failures).
        assert!(lines[h + 2].starts_with(&format!("{busy} ")), "worst connection first:\n{screen}");
    }
    assert!(took >= Duration::from_secs(1), "one second between the two snapshots, took {took:?}");
}

#[test]
fn cli_top_in_a_terminal_shows_the_busiest_connection_and_follows_keys() {
    const TEST: &str = "cli_top_in_a_terminal_shows_the_busiest_connection_and_follows_keys";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    // One busy healthy connection that keeps sending while top runs (the most requests in the 10 s
    // window) and one failing connection (the worst error ratio), made last, right before top
    // starts, so that its errors are still in top's 10 s window on a slow machine.
    let mut busy = KeepAlive::open(&lab.topo.client, proxy_v4()).unwrap();
    let busy_conn = format!("{} {}", proxy_v4(), busy.local());
    for _ in 0..10 {
        assert_eq!(busy.get("/ok").unwrap().status, 200);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = stop.clone();
    // Returns the connection, or what went wrong (never panics: the test may end first).
    let sender = std::thread::spawn(move || {
        while !stopper.load(std::sync::atomic::Ordering::Relaxed) {
            match busy.get("/ok") {
                Ok(e) if e.status == 200 => {}
                other => return Err(format!("{other:?}")),
            }
            // Pacing: a steady trickle of requests, not a flood.
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(busy)
    });
    wait_json(&lab.observer, &format!("/api/v1/connections/{}", busy_conn.replace(' ', "%20")), "the busy connection", WAIT, |v| v["http"]["lifetime"]["requests"].as_u64() >= Some(10));
    let failing = curl(&lab.topo.client, &urls(&["/status/503"; 2]), &[]);
    let failing = inbound(&failing[0]);

    // The shell records top's exit status (tmux's own #{pane_dead_status} can stay empty on a
    // loaded machine).
    let exit_file = lab.topo.path("top.exit");
    let command = format!("ip netns exec {} {} top; echo $? > {}", lab.topo.gateway.name(), observer_bin().display(), exit_file.display());
    let tmux = Tmux::start(&command, 200, 40);
    let first_row = |screen: &str| screen.lines().skip_while(|l| !l.starts_with("CONNECTION (local remote)")).nth(1).unwrap_or_default().to_owned();
    let screen = tmux.wait_for_screen("the header, the column header and both connections", WAIT, |s| {
        s.lines().any(|l| l.starts_with("observer top")) && s.contains("CONNECTION (local remote)") && s.contains(&busy_conn) && s.contains(&failing)
    });
    assert!(screen.lines().any(|l| l.starts_with("observer top") && l.contains("sort: error_ratio (10s)")), "{screen}");
    assert!(first_row(&screen).starts_with(&failing), "sorted by error ratio, the failing connection first:\n{screen}");
    assert!(screen.contains("keys: e error ratio  r requests"), "{screen}");
    assert!(!exit_file.exists(), "top keeps running");

    tmux.send_keys("r");
    let screen = tmux.wait_for_screen("sort: requests with the busy connection first", WAIT, |s| {
        s.lines().any(|l| l.starts_with("observer top") && l.contains("sort: requests (10s)")) && first_row(s).starts_with(&busy_conn)
    });
    assert!(screen.contains(&failing), "{screen}");

    tmux.send_keys("q");
    let status = poll(WAIT, Duration::from_millis(50), || std::fs::read_to_string(&exit_file).ok().filter(|s| s.ends_with('\n')));
    assert_eq!(status.as_deref(), Some("0\n"), "top exits with status 0 on q; pane: {}; screen:\n{}", tmux.pane_state(), tmux.capture());
    // Off the alternate screen: what the terminal showed before top is back.
    assert!(!tmux.capture().contains("observer top"), "top left its screen behind:\n{}", tmux.capture());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("the busy sender").expect("every request of the busy connection got a 200").close();
}

// ---------------------------------------------------------------------------------------------
// Listen address

#[test]
fn the_api_listens_on_loopback_port_9470_by_default() {
    const TEST: &str = "the_api_listens_on_loopback_port_9470_by_default";
    if !root_or_skip(TEST) {
        return;
    }
    let help = std::process::Command::new(observer_bin()).args(["run", "--help"]).output().expect("observer run --help");
    let help = text(&help.stdout);
    // Short help puts the default on the option's line, long help (when some option's values
    // have their own help) in the paragraph below it: up to the next option either way.
    let lines: Vec<&str> = help.lines().collect();
    let at = lines.iter().position(|l| l.trim_start().starts_with("--listen")).unwrap_or_else(|| panic!("no --listen in:\n{help}"));
    let listen: Vec<&str> = lines[at..].iter().take_while(|l| *l == &lines[at] || !l.trim_start().starts_with('-')).copied().collect();
    assert!(listen.iter().any(|l| l.contains("[default: 127.0.0.1:9470]")), "{listen:#?}");

    // The daemon without --listen.
    let topo = Topology::new(TEST);
    let bin = observer_bin();
    let mut daemon = topo.gateway.spawn("observer", &bin, ["run", "--interface", GW_CLIENT_IF, "--interface", GW_UPSTREAM_IF], &topo.path("observer.log"));
    let loopback: SocketAddr = "127.0.0.1:9470".parse().unwrap();
    let ready = poll(STARTUP, Duration::from_millis(50), || {
        assert!(daemon.exited().is_none(), "observer exited:\n{}", daemon.log());
        matches!(topo.gateway.http_get(loopback, "/healthz", Duration::from_secs(2)), Ok((200, ref b)) if b == "ok\n").then_some(())
    });
    assert!(ready.is_some(), "no answer on {loopback}:\n{}", daemon.log());

    // Not on the gateway's veth address: neither from the client nor from the gateway itself.
    let veth = SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 9470);
    for ns in [&topo.client, &topo.gateway] {
        let r = ns.enter(move || TcpStream::connect_timeout(&veth, WAIT).map(drop)).unwrap();
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionRefused), "{veth} from {}", ns.name());
    }
    let status = daemon.stop(WAIT);
    assert!(status.is_some_and(|s| s.success()), "observer did not exit cleanly ({status:?}):\n{}", daemon.log());
}
