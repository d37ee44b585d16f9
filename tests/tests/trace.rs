//! Live tracing (`GET /api/v1/trace`, `observer trace`): a trace of one connection carries only
//! that connection's packets (in order, with the exact payload bytes each side sent) and its
//! exchanges; partial filters (remote address, remote endpoint, local port) match exactly their
//! connections; a trace started first sees the connection from its SYN; the kernel filter exists
//! only while someone traces (bpftool on the daemon's own maps); `--count` and `--duration` end a
//! trace; the human timeline reads as one.
//!
//! Ground truth: what the test's own clients sent and received (a raw keep-alive client with a
//! known port and exact byte counts, curl's `--write-out`), the upstream's access log (the
//! gateway's source port of each proxied request), the daemon's BPF maps read with bpftool.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use observer::model::ConnStatus;
use observer_tests::{
    addr::{self, http_base, proxy_url as url, proxy_v4},
    curl, inbound,
    observer::{observer_bin, WAIT},
    operator::{bpf_map_dump, bpf_maps_of, bpf_value_u64, daemon_pid, CliProcess, Exchange, KeepAlive, TraceStream},
    outbound_of, poll, root_or_skip, Lab, Observer,
};
use serde_json::Value;

/// `observer_common::trace` filter shapes, as bits of `TRACE_SHAPES`.
const SHAPE_REMOTE_ADDR: u64 = 1 << 1;
const SHAPE_REMOTE_ENDPOINT: u64 = 1 << 2;
const SHAPE_LOCAL_PORT: u64 = 1 << 3;

/// `observer ARGS` in the background in the gateway namespace.
fn trace_cli(lab: &Lab, args: &[&str]) -> CliProcess {
    CliProcess::spawn(&lab.topo.gateway, "observer-trace", observer_bin(), args, &lab.topo.dir)
}

/// Waits until the observer has seen the end of a connection (its socket closed, status
/// `closed`): after that none of its packets or events can reach a trace that starts later.
/// (curl returns before its connection's last FIN and ACK have crossed.)
fn wait_closed(obs: &Observer, name: &str) {
    obs.wait_for(&format!("{name} closed"), WAIT, |s| s.connections.iter().any(|c| c.connection == name && c.status == ConnStatus::Closed));
}

/// Waits until the daemon has exactly `n` trace subscribers.
fn wait_traces_active(obs: &Observer, n: u64) {
    let mut last = Value::Null;
    let ok = poll(WAIT, Duration::from_millis(20), || {
        last = obs.status();
        (last["traces_active"].as_u64() == Some(n)).then_some(())
    });
    assert!(ok.is_some(), "waited {WAIT:?} for traces_active == {n}; status:\n{last:#}");
}

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == t).collect()
}

fn connections_of(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l["type"] != "subscribed" && l["type"] != "known")
        .map(|l| l["connection"].as_str().unwrap_or_else(|| panic!("no connection in {l}")).to_owned())
        .collect()
}

/// Connections for which a `closed` line arrived.
fn closed_in(lines: &[Value]) -> BTreeSet<String> {
    of_type(lines, "closed").iter().map(|l| l["connection"].as_str().unwrap().to_owned()).collect()
}

/// Packet lines of one direction that are not retransmissions.
fn packets<'a>(lines: &'a [Value], direction: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == "packet" && l["direction"] == direction && l["retransmit"] == false).collect()
}

/// Sequence numbers never go back within a direction (mod 2^32).
fn assert_in_order(lines: &[Value], direction: &str) {
    let p = packets(lines, direction);
    for w in p.windows(2) {
        let (a, b) = (w[0]["seq"].as_u64().unwrap() as u32, w[1]["seq"].as_u64().unwrap() as u32);
        assert!((b.wrapping_sub(a) as i32) >= 0, "{direction}: seq went back from {a} to {b}:\n{}\n{}", w[0], w[1]);
    }
}

fn payload_bytes(lines: &[Value], direction: &str) -> u64 {
    packets(lines, direction).iter().map(|l| l["len"].as_u64().unwrap()).sum()
}

