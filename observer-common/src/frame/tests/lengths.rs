//! Content-Length values, and bodies too long for 32 bits.

use super::*;

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
    for v in [
        "Content-Length: +5",
        "Content-Length: -5",
        "Content-Length: 5 5",
        "Content-Length: 5,5",
        "Content-Length: 0x5",
        "Content-Length:",
        "Content-Length: 5a",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 18446744073709551616",
        "Content-Length: 99999999999999999999999",
        "Content-Length: 5\r5",
        "Content-Length: \r",
    ] {
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
