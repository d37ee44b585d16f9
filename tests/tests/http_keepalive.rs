//! HTTP/1.x counting on keep-alive connections, end to end: a mix of every status class and of
//! bodies from 0 B to 5 MB on one connection, over IPv4 and over IPv6 (both sides of the proxy),
//! and pipelining: requests in one write, deeper than the kernel framer's queue, and responses that
//! share segments (every kind of response framing answered in one write). Every connection's
//! `http` counts (requests, responses per class, unanswered, failed, error ratio, last status,
//! recent exchanges in order, latency) and the HTTP metrics are exact.
//!
//! Ground truth, and how entries are matched to it: see `observer_tests::http_lab`.
use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
};

use observer::model::{ConnStatus, Family, Role};
use observer_tests::{
    addr,
    http_lab::{
        assert_http, assert_kernel_lost, assert_metrics, assert_outbound_nginx, assert_outbound_nginx_at, assert_proxy_log, assert_recent, batch_script,
        curl_ok, entry_of, gateway_server, mix_ops, one_connection, proxy_v4, recent_of, request_of, served_to, HttpLab, GATEWAY_SCRIPTED_PORT, MIX, SETTLE,
    },
    http_view::{assert_window, expected_window, WindowExt},
    root_or_skip,
    scripted::{self, connect, data_segments_out, ResponseReader},
    ConnectionExt,
};

/// The keep-alive mix over one connection to the proxy at `server`: the inbound entry's counts,
/// last status and recent exchanges equal what curl got and what the proxy logged; every
/// proxied request's outbound entry equals the upstream's log; the metrics agree. With `ipv6`,
/// the proxy reaches the upstream over IPv6 too.
fn keepalive_mix(lab: &HttpLab, server: IpAddr, family: Family, ipv6: bool) {
    lab.add_size(5_000_000);
    let prefix = if ipv6 { "/v6" } else { "" };
    let ops = mix_ops(lab, server, prefix);
    let run = curl_ok(lab, &ops);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, MIX.iter().map(|(_, c)| *c).collect::<Vec<_>>(), "the lab answers the mix as designed");
    assert_eq!(run.status_lines, codes, "no interim responses in the mix");
    let client_end = one_connection(&run);
    for (t, (p, code)) in run.transfers.iter().zip(MIX) {
        if let (Some(n), 200) = (p.strip_prefix("/size/"), code) {
            assert_eq!(t.size_download, n.parse::<u64>().unwrap(), "body of {p}");
        }
    }
    assert_proxy_log(lab, client_end, &codes);

    let n = MIX.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    assert_eq!(c.local_addr(), SocketAddr::new(server, 80));
    assert_eq!((c.family, c.role), (family, Role::Inbound));
    let h = assert_http(lab, c, &expected_window(n, &codes, 0));
    assert_eq!(h.last_status, Some(*codes.last().unwrap()), "last_status");
    let targets: Vec<String> = MIX.iter().map(|(p, _)| format!("{prefix}{p}")).collect();
    let want: Vec<(u16, &str, &str)> = MIX.iter().zip(&targets).map(|((_, s), t)| (*s, "GET", t.as_str())).collect();
    assert_recent(c, h, &want);

    // nginx proxies the requests one after another: the upstream saw them in the client's order.
    let upstream = if ipv6 {
        assert_outbound_nginx_at(lab, MIX.len(), SocketAddr::new(addr::UPSTREAM_V6.into(), 80), addr::GATEWAY_UPSTREAM_SIDE_V6.into())
    } else {
        assert_outbound_nginx(lab, MIX.len())
    };
    assert_eq!(upstream.iter().map(|e| e.status).collect::<Vec<_>>(), codes, "statuses in the upstream's log");
    assert_eq!(upstream.iter().map(|e| request_of(e).1).collect::<Vec<_>>(), MIX.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>());

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
}

#[test]
fn keepalive_mix_counts_every_status_class_exactly() {
    const TEST: &str = "keepalive_mix_counts_every_status_class_exactly";
    if root_or_skip(TEST) {
        let lab = HttpLab::start(TEST);
        keepalive_mix(&lab, proxy_v4(), Family::Ipv4, false);
    }
}

#[test]
fn keepalive_mix_over_ipv6_counts_every_status_class_exactly() {
    const TEST: &str = "keepalive_mix_over_ipv6_counts_every_status_class_exactly";
    if root_or_skip(TEST) {
        let lab = HttpLab::start(TEST);
        keepalive_mix(&lab, addr::GATEWAY_CLIENT_SIDE_V6.into(), Family::Ipv6, true);
    }
}

