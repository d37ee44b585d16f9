//! The checks of the HTTP tests: a curl run as the client saw it, a settled connection's HTTP
//! state, its recent exchanges, the HTTP metrics, and the outbound side against the upstream's
//! access log or the scripted server's record.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ::observer::{
    http::WindowView,
    model::{HttpView, Role},
};

use super::{upstream_http, upstream_scripted, HttpLab, SETTLE};
use crate::{
    addr,
    http_view::{assert_window, expected_window, Metrics},
    nginx::LogEntry,
    scripted::{curl_each, CurlOp, CurlRun, Served},
    Connection, ConnectionExt, Snapshot,
};

/// Runs `ops` with curl from the client and checks the run itself: success, one transfer per
/// operation, every final status line curl saw is its transfer's `http_code`.
pub fn curl_ok(lab: &HttpLab, ops: &[CurlOp]) -> CurlRun {
    curl_ok_within(lab, ops, Duration::from_secs(30))
}

pub fn curl_ok_within(lab: &HttpLab, ops: &[CurlOp], max_time: Duration) -> CurlRun {
    let run = curl_each(&lab.topo.client, ops, max_time);
    assert!(run.status.success(), "curl failed ({}):\n{}", run.status, run.stderr);
    assert_eq!(run.transfers.len(), ops.len(), "one --write-out line per operation:\n{}", run.stderr);
    let finals: Vec<u16> = run.status_lines.iter().copied().filter(|s| *s >= 200).collect();
    assert_eq!(
        finals,
        run.transfers.iter().map(|t| t.http_code).collect::<Vec<_>>(),
        "final status lines in curl's --verbose output vs its http_codes:\n{}",
        run.stderr
    );
    run
}

/// Checks that curl reused one connection for every operation; returns the client's end.
pub fn one_connection(run: &CurlRun) -> SocketAddr {
    assert_eq!(run.transfers.iter().map(|t| t.num_connects).sum::<u32>(), 1, "curl should open exactly one connection: {:#?}", run.transfers);
    let client_end = run.transfers[0].local;
    assert!(run.transfers.iter().all(|t| t.local == client_end), "every transfer on one connection: {:#?}", run.transfers);
    client_end
}

/// The entries of `snap` that `select` picks.
pub fn pick(snap: &Snapshot, select: impl Fn(&Connection) -> bool) -> Vec<&Connection> {
    snap.connections.iter().filter(|c| select(c)).collect()
}

/// The single entry of `snap` whose peer is `remote`.
pub fn entry_of(snap: &Snapshot, remote: SocketAddr) -> &Connection {
    let found = snap.with_remote(remote);
    assert_eq!(found.len(), 1, "exactly one entry for peer {remote}:\n{}", snap.pretty());
    found[0]
}

/// Asserts a settled connection's HTTP state: `expected` in the lifetime and both windows (the
/// 10 s window only while the lab is younger than 9 s: older traffic has left it), nothing in
/// flight, framing never lost and in sync. Returns the view.
pub fn assert_http<'c>(lab: &HttpLab, c: &'c Connection, expected: &WindowView) -> &'c HttpView {
    let h = c.http.as_ref().unwrap_or_else(|| panic!("{} has no http object: {c:#?}", c.connection));
    assert_window(&h.lifetime, expected, format_args!("lifetime HTTP counts of {}", c.connection));
    assert_window(&h.last_60s, expected, format_args!("last_60s HTTP counts of {}", c.connection));
    if lab.started.elapsed() < Duration::from_secs(9) {
        assert_window(&h.last_10s, expected, format_args!("last_10s HTTP counts of {}", c.connection));
    }
    assert_eq!(h.in_flight, 0, "in_flight of {}", c.connection);
    assert_eq!(h.framing_lost, 0, "framing_lost of {}", c.connection);
    assert!(h.in_sync, "in_sync of {}", c.connection);
    h
}

/// Whether a status answers its request: a final status, or 101 (the connection stops being
/// HTTP). Other 1xx are interim.
fn answers(status: u16) -> bool {
    status >= 200 || status == 101
}

