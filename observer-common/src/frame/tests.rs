extern crate std;

use std::{format, vec, vec::Vec};

use super::*;
use crate::http::{DIR_IN, DIR_OUT};

const C: u8 = DIR_IN; // client → server: requests
const S: u8 = DIR_OUT; // server → client: responses

/// A connection fed segment by segment, as a BPF caller would, recording every event.
struct Conn {
    f: ConnFrame,
    seq: [u32; 2],
    ts: u64,
    events: Vec<(u8, Event)>,
    completed: [u32; 2],
    loads: usize,
    /// Per-CPU scratch, reused across segments: its stale contents must not matter.
    scan: Scan,
    /// Each segment one millisecond after the previous one (else all at `ts`).
    tick: bool,
}

impl Conn {
    fn new() -> Self {
        Self::with_isn(1000, 5000)
    }

    fn with_isn(isn_c: u32, isn_s: u32) -> Self {
        let mut f = ConnFrame::zeroed();
        f.on_syn(C, isn_c, false);
        f.on_syn(S, isn_s, true);
        Self { f, seq: [isn_c.wrapping_add(1), isn_s.wrapping_add(1)], ts: 0, events: Vec::new(), completed: [0; 2], loads: 0, scan: Scan::zeroed(), tick: true }
    }

    fn send(&mut self, dir: u8, data: &[u8]) -> Step {
        let seq = self.seq[dir as usize];
        self.seq[dir as usize] = seq.wrapping_add(data.len() as u32);
        self.at::<MAX_STEPS>(dir, seq, data)
    }

    /// Sends `data` cut into segments at `cuts` (offsets into `data`).
    fn send_cut(&mut self, dir: u8, data: &[u8], cuts: &[usize]) {
        let mut at = 0;
        for &c in cuts.iter().chain([data.len()].iter()) {
            if c > at && c <= data.len() {
                self.send(dir, &data[at..c]);
                at = c;
            }
        }
    }

    fn at<const MAX: usize>(&mut self, dir: u8, seq: u32, data: &[u8]) -> Step {
        if self.tick {
            self.ts += 1_000_000;
        }
        let mut events = Vec::new();
        let mut loads = 0;
        let step = self.f.feed_segment::<MAX, _, _>(
            &mut self.scan,
            dir,
            seq,
            data.len() as u32,
            self.ts,
            |off, block, n| {
                loads += 1;
                assert!((1..=BLOCK).contains(&n));
                block[..n].copy_from_slice(&data[off as usize..off as usize + n]);
                true
            },
            |e| events.push(*e),
        );
        self.loads += loads;
        for e in events {
            self.events.push((dir, e));
        }
        self.completed[dir as usize] += step.completed as u32;
        step
    }

    fn statuses(&self) -> Vec<u16> {
        self.events.iter().filter_map(|(_, e)| if let Event::Response { status, .. } = e { Some(*status) } else { None }).collect()
    }

    fn methods(&self) -> Vec<Method> {
        self.events.iter().filter_map(|(_, e)| if let Event::Request { method } = e { Some(*method) } else { None }).collect()
    }

    fn losses(&self) -> Vec<(u8, LostReason)> {
        self.events.iter().filter_map(|(d, e)| if let Event::Lost(r) = e { Some((*d, *r)) } else { None }).collect()
    }
}

fn resp(status: u16, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes()
}

#[test]
fn state_sizes() {
    use core::mem::size_of;
    assert_eq!(size_of::<DirFrame>(), 48);
    assert_eq!(size_of::<Pending>(), 80);
    assert_eq!(size_of::<FrameCounts>(), 80);
    assert_eq!(size_of::<ConnFrame>(), 264);
    assert_eq!(size_of::<Scan>(), 96);
    // The zeroed state is all zero bytes (a fresh map value).
    let z = ConnFrame::zeroed();
    // SAFETY: repr(C) integers only, no padding (sizes above).
    let bytes: &[u8; 264] = unsafe { &*(&z as *const ConnFrame as *const [u8; 264]) };
    assert!(bytes.iter().all(|b| *b == 0));
}

