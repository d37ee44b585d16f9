//! The connection table as the API lists it: the filters and sorts of `GET /api/v1/connections`
//! select exactly the matching connections (one connection by its written form, bad input
//! refused), a full kernel map evicts and counts every eviction, a closed connection's times are
//! the same in every answer, and every connection that ends is counted once, also under churn.
//!
//! Ground truth: each connection's four-tuple from curl, the raw socket or the upstream's access
//! log, and the daemon's own counters of what its kernel map inserted. Metrics are compared as
//! deltas around the traffic of one test, whose lab (namespaces, daemon) is its own.
use std::{collections::BTreeSet, io::ErrorKind, net::IpAddr, time::Duration};

use observer::model::{CloseReason, ConnStatus, Role, TcpState};
use observer_tests::{
    addr::{self, http_base, GW_CLIENT_IF, GW_UPSTREAM_IF},
    curl,
    lifecycle_view::{assert_closed_after_open, entry, metrics, v4, wait_for_metrics, Metrics, CLOSED, OPENED},
    observer::WAIT,
    poll, root_or_skip, tcp, Connection, ConnectionExt, Lab, Nginx, Observer, Snapshot, Topology,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// 8: GET /api/v1/connections filters, one connection by its written form, bad input
// ---------------------------------------------------------------------------------------------

/// `GET /api/v1/connections?query`, expecting 200.
fn query(o: &Observer, query: &str) -> Snapshot {
    let path = format!("/api/v1/connections?{query}");
    let (status, body) = o.get(&path);
    assert_eq!(status, 200, "GET {path}: {body}");
    let snap = Snapshot::parse(&body).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(snap.count, snap.connections.len(), "GET {path}: count vs the list:\n{}", snap.pretty());
    snap
}

fn names<'a>(conns: impl IntoIterator<Item = &'a Connection>) -> BTreeSet<String> {
    conns.into_iter().map(|c| c.connection.clone()).collect()
}

