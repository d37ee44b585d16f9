//! The JSON API: connections filtered and sorted by their HTTP counts, one connection with its
//! HTTP history, a list of thousands streamed as valid JSON, `/api/v1/status` with its
//! attachments, tracepoints and exact kernel counters (against the daemon's own map, read with
//! bpftool), bad input refused with JSON errors, and idle sockets and trace floods bounded while
//! the API keeps answering.
//!
//! Ground truth: the traffic each test sends itself (curl's `--write-out`, raw keep-alive clients
//! whose ports the test knows), the upstream's access log, and the kernel's connection map.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use observer_tests::{
    addr::{self, proxy_urls as urls, proxy_v4, GW_CLIENT_IF, GW_UPSTREAM_IF},
    curl, inbound,
    observer::WAIT,
    operator::{
        bpf_conn_keys, bpf_maps_of, conn_names, conn_set, daemon_pid, raise_nofile, wait_closed_and_counted, wait_json, wait_metrics, KeepAlive, TRACEPOINTS,
    },
    outbound_of, poll, root_or_skip, ConnectionExt, Lab, Transfer,
};
use serde_json::Value;

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
    let ratios: Vec<f64> = q("role=inbound&window=60s&sort=error_ratio")["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["http"]["last_60s"]["error_ratio"].as_f64().unwrap())
        .collect();
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
    let counts: Vec<(u64, u64)> = v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["http"]["last_10s"]["requests"].as_u64().unwrap(), c["http"]["last_60s"]["requests"].as_u64().unwrap()))
        .collect();
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
    let v = wait_json(&lab.observer, &path, "B closed with two exchanges", WAIT, |v| {
        v["status"] == "closed" && v["http"]["recent"].as_array().is_some_and(|r| r.len() == 2)
    });
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
    assert!(
        v["http"]["recent"].as_array().unwrap().iter().all(|e| e["latency_ms"].as_f64().is_some_and(|l| l >= 0.0) && e["time"].as_f64().is_some()),
        "{v:#}"
    );
    let life = &v["http"]["lifetime"];
    assert_eq!(
        (life["requests"].as_u64(), life["responses_2xx"].as_u64(), life["responses_5xx"].as_u64(), life["failed"].as_u64(), life["error_ratio"].as_f64()),
        (Some(2), Some(1), Some(1), Some(1), Some(0.5)),
        "{v:#}"
    );
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
    let lab = Lab::start_with_worker_connections(TEST, 4096, &[]);
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
    let head = lab
        .topo
        .gateway
        .run("curl", ["-sS", "-o", "/dev/null", "-D", "-", &format!("http://{}/api/v1/connections?limit=100000", observer_tests::observer::API)]);
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
    let attachments: BTreeSet<(String, String)> = s["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| (a["interface"].as_str().unwrap().to_owned(), a["direction"].as_str().unwrap().to_owned()))
        .collect();
    let want: BTreeSet<(String, String)> =
        [GW_CLIENT_IF, GW_UPSTREAM_IF].iter().flat_map(|i| ["ingress", "egress"].map(|d| (i.to_string(), d.to_owned()))).collect();
    assert_eq!(attachments, want, "{s:#}");
    assert_eq!(s["attachments"].as_array().unwrap().len(), 4, "{s:#}");
    assert!(s["attachments"].as_array().unwrap().iter().all(|a| a["mode"] == "tcx" || a["mode"] == "clsact"), "{s:#}");
    let tracepoints: BTreeMap<String, bool> = s["tracepoints"]
        .as_array()
        .expect("tracepoints")
        .iter()
        .map(|t| (t["tracepoint"].as_str().unwrap().to_owned(), t["attached"].as_bool().unwrap()))
        .collect();
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
    for key in [
        "packets_seen",
        "not_tcp",
        "parse_failures",
        "conn_insert_failures",
        "conn_inserts",
        "events_lost",
        "resets_sent",
        "resets_received",
        "retransmits",
        "payload_lost",
        "payload_sent",
        "payload_skipped",
        "not_http",
    ] {
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
    assert_eq!(
        (k["events_lost"].as_u64(), k["payload_lost"].as_u64(), k["parse_failures"].as_u64(), k["not_http"].as_u64()),
        (Some(0), Some(0), Some(0), Some(0)),
        "{s:#}"
    );
    let tcp_packets: u64 =
        conns["connections"].as_array().unwrap().iter().map(|c| c["packets_in"].as_u64().unwrap() + c["packets_out"].as_u64().unwrap()).sum();
    assert_eq!(
        k["packets_seen"].as_u64().unwrap() - k["not_tcp"].as_u64().unwrap(),
        tcp_packets,
        "packets seen - not TCP = the connections' packets:\n{s:#}\n{conns:#}"
    );
    let retransmits = lab.topo.tcp_retransmitted_segments();
    if retransmits == 0 {
        assert_eq!((k["retransmits"].as_u64(), k["resets_sent"].as_u64(), k["resets_received"].as_u64()), (Some(0), Some(0), Some(0)), "{s:#}");
    }
    assert_eq!(
        (s["table"]["closed_kept"].as_u64(), s["table"]["open_inbound"].as_u64(), s["table"]["open_outbound"].as_u64()),
        (Some(3), Some(0), Some(0)),
        "{s:#}"
    );
    assert_eq!(s["config"]["max_connections"], 65536);
    assert_eq!(s["config"]["http_framing"], "kernel", "the default");
    // Every option that shapes what is observed, as the daemon runs with it (Lab's defaults).
    let c = &s["config"];
    assert_eq!((c["top_k"].as_u64(), c["lifecycle_hook"].as_str(), c["listen"].as_str()), (Some(20), Some("auto"), Some("127.0.0.1:9470")), "{s:#}");
    assert_eq!(
        (c["payload_bytes"].as_u64(), c["state_dir"].as_str(), c["metrics_listen"].as_str()),
        (Some(4 * 1024 * 1024), Some("/sys/fs/bpf/observer"), None),
        "{s:#}"
    );
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
    lab.observer.wait_for("the client connection", WAIT, |s| s.with_remote(t[0].local).iter().any(|c| c.fin_both_ways()));
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
    let rss = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()))
            .unwrap_or(0)
    };
    let rss_before = rss(lab.observer.pid());
    assert_eq!(lab.observer.get("/healthz").0, 200, "the harness's kept-alive connection is open first");

    // Idle sockets: connected, silent.
    let idle: Vec<TcpStream> = lab.topo.gateway.enter(move || (0..IDLE).map(|_| TcpStream::connect(api).expect("connecting to the API")).collect()).unwrap();
    let m = wait_metrics(&lab.observer, "refused API connections", WAIT, |m| {
        m.value("observer_api_connections_refused_total", &[]).is_some_and(|v| v >= (IDLE - 256) as f64)
    });
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
