//! The kernel's HTTP framer hands a direction to the daemon's framer where it cannot follow the
//! bytes exactly. Each reason is forced here on a real connection (a raw client and a scripted
//! server in the gateway namespace, the observer on the gateway): the hand-off is counted by reason
//! in `observer_http_fallback_total`, the connection's `http_kernel` names it, and the counts the
//! operator reads stay exact, before the fault and after it. The gap is a segment sent from a raw
//! socket ahead of the client's stream: the host keeps it out of order and never delivers it, so
//! it must never count, not even after the hole has stayed open longer than the daemon's gap
//! timeout (no record was lost: the hole is on the wire).
//!
//! Reasons forced elsewhere: `head_too_long` (http_segments.rs, heads spanning many segments),
//! `pipeline_too_deep` and `unpaired` (http_keepalive.rs, pipelined requests in one write),
//! `not_http` (http_not_http.rs, connections that are not HTTP).
use std::{
    collections::BTreeMap,
    io::{self, Write},
    net::SocketAddr,
    time::Duration,
};

use observer::model::ConnStatus;
use observer_tests::{
    addr::{self, GW_CLIENT_IF},
    http_view::{assert_window, expected_window, Metrics, WindowExt},
    root_or_skip,
    scripted::{self, connect, Peer, ResponseReader, ScriptedServer},
    tcp, Connection, ConnectionExt, Observer, Topology,
};

const PORT: u16 = 8082;
const SETTLE: Duration = Duration::from_secs(30);
/// How long the gap case keeps its hole open: more than the daemon's 1 s gap timeout.
const GAP_OPEN: Duration = Duration::from_millis(2500);