/// The scenario: two client connections closed (`Connection: close`), one held open after one
/// exchange, one refused on port 81; the proxy made one upstream connection per request (three,
/// all closed). Seven connections, each known by its four-tuple from curl, the raw socket, or the
/// upstream's access log.
#[test]
fn connection_filters_select_exactly_the_matching_connections() {
    const TEST: &str = "connection_filters_select_exactly_the_matching_connections";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let o = &lab.observer;
    let proxy = v4(addr::GATEWAY_CLIENT_SIDE_V4, 80);
    let upstream = v4(addr::UPSTREAM_V4, 80);
    let closed_port = v4(addr::GATEWAY_CLIENT_SIDE_V4, 81);
    let before = metrics(o);

    let base = http_base(proxy.ip());
    let transfers = curl(&lab.topo.client, &[format!("{base}/ok"), format!("{base}/size/1000")], &["--header", "Connection: close"]);
    assert!(transfers.iter().all(|t| t.num_connects == 1 && t.http_code == 200), "{transfers:#?}");
    let mut open = tcp::connect(&lab.topo.client, proxy).expect("connecting to the proxy");
    let open_end = open.local_addr().expect("local address");
    let request = "GET /size/100 HTTP/1.1\r\nHost: gateway\r\n\r\n";
    let (code, head, body) = tcp::http_exchange(&mut open, request).expect("one exchange on the held connection");
    assert_eq!((code, body), (200, 100));
    let refused = tcp::connect(&lab.topo.client, closed_port);
    assert_eq!(refused.as_ref().map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::ConnectionRefused), "{refused:?}");

    // 2 + 3 normal closes and 1 refused: finalised, so every closed entry is final.
    wait_for_metrics(o, "six closed connections", |m| m.sum(CLOSED, &[]) - before.sum(CLOSED, &[]) >= 6.0);
    let log = lab.upstream.wait_for_requests(3);
    let all = query(o, "");

    let closed_inbound: BTreeSet<String> = transfers.iter().map(|t| format!("{} {}", t.remote, t.local)).collect();
    let open_one = format!("{proxy} {open_end}");
    let outbound: BTreeSet<String> = log.entries.iter().map(|e| format!("{} {upstream}", e.remote())).collect();
    assert_eq!(outbound.len(), 3, "{}", log.raw);
    let refused_one = {
        let r: Vec<&Connection> = all.connections.iter().filter(|c| c.local_addr() == closed_port).collect();
        assert_eq!(r.len(), 1, "one entry for the refused connection:\n{}", all.pretty());
        assert_eq!(r[0].remote_addr().ip(), IpAddr::from(addr::CLIENT_V4));
        r[0].connection.clone()
    };
    let set = |parts: &[&BTreeSet<String>], singles: &[&String]| -> BTreeSet<String> {
        parts.iter().flat_map(|p| p.iter().cloned()).chain(singles.iter().map(|s| (*s).clone())).collect()
    };
    let everything = set(&[&closed_inbound, &outbound], &[&open_one, &refused_one]);
    assert_eq!(names(&all.connections), everything, "every connection, nothing else:\n{}", all.pretty());
    assert_eq!(all.count, 7);

    let cases: Vec<(&str, BTreeSet<String>)> = vec![
        ("state=closed", set(&[&closed_inbound, &outbound], &[&refused_one])),
        ("state=open", set(&[], &[&open_one])),
        ("state=established", set(&[], &[&open_one])),
        ("role=outbound", outbound.clone()),
        ("role=inbound", set(&[&closed_inbound], &[&open_one, &refused_one])),
        ("port=80", set(&[&closed_inbound, &outbound], &[&open_one])),
        ("port=81", set(&[], &[&refused_one])),
        ("local_port=80", set(&[&closed_inbound], &[&open_one])),
        ("remote_port=80", outbound.clone()),
        ("address=198.18.1.2", set(&[&closed_inbound], &[&open_one, &refused_one])),
        ("address=198.18.2.2", outbound.clone()),
        ("address=198.18.2.1", outbound.clone()),
        ("address=2001:db8:1::2", BTreeSet::new()),
        ("role=inbound&state=closed&port=80", closed_inbound.clone()),
        ("role=outbound&state=open", BTreeSet::new()),
    ];
    for (q, expected) in &cases {
        let got = query(o, q);
        assert_eq!(&names(&got.connections), expected, "GET /api/v1/connections?{q}:\n{}", got.pretty());
    }

    // Sorting and limits: N connections, in the key's order, and they are the first N of the full
    // list by that key, with the values the full list shows (all seven are quiet now: first_seen,
    // bytes and packets no longer change).
    type SortCase = (&'static str, usize, bool, fn(&Connection) -> f64);
    let sorted_cases: [SortCase; 4] = [
        ("sort=first_seen&limit=3", 3, false, |c| c.first_seen),
        ("sort=bytes_out&order=asc&limit=4", 4, true, |c| c.bytes_out as f64),
        ("sort=bytes_in&limit=2", 2, false, |c| c.bytes_in as f64),
        ("sort=packets&limit=5", 5, false, |c| (c.packets_in + c.packets_out) as f64),
    ];
    for (q, limit, ascending, key) in sorted_cases {
        let got = query(o, q);
        assert_eq!(got.count, limit, "GET /api/v1/connections?{q}:\n{}", got.pretty());
        let in_order = |v: &[f64]| -> Vec<f64> {
            let mut v = v.to_vec();
            v.sort_by(|a, b| if ascending { a.total_cmp(b) } else { b.total_cmp(a) });
            v
        };
        let mut expected = in_order(&all.connections.iter().map(key).collect::<Vec<_>>());
        expected.truncate(limit);
        let values: Vec<f64> = got.connections.iter().map(key).collect();
        assert_eq!(values, expected, "GET /api/v1/connections?{q}: the key's values, in order:\n{}", got.pretty());
        let from_full: Vec<f64> = got.connections.iter().map(|c| key(entry(&all, c.local_addr(), c.remote_addr()))).collect();
        assert_eq!(from_full, values, "GET /api/v1/connections?{q}: each connection's value as the full list shows it:\n{}", got.pretty());
    }

    // One connection by its written form (%20, or a comma).
    let one = |path: &str| -> Connection {
        let v = o.get_json(path);
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("GET {path}: not a connection ({e}): {v}"))
    };
    let c = one(&format!("/api/v1/connections/{}", open_one.replace(' ', "%20")));
    assert_eq!((c.connection.as_str(), c.local_addr(), c.remote_addr()), (open_one.as_str(), proxy, open_end));
    assert_eq!((c.status, c.role), (ConnStatus::Open, Role::Inbound), "{c:#?}");
    assert_eq!((c.bytes_in, c.bytes_out), (request.len() as u64, (head + body) as u64), "the held connection's one exchange: {c:#?}");
    for name in &outbound {
        let c = one(&format!("/api/v1/connections/{}", name.replace(' ', ",")));
        let listed = all.connections.iter().find(|l| &l.connection == name).expect("listed");
        assert_eq!(&c.connection, name);
        assert!(c.close_reason.is_some() && listed.close_reason.is_some(), "{name}: closed, with a reason, alone and in the list");
        assert_eq!(
            (c.packets_in, c.packets_out, c.bytes_in, c.bytes_out, c.close_reason, c.closer),
            (listed.packets_in, listed.packets_out, listed.bytes_in, listed.bytes_out, listed.close_reason, listed.closer),
            "{name} alone vs in the list"
        );
        assert_eq!((c.first_seen, c.opened, c.closed), (listed.first_seen, listed.opened, listed.closed), "{name}: times alone vs in the list");
    }

    // Bad input: 400 with a JSON message naming what was wrong; a connection never seen: 404.
    for (path, names_it) in [
        ("/api/v1/connections?port=http", "http"),
        ("/api/v1/connections?port=70000", "70000"),
        ("/api/v1/connections?sort=nonsense", "nonsense"),
        ("/api/v1/connections?colour=red", "colour"),
        ("/api/v1/connections?limit=many", "many"),
        ("/api/v1/connections?limit=1000000000", "1000000000"),
        ("/api/v1/connections?address=198.18.1", "198.18.1"),
        ("/api/v1/connections?role=sideways", "sideways"),
        ("/api/v1/connections/198.18.1.1:80", "198.18.1.1:80"),
        ("/api/v1/connections/198.18.1.1%20198.18.1.2:1", "198.18.1.1"),
        ("/api/v1/connections/198.18.1.1:80%20[2001:db8:1::2]:1", "both"),
    ] {
        let (status, body) = o.get(path);
        assert_eq!(status, 400, "GET {path}: {body}");
        let message = serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
        let message = message.unwrap_or_else(|| panic!("GET {path}: the body is not {{\"error\": \"...\"}}: {body}"));
        assert!(message.contains(names_it), "GET {path}: the message should name {names_it:?}: {message}");
    }
    let never = format!("{proxy} {}", v4(addr::CLIENT_V4, 9));
    let (status, body) = o.get(&format!("/api/v1/connections/{}", never.replace(' ', "%20")));
    assert_eq!(status, 404, "a connection never seen: {body}");
    assert!(serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("error").cloned()).is_some_and(|e| e.is_string()), "404 body: {body}");
    drop(open);
}