/// Packet lines of one direction (not retransmissions) that carry a FIN.
fn fins(lines: &[Value], direction: &str) -> usize {
    packets(lines, direction).iter().filter(|l| flags(l).contains("FIN")).count()
}

/// Whether each connection of `set` has its `closed` line and at least one packet line. The daemon
/// reads packets, socket events (`opened`, `closed`) and HTTP records (`request`, `response`) from
/// three ring buffers, each on its own schedule: a `closed` line does not mean that the packet
/// lines before it in time have arrived. (Within one ring the order holds: a connection's first
/// packet line is its first packet.)
fn closed_with_packets(lines: &[Value], set: &BTreeSet<String>) -> bool {
    closed_in(lines).is_superset(set) && set.iter().all(|c| lines.iter().any(|l| l["type"] == "packet" && l["connection"] == c.as_str()))
}

fn flags(l: &Value) -> &str {
    l["flags"].as_str().unwrap_or_else(|| panic!("no flags in {l}"))
}

#[test]
fn a_traced_connection_shows_only_its_own_packets_and_exchanges_in_order() {
    const TEST: &str = "a_traced_connection_shows_only_its_own_packets_and_exchanges_in_order";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let mut conn = KeepAlive::open(&lab.topo.client, proxy_v4()).unwrap();
    let local = conn.local();
    let name = format!("{} {local}", proxy_v4());
    let mut trace = trace_cli(&lab, &["trace", &proxy_v4().to_string(), &local.to_string(), "--json"]);
    wait_traces_active(&lab.observer, 1);
    // What the daemon knew first: the connection, open, nothing exchanged yet.
    let known = trace.wait_for_json("the known connection", WAIT, |l| !l.is_empty());
    assert_eq!(known[0]["type"], "known", "{known:?}");
    assert_eq!(known[0]["connection"]["connection"], name.as_str());

    // Other clients hammer the proxy meanwhile, on their own connections.
    let client = lab.topo.client.clone();
    let hammer = std::thread::spawn(move || curl(&client, &vec![url("/ok"); 30], &["--header", "Connection: close"]));
    let paths = ["/ok", "/status/404", "/size/1000"];
    let exchanges: Vec<Exchange> = paths.iter().map(|p| conn.get(p).unwrap()).collect();
    assert_eq!(exchanges.iter().map(|e| e.status).collect::<Vec<_>>(), [200, 404, 200]);
    let others = hammer.join().expect("hammer");
    assert!(others.iter().all(|t| t.http_code == 200 && t.local != local), "{others:?}");
    conn.close();

    let sent: u64 = exchanges.iter().map(|e| e.request_bytes).sum();
    let received: u64 = exchanges.iter().map(|e| e.response_bytes).sum();
    // Packet lines come from their own ring buffer (see `closed_with_packets`): wait for them too,
    // up to the exact counts asserted below (an over-count still fails there).
    trace.wait_for_json("3 responses, the close, every payload byte and both FINs", WAIT, |l| {
        of_type(l, "response").len() == 3
            && !of_type(l, "closed").is_empty()
            && payload_bytes(l, "in") >= sent
            && payload_bytes(l, "out") >= received
            && fins(l, "in") >= 1
            && fins(l, "out") >= 1
    });
    trace.stop();
    let lines: Vec<Value> = trace.json_lines();
    let timeline = &lines[1..];
    assert_eq!(connections_of(timeline), BTreeSet::from([name.clone()]), "only the traced connection, though 30 others ran meanwhile:\n{}", trace.stdout());
    let kinds: BTreeSet<&str> = timeline.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert!(kinds.is_subset(&BTreeSet::from(["packet", "request", "response", "closed"])), "{kinds:?}");

    let requests: Vec<(&str, &str)> = of_type(&lines, "request").iter().map(|l| (l["method"].as_str().unwrap(), l["target"].as_str().unwrap())).collect();
    assert_eq!(requests, [("GET", "/ok"), ("GET", "/status/404"), ("GET", "/size/1000")]);
    let statuses: Vec<u64> = of_type(&lines, "response").iter().map(|l| l["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 404, 200]);
    assert!(of_type(&lines, "response").iter().all(|l| l["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0)), "{lines:?}");
    assert_eq!(of_type(&lines, "closed").len(), 1);

    // Packets: in order per direction, exactly the bytes each side sent, each message's first
    // segment carrying its request or status line.
    assert_in_order(&lines, "in");
    assert_in_order(&lines, "out");
    assert_eq!(
        (payload_bytes(&lines, "in"), payload_bytes(&lines, "out")),
        (sent, received),
        "payload in/out vs what the client wrote/read:\n{}",
        trace.stdout()
    );
    let http_in: Vec<&str> = packets(&lines, "in").iter().filter_map(|l| l["http"].as_str()).collect();
    assert_eq!(http_in, paths.map(|p| format!("GET {p} HTTP/1.1")), "request lines");
    let http_out: Vec<&str> = packets(&lines, "out").iter().filter_map(|l| l["http"].as_str()).collect();
    assert_eq!(http_out, exchanges.iter().map(|e| e.status_line.as_str()).collect::<Vec<_>>(), "status lines");
    for l in packets(&lines, "in").iter().chain(packets(&lines, "out").iter()) {
        assert!(flags(l).split(',').any(|f| f == "ACK"), "every segment after the handshake has ACK: {l}");
        if l["len"].as_u64() > Some(0) {
            assert!(flags(l).contains("PSH") || l["http"].is_null(), "{l}");
        }
    }
    // The client closed: one FIN each way, the client's first.
    assert_eq!((fins(&lines, "in"), fins(&lines, "out")), (1, 1), "{}", trace.stdout());
    assert!(lines.iter().all(|l| l["type"] != "packet" || flags(l) != "SYN"), "opened before the trace: no SYN");
}

#[test]
fn partial_filters_match_exactly_their_connections() {
    const TEST: &str = "partial_filters_match_exactly_their_connections";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let (gw, api) = (&lab.topo.gateway, lab.observer.api);
    let by_client = TraceStream::open(gw, api, &format!("remote={}", addr::CLIENT_V4)).unwrap();
    let by_upstream = TraceStream::open(gw, api, &format!("remote={}:80", addr::UPSTREAM_V4)).unwrap();
    let by_port = TraceStream::open(gw, api, "local_port=80").unwrap();
    for (s, filter) in [
        (&by_client, ("remote", addr::CLIENT_V4.to_string())),
        (&by_upstream, ("remote", format!("{}:80", addr::UPSTREAM_V4))),
        (&by_port, ("local_port", "80".to_owned())),
    ] {
        assert_eq!(s.status, 200);
        let first = s.wait_for("the subscribed line", WAIT, |l| !l.is_empty());
        assert_eq!(first[0]["type"], "subscribed", "the first line");
        assert_eq!(first[0]["filter"][filter.0], filter.1.as_str(), "{}", first[0]);
    }
    wait_traces_active(&lab.observer, 3);

    // Two IPv4 client connections, one IPv6 one; three upstream connections (IPv4).
    let v4 = curl(&lab.topo.client, &[url("/ok"), url("/status/404")], &["--header", "Connection: close"]);
    let v6 = curl(&lab.topo.client, &[format!("{}/ok", http_base(addr::GATEWAY_CLIENT_SIDE_V6.into()))], &[]);
    let clients_v4: BTreeSet<String> = v4.iter().map(inbound).collect();
    assert_eq!(clients_v4.len(), 2);
    let client_v6 = inbound(&v6[0]);
    let log = lab.upstream.wait_for_requests(3);
    let upstream: BTreeSet<String> = log.entries.iter().map(|e| outbound_of(e.remote_port)).collect();
    assert_eq!(upstream.len(), 3, "{}", log.raw);

    let client_lines = by_client.wait_for("both IPv4 client connections closed, with their packets", WAIT, |l| closed_with_packets(l, &clients_v4));
    let upstream_lines = by_upstream.wait_for("the upstream connections closed, with their packets", WAIT, |l| closed_with_packets(l, &upstream));
    let mut inbound_all = clients_v4.clone();
    inbound_all.insert(client_v6.clone());
    let port_lines = by_port.wait_for("every client connection closed, with its packets", WAIT, |l| closed_with_packets(l, &inbound_all));

    assert_eq!(connections_of(&client_lines), clients_v4, "remote=198.18.1.2: the IPv4 client connections, not IPv6 nor upstream ones");
    assert_eq!(connections_of(&upstream_lines), upstream, "remote=198.18.2.2:80: the upstream connections only");
    assert_eq!(connections_of(&port_lines), inbound_all, "local_port=80: every inbound client connection, both families");
    // Each saw its connections whole: a SYN in (clients) or out (upstream) first.
    for (lines, set, dir) in [(&client_lines, &clients_v4, "in"), (&upstream_lines, &upstream, "out"), (&port_lines, &inbound_all, "in")] {
        for c in set {
            let first = lines.iter().find(|l| l["type"] == "packet" && l["connection"] == c.as_str()).unwrap_or_else(|| panic!("no packet of {c}"));
            assert_eq!((flags(first), first["direction"].as_str()), ("SYN", Some(dir)), "{c}: {first}");
        }
    }
    drop((by_client, by_upstream, by_port));
    wait_traces_active(&lab.observer, 0);
}

#[test]
fn a_trace_started_before_its_connection_shows_it_from_the_syn() {
    const TEST: &str = "a_trace_started_before_its_connection_shows_it_from_the_syn";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let mut trace = trace_cli(&lab, &["trace", "--remote", &addr::CLIENT_V4.to_string(), "--json"]);
    wait_traces_active(&lab.observer, 1);
    let t = curl(&lab.topo.client, &[url("/ok")], &[]);
    let name = inbound(&t[0]);
    // Packets, events and HTTP records come from three ring buffers (see `closed_with_packets`):
    // wait for each kind, up to the exact counts asserted below.
    let lines = trace.wait_for_json("the response, the close and every payload byte", WAIT, |l| {
        !of_type(l, "response").is_empty()
            && !of_type(l, "closed").is_empty()
            && payload_bytes(l, "in") >= t[0].size_request
            && payload_bytes(l, "out") >= t[0].response_bytes()
    });
    trace.stop();
    assert_eq!(connections_of(&lines), BTreeSet::from([name.clone()]));
    let p: Vec<&Value> = lines.iter().filter(|l| l["type"] == "packet").collect();
    let head: Vec<(&str, &str, u64)> = p.iter().take(3).map(|l| (l["direction"].as_str().unwrap(), flags(l), l["len"].as_u64().unwrap())).collect();
    assert_eq!(head, [("in", "SYN", 0), ("out", "SYN,ACK", 0), ("in", "ACK", 0)], "the handshake first:\n{}", trace.stdout());
    // The SYN-ACK acknowledges the SYN: ack = client ISN + 1.
    assert_eq!(p[1]["ack"].as_u64().unwrap(), (p[0]["seq"].as_u64().unwrap() + 1) % (1 << 32));
    let opened = of_type(&lines, "opened");
    assert_eq!(opened.len(), 1, "{}", trace.stdout());
    assert_eq!(opened[0]["role"], "inbound");
    assert_eq!(of_type(&lines, "request").iter().map(|l| l["target"].as_str().unwrap()).collect::<Vec<_>>(), ["/ok"]);
    assert_eq!(of_type(&lines, "response").iter().map(|l| l["status"].as_u64().unwrap()).collect::<Vec<_>>(), [200]);
    assert_eq!((payload_bytes(&lines, "in"), payload_bytes(&lines, "out")), (t[0].size_request, t[0].response_bytes()), "payload vs curl's sizes");
    assert_eq!(packets(&lines, "in").iter().filter(|l| flags(l).contains("SYN")).count(), 1);
}

#[test]
fn the_kernel_trace_filter_exists_only_while_someone_traces() {
    const TEST: &str = "the_kernel_trace_filter_exists_only_while_someone_traces";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let gw = &lab.topo.gateway;
    // This daemon's maps (each daemon of the parallel tests has its own, by the same names).
    let maps = bpf_maps_of(gw, daemon_pid(gw));
    let (filters, shapes) = match (maps.get("TRACE_FILTERS"), maps.get("TRACE_SHAPES")) {
        (Some(f), Some(s)) => (*f, *s),
        _ => panic!("the daemon holds no TRACE_FILTERS / TRACE_SHAPES maps: {maps:?}"),
    };
    let state = || {
        let entries = bpf_map_dump(gw, filters);
        let shape = bpf_map_dump(gw, shapes);
        assert_eq!(shape.len(), 1, "TRACE_SHAPES has one slot: {shape:?}");
        (entries.len(), bpf_value_u64(&shape[0]))
    };
    let wait_state = |want: (usize, u64), what: &str| {
        let mut last = (usize::MAX, u64::MAX);
        let ok = poll(WAIT, Duration::from_millis(20), || {
            last = state();
            (last == want).then_some(())
        });
        assert!(ok.is_some(), "{what}: (filters, shapes) = {last:?}, expected {want:?}; TRACE_FILTERS: {:?}", bpf_map_dump(gw, filters));
    };

    // Nobody traces: traffic leaves the filter empty and the shape mask 0.
    assert_eq!(lab.observer.status()["traces_active"], 0);
    let before = curl(&lab.topo.client, &[url("/ok")], &[]);
    assert_eq!(state(), (0, 0), "no trace: no kernel filter, no shape");
    wait_closed(&lab.observer, &inbound(&before[0]));

    // Two subscribers of the same filter (a CLI and a raw stream): one kernel entry.
    let remote = addr::CLIENT_V4.to_string();
    let mut cli = trace_cli(&lab, &["trace", "--remote", &remote, "--json"]);
    let stream = TraceStream::open(gw, lab.observer.api, &format!("remote={remote}")).unwrap();
    wait_traces_active(&lab.observer, 2);
    assert_eq!(state(), (1, SHAPE_REMOTE_ADDR), "two subscribers, one filter");
    // Both receive the same connection.
    let t = curl(&lab.topo.client, &[url("/ok")], &[]);
    let name = inbound(&t[0]);
    let from_stream = stream.wait_for("the connection closed", WAIT, |l| closed_in(l).contains(&name));
    let from_cli = cli.wait_for_json("the connection closed", WAIT, |l| closed_in(l).contains(&name));
    assert_eq!(connections_of(&from_stream), BTreeSet::from([name.clone()]));
    assert_eq!(connections_of(&from_cli), BTreeSet::from([name.clone()]));

    // The CLI leaves (SIGTERM, like Ctrl-C): the filter stays for the other subscriber.
    cli.stop();
    wait_traces_active(&lab.observer, 1);
    assert_eq!(state(), (1, SHAPE_REMOTE_ADDR), "one subscriber left");
    // The last one leaves: the filter goes, the shape mask is 0 again.
    stream.close();
    wait_traces_active(&lab.observer, 0);
    wait_state((0, 0), "the last subscriber left");

    // Two different shapes at once, then none.
    let by_endpoint = TraceStream::open(gw, lab.observer.api, &format!("remote={}:80", addr::UPSTREAM_V4)).unwrap();
    let by_port = TraceStream::open(gw, lab.observer.api, "local_port=80").unwrap();
    wait_traces_active(&lab.observer, 2);
    assert_eq!(state(), (2, SHAPE_REMOTE_ENDPOINT | SHAPE_LOCAL_PORT));
    drop(by_endpoint);
    wait_traces_active(&lab.observer, 1);
    assert_eq!(state(), (1, SHAPE_LOCAL_PORT));
    drop(by_port);
    wait_traces_active(&lab.observer, 0);
    wait_state((0, 0), "every subscriber left");
    curl(&lab.topo.client, &[url("/ok")], &[]);
    assert_eq!(state(), (0, 0));
    // The only trace counter the kernel keeps is for records lost (a full ring): none here.
    let s = lab.observer.status();
    assert_eq!(s["kernel_counters"]["trace_lost"], 0, "{s:#}");
}

#[test]
fn count_and_duration_end_a_trace() {
    const TEST: &str = "count_and_duration_end_a_trace";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let remote = addr::CLIENT_V4.to_string();
    let mut counted = trace_cli(&lab, &["trace", "--remote", &remote, "--json", "--count", "3"]);
    wait_traces_active(&lab.observer, 1);
    // One request makes far more than 3 lines (handshake, data, ACKs, request, response, close).
    let t = curl(&lab.topo.client, &[url("/ok")], &[]);
    let status = counted.wait(WAIT);
    assert!(status.is_some_and(|s| s.success()), "--count 3 exits by itself, successfully ({status:?}); stderr: {}", counted.stderr());
    let lines = counted.stdout();
    assert_eq!(lines.lines().count(), 3, "exactly 3 lines:\n{lines}");
    assert!(lines.lines().all(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["type"].is_string())), "{lines}");
    wait_traces_active(&lab.observer, 0);
    // The connection's last packets must not reach the next trace.
    wait_closed(&lab.observer, &inbound(&t[0]));

    let started = Instant::now();
    let mut timed = trace_cli(&lab, &["trace", "--remote", &remote, "--json", "--duration", "1"]);
    let status = timed.wait(Duration::from_secs(20));
    let took = started.elapsed();
    assert!(status.is_some_and(|s| s.success()), "--duration 1 exits by itself, successfully ({status:?}); stderr: {}", timed.stderr());
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(15), "--duration 1 took {took:?}");
    assert_eq!(timed.stdout(), "", "no traffic, no lines");
    wait_traces_active(&lab.observer, 0);
}

#[test]
fn the_human_timeline_shows_the_handshake_and_the_exchange() {
    const TEST: &str = "the_human_timeline_shows_the_handshake_and_the_exchange";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    // By remote address: every line names its connection.
    let mut trace = trace_cli(&lab, &["trace", "--remote", &addr::CLIENT_V4.to_string()]);
    wait_traces_active(&lab.observer, 1);
    let t = curl(&lab.topo.client, &[url("/ok")], &[]);
    let name = inbound(&t[0]);
    // Every line asserted below, from the three ring buffers (see `closed_with_packets`).
    let out = trace.wait_for_text(&["→ GET /ok", "← 200 after", "[SYN]", "[SYN,ACK]", "\"GET /ok HTTP/1.1\"", "● opened (inbound)", "● closed"], WAIT);
    trace.stop();
    assert!(out.contains("● opened (inbound)"), "{out}");
    assert!(out.contains("[SYN,ACK]"), "{out}");
    assert!(out.contains("\"GET /ok HTTP/1.1\""), "the request line on its segment:\n{out}");
    let syn = out.lines().find(|l| l.contains("[SYN]")).unwrap();
    assert!(syn.contains(&format!("[{name}]")) && syn.contains("→ [SYN]"), "the SYN travels toward the server, on {name}: {syn}");
    let response = out.lines().find(|l| l.contains("← 200 after")).unwrap();
    assert!(response.trim_end().ends_with(" ms"), "{response}");

    // By connection: what is known first (the history), then the live timeline.
    let mut conn = KeepAlive::open(&lab.topo.client, proxy_v4()).unwrap();
    assert_eq!(conn.get("/ok").unwrap().status, 200);
    let local = conn.local();
    let name = format!("{} {local}", proxy_v4());
    lab.observer.wait_for("the first exchange", WAIT, |s| s.with_remote(local).iter().any(|c| c.http.as_ref().map(|h| h.lifetime.counts.requests) == Some(1)));
    let mut trace = trace_cli(&lab, &["trace", &proxy_v4().to_string(), &local.to_string()]);
    trace.wait_for_text(&["--- live ---"], WAIT);
    wait_traces_active(&lab.observer, 1);
    assert_eq!(conn.get("/status/404").unwrap().status, 404);
    let out = trace.wait_for_text(&["→ GET /status/404", "← 404 after"], WAIT);
    trace.stop();
    let (known, live) = out.split_once("--- live ---").unwrap();
    assert!(known.lines().any(|l| l.starts_with(&name)), "the connection's row first:\n{out}");
    assert!(known.contains("GET /ok ← 200"), "its history:\n{out}");
    assert!(!live.contains("/ok"), "the first exchange is history, not live:\n{out}");
    assert!(!live.contains(&format!("[{name}]")), "one connection: lines do not repeat its name:\n{out}");
    conn.close();
}
