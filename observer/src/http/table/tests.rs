//! The table fed records as the kernel sends them, one connection at a time: pairing in order,
//! with latency; pipelining, interim responses, retransmissions and reorders; bodies skipped in
//! the kernel; upgrades and what is not HTTP; losses at close and after gaps; message records
//! and hand-offs of the kernel's framer; eviction from a full table.
use observer_common::{
    conn::{ConnKey, Role},
    http::{
        Method, DIR_IN, DIR_OUT, HINT_NOT_HTTP, HINT_SKIP_OUT, MSG_FIRST, MSG_REQUEST, MSG_RESPONSE, SEG_ACK, SEG_BOUNDARY, SEG_FIN, SEG_HANDOFF, SEG_MSG,
        SEG_SYN, START_LEN,
    },
};

use super::{HttpTable, StreamEnds, Update};
use crate::http::{stream, Counts, Outcome, Text};

const C: u8 = DIR_IN; // client → gateway (inbound requests)
const S: u8 = DIR_OUT;

struct Conn {
    t: HttpTable,
    key: ConnKey,
    seq: [u32; 2],
    ts: u64,
    outcomes: Vec<Outcome>,
}

impl Conn {
    fn new() -> Self {
        let mut t = HttpTable::new(16);
        let key = ConnKey::zeroed();
        t.on_record(key, C, 1000, SEG_SYN, b"", 1);
        t.on_record(key, S, 5000, SEG_SYN | SEG_ACK, b"", 2);
        Self { t, key, seq: [1001, 5001], ts: 10, outcomes: Vec::new() }
    }

    fn send(&mut self, dir: u8, data: &[u8]) -> Update {
        let seq = self.seq[dir as usize];
        self.seq[dir as usize] = seq.wrapping_add(data.len() as u32);
        self.at(dir, seq, data)
    }

    fn at(&mut self, dir: u8, seq: u32, data: &[u8]) -> Update {
        self.ts += 1_000_000;
        let u = self.t.on_record(self.key, dir, seq, 0, data, self.ts);
        self.outcomes.extend(u.outcomes.clone());
        u
    }

    fn counts(&self) -> Counts {
        self.t.get(&self.key).unwrap().lifetime()
    }

    fn statuses(&self) -> Vec<u16> {
        self.outcomes.iter().filter_map(|o| if let Outcome::Response { status, .. } = o { Some(*status) } else { None }).collect()
    }
}

/// A kernel message record's data for a request line (as `observer_ebpf::frame` builds it:
/// info, the first START_LEN bytes, then up to MSG_TAIL more), or a response.
fn msg_request(line: &[u8], first: bool) -> Vec<u8> {
    let start_len = line.len().min(START_LEN);
    let method = if line.starts_with(b"GET ") { Method::Get as u8 } else { 0 };
    let mut d = vec![MSG_REQUEST, method, if first { MSG_FIRST } else { 0 }, start_len as u8, 0, 0, 0, 0];
    let mut start = [0u8; START_LEN];
    start[..start_len].copy_from_slice(&line[..start_len]);
    d.extend_from_slice(&start);
    d.extend_from_slice(&line[start_len..line.len().min(START_LEN + observer_common::http::MSG_TAIL)]);
    d
}

fn msg_response(status: u16) -> Vec<u8> {
    vec![MSG_RESPONSE, 0, 0, 0, status as u8, (status >> 8) as u8, 0, 0]
}