// ---------------------------------------------------------------------------------------------
// 9: a full kernel map evicts, and counts every eviction
// ---------------------------------------------------------------------------------------------

const MAP_SIZE: u64 = 16;

fn kernel_inserts(o: &Observer) -> u64 {
    let s = o.status();
    s["kernel_counters"]["conn_inserts"].as_u64().unwrap_or_else(|| panic!("no kernel_counters.conn_inserts in /api/v1/status: {s}"))
}

/// With room for 16 entries, twelve proxied requests make 24 connections (one client connection
/// and one upstream connection each). Every one is one new entry; whatever the map does not hold
/// any more was evicted, and `observer_connection_evictions_total` must say exactly how many. The
/// map keeps taking new connections: one made afterwards and held open is listed as open, which
/// only the kernel's map can say (closed connections the map evicted are still listed from the
/// daemon's history).
///
/// One thing besides the test's connections can insert an entry: a TCP retransmission in the
/// gateway, which the socket tracepoints count on whatever socket it happens, also the daemon's
/// own API connection on loopback (hidden from the API, but an entry in the map) and an evicted
/// connection. On an idle machine there is none; on a starved one a loopback segment is sometimes
/// retransmitted. So, like `Lab::run_exact`, a failed attempt during which the gateway
/// retransmitted is repeated on a fresh lab; a failure without retransmissions fails the test.
#[test]
fn a_full_connection_map_evicts_and_counts_every_eviction() {
    const TEST: &str = "a_full_connection_map_evicts_and_counts_every_eviction";
    if !root_or_skip(TEST) {
        return;
    }
    for attempt in 1..=observer_tests::EXACT_ATTEMPTS {
        let topo = Topology::new(TEST);
        let upstream = Nginx::upstream(&topo);
        let proxy = Nginx::proxy(&topo);
        let observer = Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &["--max-connections", &MAP_SIZE.to_string()]);
        let lab = Lab { observer, proxy, upstream, topo };
        let before = lab.topo.gateway.tcp_retransmitted_segments();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| full_map_evicts(&lab)));
        let Err(panic) = result else { return };
        let retransmitted = lab.topo.gateway.tcp_retransmitted_segments() - before;
        if retransmitted == 0 || attempt == observer_tests::EXACT_ATTEMPTS {
            std::panic::resume_unwind(panic);
        }
        eprintln!("{TEST}: attempt {attempt} failed (above) while the gateway retransmitted {retransmitted} segments: repeating it on a fresh lab");
    }
}

