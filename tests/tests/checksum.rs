//! Only what the host accepts counts. Segments with a wrong TCP checksum, sent from a raw socket
//! into a live keep-alive connection (in sequence, carrying whole requests) and as a SYN opening
//! a new one, are dropped by the gateway's stack (its `TcpInCsumErrors` says so): the observer
//! must count none of them (no request, no byte, no packet, no attempt), and count them once in
//! `observer_bad_checksum_segments_total`. The connection's real requests, sent after them at
//! the same sequence numbers, count exactly.
//!
//! The second half takes the other side of the same check: with checksum offload off on the
//! client, every segment arrives with a full software checksum (`CHECKSUM_NONE`), which the
//! programs verify in full; all of them must be accepted and counted exactly.
use std::{
    io::{self, Write},
    net::{SocketAddr, SocketAddrV4},
    time::Duration,
};

use observer_tests::{
    addr::{self, CLIENT_IF, GW_CLIENT_IF},
    http_view::{assert_window, expected_window, Metrics, WindowExt},
    root_or_skip,
    scripted::{self, connect, Peer, ResponseReader, ScriptedServer},
    tcp, Connection, ConnectionExt, Netns, Observer, Topology,
};

const PORT: u16 = 8084;
const SETTLE: Duration = Duration::from_secs(30);
const FORGED: &str = "GET /forged HTTP/1.1\r\nHost: x\r\n\r\n";