#[test]
fn pipelined_requests_in_one_write_are_counted_once_each_in_order() {
    const TEST: &str = "pipelined_requests_in_one_write_are_counted_once_each_in_order";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let requests: &[(&str, &str, &str)] = &[
        ("GET", "/ok", ""),
        ("HEAD", "/size/100000", ""),
        ("GET", "/status/404", ""),
        ("GET", "/size/10000", ""),
        ("POST", "/ok", "hello=world"),
        ("GET", "/status/503", ""),
        ("HEAD", "/status/204", ""),
        ("GET", "/redirect", ""),
        ("GET", "/size/100000", ""),
        ("HEAD", "/ok", ""),
        ("GET", "/status/429", ""),
    ];
    let mut all = Vec::new();
    for (m, t, body) in requests {
        let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
        all.extend(format!("{m} {t} HTTP/1.1\r\nHost: x\r\n{length}\r\n{body}").into_bytes());
    }
    let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
    let client_end = s.local_addr().unwrap();
    s.write_all(&all).unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let mut statuses = Vec::new();
    for (m, t, _) in requests {
        let exchange = reader.read_exchange(*m == "HEAD").unwrap_or_else(|e| panic!("the response to {m} {t}: {e}"));
        statuses.extend(exchange.iter().map(|r| r.status));
    }
    assert_eq!(statuses, vec![200, 200, 404, 200, 200, 503, 204, 301, 200, 200, 429], "what the raw client received");
    assert!(reader.buffered().is_empty(), "nothing after the last response");
    assert_eq!(data_segments_out(&s), 1, "the requests left in one segment ({} bytes)", all.len());
    assert_proxy_log(&lab, client_end, &statuses);

    // While the connection is still open: everything answered, nothing in flight.
    let n = requests.len() as u64;
    let snap = lab.observer.wait_for("the open pipelined connection with every response counted", SETTLE, |s| {
        s.with_remote(client_end).first().and_then(|c| c.http.as_ref()).is_some_and(|h| h.lifetime.counts.requests >= n && h.lifetime.responses() >= n)
    });
    let c = entry_of(&snap, client_end);
    assert_eq!(c.status, ConnStatus::Open);
    let h = c.http.as_ref().unwrap();
    assert_window(&h.lifetime, &expected_window(n, &statuses, 0), "the open connection's counts");
    assert_eq!(h.in_flight, 0, "the open connection's requests in flight");
    drop(reader);
    let rest = scripted::finish(s).unwrap();
    assert!(rest.is_empty(), "the proxy sent nothing more: {:?}", String::from_utf8_lossy(&rest));

    let snap = lab.wait_settled("the pipelined connection, closed", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(n, &statuses, 0));
    let want: Vec<(u16, &str, &str)> = requests.iter().zip(&statuses).map(|((m, t, _), s)| (*s, *m, *t)).collect();
    assert_recent(c, h, &want);
    assert_outbound_nginx(&lab, requests.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &statuses, 0);
    assert_metrics(&m, "outbound", 80, n, &statuses, 0);
    // Eleven requests in one write are deeper than the kernel framer's queue (8): it counted
    // eight, handed the requests over at the ninth's first byte, and the responses at the first
    // one it had no request for; the daemon's framer took both over there (exact counts above).
    assert_kernel_lost(&lab, c, "pipeline_too_deep");
    let k = c.http_kernel.as_ref().unwrap();
    assert_eq!((k.lost_out.as_deref(), k.requests), (Some("unpaired"), 8), "{k:?}");
}

#[test]
fn pipelined_responses_sharing_segments_are_counted_each_in_order() {
    const TEST: &str = "pipelined_responses_sharing_segments_are_counted_each_in_order";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let server = gateway_server(&lab, batch_script);
    // Every kind of response framing, answered together in one write.
    let requests: &[(&str, &str, &str)] = &[
        ("GET", "/status/200", ""),
        ("HEAD", "/chunked/200/3/10", ""),
        ("GET", "/status/304", ""),
        ("GET", "/chunked/404/2/5", ""),
        ("HEAD", "/status/200", ""),
        ("GET", "/status/204", ""),
        ("POST", "/status/201", "x=1&y=GET / HTTP/1.1"),
        ("GET", "/bighead/200/3000", ""),
        ("GET", "/chunked/500/0/0", ""),
        ("GET", "/status/503", ""),
        ("GET", "/until-close/200/100", ""),
    ];
    let mut all = Vec::new();
    for (m, t, body) in requests {
        let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
        all.extend(format!("{m} {t} HTTP/1.1\r\nHost: x\r\n{length}\r\n{body}").into_bytes());
    }
    let mut s = connect(&lab.topo.client, server.addr);
    let client_end = s.local_addr().unwrap();
    s.write_all(&all).unwrap();
    assert_eq!(data_segments_out(&s), 1, "the requests left in one segment ({} bytes)", all.len());
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let mut statuses = Vec::new();
    for (m, t, _) in requests {
        let exchange = reader.read_exchange(*m == "HEAD").unwrap_or_else(|e| panic!("the response to {m} {t}: {e}"));
        statuses.extend(exchange.iter().map(|r| r.status));
    }
    assert_eq!(statuses, vec![200, 200, 304, 404, 200, 204, 201, 200, 500, 503, 200], "what the raw client received");
    drop(reader);
    drop(s);
    let served = served_to(&server, client_end);
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), statuses, "what the server wrote");

    let n = requests.len() as u64;
    let snap = lab.wait_settled("the pipelined connection", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(n, &statuses, 0));
    assert_eq!(h.last_status, Some(200));
    assert_recent(c, h, &recent_of(&served));
    assert_metrics(&lab.metrics(), "inbound", GATEWAY_SCRIPTED_PORT, n, &statuses, 0);
}