/// Kernel framing: requests and responses arrive as message records; the view is the same as
/// if the daemon had framed the payload. Then the response direction is handed over (the
/// kernel lost its place at a status line): the daemon's framer starts there and pairs its
/// responses with the requests the kernel's records queued.
#[test]
fn message_records_then_a_hand_off_pair_in_order() {
    let mut t = HttpTable::new(16);
    let key = ConnKey::zeroed();
    let mut outcomes = Vec::new();
    let mut feed =
        |t: &mut HttpTable, dir: u8, seq: u32, flags: u8, data: &[u8], ts: u64| outcomes.extend(t.on_record(key, dir, seq, flags, data, ts).outcomes);
    feed(&mut t, C, 1001, SEG_MSG, &msg_request(b"GET /one HTTP/1.1\r\nHost: x\r\n", true), 10);
    feed(&mut t, S, 5001, SEG_MSG, &msg_response(200), 20);
    feed(&mut t, C, 1100, SEG_MSG, &msg_request(b"GET /two HTTP/1.1\r\n", false), 30);
    feed(&mut t, C, 1200, SEG_MSG, &msg_request(b"GET /three HTTP/1.1\r\n", false), 40);
    // The kernel handed the responses over from the first byte of the next one.
    feed(&mut t, S, 6000, 0, &resp(503, "busy"), 50);
    feed(&mut t, S, 6000 + resp(503, "busy").len() as u32, 0, &resp(404, ""), 60);
    let c = t.get(&key).unwrap();
    assert_eq!(c.role(), Role::Inbound);
    assert_eq!(c.lifetime(), Counts { requests: 3, responses_2xx: 1, responses_4xx: 1, responses_5xx: 1, ..Counts::default() });
    let recent: Vec<(u16, Option<Text>)> = c.recent.iter().map(|e| (e.status, e.target.clone())).collect();
    assert_eq!(recent, vec![(200, Some("/one".into())), (503, Some("/two".into())), (404, Some("/three".into()))]);
    let v = c.view(100, &|_| 0.0);
    assert!(v.in_sync && v.framing_lost == 0, "{v:?}");
    // A new connection on the same four-tuple starts afresh; the old one waits for its close.
    feed(&mut t, C, 9001, SEG_MSG, &msg_request(b"GET /again HTTP/1.1\r\n", true), 70);
    assert_eq!(t.get(&key).unwrap().lifetime(), Counts { requests: 1, ..Counts::default() });
    let (old, _) = t.close(&key, 0, 80, &StreamEnds::default()).unwrap();
    assert_eq!(old.lifetime().requests, 3);
    let latencies: Vec<Option<u64>> =
        outcomes.iter().filter_map(|o| if let Outcome::Response { latency_ns, .. } = o { Some(*latency_ns) } else { None }).collect();
    assert_eq!(latencies, vec![Some(10), Some(20), Some(20)]);
}

/// The kernel lost the request direction at a boundary (a gap between messages) and hands
/// it over: the daemon's framer starts exactly there, so the segment after the gap waits for
/// the retransmission, and both requests count once, in order. A hand-off elsewhere is a
/// loss of place, counted.
#[test]
fn a_hand_off_at_a_boundary_waits_for_the_gap() {
    let mut t = HttpTable::new(16);
    let key = ConnKey::zeroed();
    let outcomes = std::cell::RefCell::new(Vec::new());
    let feed = |t: &mut HttpTable, dir: u8, seq: u32, flags: u8, data: &[u8], ts: u64| {
        outcomes.borrow_mut().extend(t.on_record(key, dir, seq, flags, data, ts).outcomes)
    };
    let (a, b) = (b"GET /b HTTP/1.1\r\n\r\n".to_vec(), b"GET /c HTTP/1.1\r\n\r\n".to_vec());
    feed(&mut t, C, 1001, SEG_MSG, &msg_request(b"GET /a HTTP/1.1\r\n\r\n", true), 10);
    feed(&mut t, S, 5001, SEG_MSG, &msg_response(200), 20);
    feed(&mut t, C, 1020, SEG_HANDOFF | SEG_BOUNDARY, b"", 30);
    // The segment after the gap first, then the retransmission.
    feed(&mut t, C, 1020 + a.len() as u32, 0, &b, 40);
    assert_eq!(t.get(&key).unwrap().lifetime().requests, 1, "waits for the gap");
    feed(&mut t, C, 1020, 0, &a, 50);
    feed(&mut t, S, 6000, SEG_HANDOFF | SEG_BOUNDARY, b"", 60);
    feed(&mut t, S, 6000, 0, &[resp(404, ""), resp(503, "x")].concat(), 70);
    let c = t.get(&key).unwrap();
    assert_eq!(c.lifetime(), Counts { requests: 3, responses_2xx: 1, responses_4xx: 1, responses_5xx: 1, ..Counts::default() });
    let targets: Vec<_> = c.recent.iter().map(|e| e.target.as_deref().unwrap_or_default()).collect();
    assert_eq!(targets, vec!["/a", "/b", "/c"]);
    let v = c.view(100, &|_| 0.0);
    assert!(v.in_sync && v.framing_lost == 0, "{v:?}");
    assert!(!outcomes.borrow().contains(&Outcome::FramingLost));

    // Elsewhere (inside a message): not in sync until a record starts a message.
    feed(&mut t, C, 2000, SEG_HANDOFF, b"", 80);
    assert!(!t.get(&key).unwrap().view(100, &|_| 0.0).in_sync);
    feed(&mut t, C, 2010, 0, b"ader: x\r\n\r\n", 90);
    assert!(!t.get(&key).unwrap().view(100, &|_| 0.0).in_sync);
    feed(&mut t, C, 2030, 0, &get_req("/d"), 100);
    let c = t.get(&key).unwrap();
    assert_eq!(c.lifetime().requests, 4);
    let v = c.view(100, &|_| 0.0);
    assert!(v.in_sync && v.framing_lost == 0, "{v:?}");
}