fn full_map_evicts(lab: &Lab) {
    const REQUESTS: usize = 12;
    let o = &lab.observer;
    assert_eq!(o.status()["config"]["max_connections"].as_u64(), Some(MAP_SIZE));
    let tracked = |m: &Metrics| m.get("observer_connections_tracked", &[]);
    let evictions = |m: &Metrics| m.get("observer_connection_evictions_total", &[]);

    let (m0, inserts0) = (metrics(o), kernel_inserts(o));
    let base = http_base(addr::GATEWAY_CLIENT_SIDE_V4.into());
    let urls: Vec<String> = (0..REQUESTS).map(|i| format!("{base}/size/{}", [1, 100, 1000][i % 3])).collect();
    let transfers = curl(&lab.topo.client, &urls, &["--header", "Connection: close"]);
    assert_eq!(transfers.iter().map(|t| t.num_connects).sum::<u32>() as usize, REQUESTS, "{transfers:#?}");
    let log = lab.upstream.wait_for_requests(REQUESTS);
    assert_eq!(log.entries.len(), REQUESTS, "one upstream connection per request:\n{}", log.raw);
    let created = (2 * REQUESTS) as u64;
    let m1 = wait_for_metrics(o, &format!("{created} connections closed"), |m| m.sum(CLOSED, &[]) - m0.sum(CLOSED, &[]) >= created as f64);
    let inserts1 = kernel_inserts(o);
    let m1b = metrics(o);
    assert_eq!((tracked(&m1b), evictions(&m1b)), (tracked(&m1), evictions(&m1)), "the map changed while the test read it");

    assert_eq!(inserts1 - inserts0, created, "one new entry per connection the test made:\n{}", o.connections().pretty());
    assert!(tracked(&m1) <= MAP_SIZE as f64, "observer_connections_tracked {} in a map of {MAP_SIZE}", tracked(&m1));
    assert_eq!(
        evictions(&m1) - evictions(&m0),
        created as f64 - (tracked(&m1) - tracked(&m0)),
        "evictions = connections created ({created}) - growth of the entries tracked ({} -> {})",
        tracked(&m0),
        tracked(&m1)
    );
    assert!(evictions(&m1) > 0.0, "{created} connections in a map of {MAP_SIZE} must evict");
    assert_eq!(m1.get("observer_connection_insert_failures_total", &[]), 0.0, "an LRU map never refuses");
    // Evicted or not, every closed connection is still listed (from the daemon's history), final.
    let snap = o.connections();
    for t in &transfers {
        let c = entry(&snap, t.remote, t.local);
        assert_closed_after_open(c, CloseReason::Normal);
        assert_eq!((c.bytes_in, c.bytes_out), (t.size_request, t.response_bytes()), "{}", c.connection);
    }
    assert_eq!(snap.connections.len(), 2 * REQUESTS, "{}", snap.pretty());

    // The map still takes new connections: one more request, its client connection held open.
    let mut open = tcp::connect(&lab.topo.client, v4(addr::GATEWAY_CLIENT_SIDE_V4, 80)).expect("connecting to the proxy");
    let open_end = open.local_addr().expect("local address");
    let (code, _, _) = tcp::http_exchange(&mut open, "GET /ok HTTP/1.1\r\nHost: gateway\r\n\r\n").expect("one exchange");
    assert_eq!(code, 200);
    let log = lab.upstream.wait_for_requests(REQUESTS + 1);
    let newest_upstream = log.entries.last().expect("the last request").remote();
    let m2 = wait_for_metrics(o, "the newest upstream connection closed", |m| m.sum(CLOSED, &[]) - m1.sum(CLOSED, &[]) >= 1.0);
    let snap = o.connections();
    let c = entry(&snap, v4(addr::GATEWAY_CLIENT_SIDE_V4, 80), open_end);
    assert_eq!((c.status, c.state, c.role), (ConnStatus::Open, TcpState::Established, Role::Inbound), "the newest connection, from the kernel's map: {c:#?}");
    let u = entry(&snap, newest_upstream, v4(addr::UPSTREAM_V4, 80));
    assert_closed_after_open(u, CloseReason::Normal);
    assert_eq!(kernel_inserts(o) - inserts1, 2, "two more entries:\n{}", o.connections().pretty());
    assert!(tracked(&m2) <= MAP_SIZE as f64);
    assert_eq!(evictions(&m2) - evictions(&m1), 2.0 - (tracked(&m2) - tracked(&m1)), "evictions for the last two connections");
    drop(open);
}

