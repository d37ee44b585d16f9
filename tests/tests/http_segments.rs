//! What TCP does to messages, end to end: a request line split across segments, request and
//! response heads spanning many segments (beyond what the kernel's framer follows: the daemon's
//! takes over), and retransmitted segments are each counted once.
//!
//! Ground truth, and how entries are matched to it: see `observer_tests::http_lab`.
use std::{io::Write, net::SocketAddr, time::Duration};

use observer_tests::{
    addr::GW_CLIENT_IF,
    http_lab::{
        assert_http, assert_kernel_lost, assert_metrics, assert_outbound_nginx, assert_proxy_log, assert_recent, curl_ok, curl_ok_within, entry_of,
        gateway_server, one_connection, proxy_v4, recent_of, script, served_to, url, url_port, HttpLab, GATEWAY_SCRIPTED_PORT,
    },
    http_view::expected_window,
    root_or_skip,
    scripted::{self, connect, data_segments_out, CurlOp, ResponseReader},
    ConnectionExt,
};

#[test]
fn a_request_line_split_across_segments_is_counted_once() {
    const TEST: &str = "a_request_line_split_across_segments_is_counted_once";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
    let client_end = s.local_addr().unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    // Each piece leaves in its own segment (no Nagle; a pause lets each go before the next).
    let requests: [&[&str]; 3] = [
        &["GE", "T /ok HTTP/1.1\r\nHost: x\r\n\r\n"],
        &["GET /status/404 HTTP/1.1\r", "\nHo", "st: x\r\n\r", "\n"],
        &["H", "EAD /size/1000 HTTP/1.", "1\r\nHost: x\r\n\r\n"],
    ];
    let mut statuses = Vec::new();
    for pieces in requests {
        for p in pieces {
            s.write_all(p.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let head = pieces[0].starts_with('H');
        statuses.extend(reader.read_exchange(head).unwrap().iter().map(|r| r.status));
    }
    assert_eq!(statuses, vec![200, 404, 200]);
    let pieces: u32 = requests.iter().map(|r| r.len() as u32).sum();
    assert_eq!(data_segments_out(&s), pieces, "each piece in its own segment");
    drop(reader);
    assert!(scripted::finish(s).unwrap().is_empty());
    assert_proxy_log(&lab, client_end, &statuses);

    let snap = lab.wait_settled("the raw client's connection", 1, 3, 3, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(3, &statuses, 0));
    assert_recent(c, h, &[(200, "GET", "/ok"), (404, "GET", "/status/404"), (200, "HEAD", "/size/1000")]);
    assert_outbound_nginx(&lab, 3);
    assert_metrics(&lab.metrics(), "inbound", 80, 3, &statuses, 0);
}

#[test]
fn heads_spanning_many_segments_are_counted_once() {
    const TEST: &str = "heads_spanning_many_segments_are_counted_once";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    // Request heads of about 21 KB through nginx (each field under its 8 KB line limit), their
    // values made of status lines.
    let big: Vec<String> = (0..3).map(|i| format!("X-Big-{i}: {}", "HTTP/1.1 200 OK ".repeat(430))).collect();
    let with_big = |op: CurlOp| op.with(&["--header", &big[0], "--header", &big[1], "--header", &big[2]]);
    let ops = vec![
        with_big(CurlOp::get(url(proxy_v4(), "/ok"))),
        CurlOp::get(url(proxy_v4(), "/status/404")),
        with_big(CurlOp::get(url(proxy_v4(), "/size/100000"))),
        with_big(CurlOp::head(url(proxy_v4(), "/status/503"))),
    ];
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200, 404, 200, 503]);
    assert!(run.transfers[0].size_request > 20_000, "a big request head: {:?}", run.transfers[0]);
    assert_proxy_log(&lab, client_end, &codes);
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's connection", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(n, &codes, 0));
    assert_recent(c, h, &[(200, "GET", "/ok"), (404, "GET", "/status/404"), (200, "GET", "/size/100000"), (503, "HEAD", "/status/503")]);
    assert_outbound_nginx(&lab, ops.len());
    // A 21 KB request head is beyond what the kernel framer follows (16 KiB): it says so, by
    // reason, and the daemon's framer counted the connection exactly all the same.
    assert_kernel_lost(&lab, c, "head_too_long");

    // Response heads of up to 20 KB from a scripted server, on one keep-alive connection.
    let server = gateway_server(&lab, script);
    let ops = vec![
        CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/bighead/200/20000")),
        CurlOp::head(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/bighead/404/9000")),
        with_big(CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/bighead/500/20000"))),
        CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/status/200")),
    ];
    let direct = curl_ok(&lab, &ops);
    let direct_end = one_connection(&direct);
    assert!(direct.transfers[0].size_header > 19_000, "a big response head: {:?}", direct.transfers[0]);
    let served = served_to(&server, direct_end);
    let direct_codes: Vec<u16> = served.iter().map(|s| s.status).collect();
    assert_eq!(direct.status_lines, direct_codes);
    let snap = lab.wait_settled("the connection to the scripted server", 1, 4, 4, |c| c.remote_addr() == direct_end);
    let c = entry_of(&snap, direct_end);
    let h = assert_http(&lab, c, &expected_window(4, &direct_codes, 0));
    assert_recent(c, h, &recent_of(&served));

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "inbound", GATEWAY_SCRIPTED_PORT, 4, &direct_codes, 0);
}

#[test]
fn retransmitted_segments_are_counted_once() {
    const TEST: &str = "retransmitted_segments_are_counted_once";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    // The gateway loses segments it sends to the client: a token bucket with a short queue drops
    // what overflows it (this kernel has no netem). The qdisc runs after the observer's tc hook,
    // so the observer sees both the lost segments and their retransmissions.
    lab.topo.gateway.run("tc", ["qdisc", "add", "dev", GW_CLIENT_IF, "root", "tbf", "rate", "20mbit", "burst", "20kb", "limit", "40kb"]);
    let retransmitted_before = lab.topo.gateway.tcp_retransmitted_segments();
    let cycle: &[(&str, u16)] = &[
        ("/size/100000", 200),
        ("/status/404", 404),
        ("/size/1000000", 200),
        ("/status/503", 503),
        ("/ok", 200),
        ("/size/10000", 200),
        ("/status/204", 204),
        ("/redirect", 301),
    ];
    let mix: Vec<(&str, u16)> = cycle.iter().copied().cycle().take(24).collect();
    let ops: Vec<CurlOp> = mix.iter().map(|(p, _)| CurlOp::get(url(proxy_v4(), p))).collect();
    let run = curl_ok_within(&lab, &ops, Duration::from_secs(120));
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, mix.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    assert_proxy_log(&lab, client_end, &codes);
    let retransmitted = lab.topo.gateway.tcp_retransmitted_segments() - retransmitted_before;
    assert!(retransmitted > 0, "the gateway retransmitted nothing: the loss did not happen");

    let n = mix.len() as u64;
    let snap = lab.wait_settled_for("the lossy keep-alive connection", Duration::from_secs(30), 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    assert!(c.retransmitted_segments_out > 0, "the observer saw retransmissions: {c:?}");
    eprintln!(
        "{TEST}: the gateway retransmitted {retransmitted} segments; the observer saw {} retransmitted segments out on {}",
        c.retransmitted_segments_out, c.connection
    );
    let h = assert_http(&lab, c, &expected_window(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = mix.iter().map(|(p, s)| (*s, "GET", *p)).collect();
    assert_recent(c, h, &want);
    assert_outbound_nginx(&lab, mix.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_eq!(m.count("observer_http_framing_lost_total", &[]), 0, "framing never lost its place");
}
