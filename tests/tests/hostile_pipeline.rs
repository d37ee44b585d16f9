//! A pipeline of 10,000 requests on one connection (as long as nginx's `keepalive_requests`), its
//! responses read while the requests still go out: every exchange counted exactly, per connection
//! and in `/metrics`.
//!
//! Ground truth: what the raw client sent and received (its own response framing) and the
//! proxy's access log.
use std::{
    io::{Read, Write},
    time::Instant,
};

use observer_tests::{
    addr::proxy_v4 as proxy,
    hostile_lab::{by_code, check_http, metric_counts, only_entry, wait_ok, SETTLE},
    http_view::{settled, Metrics},
    root_or_skip,
    scripted::{self, ResponseReader},
    Nginx, Observer, Topology,
};

/// Paths and what the upstream of [`Lab`] answers: every class the pipeline carries.
const PIPELINE_MIX: &[(&str, u16)] =
    &[("/ok", 200), ("/status/404", 404), ("/status/503", 503), ("/status/204", 204), ("/size/100", 200), ("/status/429", 429), ("/status/201", 201)];

/// nginx's `keepalive_requests` in the harness (tests/src/nginx.rs): after the 10,000th request
/// on a connection it answers with `Connection: close` and closes. The pipeline is exactly that
/// long: every request is answered and nginx closes the connection cleanly after the last one
/// (one more would be left unread and turn its close into a reset).
const PIPELINE: usize = 10_000;

#[test]
fn ten_thousand_pipelined_requests_on_one_connection_are_counted_exactly() {
    const TEST: &str = "ten_thousand_pipelined_requests_on_one_connection_are_counted_exactly";
    if !root_or_skip(TEST) {
        return;
    }
    let started = Instant::now();
    // The proxy keeps its upstream connections alive (HTTP/1.1 pool): the pipeline costs one
    // upstream connection, not 10,000. Locals drop in reverse: the observer stops first.
    let topo = Topology::new(TEST);
    let _upstream = Nginx::upstream(&topo);
    let proxy_nginx = Nginx::proxy_keepalive(&topo);
    let observer = Observer::start(&topo);

    let plan: Vec<(&str, u16)> = PIPELINE_MIX.iter().copied().cycle().take(PIPELINE).collect();
    let mut wire = Vec::new();
    for (p, _) in &plan {
        wire.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: gateway\r\n\r\n").as_bytes());
    }
    let mut s = scripted::connect(&topo.client, proxy());
    let client_end = s.local_addr().unwrap();
    // Responses are read on another thread while the requests go out, so that neither side
    // blocks on a full window.
    let reader = {
        let r = s.try_clone().unwrap();
        std::thread::spawn(move || -> Result<(Vec<u16>, Vec<u8>), String> {
            let mut rr = ResponseReader::new(r);
            let mut statuses = Vec::with_capacity(PIPELINE);
            for i in 0..PIPELINE {
                let ex = rr.read_exchange(false).map_err(|e| format!("response {i}: {e}"))?;
                statuses.extend(ex.iter().map(|r| r.status));
            }
            let mut rest = rr.buffered().to_vec();
            rr.inner.read_to_end(&mut rest).map_err(|e| format!("after the last response: {e}"))?;
            Ok((statuses, rest))
        })
    };
    for chunk in wire.chunks(wire.len().div_ceil(4)) {
        s.write_all(chunk).expect("writing the pipeline");
    }
    let (statuses, rest) = reader.join().expect("the reader thread").unwrap_or_else(|e| panic!("reading the pipeline's responses: {e}"));
    let wanted: Vec<u16> = plan.iter().map(|(_, c)| *c).collect();
    assert_eq!(statuses.len(), PIPELINE, "one response per request");
    assert!(statuses == wanted, "the statuses the client received differ from the plan");
    assert!(rest.is_empty(), "nginx sent {} bytes after the last response", rest.len());
    drop(s);
    let log = proxy_nginx.wait_for_log("the whole pipeline", SETTLE, |l| l.entries.iter().filter(|e| e.remote() == client_end).count() >= PIPELINE);
    assert_eq!(log.entries.iter().filter(|e| e.remote() == client_end).count(), PIPELINE, "the proxy logged every request once");
    let sent_at = started.elapsed();

    let n = PIPELINE as u64;
    let view = wait_ok("the pipelined connection, settled with exact counts", || {
        let snap = observer.connections();
        let c = only_entry(&snap, client_end)?;
        if !settled(c) {
            return Err(format!("{} not settled yet", c.connection));
        }
        check_http(c, n, &statuses).map(|v| (v, c.http_kernel.clone()))
    });
    eprintln!("{TEST}: checked {}; http_kernel {:?}", view.0, view.1);
    let codes: Vec<u16> = PIPELINE_MIX.iter().map(|(_, c)| *c).collect();
    for role in ["inbound", "outbound"] {
        wait_ok(&format!("/metrics {role} counts"), || {
            let got = metric_counts(&Metrics::new(observer.metrics()), role, &codes);
            let want = (n, by_code(&statuses));
            if got == want {
                Ok(())
            } else {
                Err(format!("{role}: got {got:?}, want {want:?}"))
            }
        });
    }
    eprintln!("{TEST}: pipeline sent and answered in {sent_at:?}, all checked after {:?}", started.elapsed());
}