// ---------------------------------------------------------------------------------------------
// Times of a connection that has ended are facts: every answer must give the same ones
// ---------------------------------------------------------------------------------------------

/// A closed connection's `first_seen`, `opened`, `closed` and `last_seen` never change: reading it
/// twenty times (list and single route) must give the same numbers each time.
#[test]
fn closed_connection_times_are_the_same_in_every_answer() {
    const TEST: &str = "closed_connection_times_are_the_same_in_every_answer";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let before = metrics(&lab.observer);
    let t = curl(&lab.topo.client, &[format!("{}/ok", http_base(addr::GATEWAY_CLIENT_SIDE_V4.into()))], &["--header", "Connection: close"]).remove(0);
    wait_for_metrics(&lab.observer, "both connections closed", |m| m.sum(CLOSED, &[]) - before.sum(CLOSED, &[]) >= 2.0);
    let times = |c: &Connection| (c.first_seen, c.opened, c.closed, c.last_seen);
    let first = times(entry(&lab.observer.connections(), t.remote, t.local));
    let path = format!("/api/v1/connections/{}%20{}", t.remote, t.local);
    for i in 0..20 {
        let listed = times(entry(&lab.observer.connections(), t.remote, t.local));
        let alone: Connection = serde_json::from_value(lab.observer.get_json(&path)).expect("a connection");
        assert_eq!((listed, times(&alone)), (first, first), "answer {i}: (first_seen, opened, closed, last_seen) in the list and alone vs the first answer");
    }
}

// ---------------------------------------------------------------------------------------------
// Every connection that ends is counted once, also when many end together
// ---------------------------------------------------------------------------------------------

/// 300 proxied requests with `Connection: close`: 600 connections, each closed normally, so
/// `observer_connections_closed_total` must grow by exactly 600. A connection's end is finalised
/// twice over (300 ms after its close event, and by the daemon's periodic sweep, every 5 s, that
/// finds closed entries), and exactly one of the two may count it.
#[test]
fn every_closed_connection_is_counted_once_under_churn() {
    const TEST: &str = "every_closed_connection_is_counted_once_under_churn";
    if !root_or_skip(TEST) {
        return;
    }
    const REQUESTS: usize = 300;
    let lab = Lab::start(TEST);
    let before = metrics(&lab.observer);
    let base = http_base(addr::GATEWAY_CLIENT_SIDE_V4.into());
    let transfers = curl(&lab.topo.client, &vec![format!("{base}/ok"); REQUESTS], &["--header", "Connection: close"]);
    assert_eq!(transfers.iter().map(|t| t.num_connects).sum::<u32>() as usize, REQUESTS);
    assert_eq!(lab.upstream.wait_for_requests(REQUESTS).entries.len(), REQUESTS);
    let expected = (2 * REQUESTS) as f64;
    wait_for_metrics(&lab.observer, &format!("{expected} connections closed"), |m| m.sum(CLOSED, &[]) - before.sum(CLOSED, &[]) >= expected);
    // Two whole sweeps of the kernel map later (each finds closed entries and may finalise them),
    // nothing more may have been counted.
    let swept = lab.observer.status()["sweeps"].as_u64().expect("status names its sweeps");
    let done = poll(WAIT, Duration::from_millis(100), || (lab.observer.status()["sweeps"].as_u64() >= Some(swept + 2)).then_some(()));
    assert!(done.is_some(), "the daemon did not sweep twice within {WAIT:?}");
    let after = metrics(&lab.observer);
    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), expected, "{}", after.series(CLOSED));
    for role in ["inbound", "outbound"] {
        assert_eq!(
            after.sum(CLOSED, &[("role", role), ("port", "80"), ("reason", "normal")])
                - before.sum(CLOSED, &[("role", role), ("port", "80"), ("reason", "normal")]),
            REQUESTS as f64,
            "{}",
            after.series(CLOSED)
        );
        assert_eq!(
            after.get(OPENED, &[("role", role), ("port", "80")]) - before.get(OPENED, &[("role", role), ("port", "80")]),
            REQUESTS as f64,
            "{}",
            after.series(OPENED)
        );
    }
}