fn get_req(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

fn resp(status: u16, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

#[test]
fn keepalive_exchanges_pair_in_order_with_latency() {
    let mut c = Conn::new();
    for status in [200, 404, 500, 502] {
        c.send(C, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        c.send(S, &resp(status, "body"));
    }
    assert_eq!(c.statuses(), vec![200, 404, 500, 502]);
    let n = c.counts();
    assert_eq!((n.requests, n.responses_2xx, n.responses_4xx, n.responses_5xx, n.no_response), (4, 1, 1, 2, 0));
    assert_eq!(n.error_ratio(), 0.5);
    assert!(c.outcomes.iter().all(|o| !matches!(o, Outcome::Response { latency_ns: None, .. })));
    assert_eq!(c.t.get(&c.key).unwrap().role(), Role::Inbound);
}

#[test]
fn pipelined_requests_and_coalesced_responses() {
    let mut c = Conn::new();
    c.send(C, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
    // The HEAD response announces a length but has no body.
    let mut all = resp(200, "one");
    all.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\n");
    all.extend(resp(503, ""));
    c.send(S, &all);
    assert_eq!(c.statuses(), vec![200, 200, 503]);
    assert_eq!(c.counts().requests, 3);
    assert_eq!(c.t.get(&c.key).unwrap().pending.len(), 0);
}

#[test]
fn continue_is_interim_and_unanswered_requests_fail_at_close() {
    let mut c = Conn::new();
    c.send(C, b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    c.send(S, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(C, b"hello");
    c.send(S, &resp(201, ""));
    c.send(C, b"GET /never HTTP/1.1\r\nHost: h\r\n\r\n");
    let (_, out) = c.t.close(&c.key, 0, 99, &StreamEnds::default()).unwrap();
    assert_eq!(out, vec![Outcome::NoResponse(1)]);
    assert_eq!(c.statuses(), vec![100, 201]);
}

#[test]
fn retransmitted_and_reordered_segments_count_once() {
    let mut c = Conn::new();
    let req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    c.send(C, req);
    c.at(C, 1001, req); // retransmission
    let r = resp(200, "0123456789");
    let (a, b) = r.split_at(20);
    c.at(S, 5001 + 20, b); // the second half first
    assert!(c.statuses().is_empty());
    c.at(S, 5001, a);
    c.at(S, 5001, a); // and again
    assert_eq!(c.statuses(), vec![200]);
    assert_eq!(c.counts().requests, 1);
}

#[test]
fn a_request_line_split_across_segments() {
    let mut c = Conn::new();
    c.send(C, b"GE");
    c.send(C, b"T /split HTTP/1");
    c.send(C, b".1\r\nHost: h\r\n\r\n");
    c.send(S, &resp(200, ""));
    assert_eq!(c.counts().requests, 1);
    assert_eq!(c.statuses(), vec![200]);
}

#[test]
fn long_bodies_are_skipped_in_the_kernel() {
    let mut c = Conn::new();
    c.send(C, b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
    let u = c.send(S, head);
    let hints = u.hints.expect("a hint for the body");
    assert_eq!(hints.flags & HINT_SKIP_OUT, HINT_SKIP_OUT);
    assert_eq!(hints.skip_out, 5001 + head.len() as u32 + 1_000_000);
    // The kernel may still send some body before it sees the hint: ignored.
    c.at(S, 5001 + head.len() as u32, b"HTTP/1.1 500 inside the body\r\n\r\n");
    c.seq[S as usize] = hints.skip_out;
    c.send(C, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    c.send(S, &resp(404, ""));
    assert_eq!(c.statuses(), vec![200, 404]);
}

#[test]
fn short_garbage_first_segments_are_not_http_once() {
    for pieces in [vec![&b"\x16\x03\x01\x00\xc8"[..], b"\x01\x00\x00\xc4\x03\x03 and more bytes"], vec![&b"GE"[..], b"\x00\x01\x02 binary \xff"]] {
        let mut c = Conn::new();
        let mut found = 0;
        for p in pieces {
            for dir in [C, S] {
                found += c.send(dir, p).outcomes.iter().filter(|o| **o == Outcome::NotHttp).count();
            }
        }
        assert_eq!(found, 1);
    }
}

#[test]
fn bytes_lost_before_the_close_are_framing_lost_not_failures() {
    let mut c = Conn::new();
    c.send(C, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    // The response's record never arrives (the ring was full): the kernel counted the bytes.
    let r = resp(200, "lost");
    let end = 5001 + r.len() as u32;
    let (_, out) = c.t.close(&c.key, 0, 99, &StreamEnds { seq: [Some(c.seq[C as usize]), Some(end)], ..Default::default() }).unwrap();
    assert_eq!(out, vec![Outcome::FramingLost], "no invented failure");

    // Lost in the middle (the kernel says it lost records of the connection): what follows
    // the gap is framed at close, and the loss reported.
    let lost_in_the_middle = |records_lost: bool| {
        let mut c = Conn::new();
        c.send(C, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n");
        let first = resp(200, "one");
        let second = resp(503, "");
        c.at(S, 5001 + first.len() as u32, &second);
        let end = 5001 + (first.len() + second.len()) as u32;
        c.t.close(&c.key, 0, 99, &StreamEnds { seq: [Some(c.seq[C as usize]), Some(end)], records_lost, ..Default::default() }).unwrap()
    };
    let (conn, out) = lost_in_the_middle(true);
    assert!(out.contains(&Outcome::FramingLost), "{out:?}");
    assert!(out.iter().any(|o| matches!(o, Outcome::Response { status: 503, .. })), "{out:?}");
    assert!(!conn.into_record().in_sync);
    // Every record arrived: the hole is on the wire, and TCP never delivered what lies behind
    // it. The requests were not answered; nothing was lost to framing.
    let (conn, out) = lost_in_the_middle(false);
    assert_eq!(out, vec![Outcome::NoResponse(2)]);
    let r = conn.into_record();
    assert_eq!((r.in_sync, r.lifetime.requests, r.lifetime.no_response), (true, 2, 2));
}

#[test]
fn silence_after_a_gap_still_expires_it() {
    let mut c = Conn::new();
    c.send(C, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n");
    let first = resp(200, "one");
    c.at(S, 5001 + first.len() as u32, &resp(404, ""));
    assert!(c.t.expire_gaps(c.ts + 1).is_empty(), "young gaps wait");
    assert!(c.t.expire_gaps(c.ts + 60 * stream::GAP_TIMEOUT_NS).is_empty(), "no record was lost: the gap is on the wire, it waits");
    c.t.set_records_lost(true);
    let changed = c.t.expire_gaps(c.ts + 2 * stream::GAP_TIMEOUT_NS);
    assert_eq!(changed.len(), 1);
    assert!(changed[0].2.contains(&Outcome::FramingLost));
    assert!(changed[0].2.iter().any(|o| matches!(o, Outcome::Response { status: 404, .. })));
}

#[test]
fn an_upgrade_switches_both_directions_off() {
    let mut c = Conn::new();
    c.send(C, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    let u = c.send(S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    assert_eq!(u.hints.map(|h| h.flags), Some(HINT_NOT_HTTP), "the kernel stops forwarding");
    c.send(C, b"\x81\x85 frames, not requests");
    c.send(S, b"HTTP/1.1 200 looks like a status line");
    assert_eq!(c.statuses(), vec![101]);
    let (_, out) = c.t.close(&c.key, 0, 99, &StreamEnds::default()).unwrap();
    assert!(out.is_empty(), "nothing unanswered: {out:?}");
}

#[test]
fn a_refused_upgrade_goes_on_as_http() {
    let mut c = Conn::new();
    c.send(C, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n");
    c.send(S, &resp(400, "no"));
    c.send(C, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    c.send(S, &resp(200, ""));
    assert_eq!(c.statuses(), vec![400, 200]);
    assert_eq!(c.counts().requests, 2);
}

#[test]
fn not_http_is_left_alone() {
    let mut c = Conn::new();
    let u = c.send(C, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 tls client hello");
    assert_eq!(u.hints.map(|h| h.flags), Some(HINT_NOT_HTTP));
    c.send(S, &resp(200, ""));
    assert_eq!(c.counts(), Counts::default());
}

/// A full table gives way to a new connection by evicting the least recently active one
/// (from an ordered index, not a scan), and counts it.
#[test]
fn a_full_table_evicts_the_least_recently_active() {
    let mut t = HttpTable::new(3);
    let key = |port: u16| ConnKey { local_port: port, ..ConnKey::zeroed() };
    let req = b"GET / HTTP/1.1\r\n\r\n";
    for (port, ts) in [(1, 10), (2, 20), (3, 30)] {
        t.on_record(key(port), C, 100, 0, req, ts);
    }
    // Port 1 is active again: port 2 is now the oldest.
    t.on_record(key(1), C, 100 + req.len() as u32, 0, req, 40);
    t.on_record(key(4), C, 100, 0, req, 50);
    assert!(t.get(&key(2)).is_none() && [1, 3, 4].iter().all(|p| t.get(&key(*p)).is_some()));
    assert_eq!(t.evictions(), 1);
    // A close takes a connection out of the order too: the next new one evicts no one.
    t.close(&key(3), 0, 60, &StreamEnds::default()).unwrap();
    t.on_record(key(5), C, 100, 0, req, 70);
    assert_eq!(t.evictions(), 1);
    t.on_record(key(6), C, 100, 0, req, 80);
    assert_eq!(t.evictions(), 2);
    assert!(t.get(&key(1)).is_none(), "port 1 (last active at 40) gave way");
    t.check_bounds();
}

/// The FIN's record may be handled before records of the bytes before it (sent from another
/// CPU): a response delimited by the close ends where the stream does, not where its FIN
/// record came.
#[test]
fn a_fin_before_the_last_bytes_of_an_until_close_response_waits_for_them() {
    let mut c = Conn::new();
    c.send(C, b"GET / HTTP/1.1\r\n\r\n");
    let body = b"HTTP/1.0 200 OK\r\n\r\nsome body, then Content-Length: 5\r\n and more";
    let (a, b) = body.split_at(30);
    c.at(S, 5001, a);
    let u = c.t.on_record(c.key, S, 5001 + 40, SEG_FIN, &b[10..], 50);
    assert!(u.outcomes.is_empty());
    c.at(S, 5001 + 30, &b[..10]);
    assert_eq!(c.statuses(), vec![200]);
    assert!(!c.outcomes.contains(&Outcome::FramingLost), "{:?}", c.outcomes);
    let v = c.t.get(&c.key).unwrap().view(100, &|_| 0.0);
    assert!(v.in_sync && v.framing_lost == 0, "{v:?}");
}

#[test]
fn joining_a_connection_midway_starts_at_a_message() {
    let mut t = HttpTable::new(4);
    let key = ConnKey::zeroed();
    // No SYN seen: body bytes first, then a response, then requests.
    assert!(t.on_record(key, S, 10, 0, b"tail of an old body", 1).outcomes.is_empty());
    let r = t.on_record(key, C, 50, 0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 2);
    assert_eq!(r.outcomes, vec![Outcome::Request { method: "GET".into(), target: "/".into() }]);
    let r = t.on_record(key, S, 29, 0, &resp(200, ""), 3);
    assert!(matches!(r.outcomes.as_slice(), [Outcome::Response { status: 200, latency_ns: Some(1) }]));
    assert_eq!(r.role, Role::Inbound);
}

use proptest::prelude::*;

fn exchange(status: u16, body_len: usize, chunked: bool, head: bool) -> (Vec<u8>, Vec<u8>) {
    let method = if head { "HEAD" } else { "GET" };
    let req = format!("{method} /x HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes();
    // The body is made of text that looks like a status line, to prove it is not one.
    let body: Vec<u8> = b"HTTP/1.1 500 X\r\n".iter().copied().cycle().take(body_len).collect();
    let no_body = status == 204 || status == 304 || head;
    let mut resp;
    if chunked {
        resp = format!("HTTP/1.1 {status} S\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
        if !no_body {
            for piece in body.chunks(7) {
                resp.extend(format!("{:x}\r\n", piece.len()).into_bytes());
                resp.extend_from_slice(piece);
                resp.extend_from_slice(b"\r\n");
            }
            resp.extend_from_slice(b"0\r\n\r\n");
        }
    } else {
        resp = format!("HTTP/1.1 {status} S\r\nContent-Length: {body_len}\r\n\r\n").into_bytes();
        if !no_body {
            resp.extend_from_slice(&body);
        }
    }
    (req, resp)
}

proptest! {
    /// However the bytes are cut into segments, duplicated and reordered (within what TCP
    /// would deliver), every response is counted once, in order.
    #[test]
    fn any_segmentation_counts_exactly(
        script in proptest::collection::vec((prop::sample::select(vec![200u16, 204, 301, 304, 404, 429, 500, 502, 503]), 0usize..300, any::<bool>(), any::<bool>()), 1..12),
        cuts in proptest::collection::vec(1usize..97, 1..40),
        swap in any::<bool>(),
        dup in any::<bool>(),
    ) {
        let mut c = Conn::new();
        let (mut reqs, mut resps, mut expected) = (Vec::new(), Vec::new(), Vec::new());
        for &(status, len, chunked, head) in &script {
            let (q, r) = exchange(status, len, chunked, head);
            reqs.extend(q);
            resps.extend(r);
            expected.push(status);
        }
        // All requests pipelined in one write, then the responses cut into segments.
        c.send(C, &reqs);
        let mut segs = Vec::new();
        let (mut at, mut i) = (0usize, 0usize);
        while at < resps.len() {
            let n = cuts[i % cuts.len()].min(resps.len() - at);
            segs.push((5001u32.wrapping_add(at as u32), resps[at..at + n].to_vec()));
            at += n;
            i += 1;
        }
        if swap && segs.len() > 2 {
            segs.swap(1, 2);
        }
        for (seq, data) in &segs {
            c.at(S, *seq, data);
            if dup {
                c.at(S, *seq, data);
            }
        }
        prop_assert_eq!(c.statuses(), expected);
        prop_assert_eq!(c.counts().requests, script.len() as u64);
    }
}
