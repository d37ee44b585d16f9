//! How HTTP connections end, end to end: `Connection: close` gives each exchange its own entry, a
//! client that resets in the middle of a response leaves that response counted, requests sent right
//! before a half-close are answered and counted, and an error the server sends (then closes)
//! before the request body has arrived is counted.
//!
//! Ground truth, and how entries are matched to it: see `observer_tests::http_lab`.
use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
};

use observer_tests::{
    addr::{self, http_base},
    http_lab::{
        assert_http, assert_metrics, assert_outbound_nginx, assert_proxy_log, assert_recent, curl_ok, entry_of, fake_heads, gateway_server, pick, proxy_v4,
        recent_of, script, served_to, url, HttpLab, GATEWAY_SCRIPTED_PORT,
    },
    http_view::expected_window,
    root_or_skip,
    scripted::{self, close_with_reset, connect, CurlOp, ResponseReader},
    ConnectionExt,
};

#[test]
fn connection_close_gives_each_exchange_its_own_entry() {
    const TEST: &str = "connection_close_gives_each_exchange_its_own_entry";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let paths = ["/ok", "/status/404", "/size/100000", "/status/503", "/redirect", "/status/204"];
    let ops: Vec<CurlOp> = paths.iter().map(|p| CurlOp::get(url(proxy_v4(), p)).with(&["--header", "Connection: close"])).collect();
    let run = curl_ok(&lab, &ops);
    assert!(run.transfers.iter().all(|t| t.num_connects == 1), "one connection per transfer: {:#?}", run.transfers);
    assert_eq!(run.status_lines.len(), paths.len(), "one status line per transfer");

    let n = paths.len();
    let snap = lab.wait_settled("one connection per request", n, n as u64, n as u64, |c| c.remote_addr().ip() == IpAddr::from(addr::CLIENT_V4));
    assert_eq!(pick(&snap, |c| c.remote_addr().ip() == IpAddr::from(addr::CLIENT_V4)).len(), n, "one entry per connection:\n{}", snap.pretty());
    for (t, p) in run.transfers.iter().zip(paths) {
        assert_proxy_log(&lab, t.local, &[t.http_code]);
        let c = entry_of(&snap, t.local);
        let h = assert_http(&lab, c, &expected_window(1, &[t.http_code], 0));
        assert_eq!(h.last_status, Some(t.http_code));
        assert_recent(c, h, &[(t.http_code, "GET", p)]);
    }
    assert_outbound_nginx(&lab, n);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n as u64, &codes, 0);
    assert_metrics(&m, "outbound", 80, n as u64, &codes, 0);
}

#[test]
fn a_client_reset_mid_response_leaves_its_response_counted() {
    const TEST: &str = "a_client_reset_mid_response_leaves_its_response_counted";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    lab.add_size(10_000_000);
    let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
    let client_end = s.local_addr().unwrap();
    s.write_all(b"GET /size/10000000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while got.len() < 256 * 1024 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the proxy closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{:?}", String::from_utf8_lossy(&got[..64]));
    close_with_reset(s);

    let log = assert_proxy_log(&lab, client_end, &[200]);
    assert!(log[0].bytes_sent < 10_000_000, "the response was cut short: {:?}", log[0]);
    let snap = lab.wait_settled("the aborted connection", 1, 1, 1, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    assert!(c.rst_in >= 1, "the client's reset was seen: {c:?}");
    let h = assert_http(&lab, c, &expected_window(1, &[200], 0));
    assert_eq!(h.last_status, Some(200));
    assert_recent(c, h, &[(200, "GET", "/size/10000000")]);
    assert_outbound_nginx(&lab, 1);
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, 1, &[200], 0);
    assert_metrics(&m, "outbound", 80, 1, &[200], 0);
}

#[test]
fn requests_sent_before_a_half_close_are_answered_and_counted() {
    const TEST: &str = "requests_sent_before_a_half_close_are_answered_and_counted";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let server = gateway_server(&lab, script);
    let mut s = connect(&lab.topo.client, server.addr);
    let client_end = s.local_addr().unwrap();
    s.write_all(b"GET /chunked/200/2/10 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/404 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The client's FIN follows its requests at once; the server answers both, then closes.
    let rest = scripted::finish(s).unwrap();
    let mut reader = ResponseReader::new(&rest[..]);
    let statuses = vec![reader.read(false).unwrap().status, reader.read(false).unwrap().status];
    assert_eq!(statuses, vec![200, 404]);
    assert!(reader.buffered().is_empty());
    let served = served_to(&server, client_end);
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), statuses);

    let snap = lab.wait_settled("the half-closed connection", 1, 2, 2, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    assert_eq!((c.fin_in, c.fin_out), (1, 1), "{c:?}");
    let h = assert_http(&lab, c, &expected_window(2, &statuses, 0));
    assert_recent(c, h, &recent_of(&served));
    assert_metrics(&lab.metrics(), "inbound", GATEWAY_SCRIPTED_PORT, 2, &statuses, 0);
}

#[test]
fn an_error_sent_before_the_request_body_ends_is_counted() {
    const TEST: &str = "an_error_sent_before_the_request_body_ends_is_counted";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let body = lab.topo.path("post-body");
    fs::write(&body, fake_heads(300_000)).unwrap();
    let body_arg = format!("@{}", body.display());
    // /limited/ accepts bodies up to 1 KB: nginx answers 413 as soon as it has the head (and
    // closes), while the body is still coming or, with Expect, instead of 100 Continue.
    let ops = vec![
        CurlOp::get(url(proxy_v4(), "/ok")),
        CurlOp::get(url(proxy_v4(), "/limited/ok")).with(&["--data-binary", &body_arg, "--header", "Expect:"]),
        CurlOp::get(url(proxy_v4(), "/status/404")),
        CurlOp::get(url(proxy_v4(), "/limited/ok")).with(&["--data-binary", &body_arg, "--header", "Expect: 100-continue"]),
        CurlOp::get(url(proxy_v4(), "/ok")),
    ];
    let run = curl_ok(&lab, &ops);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200, 413, 404, 413, 200]);
    assert_eq!(run.status_lines, codes, "no 100 Continue:\n{}", run.stderr);
    // Group the transfers by connection, as curl reports them.
    type Exchanges<'a> = Vec<(u16, &'a str, &'a str)>;
    let mut by_conn: Vec<(SocketAddr, Exchanges)> = Vec::new();
    for (t, o) in run.transfers.iter().zip(&ops) {
        let target = o.url.strip_prefix(&http_base(proxy_v4())).unwrap();
        match by_conn.iter_mut().find(|(end, _)| *end == t.local) {
            Some((_, v)) => v.push((t.http_code, o.method(), target)),
            None => by_conn.push((t.local, vec![(t.http_code, o.method(), target)])),
        }
    }
    assert_eq!(by_conn.iter().map(|(_, v)| v.len()).collect::<Vec<_>>(), vec![2, 2, 1], "nginx closes after each 413: {:#?}", run.transfers);
    for (end, exchanges) in &by_conn {
        let statuses: Vec<u16> = exchanges.iter().map(|e| e.0).collect();
        assert_proxy_log(&lab, *end, &statuses);
        let k = statuses.len() as u64;
        let snap = lab.wait_settled("a client connection", 1, k, k, |c| c.remote_addr() == *end);
        let c = entry_of(&snap, *end);
        let h = assert_http(&lab, c, &expected_window(k, &statuses, 0));
        assert_recent(c, h, exchanges);
    }
    assert_outbound_nginx(&lab, 3);
    assert_metrics(&lab.metrics(), "inbound", 80, ops.len() as u64, &codes, 0);
}