/// Answers by target, then keeps the connection, except after a broken answer (the client can no
/// longer know where the next response would start), which it closes:
/// - `/ok`: 200 with a body;
/// - `/broken/length`: 502 with `Content-Length: 5x`;
/// - `/broken/chunk`: 200, chunked, with a chunk size line that is not hexadecimal;
/// - `/broken/head`: 404 with a header line without a colon;
/// - `/big`: 200 with a 4 MB body;
/// - `/long-length`: 200 with a head of about 14 KB ([`long_length_value`]), in one write;
/// - a request with a transfer coding other than chunked: 501 (RFC 9112 section 6.1), and close.
fn server(p: &mut Peer) -> io::Result<()> {
    let long = long_length_value();
    let mut big = b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n".to_vec();
    big.resize(big.len() + 4_000_000, b'x');
    while let Some(req) = p.read_head()? {
        let coded = req.header("transfer-encoding").is_some();
        let (status, bytes, close): (u16, &[u8], bool) = match req.target.as_str() {
            "/long-length" => (200, long.as_bytes(), false),
            "/big" => (200, big.as_slice(), false),
            _ if coded => (501, b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", true),
            "/ok" => (200, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", false),
            "/broken/length" => (502, b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5x\r\n\r\nbroken", true),
            "/broken/chunk" => (200, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbroken\r\n0\r\n\r\n", true),
            "/broken/head" => (404, b"HTTP/1.1 404 Not Found\r\nNo colon here\r\nContent-Length: 0\r\n\r\n", true),
            _ => (404, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false),
        };
        p.respond(&req, status, bytes)?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// A response of about 14 KB, its head a Content-Length of 14,000 digits (leading zeros, then
/// 3): a value the kernel framer reads byte by byte, a turn each. Written at once, it leaves the
/// gateway as one GSO segment (what the egress hook sees) once the connection is up to speed (TCP
/// sizes GSO segments to about a millisecond of its pacing rate): more turns than one segment may
/// take (`MAX_STEPS`), while the head stays under its 16 KiB bound.
fn long_length_value() -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}3\r\n\r\nok\n", "0".repeat(14_000))
}

/// One case: what the client sends after a first good exchange, what it gets back, and what the
/// connection must show.
struct Case {
    name: &'static str,
    /// The target of the first exchange.
    first: &'static str,
    /// The request that forces the hand-off (one write).
    request: String,
    /// `request` goes in a segment of its own from a raw socket, 5000 bytes ahead of what the
    /// client sent so far: the gateway's stack keeps it out of order, never delivers it (the
    /// connection ends before), and never answers it; the framer meets a hole where a message
    /// starts.
    ahead: bool,
    /// The server keeps the connection after it: the client sends `/ok` requests, each answered
    /// before the next, up to `statuses.len()` exchanges (else the server closes at once).
    kept: bool,
    /// The statuses the client received, in order (the first exchange's 200 included).
    statuses: Vec<u16>,
    /// The reason in `http_kernel`: (requests direction, responses direction).
    lost: (Option<&'static str>, Option<&'static str>),
}

const OK: &str = "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn each_fallback_reason_is_counted_and_the_counts_stay_exact() {
    const TEST: &str = "each_fallback_reason_is_counted_and_the_counts_stay_exact";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    // TCP sizes a GSO segment to about a millisecond of its pacing rate, at least this many
    // segments: on a loaded machine the rate alone may cut the long response in two.
    topo.gateway.run("sysctl", ["-q", "-w", "net.ipv4.tcp_min_tso_segs=44"]);
    let at = SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), PORT);
    let scripted = ScriptedServer::start(&topo.gateway, at, server);
    let observer = Observer::start_with(&topo, &[GW_CLIENT_IF], &[]);
    let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    let cases = [
        Case {
            name: "bad_length",
            first: "/ok",
            request: get("/broken/length"),
            ahead: false,
            kept: false,
            statuses: vec![200, 502],
            lost: (None, Some("bad_length")),
        },
        Case {
            name: "bad_chunk",
            first: "/ok",
            request: get("/broken/chunk"),
            ahead: false,
            kept: false,
            statuses: vec![200, 200],
            lost: (None, Some("bad_chunk")),
        },
        Case {
            name: "bad_head",
            first: "/ok",
            request: get("/broken/head"),
            ahead: false,
            kept: false,
            statuses: vec![200, 404],
            lost: (None, Some("bad_head")),
        },
        Case {
            name: "unknown_coding",
            first: "/ok",
            request: "POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
            ahead: false,
            kept: false,
            statuses: vec![200, 501],
            lost: (Some("unknown_coding"), None),
        },
        // The responses direction is lost in the middle of a head (after a 4 MB response that
        // brings the connection up to speed): the daemon's framer takes it from there, and finds
        // the next response where it starts.
        Case {
            name: "budget",
            first: "/big",
            request: get("/long-length"),
            ahead: false,
            kept: true,
            statuses: vec![200, 200, 200],
            lost: (None, Some("budget")),
        },
        // A hole where the next request starts: the daemon's framer takes the requests from
        // there, and the responses from the first one the kernel has no request for.
        Case {
            name: "gap",
            first: "/ok",
            request: get("/injected"),
            ahead: true,
            kept: true,
            statuses: vec![200, 200, 200],
            lost: (Some("gap"), Some("unpaired")),
        },
    ];
    let mut ends: Vec<(SocketAddr, &Case)> = Vec::new();
    for case in &cases {
        let mut s = connect(&topo.client, at);
        ends.push((s.local_addr().unwrap(), case));
        let mut reader = ResponseReader::new(s.try_clone().unwrap());
        s.write_all(get(case.first).as_bytes()).unwrap();
        let first = reader.read_exchange(false).unwrap_or_else(|e| panic!("{}: the first response: {e}", case.name));
        assert_eq!(first.iter().map(|r| r.status).collect::<Vec<_>>(), vec![200]);
        if case.ahead {
            let (snd, rcv) = tcp::sequence_numbers(&s).expect("the client's sequence numbers (TCP_REPAIR)");
            let (SocketAddr::V4(from), SocketAddr::V4(to)) = (s.local_addr().unwrap(), at) else { unreachable!("IPv4") };
            tcp::send_raw_segment(&topo.client, from, to, snd.wrapping_add(5000), rcv, case.request.as_bytes()).expect("a raw segment");
            // The hole stays open longer than the daemon's gap timeout: with no record lost, it
            // is a hole on the wire, and the bytes behind it must wait (never be framed).
            std::thread::sleep(GAP_OPEN);
        } else {
            s.write_all(case.request.as_bytes()).unwrap();
        }
        if case.kept {
            let answered = if case.ahead { 1 } else { 2 };
            if !case.ahead {
                assert_eq!(reader.read_exchange(false).unwrap().iter().map(|r| r.status).collect::<Vec<_>>(), vec![case.statuses[1]], "{}", case.name);
            }
            for _ in answered..case.statuses.len() {
                s.write_all(OK.as_bytes()).unwrap();
                assert_eq!(reader.read_exchange(false).unwrap().iter().map(|r| r.status).collect::<Vec<_>>(), vec![200], "{}", case.name);
            }
            assert!(scripted::finish(s).unwrap().is_empty(), "{}: nothing more", case.name);
        } else {
            // The server closes after its broken answer: the client reads it raw.
            let mut rest = reader.buffered().to_vec();
            rest.extend(scripted::finish(s).unwrap());
            let text = String::from_utf8_lossy(&rest);
            let status: u16 = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{}: no status line in {text:?}", case.name));
            assert_eq!(status, case.statuses[1], "{}: {text:?}", case.name);
        }
        let served: Vec<u16> = scripted.served().iter().filter(|x| x.peer == ends.last().unwrap().0).map(|x| x.status).collect();
        assert_eq!(served, case.statuses, "{}: what the server sent", case.name);
    }

    let mine = |c: &Connection| ends.iter().any(|(e, _)| c.remote_addr() == *e);
    let snap = observer.wait_for("every case's connection closed and answered", SETTLE, |s| {
        ends.iter().all(|(e, case)| {
            s.with_remote(*e).first().is_some_and(|c| {
                let n = case.statuses.len() as u64;
                c.status == ConnStatus::Closed
                    && c.http.as_ref().is_some_and(|h| h.in_flight == 0 && h.lifetime.counts.requests >= n && h.lifetime.responses() >= n)
            })
        })
    });
    for (end, case) in &ends {
        let c = snap.with_remote(*end)[0];
        let h = c.http.as_ref().unwrap();
        let n = case.statuses.len() as u64;
        assert_window(&h.lifetime, &expected_window(n, &case.statuses, 0), format_args!("{}: the connection's counts\n{}", case.name, snap.pretty()));
        assert_eq!(h.recent.iter().map(|e| e.status).collect::<Vec<_>>(), case.statuses, "{}: recent", case.name);
        assert!(h.in_sync && h.framing_lost == 0, "{}: every byte accounted for: {h:?}", case.name);
        let k = c.http_kernel.as_ref().unwrap_or_else(|| panic!("{}: no http_kernel on {}", case.name, c.connection));
        assert_eq!((k.lost_in.as_deref(), k.lost_out.as_deref()), case.lost, "{}: where the kernel handed over: {k:?}", case.name);
    }
    assert_eq!(snap.connections.iter().filter(|c| mine(c)).count(), cases.len(), "one entry per connection\n{}", snap.pretty());

    // Each hand-off counted once, by reason, and nothing else.
    let m = Metrics::new(observer.metrics());
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for case in &cases {
        for r in [case.lost.0, case.lost.1].into_iter().flatten() {
            *want.entry(r).or_default() += 1;
        }
    }
    let got: BTreeMap<&str, u64> = want.keys().map(|r| (*r, m.count("observer_http_fallback_total", &[("reason", r)]))).collect();
    assert_eq!(got, want, "observer_http_fallback_total by reason");
    // Counts are never negative: the total says no other reason moved.
    assert_eq!(m.count("observer_http_fallback_total", &[]), want.values().sum::<u64>(), "observer_http_fallback_total, all reasons");
    // By port and class, the metrics say what the clients received.
    let all: Vec<u16> = cases.iter().flat_map(|c| c.statuses.iter().copied()).collect();
    let requests = m.count("observer_http_requests_total", &[("role", "inbound"), ("port", &PORT.to_string())]);
    assert_eq!(requests, all.len() as u64, "requests by port");
    for class in ["2xx", "4xx", "5xx"] {
        let want = all.iter().filter(|s| format!("{}xx", *s / 100) == class).count() as u64;
        assert_eq!(m.count("observer_http_responses_total", &[("role", "inbound"), ("port", &PORT.to_string()), ("class", class)]), want, "{class} responses");
    }
}
