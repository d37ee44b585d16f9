//! Bytes that are not HTTP/1.x never count as HTTP, end to end: connections that start with
//! something else (TLS, binary) while HTTP runs beside them and disturbs nothing, ports left out by
//! `--http-port`, connections that stop being HTTP after a `101` or a `CONNECT` tunnel's `2xx`, and
//! garbage in a first segment shorter than the kernel's look (counted as a not-HTTP connection).
//!
//! Ground truth, and how entries are matched to it: see `observer_tests::http_lab`.
use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use observer_tests::{
    http_lab::{
        assert_http, assert_metrics, assert_outbound_nginx, assert_proxy_log, assert_recent, curl_ok, echo, entry_of, gateway_server, mix_ops, one_connection,
        proxy_v4, recent_of, script, served_to, url, url_port, HttpLab, ECHO_PORT, GATEWAY_SCRIPTED_PORT, MIX, PROXY_SECOND_PORT, SETTLE,
    },
    http_view::{expected_window, settled, WindowExt},
    nginx::LogEntry,
    root_or_skip,
    scripted::{self, connect, curl_each, data_segments_out, CurlOp, ResponseReader, ScriptedServer},
    ConnectionExt,
};

/// A TLS 1.2 ClientHello's first bytes: record header, handshake header, version, random.
fn client_hello() -> Vec<u8> {
    let mut b = vec![0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03];
    b.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    b.extend_from_slice(&[0x00, 0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f, 0x01, 0x00]);
    b.extend(std::iter::repeat_n(0u8, 0xc8 + 5 - b.len()));
    b
}

