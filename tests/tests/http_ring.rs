//! The payload ring under pressure, and the kernel's HTTP framing against the daemon's, end to
//! end: exchanges after multi-megabyte bodies are counted, a ring too small for payload loses
//! nothing while the kernel frames, a stalled daemon loses message records yet `/metrics` (the
//! kernel's aggregates) stays exact, and with the daemon framing, payload the ring could not hold
//! is reported on its connection.
//!
//! Ground truth, and how entries are matched to it: see `observer_tests::http_lab`.
use std::{collections::BTreeMap, time::Duration};

use observer::http::WindowView;
use observer_tests::{
    addr,
    http_lab::{
        assert_http, assert_metrics, assert_outbound_nginx, assert_proxy_log, assert_recent, curl_ok, entry_of, one_connection, pick, proxy_v4, upstream_http,
        upstream_log, url, HttpLab, SETTLE,
    },
    http_view::{expected_window, settled, WindowExt},
    poll, root_or_skip,
    scripted::{curl_each, CurlOp},
    Connection, ConnectionExt,
};

/// A keep-alive sequence through the proxy: each of `big` bodies followed by small exchanges of
/// every class. Returns the operations and their expected statuses.
fn big_then_small(big: &[u64]) -> Vec<(String, u16)> {
    let mut paths = Vec::new();
    for b in big {
        paths.push((format!("/size/{b}"), 200));
        for (p, code) in [("/ok", 200), ("/status/404", 404), ("/status/503", 503), ("/redirect", 301), ("/size/100", 200), ("/status/204", 204)] {
            paths.push((p.to_owned(), code));
        }
    }
    paths
}

