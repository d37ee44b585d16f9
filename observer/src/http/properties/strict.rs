//! Strict framing in both framers: Content-Length values and status codes as written, valid and
//! not; a valid length read exactly (2 GiB and beyond) and its body skipped by both, the
//! kernel's by arithmetic and the daemon's by asking the kernel not to forward it.
use observer_common::{
    conn::ConnKey,
    frame::{Event, LostReason, Phase, MAX_STEPS},
    http::{SEG_ACK, SEG_SYN},
};

use super::{
    super::{
        framing::{response_body, BodyMode, Found, Framer, Head},
        testgen::{KernelFeed, Rng, C, S},
        HttpTable, Outcome,
    },
    scripts::isns,
};

/// A Content-Length value as written, and the length it means (`None`: not a length).
fn length_value(rng: &mut Rng) -> (String, Option<u64>) {
    let n = match rng.range(0, 6) {
        0 => rng.range(0, 100),
        1 => (1 << 31) + rng.range(0, 4) - 2,
        2 => (1 << 32) + rng.range(0, 4) - 2,
        3 => rng.range(0, 1 << 40),
        4 => rng.next(),
        5 => u64::MAX - rng.range(0, 2),
        _ => rng.range(0, 1 << 36),
    };
    let ws = |rng: &mut Rng| rng.pick(&["", "", " ", "\t", "  \t"]);
    if rng.chance(40) {
        let zeros = "0".repeat(rng.range(0, 3) as usize);
        return (format!("{}{zeros}{n}{}", ws(rng), ws(rng)), Some(n));
    }
    let big = (u64::MAX as u128) + 1 + rng.range(0, 1 << 40) as u128;
    let bad = match rng.range(0, 12) {
        0 => format!("+{n}"),
        1 => format!("-{n}"),
        2 => format!("{n} {n}"),
        3 => format!(" {n} 5"),
        4 => format!("{n},{n}"),
        5 => format!("0x{n:x}"),
        6 => format!("{big}"),
        7 => "99999999999999999999".to_owned(),
        8 => String::new(),
        9 => format!("{n}a"),
        10 => format!("{n}\r5"),
        11 => format!("{n}.0"),
        _ => format!("{n}\x0b"),
    };
    (bad, None)
}

/// A status code as written, and the status it means (`None`: not a status line).
fn status_value(rng: &mut Rng) -> (String, Option<u16>) {
    if rng.chance(40) {
        let st = rng.range(100, 599) as u16;
        return (st.to_string(), Some(st));
    }
    (rng.pick(&["000", "099", "600", "999", "99", "1000", "2000", "20", "2x0", "-200", "0200"]).to_owned(), None)
}

/// Feeds `data` to a reference framer of `dir`'s kind, a GET's response when it frames responses.
fn reference_heads(dir: u8, data: &[u8]) -> (Vec<Found>, Framer) {
    let mut f = Framer::new(dir == S);
    let found = f.feed(data, 1, &mut |h| match h {
        Head::Request { body, .. } => *body,
        Head::Response { status, body } => response_body(*status, *body, Some("GET")),
    });
    (found, f)
}