/// Asserts `recent` (the last 32 status lines, oldest first): statuses, methods and targets in
/// order, times within the connection's life and never going back, and a latency for each
/// response that answers its request (none for interim ones).
pub fn assert_recent(c: &Connection, h: &HttpView, expected: &[(u16, &str, &str)]) {
    let tail = &expected[expected.len().saturating_sub(32)..];
    let got: Vec<(u16, String, String)> =
        h.recent.iter().map(|e| (e.status, e.method.as_deref().unwrap_or_default().to_owned(), e.target.as_deref().unwrap_or_default().to_owned())).collect();
    let want: Vec<(u16, String, String)> = tail.iter().map(|(s, m, t)| (*s, m.to_string(), t.to_string())).collect();
    assert_eq!(got, want, "recent exchanges of {} (status, method, target)", c.connection);
    for (i, e) in h.recent.iter().enumerate() {
        assert!(
            e.time >= c.first_seen - 0.01 && e.time <= c.last_seen + 0.01,
            "recent[{i}].time {} outside {}..{} of {}",
            e.time,
            c.first_seen,
            c.last_seen,
            c.connection
        );
        // Responses of one segment share a kernel timestamp; its conversion to Unix time varies
        // by a rounding step (0.24 us at today's Unix times) from one entry to the next.
        if i > 0 {
            assert!(e.time >= h.recent[i - 1].time - 1e-6, "recent times go back at {i} on {}: {:?}", c.connection, h.recent);
        }
        match e.latency_ms {
            Some(l) => assert!(answers(e.status) && l >= 0.0, "recent[{i}] of {}: latency {l} ms for status {}", c.connection, e.status),
            None => assert!(!answers(e.status), "recent[{i}] of {}: a final response without latency", c.connection),
        }
    }
}

/// Asserts the HTTP metrics of one `role` and service `port`: `requests` requests, one response
/// per status line in `statuses` (by class and code), `unanswered` unanswered requests, and one
/// latency observation per response that answers its request, by class.
pub fn assert_metrics(m: &Metrics, role: &str, port: u16, requests: u64, statuses: &[u16], unanswered: u64) {
    let port = port.to_string();
    let (role, port) = (role, port.as_str());
    let l = [("role", role), ("port", port)];
    assert_eq!(m.count("observer_http_requests_total", &l), requests, "observer_http_requests_total{{role={role},port={port}}}");
    assert_eq!(m.count("observer_http_responses_total", &l), statuses.len() as u64, "observer_http_responses_total{{role={role},port={port}}}, all codes");
    let mut by_code: BTreeMap<u16, u64> = BTreeMap::new();
    for s in statuses {
        *by_code.entry(*s).or_default() += 1;
    }
    for (code, n) in &by_code {
        let code_s = code.to_string();
        let class = format!("{}xx", code / 100);
        let labels = [("role", role), ("port", port), ("class", class.as_str()), ("code", code_s.as_str())];
        assert_eq!(m.count("observer_http_responses_total", &labels), *n, "observer_http_responses_total{labels:?}");
    }
    assert_eq!(m.count("observer_http_requests_unanswered_total", &l), unanswered, "observer_http_requests_unanswered_total{{role={role},port={port}}}");
    for class in 1..=5u16 {
        let c = format!("{class}xx");
        let finals = statuses.iter().filter(|s| **s / 100 == class && answers(**s)).count() as u64;
        let labels = [("role", role), ("port", port), ("class", c.as_str())];
        assert_eq!(m.count("observer_http_response_latency_seconds_count", &labels), finals, "observer_http_response_latency_seconds_count{labels:?}");
    }
}

/// `(method, target)` of an access log line's request line.
pub fn request_of(e: &LogEntry) -> (String, String) {
    let mut f = e.request.split(' ');
    (f.next().unwrap_or("").to_owned(), f.next().unwrap_or("").to_owned())
}

/// The upstream's log lines, one per proxied request; asserts there are `n`, all from the
/// gateway's address `gateway`.
pub fn upstream_log(lab: &HttpLab, n: usize, gateway: IpAddr) -> Vec<LogEntry> {
    let log = lab.upstream.wait_for_requests(n);
    assert_eq!(log.entries.len(), n, "one upstream request per proxied request:\n{}", log.raw);
    assert!(log.entries.iter().all(|e| e.remote_addr == gateway), "all from {gateway}:\n{}", log.raw);
    log.entries
}

/// Checks the outbound side of `n` proxied requests to the upstream nginx: one settled entry per
/// request, each with exactly one request and the status the upstream logged for that gateway
/// source port, and its request line. Returns the upstream's log lines in order.
pub fn assert_outbound_nginx(lab: &HttpLab, n: usize) -> Vec<LogEntry> {
    assert_outbound_nginx_at(lab, n, upstream_http(), addr::GATEWAY_UPSTREAM_SIDE_V4.into())
}