/// Big bodies then small exchanges on one keep-alive connection through the proxy, each
/// counted exactly on both sides of the proxy.
fn big_then_small_exchanges_count_exactly(lab: &HttpLab, big: &[u64]) {
    let seq = big_then_small(big);
    let ops: Vec<CurlOp> = seq.iter().map(|(p, _)| CurlOp::get(url(proxy_v4(), p))).collect();
    let run = curl_ok(lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, seq.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    assert_proxy_log(lab, client_end, &codes);
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote_addr() == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(lab, c, &expected_window(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = seq.iter().map(|(p, s)| (*s, "GET", p.as_str())).collect();
    assert_recent(c, h, &want);
    assert_outbound_nginx(lab, ops.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
}

/// Megabytes of body cross the wire faster than the daemon drains its payload ring (default
/// size); the exchanges after them must still count.
#[test]
fn exchanges_after_multi_megabyte_bodies_are_counted() {
    const TEST: &str = "exchanges_after_multi_megabyte_bodies_are_counted";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    lab.add_size(5_000_000);
    lab.add_size(10_000_000);
    big_then_small_exchanges_count_exactly(&lab, &[10_000_000, 5_000_000, 10_000_000]);
}

/// An 8 KiB ring (the next test overflows it with payload), HTTP framed in the kernel: only one
/// small record per message goes through the ring, nothing is lost, every count is exact.
#[test]
fn a_ring_too_small_for_payload_loses_nothing_when_the_kernel_frames() {
    const TEST: &str = "a_ring_too_small_for_payload_loses_nothing_when_the_kernel_frames";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start_with(TEST, &["--payload-kib", "8"]);
    big_then_small_exchanges_count_exactly(&lab, &[1_000_000, 1_000_000, 1_000_000]);
    assert_eq!(lab.metrics().count("observer_payload_records_lost_total", &[]), 0, "records lost");
}

/// `/metrics` counts requests and responses from the kernel's own aggregates: a daemon that
/// stalls (stopped here, so that nothing drains an 8 KiB ring) loses message records, yet the
/// aggregates stay exact, and so do the kernel's per-connection counts. Only what the records
/// carry is short (the views, which say so, and latency observations).
#[test]
fn a_stalled_daemon_loses_message_records_yet_metrics_stay_exact() {
    const TEST: &str = "a_stalled_daemon_loses_message_records_yet_metrics_stay_exact";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start_with(TEST, &["--payload-kib", "8"]);
    let cycle: &[(&str, u16)] = &[("/ok", 200), ("/status/404", 404), ("/status/503", 503), ("/redirect", 301), ("/size/100", 200), ("/status/204", 204)];
    let mix: Vec<(&str, u16)> = cycle.iter().copied().cycle().take(120).collect();
    let ops: Vec<CurlOp> = mix.iter().map(|(p, _)| CurlOp::get(url(proxy_v4(), p))).collect();
    let pid = lab.observer.pid() as libc::pid_t;
    // SAFETY: signals to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "stopping the daemon");
    let run = curl_each(&lab.topo.client, &ops, Duration::from_secs(60));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "resuming the daemon");
    assert!(run.status.success(), "curl failed: {:?}", run.status);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, mix.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    assert_proxy_log(&lab, client_end, &codes);
    let n = mix.len() as u64;

    let snap = lab.observer.wait_for("the client's connection, settled", SETTLE, |s| s.with_remote(client_end).first().is_some_and(|c| settled(c)));
    let c = entry_of(&snap, client_end);
    let k = c.http_kernel.as_ref().expect("http_kernel");
    let by_class = |class: u16| codes.iter().filter(|s| **s / 100 == class).count() as u64;
    let r = &k.responses;
    let kernel = vec![r.informational, r.success, r.redirection, r.client_error, r.server_error];
    assert_eq!(
        (k.requests, kernel, k.lost_in.clone(), k.lost_out.clone()),
        (n, (1..=5).map(by_class).collect(), None, None),
        "the kernel's counts of {}",
        c.connection
    );

    let m = lab.metrics();
    assert!(m.count("observer_payload_records_lost_total", &[]) > 0, "the ring lost no record: the scenario did not happen");
    for role in ["inbound", "outbound"] {
        let l = [("role", role), ("port", "80")];
        assert_eq!(m.count("observer_http_requests_total", &l), n, "observer_http_requests_total{l:?}");
        let mut by_code: BTreeMap<u16, u64> = BTreeMap::new();
        for s in &codes {
            *by_code.entry(*s).or_default() += 1;
        }
        for (code, want) in &by_code {
            let (code, class) = (code.to_string(), format!("{}xx", code / 100));
            let labels = [("role", role), ("port", "80"), ("class", class.as_str()), ("code", code.as_str())];
            assert_eq!(m.count("observer_http_responses_total", &labels), *want, "observer_http_responses_total{labels:?}");
        }
        assert_eq!(m.count("observer_http_requests_unanswered_total", &l), 0, "unanswered{l:?}");
        let observed = m.count("observer_http_response_latency_seconds_count", &l);
        assert!(observed <= n, "latency observations {observed} (from the records that arrived) of {n} responses");
    }
    assert_eq!(m.count("observer_http_kernel_aggregates_full_total", &[]), 0);
}

#[test]
fn payload_lost_to_a_full_ring_is_reported_on_its_connection() {
    const TEST: &str = "payload_lost_to_a_full_ring_is_reported_on_its_connection";
    if !root_or_skip(TEST) {
        return;
    }
    // A ring of 8 KiB holds at most one full record: megabyte bodies overflow it before the daemon
    // drains it, however quickly it is woken. (The daemon's framer: with the kernel's, bodies never
    // travel, see the next test.)
    let lab = HttpLab::start_with(TEST, &["--payload-kib", "8", "--http-framing", "daemon"]);
    let seq = big_then_small(&[1_000_000, 1_000_000, 1_000_000]);
    let ops: Vec<CurlOp> = seq.iter().map(|(p, _)| CurlOp::get(url(proxy_v4(), p))).collect();
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, seq.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    assert_proxy_log(&lab, client_end, &codes);
    let upstream = upstream_log(&lab, ops.len(), addr::GATEWAY_UPSTREAM_SIDE_V4.into());

    // Everything has closed: wait for the entries (their counts may fall short).
    let n = ops.len();
    let snap = lab.observer.wait_for("every connection of the test, settled", SETTLE, |s| {
        s.with_remote(client_end).first().is_some_and(|c| settled(c)) && pick(s, |c| c.remote_addr() == upstream_http() && settled(c)).len() >= n
    });
    let m = lab.metrics();
    let lost = m.count("observer_payload_records_lost_total", &[]);
    assert!(lost > 0, "the ring lost no record: the scenario did not happen");
    // Each connection either has exactly its ground truth, or says that its framing lost its
    // place. (A connection whose every record was lost has no http object: nothing to say.)
    let mut short = Vec::new();
    let mut check = |c: &Connection, expected: WindowView| {
        let Some(h) = c.http.as_ref() else { return };
        if !h.lifetime.same_as(&expected) {
            short.push(format!("{}: counted {:?} of {:?}, framing_lost {}, in_sync {}", c.connection, h.lifetime, expected, h.framing_lost, h.in_sync));
            assert!(
                h.framing_lost > 0 || !h.in_sync,
                "{} misses exchanges yet says its framing never lost its place: {h:?}\nground truth {expected:?}; {lost} payload records lost",
                c.connection
            );
        }
    };
    check(entry_of(&snap, client_end), expected_window(n as u64, &codes, 0));
    for e in &upstream {
        if let Some(c) = pick(&snap, |c| c.remote_addr() == upstream_http() && c.local_addr().port() == e.remote_port).first() {
            check(c, expected_window(1, &[e.status], 0));
        }
    }
    if !short.is_empty() {
        // The loss is counted when a closed connection is finalised (a moment after its close).
        let counted = poll(SETTLE, Duration::from_millis(100), || (lab.metrics().count("observer_http_framing_lost_total", &[]) > 0).then_some(()));
        assert!(counted.is_some(), "connections fell short, yet observer_http_framing_lost_total stays 0:\n{}", short.join("\n"));
    }
}