/// A message whose body is `length` bytes of `dir` (a POST or a 200 response), skipped by both
/// framers as they do (the kernel's by arithmetic, no load; the daemon by asking the kernel not
/// to forward it), then the next message: both count it, whatever the length's size.
fn skip_a_body(rng: &mut Rng, dir: u8, head: &[u8], length: u64) {
    let next: &[u8] = if dir == S { b"HTTP/1.1 204 No Content\r\n\r\n" } else { b"GET /next HTTP/1.1\r\n\r\n" };
    let isn = isns(rng);
    let first = isn[dir as usize].wrapping_add(1);
    // The kernel framer.
    let mut k = KernelFeed::new(Some(isn), MAX_STEPS);
    if dir == S {
        k.segment(C, isn[0].wrapping_add(1), b"GET / HTTP/1.1\r\n\r\n", 1);
    }
    k.segment(dir, first, head, 2);
    assert_eq!(k.f.dirs[dir as usize].remaining, length, "the kernel reads the length");
    let mut at = first.wrapping_add(head.len() as u32);
    let mut left = length;
    while left > 0 {
        let n = left.min(rng.pick(&[1448, 65_535, 1 << 30])) as u32;
        k.body(dir, at, n, 3);
        at = at.wrapping_add(n);
        left -= n as u64;
    }
    k.segment(dir, at, next, 4);
    assert_eq!(k.lost(), vec![], "the kernel framer after a body of {length} bytes");
    assert_eq!(k.events.len(), if dir == S { 3 } else { 2 }, "{:?}", k.events);
    // The reference, with the kernel's skips emulated: it forwards the bytes from the hint on.
    let mut t = HttpTable::new(4);
    let key = ConnKey::zeroed();
    t.on_record(key, C, isn[0], SEG_SYN, b"", 1);
    t.on_record(key, S, isn[1], SEG_SYN | SEG_ACK, b"", 1);
    let mut outcomes = Vec::new();
    if dir == S {
        outcomes.extend(t.on_record(key, C, isn[0].wrapping_add(1), 0, b"GET / HTTP/1.1\r\n\r\n", 1).outcomes);
    }
    let mut skip = None;
    let feed = |t: &mut HttpTable, at: u32, data: &[u8], outcomes: &mut Vec<Outcome>, skip: &mut Option<u32>| {
        let u = t.on_record(key, dir, at, 0, data, 2);
        outcomes.extend(u.outcomes);
        if let Some(h) = u.hints {
            *skip = Some(if dir == S { h.skip_out } else { h.skip_in });
        }
    };
    feed(&mut t, first, head, &mut outcomes, &mut skip);
    let mut at = first.wrapping_add(head.len() as u32);
    let mut left = length;
    let mut records = 0;
    while left > 0 {
        if let Some(to) = skip.take() {
            let ahead = to.wrapping_sub(at);
            assert!((ahead as i32) > 0 && ahead as u64 <= left, "a hint {ahead} bytes ahead, {left} of the body left");
            at = to;
            left -= ahead as u64;
            continue;
        }
        let n = left.min(1000) as usize;
        feed(&mut t, at, &vec![b'x'; n], &mut outcomes, &mut skip);
        at = at.wrapping_add(n as u32);
        left -= n as u64;
        records += 1;
        assert!(records < 1000, "the body of {length} bytes is forwarded, not skipped");
    }
    feed(&mut t, at, next, &mut outcomes, &mut skip);
    assert!(!outcomes.iter().any(|o| matches!(o, Outcome::FramingLost | Outcome::NotHttp)), "the reference after a body of {length} bytes: {outcomes:?}");
    assert_eq!(outcomes.len(), if dir == S { 3 } else { 2 }, "{outcomes:?}");
}