/// [`assert_outbound_nginx`] for the upstream at `upstream`, reached from the gateway's `gateway`.
pub fn assert_outbound_nginx_at(lab: &HttpLab, n: usize, upstream: SocketAddr, gateway: IpAddr) -> Vec<LogEntry> {
    let entries = upstream_log(lab, n, gateway);
    let snap = lab.wait_settled("the proxied connections to the upstream", n, n as u64, n as u64, |c| c.remote_addr() == upstream);
    let conns = pick(&snap, |c| c.remote_addr() == upstream);
    assert_eq!(conns.len(), n, "one outbound entry per proxied request (HTTP/1.0, close):\n{}", snap.pretty());
    for e in &entries {
        let c = conns
            .iter()
            .find(|c| c.local_addr().port() == e.remote_port)
            .unwrap_or_else(|| panic!("no outbound entry from gateway port {} (upstream log {e:?}):\n{}", e.remote_port, snap.pretty()));
        assert_eq!(c.role, Role::Outbound, "{}", c.connection);
        let h = assert_http(lab, c, &expected_window(1, &[e.status], 0));
        assert_eq!(h.last_status, Some(e.status), "last_status of {}", c.connection);
        let (method, target) = request_of(e);
        assert_recent(c, h, &[(e.status, &method, &target)]);
    }
    entries
}

/// Checks the outbound side of requests proxied to the scripted upstream server: one settled
/// entry per connection it served, each with one request and exactly the status lines the server
/// wrote on it. Returns what it served.
pub fn assert_outbound_scripted(lab: &HttpLab, connections: usize) -> Vec<Served> {
    let snap = lab.wait_settled("the proxied connections to the scripted upstream", connections, connections as u64, connections as u64, |c| {
        c.remote_addr() == upstream_scripted()
    });
    let conns = pick(&snap, |c| c.remote_addr() == upstream_scripted());
    assert_eq!(conns.len(), connections, "one outbound entry per proxied request:\n{}", snap.pretty());
    let served = lab.scripted.served();
    for c in &conns {
        let mine: Vec<&Served> = served.iter().filter(|s| s.peer.port() == c.local_addr().port()).collect();
        assert!(!mine.is_empty(), "the scripted upstream served nothing to {}: {served:#?}", c.connection);
        let statuses: Vec<u16> = mine.iter().map(|s| s.status).collect();
        let h = assert_http(lab, c, &expected_window(1, &statuses, 0));
        assert_eq!(h.last_status, statuses.last().copied(), "last_status of {}", c.connection);
        let want: Vec<(u16, &str, &str)> = mine.iter().map(|s| (s.status, s.method.as_str(), s.target.as_str())).collect();
        assert_recent(c, h, &want);
    }
    served
}

/// The proxy's log lines for one client connection, in order; asserts they are numbered 1..n on
/// one nginx connection and carry `codes`.
pub fn assert_proxy_log(lab: &HttpLab, client_end: SocketAddr, codes: &[u16]) -> Vec<LogEntry> {
    let what = format!("{} requests from {client_end}", codes.len());
    let log = lab.proxy.wait_for_log(&what, SETTLE, |l| l.entries.iter().filter(|e| e.remote() == client_end).count() >= codes.len());
    let mine: Vec<LogEntry> = log.entries.iter().filter(|e| e.remote() == client_end).cloned().collect();
    assert_eq!(mine.iter().map(|e| e.status).collect::<Vec<_>>(), codes, "statuses the proxy logged for {client_end} vs what the client got:\n{}", log.raw);
    assert_eq!(mine.iter().map(|e| e.connection_requests).collect::<Vec<_>>(), (1..=codes.len() as u64).collect::<Vec<_>>(), "{}", log.raw);
    assert!(mine.iter().all(|e| e.connection == mine[0].connection), "one nginx connection:\n{}", log.raw);
    mine
}

/// The kernel framer lost its place in the request direction of `c` for `reason`, and the metric
/// by reason counted it.
pub fn assert_kernel_lost(lab: &HttpLab, c: &Connection, reason: &str) {
    let k = c.http_kernel.as_ref().unwrap_or_else(|| panic!("{}: no http_kernel", c.connection));
    assert_eq!(k.lost_in.as_deref(), Some(reason), "{}: {k:?}", c.connection);
    let counted = lab.metrics().value("observer_http_fallback_total", &[("reason", reason)]);
    assert!(counted >= 1.0, "observer_http_fallback_total{{reason={reason:?}}} is {counted}");
}