#[test]
fn connections_that_are_not_http_are_never_counted_and_disturb_nothing() {
    const TEST: &str = "connections_that_are_not_http_are_never_counted_and_disturb_nothing";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    lab.add_size(5_000_000);
    let echo_server = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), ECHO_PORT), echo);
    // The HTTP exchange runs while the other connections come and go.
    let client = lab.topo.client.clone();
    let ops = mix_ops(&lab, proxy_v4(), "");
    let http = std::thread::spawn(move || curl_each(&client, &ops, Duration::from_secs(30)));

    let garbage: Vec<u8> = b"\x00\x01\x02\x03 not HTTP at all \xff\xfe\r\n\r\n".iter().copied().cycle().take(300).collect();
    let hello = client_hello();
    let mut others = Vec::new();
    // To nginx: it answers 400 and closes; the answer is no HTTP response of an HTTP connection.
    for first in [&garbage, &hello] {
        let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
        others.push(s.local_addr().unwrap());
        s.write_all(first).unwrap();
        let answer = scripted::finish(s).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 400"), "nginx answers 400: {:?}", String::from_utf8_lossy(&answer));
    }
    // To the echo server: later bytes look like HTTP in both directions.
    for first in [&garbage, &hello] {
        let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), ECHO_PORT));
        others.push(s.local_addr().unwrap());
        s.write_all(first).unwrap();
        let mut back = vec![0u8; first.len()];
        s.read_exact(&mut back).unwrap();
        for later in [&b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"] {
            // Pacing only: each write follows the echo of the previous one anyway, and what is
            // decided about the first bytes does not depend on when later bytes come.
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(later).unwrap();
            let mut back = vec![0u8; later.len()];
            s.read_exact(&mut back).unwrap();
        }
        let rest = scripted::finish(s).unwrap();
        assert!(rest.is_empty());
    }
    let run = http.join().expect("the curl thread");
    assert!(run.status.success(), "curl failed:\n{}", run.stderr);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, MIX.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    let client_end = one_connection(&run);
    assert_proxy_log(&lab, client_end, &codes);
    let log = lab.proxy.wait_for_log("the 400s for the garbage", SETTLE, |l| others[..2].iter().all(|o| l.entries.iter().any(|e| e.remote() == *o)));
    for o in &others[..2] {
        let e: Vec<&LogEntry> = log.entries.iter().filter(|e| e.remote() == *o).collect();
        assert_eq!(e.iter().map(|e| e.status).collect::<Vec<_>>(), vec![400], "the proxy's view of {o}:\n{}", log.raw);
    }

    let n = MIX.len() as u64;
    let snap = lab.wait_settled("the HTTP connection", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = MIX.iter().map(|(p, s)| (*s, "GET", *p)).collect();
    assert_recent(c, h, &want);
    let snap = lab.observer.wait_for("the other connections, closed", SETTLE, |s| others.iter().all(|o| s.with_remote(*o).first().is_some_and(|c| settled(c))));
    for o in &others {
        let c = entry_of(&snap, *o);
        if let Some(h) = c.http.as_ref() {
            assert!(
                h.lifetime.is_zero() && h.last_60s.is_zero() && h.last_status.is_none() && h.recent.is_empty() && h.in_flight == 0,
                "{} is not HTTP, yet: {h:?}",
                c.connection
            );
        }
    }
    assert_outbound_nginx(&lab, MIX.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
    assert_metrics(&m, "inbound", ECHO_PORT, 0, &[], 0);
    assert_eq!(m.count("observer_not_http_connections_total", &[]), others.len() as u64, "connections whose first bytes were not HTTP");
    drop(echo_server);
}

#[test]
fn http_port_restricts_parsing_to_the_listed_ports() {
    const TEST: &str = "http_port_restricts_parsing_to_the_listed_ports";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start_with(TEST, &["--http-port", "80"]);
    let paths = ["/ok", "/status/404", "/size/10000", "/status/503"];
    let on_80: Vec<CurlOp> = paths.iter().map(|p| CurlOp::get(url(proxy_v4(), p))).collect();
    let on_8080: Vec<CurlOp> = paths.iter().map(|p| CurlOp::get(url_port(proxy_v4(), PROXY_SECOND_PORT, p))).collect();
    let run_80 = curl_ok(&lab, &on_80);
    let run_8080 = curl_ok(&lab, &on_8080);
    let (end_80, end_8080) = (one_connection(&run_80), one_connection(&run_8080));
    let codes: Vec<u16> = run_80.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200, 404, 200, 503]);
    assert_eq!(run_8080.transfers.iter().map(|t| t.http_code).collect::<Vec<_>>(), codes);
    assert_proxy_log(&lab, end_80, &codes);
    assert_proxy_log(&lab, end_8080, &codes);

    let n = paths.len() as u64;
    let snap = lab.wait_settled("the connection to port 80", 1, n, n, |c| c.remote_addr() == end_80);
    let c = entry_of(&snap, end_80);
    let h = assert_http(&lab, c, &expected_window(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = paths.iter().zip(&codes).map(|(p, s)| (*s, "GET", *p)).collect();
    assert_recent(c, h, &want);
    let snap = lab.observer.wait_for("the connection to port 8080, closed", SETTLE, |s| s.with_remote(end_8080).first().is_some_and(|c| settled(c)));
    let c = entry_of(&snap, end_8080);
    assert_eq!(c.local_addr().port(), PROXY_SECOND_PORT);
    if let Some(h) = c.http.as_ref() {
        assert!(h.lifetime.is_zero() && h.recent.is_empty(), "port {PROXY_SECOND_PORT} is not parsed, yet {}: {h:?}", c.connection);
    }
    // The upstream's port is 80: every proxied request counts, whichever client port it came in on.
    assert_outbound_nginx(&lab, 2 * paths.len());
    let both: Vec<u16> = codes.iter().chain(&codes).copied().collect();
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "inbound", PROXY_SECOND_PORT, 0, &[], 0);
    assert_metrics(&m, "outbound", 80, 2 * n, &both, 0);
}