/// Answers every request with 200 and a short body, and keeps the connection.
fn server(p: &mut Peer) -> io::Result<()> {
    while let Some(req) = p.read_head()? {
        p.respond(&req, 200, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")?;
    }
    Ok(())
}

/// The gateway stack's count of segments it dropped for their checksum.
fn csum_errors(ns: &Netns) -> u64 {
    let out = ns.run("nstat", ["-az", "TcpInCsumErrors"]);
    out.lines()
        .find_map(|l| l.strip_prefix("TcpInCsumErrors").and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no TcpInCsumErrors in nstat's output: {out:?}"))
}

/// `n` exchanges of `GET /ok` on `s`, each answered before the next; the bytes the client sent.
fn exchanges(s: &mut std::net::TcpStream, reader: &mut ResponseReader<std::net::TcpStream>, n: usize) -> u64 {
    let req = "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..n {
        s.write_all(req.as_bytes()).unwrap();
        let got: Vec<u16> = reader.read_exchange(false).unwrap().iter().map(|r| r.status).collect();
        assert_eq!(got, vec![200]);
    }
    (n * req.len()) as u64
}

fn counts_of(c: &Connection) -> (u64, u64) {
    (c.bytes_in, c.retransmitted_bytes_in)
}

#[test]
fn segments_with_bad_checksums_never_count() {
    const TEST: &str = "segments_with_bad_checksums_never_count";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let at = SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), PORT);
    let scripted = ScriptedServer::start(&topo.gateway, at, server);
    let observer = Observer::start_with(&topo, &[GW_CLIENT_IF], &[]);
    let errors_before = csum_errors(&topo.gateway);

    // A keep-alive connection: one exchange, then forged requests in sequence, then two more.
    let mut s = connect(&topo.client, at);
    let end = s.local_addr().unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let mut sent = exchanges(&mut s, &mut reader, 1);
    let (snd, rcv) = tcp::sequence_numbers(&s).expect("the client's sequence numbers (TCP_REPAIR)");
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (end, at) else { unreachable!("IPv4") };
    const FORGED_DATA: u64 = 3;
    for _ in 0..FORGED_DATA {
        tcp::send_raw(&topo.client, from, to, snd, rcv, tcp::RAW_ACK_PSH, FORGED.as_bytes(), true).expect("a raw segment");
    }
    // And SYNs with bad checksums opening a new connection from the client's address.
    const FORGED_SYNS: u64 = 2;
    let spoofed = SocketAddrV4::new(addr::CLIENT_V4, 40_001);
    for i in 0..FORGED_SYNS {
        tcp::send_raw(&topo.client, spoofed, to, 1000 + i as u32, 0, tcp::RAW_SYN, b"", true).expect("a raw SYN");
    }
    let forged = FORGED_DATA + FORGED_SYNS;
    let errors = observer_tests::poll(SETTLE, Duration::from_millis(50), || {
        let n = csum_errors(&topo.gateway) - errors_before;
        (n >= forged).then_some(n)
    });
    assert_eq!(errors, Some(forged), "the gateway's stack dropped every forged segment for its checksum");
    sent += exchanges(&mut s, &mut reader, 2);
    assert!(scripted::finish(s).unwrap().is_empty(), "nothing more");
    let served: Vec<String> = scripted.served().iter().filter(|x| x.peer == end).map(|x| x.target.clone()).collect();
    assert_eq!(served, vec!["/ok"; 3], "what the server saw");

    let snap = observer.wait_for("the connection closed and answered", SETTLE, |s| {
        s.with_remote(end).first().is_some_and(|c| {
            c.http.as_ref().is_some_and(|h| h.in_flight == 0 && h.lifetime.counts.requests >= 3 && h.lifetime.responses() >= 3) && c.fin_both_ways()
        })
    });
    let c = snap.with_remote(end)[0];
    let h = c.http.as_ref().unwrap();
    assert_window(&h.lifetime, &expected_window(3, &[200, 200, 200], 0), format_args!("the connection's counts\n{}", snap.pretty()));
    assert!(h.in_sync && h.framing_lost == 0, "every byte accounted for: {h:?}");
    assert!(!h.recent.iter().any(|r| r.target.as_deref().is_some_and(|t| t.contains("forged"))), "no forged target: {h:?}");
    let k = c.http_kernel.as_ref().expect("http_kernel");
    assert_eq!((k.lost_in.as_deref(), k.lost_out.as_deref()), (None, None), "the kernel framed it all: {k:?}");
    assert_eq!(counts_of(c), (sent, 0), "bytes received: what the client sent, none of it twice");
    assert!(snap.with_remote(SocketAddr::V4(spoofed)).is_empty(), "no connection from a forged SYN\n{}", snap.pretty());

    let m = Metrics::new(observer.metrics());
    assert_eq!(m.count("observer_bad_checksum_segments_total", &[]), forged, "bad checksums counted once each");
    assert_eq!(m.count("observer_inbound_attempts_total", &[]), 1, "one attempt: the real connection");
    assert_eq!(m.count("observer_http_requests_total", &[("role", "inbound"), ("port", &PORT.to_string())]), 3, "requests by port");

    // Checksum offload off on the client: full software checksums, verified in full here.
    topo.client.run("ethtool", ["-K", CLIENT_IF, "tx", "off"]);
    let mut s = connect(&topo.client, at);
    let end = s.local_addr().unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let sent = exchanges(&mut s, &mut reader, 5);
    assert!(scripted::finish(s).unwrap().is_empty(), "nothing more");
    let snap = observer.wait_for("the second connection closed and answered", SETTLE, |s| {
        s.with_remote(end).first().is_some_and(|c| {
            c.http.as_ref().is_some_and(|h| h.in_flight == 0 && h.lifetime.counts.requests >= 5 && h.lifetime.responses() >= 5) && c.fin_both_ways()
        })
    });
    let c = snap.with_remote(end)[0];
    assert_window(&c.http.as_ref().unwrap().lifetime, &expected_window(5, &[200; 5], 0), format_args!("counts with software checksums\n{}", snap.pretty()));
    assert_eq!(counts_of(c), (sent, 0), "bytes with software checksums");
    assert_eq!((c.syn_in, c.fin_in), (1, 1), "the handshake and the close with software checksums");
    let m = Metrics::new(observer.metrics());
    assert_eq!(m.count("observer_bad_checksum_segments_total", &[]), forged, "no valid segment taken for a bad one");
    assert_eq!(csum_errors(&topo.gateway) - errors_before, forged, "the stack agrees");
}