#[test]
fn keep_alive_exchanges() {
    let mut c = Conn::new();
    c.send(C, &get("/a"));
    c.send(S, &resp(200, "hello"));
    c.send(C, b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world");
    c.send(S, &resp(201, ""));
    c.send(C, b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    c.send(S, b"HTTP/1.1 204 No Content\r\n\r\n");
    c.send(C, b"DELETE /d HTTP/1.1\r\n\r\n");
    c.send(S, b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n");
    c.send(C, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    c.send(S, &resp(302, ""));
    c.send(C, b"PATCH /p HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}");
    c.send(S, &resp(503, "busy"));
    assert_eq!(c.methods(), vec![Method::Get, Method::Post, Method::Put, Method::Delete, Method::Options, Method::Patch]);
    assert_eq!(c.statuses(), vec![200, 201, 204, 404, 302, 503]);
    let n = c.f.counts;
    assert_eq!((n.requests, n.responses_2xx, n.responses_3xx, n.responses_4xx, n.responses_5xx), (6, 3, 1, 1, 1));
    assert_eq!(n.latency_count, 6);
    assert_eq!(n.latency_sum_ns, 6 * 1_000_000, "each response one segment after its request");
    assert_eq!(c.completed, [6, 6]);
    assert_eq!(c.f.in_flight(), 0);
    assert_eq!((c.f.phase(C), c.f.phase(S)), (Phase::Idle, Phase::Idle));
    assert!(c.events.iter().all(|(_, e)| !matches!(e, Event::Response { latency_ns: None, .. })));
    assert_eq!(c.f.close(), Closed { unanswered: 0, lost: false });
}

#[test]
fn pipelined_requests_and_responses_in_one_segment() {
    let mut c = Conn::new();
    c.send(C, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(c.f.in_flight(), 3);
    // The HEAD response announces a length but has no body.
    let mut all = resp(200, "one");
    all.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\n");
    all.extend(resp(503, ""));
    c.send(S, &all);
    assert_eq!(c.methods(), vec![Method::Get, Method::Head, Method::Get]);
    assert_eq!(c.statuses(), vec![200, 200, 503]);
    assert_eq!(c.f.in_flight(), 0);
    assert_eq!(c.completed, [3, 3]);
    assert_eq!(c.f.phase(S), Phase::Idle);
}

#[test]
fn bodies_that_look_like_responses_are_not_responses() {
    let mut c = Conn::new();
    let inner = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n";
    c.send(C, &get("/"));
    c.send(C, &get("/"));
    let mut all = resp(200, inner);
    // And in chunk data, including something that looks like the last chunk.
    all.extend_from_slice(format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}0\r\n\r\n\r\n0\r\n\r\n", inner.len() + 5).as_bytes());
    c.send(S, &all);
    c.send(C, &get("/"));
    c.send(S, &resp(404, ""));
    assert_eq!(c.statuses(), vec![200, 200, 404]);
}

/// One conversation with most of what framing knows: requests first, then responses.
fn conversation() -> (Vec<u8>, Vec<u8>) {
    let mut q = Vec::new();
    q.extend_from_slice(b"\r\nGET /a HTTP/1.1\r\nHost: h\r\nX-Long: 0123456789012345678901234567890123456789012345678901234567890123456789\r\n\r\n");
    q.extend_from_slice(b"POST /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\ncontent-LENGTH:   5  \r\n\r\nhello");
    q.extend_from_slice(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n");
    q.extend_from_slice(b"PUT /c HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n5;name=value\r\nHTTP/\r\nA \r\n1.1 200 OK\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n");
    q.extend_from_slice(b"GET /x HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n");
    let mut r = Vec::new();
    r.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nHTTP/1.1 200");
    r.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    r.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n");
    r.extend_from_slice(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n1a;x=\"y\"\r\nHTTP/1.1 500 Oops\r\n\r\nabcde\r\n0\r\nTrailer: x\r\n\r\n");
    r.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 77\r\n\r\n");
    r.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n");
    r.extend_from_slice(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\n\r\nbad");
    (q, r)
}

fn run_conversation(q: &[u8], r: &[u8], q_cuts: &[usize], r_cuts: &[usize]) -> Conn {
    let mut c = Conn::new();
    c.tick = false;
    c.ts = 1_000_000;
    c.send_cut(C, q, q_cuts);
    c.ts = 3_000_000;
    c.send_cut(S, r, r_cuts);
    c
}

#[test]
fn conversation_counts() {
    let (q, r) = conversation();
    let c = run_conversation(&q, &r, &[], &[]);
    assert_eq!(c.losses(), vec![]);
    assert_eq!(c.methods(), vec![Method::Get, Method::Post, Method::Head, Method::Put, Method::Get]);
    assert_eq!(c.statuses(), vec![200, 100, 103, 201, 200, 304, 502]);
    assert_eq!(c.f.counts.responses_1xx, 2);
    assert_eq!(c.f.counts.latency_count, 5, "interim responses answer nothing");
    assert_eq!(c.completed, [5, 7]);
    assert_eq!((c.f.phase(C), c.f.phase(S)), (Phase::Idle, Phase::Idle));
}

#[test]
fn heads_split_at_every_byte_give_the_same_counts() {
    let (q, r) = conversation();
    let whole = run_conversation(&q, &r, &[], &[]);
    for cut in 1..q.len() {
        let c = run_conversation(&q, &r, &[cut], &[]);
        assert_eq!(c.events, whole.events, "requests cut at {cut}");
        assert_eq!(c.f.counts, whole.f.counts, "requests cut at {cut}");
        assert_eq!(c.completed, whole.completed);
    }
    for cut in 1..r.len() {
        let c = run_conversation(&q, &r, &[], &[cut]);
        assert_eq!(c.events, whole.events, "responses cut at {cut}");
        assert_eq!(c.f.counts, whole.f.counts, "responses cut at {cut}");
        assert_eq!(c.completed, whole.completed);
    }
    // One byte per segment.
    let every: Vec<usize> = (1..r.len().max(q.len())).collect();
    let c = run_conversation(&q, &r, &every, &every);
    assert_eq!(c.events, whole.events);
    assert_eq!(c.f.counts, whole.f.counts);
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let mut c = Conn::new();
    c.send(C, &get("/"));
    c.send(C, &get("/"));
    let msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nHTTP/\r\n10\r\n1.1 200 OK\r\n\r\n\r\n\r\n0\r\nX-Trailer: y\r\n\r\nHTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
    c.send(S, msg);
    assert_eq!(c.statuses(), vec![200, 502]);
    assert_eq!(c.f.phase(S), Phase::Idle);

    // Upper-case hex, whitespace before extensions, several trailers, a chunked request.
    let mut c = Conn::new();
    c.send(C, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1A ; a=b ; c\r\nabcdefghijklmnopqrstuvwxyz\r\n0;last\r\nT1: a\r\nT2: b\r\n\r\n");
    c.send(C, &get("/2"));
    assert_eq!(c.methods(), vec![Method::Post, Method::Get]);
    assert_eq!(c.completed[C as usize], 2);
    c.send(S, b"HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n000003\r\nabc\r\n0\r\n\r\n");
    c.send(S, &resp(200, ""));
    assert_eq!(c.statuses(), vec![200, 200]);
}

#[test]
fn chunk_data_is_skipped_without_loads() {
    let mut c = Conn::new();
    c.send(C, &get("/"));
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n";
    c.send(S, head);
    let loads = c.loads;
    let data = vec![b'x'; 0x10_0000];
    for piece in data.chunks(1448) {
        c.send(S, piece);
    }
    assert_eq!(c.loads, loads, "chunk data costs no load");
    c.send(S, b"\r\n0\r\n\r\n");
    c.send(C, &get("/"));
    c.send(S, &resp(204, ""));
    assert_eq!(c.statuses(), vec![200, 204]);
}

#[test]
fn responses_without_bodies() {
    let mut c = Conn::new();
    c.send(C, b"HEAD / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    c.send(S, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    c.send(S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(S, b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
    c.send(S, b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(c.statuses(), vec![200, 200, 204, 304]);
    assert_eq!(c.completed[S as usize], 4);
    assert_eq!(c.f.phase(S), Phase::Idle);
}

#[test]
fn interim_responses_do_not_answer() {
    let mut c = Conn::new();
    c.send(C, b"POST /u HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    c.send(S, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(c.f.in_flight(), 1);
    c.send(C, b"hello");
    c.send(S, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.statuses(), vec![100, 103, 201]);
    assert_eq!(c.f.in_flight(), 0);
    let latencies: Vec<Option<u64>> = c.events.iter().filter_map(|(_, e)| if let Event::Response { latency_ns, .. } = e { Some(*latency_ns) } else { None }).collect();
    assert_eq!(latencies, vec![None, None, Some(3_000_000)]);
    c.send(C, &get("/never"));
    assert_eq!(c.f.close(), Closed { unanswered: 1, lost: false });
    assert_eq!(c.f.counts.unanswered, 1);
}

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

#[test]
fn content_length_values() {
    fn one(value: &str) -> (Vec<u16>, Vec<(u8, LostReason)>, Phase) {
        let mut c = Conn::new();
        c.send(C, &get("/"));
        c.send(C, &get("/"));
        c.send(S, format!("HTTP/1.1 200 OK\r\n{value}\r\n\r\nabcdeHTTP/1.1 404 X\r\nContent-Length: 0\r\n\r\n").as_bytes());
        (c.statuses(), c.losses(), c.f.phase(S))
    }
    let ok = (vec![200, 404], vec![], Phase::Idle);
    assert_eq!(one("Content-Length: 5"), ok);
    assert_eq!(one("Content-Length:5"), ok);
    assert_eq!(one("content-length: \t 5 \t"), ok);
    assert_eq!(one("Content-Length: 000005"), ok);
    assert_eq!(one("Content-Length: 5\r\nContent-Length: 5"), ok, "the same value twice");
    let bad = (vec![200], vec![(S, LostReason::BadLength)], Phase::Lost);
    for v in ["Content-Length: +5", "Content-Length: -5", "Content-Length: 5 5", "Content-Length: 5,5", "Content-Length: 0x5", "Content-Length:", "Content-Length: 5a", "Content-Length: 5\r\nContent-Length: 6", "Content-Length: 18446744073709551616", "Content-Length: 99999999999999999999999", "Content-Length: 5\r5", "Content-Length: \r"] {
        assert_eq!(one(v), bad, "{v}");
    }
    // A bare CR reads as SP (RFC 9112 section 2.2): whitespace around the digits.
    assert_eq!(one("Content-Length: \r5"), ok);
    assert_eq!(one("Content-Length: 5\r\r"), ok);
    // Not Content-Length.
    assert_eq!(one("Content-Lengths: 5\r\nContent-Length: 5"), ok);
    assert_eq!(one("X-Content-Length: 7\r\nContent-Length: 5"), ok);
}

#[test]
fn sixty_four_bit_lengths() {
    // The largest length there is: accepted, and the body never ends.
    let mut c = Conn::new();
    c.send(C, &get("/"));
    let s = c.send(S, b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n");
    assert_eq!(c.f.phase(S), Phase::Body);
    assert_eq!(c.f.dirs[S as usize].remaining, u64::MAX);
    assert_eq!(s.need_seq, s.next_seq.wrapping_add(1 << 30), "need_seq is capped");

    // Five gigabytes (beyond u32), skipped across sequence-number wraps without a load.
    let mut c = Conn::with_isn(1000, u32::MAX - 100);
    c.send(C, &get("/big"));
    c.send(C, &get("/next"));
    let body: u64 = 5_000_000_000;
    c.send(S, format!("HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n\r\n").as_bytes());
    let loads = c.loads;
    let mut left = body;
    let seg = 65_535u64;
    while left > 0 {
        let n = left.min(seg) as u32;
        let seq = c.seq[S as usize];
        let step = c.f.skip(S, seq, n);
        assert_eq!(step.next_seq, seq.wrapping_add(n));
        c.seq[S as usize] = seq.wrapping_add(n);
        left -= n as u64;
    }
    assert_eq!(c.loads, loads);
    assert_eq!(c.f.phase(S), Phase::Idle);
    assert_eq!(c.completed[S as usize], 0, "completions via skip are not recorded by this harness");
    c.send(S, &resp(404, ""));
    assert_eq!(c.statuses(), vec![200, 404]);

    // A gap inside a long body is harmless (reordered or never needed).
    let mut c = Conn::new();
    c.send(C, &get("/"));
    c.send(C, &get("/"));
    c.send(S, b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n");
    let seq = c.seq[S as usize];
    c.seq[S as usize] = seq.wrapping_add(10_000);
    c.at::<MAX_STEPS>(S, seq.wrapping_add(5000), &[b'x'; 5000]);
    c.send(S, &resp(200, ""));
    assert_eq!(c.statuses(), vec![200, 200]);
}

#[test]
fn retransmissions_count_once() {
    let mut c = Conn::new();
    let req = get("/");
    c.send(C, &req);
    c.at::<MAX_STEPS>(C, 1001, &req);
    let r = resp(200, "0123456789");
    let seq = c.seq[S as usize];
    c.send(S, &r[..20]);
    c.at::<MAX_STEPS>(S, seq, &r[..20]); // again
    c.at::<MAX_STEPS>(S, seq + 10, &r[10..]); // overlapping the first, with the rest
    c.seq[S as usize] = seq + r.len() as u32;
    c.send(S, &resp(200, "x")); // unanswered: unmatched
    assert_eq!(c.statuses(), vec![200, 200]);
    assert_eq!(c.f.counts.requests, 1);
    assert_eq!(c.f.counts.unmatched_responses, 1);
}

#[test]
fn not_http() {
    let mut c = Conn::new();
    let s = c.send(C, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 tls client hello");
    assert_eq!(s.event, Event::Lost(LostReason::NotHttp));
    assert_eq!(s.next_seq, 1001, "points at the message start");
    assert!(!s.more);
    assert_eq!(c.f.lost(C), Some(LostReason::NotHttp));
    // A response where requests belong is out of step too.
    let mut c = Conn::new();
    c.send(C, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(c.losses(), vec![(C, LostReason::NotHttp)]);
    // Cut short and split: still found.
    let mut c = Conn::new();
    c.send(C, b"GE");
    c.send(C, b"X / HTTP/1.1\r\n\r\n");
    assert_eq!(c.losses(), vec![(C, LostReason::NotHttp)]);
    assert_eq!(c.f.dirs[C as usize].next_seq, 1001);
}

#[test]
fn gaps_where_bytes_matter() {
    let mut c = Conn::new();
    c.send(C, &get("/a"));
    let seq = c.seq[C as usize];
    let s = c.at::<MAX_STEPS>(C, seq + 5, &get("/b"));
    assert_eq!(s.event, Event::Lost(LostReason::Gap));
    assert_eq!(c.f.lost(C), Some(LostReason::Gap));
    // A gap past the end of a body.
    let mut c = Conn::new();
    c.send(C, &get("/"));
    c.send(S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    let seq = c.seq[S as usize];
    c.at::<MAX_STEPS>(S, seq + 11, b"TTP/1.1 200 OK\r\n\r\n");
    assert_eq!(c.losses(), vec![(S, LostReason::Gap)]);
    // Framing the rest of the connection stops; the close cannot tell what was answered.
    c.send(C, &get("/"));
    assert_eq!(c.f.close(), Closed { unanswered: 1, lost: true });
    assert_eq!(c.f.counts.unanswered, 0);
}

#[test]
fn pipeline_deeper_than_the_queue() {
    let mut c = Conn::new();
    let mut all = Vec::new();
    for i in 0..PENDING_DEPTH + 1 {
        all.extend(get(&format!("/{i}")));
    }
    let s = c.send(C, &all);
    assert_eq!(s.event, Event::Lost(LostReason::PipelineTooDeep));
    assert_eq!(c.f.counts.requests, PENDING_DEPTH as u64);
    let ninth = 1001 + (all.len() - get("/8").len()) as u32;
    assert_eq!(s.next_seq, ninth, "points at the request that did not fit");
    // The responses of the queued requests still pair; the one after them cannot.
    let mut r = Vec::new();
    for _ in 0..PENDING_DEPTH + 1 {
        r.extend(resp(200, "ok"));
    }
    c.send(S, &r);
    assert_eq!(c.statuses().len(), PENDING_DEPTH);
    assert_eq!(c.losses(), vec![(C, LostReason::PipelineTooDeep), (S, LostReason::Unpaired)]);
}

#[test]
fn malformed_heads_and_chunks() {
    fn req(data: &[u8]) -> Vec<(u8, LostReason)> {
        let mut c = Conn::new();
        c.send(C, data);
        c.losses()
    }
    assert_eq!(req(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), vec![(C, LostReason::UnknownCoding)]);
    assert_eq!(req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), vec![(C, LostReason::BadChunk)]);
    assert_eq!(req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n;x\r\n"), vec![(C, LostReason::BadChunk)]);
    assert_eq!(req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n"), vec![(C, LostReason::BadChunk)]);
    assert_eq!(req(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n"), vec![(C, LostReason::BadChunk)]);
    assert_eq!(req(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"), vec![(C, LostReason::BadHead)]);
    assert_eq!(req(b"GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n"), vec![(C, LostReason::BadHead)]);
    assert_eq!(req(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), vec![(C, LostReason::BadHead)]);
    assert_eq!(req(b"GET / HTTP/1.1\r\n: empty name\r\n\r\n"), vec![(C, LostReason::BadHead)]);
    let mut long = b"GET / HTTP/1.1\r\n".to_vec();
    while long.len() <= MAX_HEAD as usize {
        long.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    long.extend_from_slice(b"\r\n");
    let mut c = Conn::new();
    c.send_cut(C, &long, &(1..long.len() / 1000).map(|i| i * 1000).collect::<Vec<_>>());
    assert_eq!(c.losses(), vec![(C, LostReason::HeadTooLong)]);
}

#[test]
fn step_budget() {
    // A 3000-byte head in one segment: bytes framing only counts (the rest of a start line, of
    // a name that matches nothing, of a value it does not read) go by the block, so ~57 lines of
    // 52 bytes take a few turns each, not 3000.
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    while head.len() < 3000 {
        head.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let mut c = Conn::new();
    let s = c.at::<500>(C, 1001, &head);
    assert_eq!(s.event, Event::Request { method: Method::Get });
    assert_eq!((c.f.counts.requests, c.completed[C as usize]), (1, 1));
    let mut c = Conn::new();
    let s = c.at::<64>(C, 1001, &head);
    assert_eq!(s.event, Event::Lost(LostReason::Budget));
    assert_eq!(c.losses(), vec![(C, LostReason::Budget)]);
    let mut c = Conn::new();
    let s = c.at::<MAX_STEPS>(C, 1001, &head);
    assert_eq!(s.event, Event::Request { method: Method::Get });
    assert_eq!((c.f.counts.requests, c.completed[C as usize]), (1, 1));
    // A megabyte of body in one (GSO-sized) segment: a handful of turns.
    let mut c = Conn::new();
    let mut msg = b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    msg.extend(vec![b'x'; 1_000_000]);
    msg.extend(get("/"));
    let s = c.at::<200>(C, 1001, &msg);
    assert_eq!((s.event, c.f.counts.requests, c.completed[C as usize]), (Event::Request { method: Method::Get }, 2, 2));
}

#[test]
fn joining_midway_starts_at_a_message() {
    let mut c = Conn::new();
    c.f = ConnFrame::zeroed(); // no SYN seen
    assert_eq!(c.at::<MAX_STEPS>(S, 10, b"tail of an old body").event, Event::None);
    assert_eq!(c.f.phase(S), Phase::Unsynced);
    c.at::<MAX_STEPS>(C, 50, &get("/"));
    assert_eq!(c.f.request_dir(), Some(C));
    c.at::<MAX_STEPS>(S, 29, &resp(200, ""));
    assert_eq!(c.statuses(), vec![200]);
    assert_eq!(c.methods(), vec![Method::Get]);
    assert_eq!(c.f.counts.latency_count, 1);
    // A request-looking segment where responses belong does not start framing.
    let mut c = Conn::new();
    c.f = ConnFrame::zeroed();
    c.f.set_request_dir(C);
    c.at::<MAX_STEPS>(S, 10, &get("/"));
    assert_eq!(c.f.phase(S), Phase::Unsynced);
}

#[test]
fn empty_lines_and_case() {
    let mut c = Conn::new();
    c.send(C, b"\r\n\r\n\nGET / HTTP/1.1\r\nHOST: h\r\n\r\n\r\nPOST / HTTP/1.1\r\ncOnTeNt-LeNgTh: 3\r\n\r\nabc");
    c.send(S, b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 2\r\n\r\nok\r\nHTTP/1.1 200 OK\r\nTRANSFER-ENCODING: Chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(c.methods(), vec![Method::Get, Method::Post]);
    assert_eq!(c.statuses(), vec![200, 200]);
    assert_eq!(c.losses(), vec![]);
    // Bare LF line ends.
    let mut c = Conn::new();
    c.send(C, b"GET / HTTP/1.1\nHost: h\n\nGET / HTTP/1.1\n\n");
    c.send(S, b"HTTP/1.1 200 OK\nContent-Length: 1\n\nxHTTP/1.1 204\n\n");
    assert_eq!(c.statuses(), vec![200, 204]);
    assert_eq!(c.losses(), vec![]);
}

#[test]
fn lost_reason_names_are_distinct() {
    for (i, a) in LostReason::ALL.iter().enumerate() {
        assert_eq!(LostReason::from_u8(*a as u8), Some(*a));
        for b in &LostReason::ALL[i + 1..] {
            assert_ne!(a.name(), b.name());
        }
    }
}

use proptest::prelude::*;

proptest! {
    /// Any segmentation of the conversation, with retransmitted segments, counts the same.
    #[test]
    fn any_segmentation(q_cuts in proptest::collection::vec(1usize..400, 0..12), r_cuts in proptest::collection::vec(1usize..500, 0..12), dup in any::<bool>()) {
        let (q, r) = conversation();
        let whole = run_conversation(&q, &r, &[], &[]);
        let mut qc = q_cuts.clone();
        qc.sort();
        let mut rc = r_cuts.clone();
        rc.sort();
        let mut c = Conn::new();
        c.tick = false;
        c.ts = 1_000_000;
        c.send_cut(C, &q, &qc);
        c.ts = 3_000_000;
        let mut at = 0;
        for &cut in rc.iter().chain([r.len()].iter()) {
            if cut > at && cut <= r.len() {
                let seq = c.seq[S as usize];
                c.send(S, &r[at..cut]);
                if dup {
                    c.at::<MAX_STEPS>(S, seq, &r[at..cut]);
                }
                at = cut;
            }
        }
        prop_assert_eq!(&c.events, &whole.events);
        prop_assert_eq!(c.f.counts, whole.f.counts);
    }
}

/// Where the daemon's framer takes over a lost direction: a gap found between messages is a
/// message boundary (the next message starts at `next_seq`); a gap inside a message is not.
/// A direction is handed off once.
#[test]
fn losses_say_whether_a_message_starts_where_they_stopped() {
    // Between messages: one request counted, the next segment skips ahead.
    let mut c = Conn::new();
    let first = get("/a");
    c.send(C, &first);
    let lost_at = c.seq[C as usize];
    c.at::<MAX_STEPS>(C, lost_at + 40, &get("/c"));
    let d = &c.f.dirs[C as usize];
    assert_eq!((d.lost_reason(), d.next_seq), (Some(LostReason::Gap), lost_at));
    assert!(d.lost_at_boundary() && d.hand_off_pending());
    c.f.dirs[C as usize].set_handed_off();
    assert!(!c.f.dirs[C as usize].hand_off_pending());
    assert!(c.f.dirs[C as usize].lost_at_boundary(), "telling the daemon keeps the boundary");

    // Inside a head: not a boundary.
    let mut c = Conn::new();
    let req = get("/a");
    c.send(C, &req[..5]);
    let at = c.seq[C as usize];
    c.at::<MAX_STEPS>(C, at + 10, &req[15..]);
    let d = &c.f.dirs[C as usize];
    assert_eq!(d.lost_reason(), Some(LostReason::Gap));
    assert!(!d.lost_at_boundary() && d.hand_off_pending());

    // At a message it could not count (more than PENDING_DEPTH waiting): its first byte.
    let mut c = Conn::new();
    for i in 0..=PENDING_DEPTH {
        c.send(C, &get(&format!("/{i}")));
    }
    let d = &c.f.dirs[C as usize];
    assert_eq!(d.lost_reason(), Some(LostReason::PipelineTooDeep));
    assert!(d.lost_at_boundary());
    assert_eq!(d.next_seq, 1001 + (get("/0").len() * PENDING_DEPTH) as u32);
    // Not lost: nothing to hand off.
    assert!(!c.f.dirs[S as usize].hand_off_pending() && !c.f.dirs[S as usize].lost_at_boundary());
}

#[test]
fn field_lines_framing_does_not_read_take_one_turn_each() {
    // 3500 copies of `line` in a request head, framed with at most `MAX` turns in one segment.
    fn within<const MAX: usize>(line: &[u8]) -> bool {
        let mut head = b"GET /ok HTTP/1.1\r\nHost: x\r\n".to_vec();
        for _ in 0..3500 {
            head.extend_from_slice(line);
        }
        head.extend_from_slice(b"\r\n");
        let mut c = Conn::new();
        let s = c.at::<MAX>(C, 1001, &head);
        (s.event, c.f.counts.requests, c.completed[C as usize]) == (Event::Request { method: Method::Get }, 1, 1)
    }
    // A name that starts like none of the names framing reads: the whole line in one turn.
    assert!(within::<4000>(b"a:\r\n"));
    // Names that start like `content-length`, `transfer-encoding` or `upgrade` are matched in a
    // turn too (`c:` lines: the name and `:`, then the rest of the line; and a turn more where
    // a line crosses a block).
    assert!(within::<7500>(b"c:\r\n"));
    assert!(!within::<6500>(b"c:\r\n"), "two turns per line");
    // A value framing reads goes byte by byte: a Content-Length of 14,000 digits in one
    // (GSO-sized) segment needs more turns than MAX_STEPS.
    let mut head = b"GET /ok HTTP/1.1\r\nHost: x\r\nContent-Length: ".to_vec();
    head.extend(core::iter::repeat_n(b'0', 14_000));
    head.extend_from_slice(b"\r\n\r\n");
    let mut c = Conn::new();
    let s = c.at::<MAX_STEPS>(C, 1001, &head);
    assert_eq!(s.event, Event::Lost(LostReason::Budget));
    assert_eq!((c.f.counts.requests, c.losses()), (1, vec![(C, LostReason::Budget)]));
    // Cut into MSS-sized segments it fits.
    let mut c = Conn::new();
    let cuts: Vec<usize> = (1..head.len() / 1448 + 1).map(|i| i * 1448).collect();
    c.send_cut(C, &head, &cuts);
    assert_eq!((c.f.counts.requests, c.losses(), c.completed[C as usize]), (1, vec![], 1));
}