/// One request and response, then `switch` (a request whose answer ends HTTP on the connection:
/// expected `status`), then bytes of another protocol that look like HTTP in both directions
/// (echoed by the server): only the two exchanges count, and nothing is left unanswered.
fn tunnel_after(test: &str, switch: &[u8], status: u16) {
    let lab = HttpLab::start(test);
    let server = gateway_server(&lab, script);
    let mut s = connect(&lab.topo.client, server.addr);
    let client_end = s.local_addr().unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(reader.read(false).unwrap().status, 200);
    s.write_all(switch).unwrap();
    let r = reader.read_head().unwrap();
    assert_eq!(r.status, status);
    for later in [&client_hello()[..], b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", b"POST / HTTP/1.1\r\n\r\n"] {
        s.write_all(later).unwrap();
        let mut back = vec![0u8; later.len()];
        reader.inner.read_exact(&mut back).unwrap();
        assert_eq!(back, later);
    }
    assert!(reader.buffered().is_empty());
    drop(reader);
    assert!(scripted::finish(s).unwrap().is_empty());
    let served = served_to(&server, client_end);
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), vec![200, status]);

    let snap = lab.wait_settled("the switched connection", 1, 2, 2, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(2, &[200, status], 0));
    assert_eq!(h.last_status, Some(status));
    assert_recent(c, h, &recent_of(&served));
    assert_metrics(&lab.metrics(), "inbound", GATEWAY_SCRIPTED_PORT, 2, &[200, status], 0);
}

#[test]
fn an_upgraded_connection_stops_being_counted_after_101() {
    const TEST: &str = "an_upgraded_connection_stops_being_counted_after_101";
    if root_or_skip(TEST) {
        tunnel_after(TEST, b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: scripted\r\n\r\n", 101);
    }
}

#[test]
fn a_connect_tunnel_stops_being_counted_after_its_2xx() {
    const TEST: &str = "a_connect_tunnel_stops_being_counted_after_its_2xx";
    if root_or_skip(TEST) {
        tunnel_after(TEST, b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n", 200);
    }
}

/// Connections to an echo server whose first segment is shorter than the kernel's 16-byte look
/// (so the daemon decides they are not HTTP); later bytes look like HTTP in both directions.
/// Returns the client ends.
fn short_garbage(lab: &HttpLab, echo_server: &ScriptedServer) -> Vec<SocketAddr> {
    let mut ends = Vec::new();
    // The second starts like a method and goes wrong after.
    for pieces in [vec![client_hello()[..5].to_vec(), client_hello()[5..].to_vec()], vec![b"GE".to_vec(), b"\x00\x01\x02 binary \xff".to_vec()]] {
        let mut s = connect(&lab.topo.client, echo_server.addr);
        ends.push(s.local_addr().unwrap());
        for p in pieces.iter().map(|p| p.as_slice()).chain([&b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]) {
            s.write_all(p).unwrap();
            let mut back = vec![0u8; p.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, p);
        }
        assert_eq!(data_segments_out(&s), 4, "each piece in its own segment");
        assert!(scripted::finish(s).unwrap().is_empty());
    }
    let snap = lab.observer.wait_for("the echo connections, closed", SETTLE, |s| ends.iter().all(|e| s.with_remote(*e).first().is_some_and(|c| settled(c))));
    for e in &ends {
        let c = entry_of(&snap, *e);
        if let Some(h) = c.http.as_ref() {
            assert!(h.lifetime.is_zero() && h.last_status.is_none() && h.recent.is_empty(), "{} is not HTTP, yet: {h:?}", c.connection);
        }
    }
    ends
}

#[test]
fn garbage_in_a_short_first_segment_is_never_counted_as_http() {
    const TEST: &str = "garbage_in_a_short_first_segment_is_never_counted_as_http";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let echo_server = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), ECHO_PORT), echo);
    short_garbage(&lab, &echo_server);
    assert_metrics(&lab.metrics(), "inbound", ECHO_PORT, 0, &[], 0);
}

#[test]
fn garbage_in_a_short_first_segment_counts_as_a_not_http_connection() {
    const TEST: &str = "garbage_in_a_short_first_segment_counts_as_a_not_http_connection";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let echo_server = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), ECHO_PORT), echo);
    let ends = short_garbage(&lab, &echo_server);
    assert_eq!(lab.metrics().count("observer_not_http_connections_total", &[]), ends.len() as u64, "connections whose first bytes were not HTTP/1.x");
}
