//! Where framing loses its place, why, and where the daemon's framer takes over.

use super::*;

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
