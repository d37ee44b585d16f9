//! Slow upstreams, end to end: the latency the gateway measures spans the upstream's delay and fits
//! in what curl measured, and requests the client gives up on before the answer comes are counted
//! unanswered, on both sides of the proxy.
//!
//! Ground truth, and how entries are matched to it: see `observer_tests::http_lab`.
use std::{
    io::{self, Read, Write},
    net::SocketAddr,
    time::Duration,
};

use observer_tests::{
    http_lab::{
        assert_http, assert_metrics, assert_proxy_log, assert_recent, curl_ok, entry_of, one_connection, pick, proxy_v4, upstream_scripted, url, HttpLab,
        UPSTREAM_SCRIPTED_PORT,
    },
    http_view::expected_window,
    root_or_skip,
    scripted::{close_with_reset, connect, curl_each, CurlOp},
    ConnectionExt,
};

#[test]
fn requests_the_client_gives_up_on_are_counted_unanswered() {
    const TEST: &str = "requests_the_client_gives_up_on_are_counted_unanswered";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    // curl gives up after 1 s on an upstream that would answer after 5 s.
    let run = curl_each(&lab.topo.client, &[CurlOp::get(url(proxy_v4(), "/scripted/delay/5000"))], Duration::from_secs(1));
    assert_eq!(run.status.code(), Some(28), "curl times out:\n{}", run.stderr);
    assert!(run.status_lines.is_empty(), "curl received no status line:\n{}", run.stderr);
    let curl_end = run.transfers[0].local;
    // A raw client waits half a second for an answer, then resets the connection.
    let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
    let raw_end = s.local_addr().unwrap();
    s.write_all(b"GET /scripted/delay/5000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let err = s.read(&mut [0u8; 1]).expect_err("no answer within 500 ms");
    assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err}");
    close_with_reset(s);

    for end in [curl_end, raw_end] {
        assert_proxy_log(&lab, end, &[499]);
        let snap = lab.wait_settled("the abandoned connection", 1, 1, 1, |c| c.remote_addr() == end);
        let c = entry_of(&snap, end);
        let h = assert_http(&lab, c, &expected_window(1, &[], 1));
        assert_eq!((h.lifetime.failed, h.lifetime.error_ratio), (1, 1.0));
        assert_eq!(h.last_status, None);
        assert_recent(c, h, &[]);
    }
    // nginx gave up on the upstream too: its requests went unanswered.
    let snap = lab.wait_settled("the abandoned upstream connections", 2, 2, 2, |c| c.remote_addr() == upstream_scripted());
    for c in pick(&snap, |c| c.remote_addr() == upstream_scripted()) {
        let h = assert_http(&lab, c, &expected_window(1, &[], 1));
        assert_recent(c, h, &[]);
    }
    assert_eq!(lab.scripted.served(), vec![], "the scripted upstream never answered");
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, 2, &[], 2);
    assert_metrics(&m, "outbound", UPSTREAM_SCRIPTED_PORT, 2, &[], 2);
}

#[test]
fn latency_spans_the_upstream_delay() {
    const TEST: &str = "latency_spans_the_upstream_delay";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    const DELAY_MS: f64 = 400.0;
    let paths = ["/scripted/delay/400", "/ok", "/scripted/delay/400"];
    let ops: Vec<CurlOp> = paths.iter().map(|p| CurlOp::get(url(proxy_v4(), p))).collect();
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    assert_eq!(run.status_lines, vec![200, 200, 200]);
    let snap = lab.wait_settled("the client's keep-alive connection", 1, 3, 3, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &expected_window(3, &[200, 200, 200], 0));
    assert_recent(c, h, &[(200, "GET", paths[0]), (200, "GET", paths[1]), (200, "GET", paths[2])]);
    let inbound: Vec<f64> = h.recent.iter().map(|e| e.latency_ms.unwrap()).collect();
    // The gateway sees the request after curl sent it and the response before curl gets it. On a
    // reused connection curl takes its "connected" time when it picks the connection, which can
    // fall just after it handed the request to the kernel: allow it 2 ms of slack.
    for (i, ((connected, start), l)) in run.times.iter().zip(&inbound).enumerate() {
        let client_ms = (start - connected) * 1e3;
        assert!(*l <= client_ms + 2.0, "exchange {i}: the observer's latency {l} ms exceeds what curl measured, {client_ms} ms");
    }
    // And the upstream delayed its answer by DELAY_MS after reading the request.
    let snap = lab.wait_settled("the delayed upstream connections", 2, 2, 2, |c| c.remote_addr() == upstream_scripted());
    let mut outbound: Vec<(f64, f64)> = pick(&snap, |c| c.remote_addr() == upstream_scripted())
        .iter()
        .map(|c| {
            let h = assert_http(&lab, c, &expected_window(1, &[200], 0));
            (c.first_seen, h.recent[0].latency_ms.unwrap())
        })
        .collect();
    outbound.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (i, (o, l)) in [(0, inbound[0]), (1, inbound[2])].iter().enumerate() {
        let up = outbound[*o].1;
        assert!(up >= DELAY_MS, "upstream exchange {i}: latency {up} ms < the {DELAY_MS} ms delay");
        assert!(up <= *l, "upstream exchange {i}: latency {up} ms > the inbound one it is nested in, {l} ms");
    }
    assert!(inbound[1] < DELAY_MS, "the undelayed exchange: {} ms", inbound[1]);

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, 3, &[200, 200, 200], 0);
    assert_metrics(&m, "outbound", UPSTREAM_SCRIPTED_PORT, 2, &[200, 200], 0);
    assert_metrics(&m, "outbound", 80, 1, &[200], 0);
    let l = [("role", "inbound"), ("port", "80"), ("class", "2xx")];
    let sum = m.value("observer_http_response_latency_seconds_sum", &l);
    let expected_sum: f64 = inbound.iter().sum::<f64>() / 1e3;
    assert!((sum - expected_sum).abs() < 1e-6, "latency histogram sum {sum} s vs the recent latencies' {expected_sum} s");
    for le in ["0.25", "0.5", "1", "+Inf"] {
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().unwrap() * 1e3 };
        let within = inbound.iter().filter(|l| **l <= bound).count() as u64;
        let labels = [("role", "inbound"), ("port", "80"), ("class", "2xx"), ("le", le)];
        assert_eq!(m.count("observer_http_response_latency_seconds_bucket", &labels), within, "bucket le={le} vs latencies {inbound:?}");
    }
}
