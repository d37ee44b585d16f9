//! Turns per segment: what one turn takes, and what happens when a segment needs more turns than
//! the caller allows.

use super::*;

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