/// One case of [`super::strict_lengths_and_statuses_in_both_framers`].
pub(super) fn lengths_and_statuses(rng: &mut Rng) {
    let dir = if rng.chance(70) { S } else { C };
    let start = if dir == S { "HTTP/1.1 200 OK\r\n" } else { "POST /u HTTP/1.1\r\nHost: h\r\n" };
    if dir == S && rng.chance(30) {
        // A status code.
        let (code, status) = status_value(rng);
        let msg = format!("HTTP/1.1 {code} Reason\r\nContent-Length: 0\r\n\r\n");
        let mut k = KernelFeed::new(Some(isns(rng)), MAX_STEPS);
        k.segment(C, k.f.dirs[C as usize].next_seq, b"GET / HTTP/1.1\r\n\r\n", 1);
        k.segment(S, k.f.dirs[S as usize].next_seq, msg.as_bytes(), 2);
        let (found, _) = reference_heads(S, msg.as_bytes());
        match status {
            Some(st) => {
                let latency_ns = (st >= 200 || st == 101).then_some(1);
                assert_eq!(k.events.last(), Some(&(S, Event::Response { status: st, latency_ns })), "{msg:?}");
                assert!(matches!(found.as_slice(), [Found::Head(Head::Response { status, .. }, _)] if *status == st), "{msg:?}: {found:?}");
            }
            None => {
                assert_eq!(k.lost(), vec![(S, LostReason::NotHttp)], "{msg:?}");
                assert!(matches!(found.as_slice(), [Found::Broken(_)]), "{msg:?}: {found:?}");
            }
        }
        return;
    }
    let (value, length) = length_value(rng);
    let name = rng.pick(&["Content-Length", "content-length", "CONTENT-LENGTH"]);
    let mut head = format!("{start}{name}:{value}\r\n");
    let conflicting = length.is_some() && rng.chance(20);
    if conflicting {
        let other = length.map(|n| n.wrapping_add(rng.range(1, 1000)));
        head.push_str(&format!("Content-Length: {}\r\n", other.unwrap_or(0)));
    } else if length.is_some() && rng.chance(20) {
        head.push_str(&format!("Content-Length: 0{}\r\n", length.unwrap_or(0)));
    }
    head.push_str("\r\n");
    let length = if conflicting { None } else { length };
    let mut k = KernelFeed::new(Some(isns(rng)), MAX_STEPS);
    if dir == S {
        k.segment(C, k.f.dirs[C as usize].next_seq, b"GET / HTTP/1.1\r\n\r\n", 1);
    }
    k.segment(dir, k.f.dirs[dir as usize].next_seq, head.as_bytes(), 2);
    let (found, f) = reference_heads(dir, head.as_bytes());
    match length {
        Some(n) => {
            assert_eq!(k.lost(), vec![], "{head:?}");
            let d = &k.f.dirs[dir as usize];
            assert_eq!((d.phase(), d.remaining), if n == 0 { (Phase::Idle, 0) } else { (Phase::Body, n) }, "{head:?}");
            let body = match found.as_slice() {
                [Found::Head(Head::Response { body, .. } | Head::Request { body, .. }, _)] => *body,
                _ => panic!("{head:?}: {found:?}"),
            };
            assert_eq!(body, BodyMode::Length(n), "{head:?}");
            assert_eq!(f.skippable(), n, "{head:?}");
            if n <= 1 << 36 && rng.chance(20) {
                skip_a_body(rng, dir, head.as_bytes(), n);
            }
        }
        None => {
            assert_eq!(k.lost(), vec![(dir, LostReason::BadLength)], "{head:?}");
            assert!(matches!(found.as_slice(), [Found::Broken(_)]), "{head:?}: {found:?}");
        }
    }
}

/// The body of [`super::named_bad_lengths_and_statuses_are_not_http_to_either_framer`].
pub(super) fn named_values() {
    for value in ["+5", "-1", " 5 5", "99999999999999999999", "18446744073709551616", "5\r\nContent-Length: 6", "5\r5", "0x5", ""] {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
        let mut k = KernelFeed::new(Some([1000, 5000]), MAX_STEPS);
        k.segment(C, 1001, b"GET / HTTP/1.1\r\n\r\n", 1);
        k.segment(S, 5001, head.as_bytes(), 2);
        assert_eq!(k.lost(), vec![(S, LostReason::BadLength)], "kernel, Content-Length {value:?}");
        let (found, _) = reference_heads(S, head.as_bytes());
        assert!(matches!(found.as_slice(), [Found::Broken(_)]), "reference, Content-Length {value:?}: {found:?}");
    }
    for code in ["000", "600", "99", "1000", "099"] {
        let head = format!("HTTP/1.1 {code} X\r\n\r\n");
        let mut k = KernelFeed::new(Some([1000, 5000]), MAX_STEPS);
        k.segment(C, 1001, b"GET / HTTP/1.1\r\n\r\n", 1);
        k.segment(S, 5001, head.as_bytes(), 2);
        assert_eq!(k.lost(), vec![(S, LostReason::NotHttp)], "kernel, status {code}");
        let (found, _) = reference_heads(S, head.as_bytes());
        assert!(matches!(found.as_slice(), [Found::Broken(_)]), "reference, status {code}: {found:?}");
    }
    // Chunk sizes are hex digits only too (no sign, which `from_str_radix` would take).
    let msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nabcde\r\n0\r\n\r\n";
    let (found, _) = reference_heads(S, msg);
    assert!(matches!(found.as_slice(), [Found::Head(..), Found::Broken(_)]), "reference, chunk size +5: {found:?}");
    // Bodies of 2 GiB and more, read and skipped by both, the next message counted.
    for length in [(1u64 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 5_000_000_000, 1 << 36] {
        for dir in [C, S] {
            let head = if dir == S {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n")
            } else {
                format!("POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\n")
            };
            skip_a_body(&mut Rng(length), dir, head.as_bytes(), length);
        }
    }
}
