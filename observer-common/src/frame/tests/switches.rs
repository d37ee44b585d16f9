//! Leaving HTTP: upgrades, CONNECT tunnels, and responses delimited by the close.

use super::*;

#[test]
fn upgrade_switches_both_directions() {
    let mut c = Conn::new();
    c.send(C, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    assert_eq!(c.f.phase(C), Phase::Held);
    c.send(S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05HTTP/1.1 200 OK\r\n\r\n");
    c.send(C, b"GET / HTTP/1.1\r\n\r\n");
    c.send(S, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(c.statuses(), vec![101]);
    assert_eq!(c.methods(), vec![Method::Get]);
    assert_eq!((c.f.phase(C), c.f.phase(S)), (Phase::Tunnel, Phase::Tunnel));
    assert_eq!(c.f.close(), Closed { unanswered: 0, lost: false });
}

#[test]
fn refused_upgrade_goes_on() {
    let mut c = Conn::new();
    c.send(C, b"GET /ws HTTP/1.1\r\nHost: h\r\nupgrade: h2c\r\n\r\n");
    // Bytes while held are not framed (nor consumed).
    assert!(!c.f.skip(C, c.seq[C as usize], 10).more);
    c.send(S, &resp(400, "no"));
    c.send(C, &get("/next"));
    c.send(S, &resp(200, ""));
    assert_eq!(c.statuses(), vec![400, 200]);
    assert_eq!(c.f.counts.requests, 2);
    assert_eq!(c.losses(), vec![]);
}

/// A server may refuse an upgrade (or a CONNECT) before the request's head has all arrived:
/// framing goes on after the head in the same segment, as it would had the segments been cut
/// right after it.
#[test]
fn an_upgrade_refused_before_its_head_ends_goes_on_at_once() {
    let rest: &[u8] = b"\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
    for cut in [0, 2, 4, rest.len()] {
        let mut c = Conn::new();
        c.send(C, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443");
        c.send(S, &resp(407, "auth"));
        c.send_cut(C, rest, &[cut]);
        c.send(S, &resp(200, ""));
        assert_eq!(c.methods(), vec![Method::Connect, Method::Get], "cut at {cut}");
        assert_eq!(c.statuses(), vec![407, 200], "cut at {cut}");
        assert_eq!((c.losses(), c.f.phase(C)), (vec![], Phase::Idle), "cut at {cut}");
    }
}

#[test]
fn connect_tunnels_on_2xx_only() {
    let mut c = Conn::new();
    c.send(C, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_eq!(c.f.phase(C), Phase::Held);
    c.send(S, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\nauth");
    c.send(C, b"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n");
    c.send(S, b"HTTP/1.1 200 Connection Established\r\nContent-Length: 99\r\n\r\n\x16\x03\x01 tls");
    c.send(C, b"\x16\x03\x01\x02\x00 client hello");
    assert_eq!(c.statuses(), vec![407, 200]);
    assert_eq!(c.methods(), vec![Method::Connect, Method::Connect]);
    assert_eq!((c.f.phase(C), c.f.phase(S)), (Phase::Tunnel, Phase::Tunnel));
    assert_eq!(c.losses(), vec![]);
}

#[test]
fn until_close() {
    let mut c = Conn::new();
    c.send(C, &get("/"));
    c.send(S, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nHTTP/1.1 500 not a response\r\n\r\n");
    c.send(S, b"HTTP/1.1 502 neither\r\n\r\n");
    assert_eq!(c.f.phase(S), Phase::UntilClose);
    let last = c.seq[S as usize] - 10;
    assert!(c.f.fin(S));
    assert_eq!(c.f.phase(S), Phase::Closed);
    // A retransmission after the FIN is not framed.
    c.at::<MAX_STEPS>(S, last, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(c.statuses(), vec![200]);
    assert_eq!(c.f.close(), Closed { unanswered: 0, lost: false });

    // A final coding other than chunked: until close too (for a response).
    let mut c = Conn::new();
    c.send(C, &get("/"));
    c.send(S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(c.f.phase(S), Phase::UntilClose);
    assert_eq!(c.statuses(), vec![200]);
}
