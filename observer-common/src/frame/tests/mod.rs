//! The framer fed segment by segment as a BPF caller would ([`Conn`]), by theme: whole
//! exchanges, protocol switches, lengths, segmentation and retransmission, losses, and the
//! turn budget.

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
        Self {
            f,
            seq: [isn_c.wrapping_add(1), isn_s.wrapping_add(1)],
            ts: 0,
            events: Vec::new(),
            completed: [0; 2],
            loads: 0,
            scan: Scan::zeroed(),
            tick: true,
        }
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

mod budget;
mod exchanges;
mod lengths;
mod losses;
mod segmentation;
mod switches;

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
fn lost_reason_names_are_distinct() {
    for (i, a) in LostReason::ALL.iter().enumerate() {
        assert_eq!(LostReason::from_u8(*a as u8), Some(*a));
        for b in &LostReason::ALL[i + 1..] {
            assert_ne!(a.name(), b.name());
        }
    }
}

/// One conversation with most of what framing knows: requests first, then responses.
fn conversation() -> (Vec<u8>, Vec<u8>) {
    let mut q = Vec::new();
    q.extend_from_slice(b"\r\nGET /a HTTP/1.1\r\nHost: h\r\nX-Long: 0123456789012345678901234567890123456789012345678901234567890123456789\r\n\r\n");
    q.extend_from_slice(b"POST /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\ncontent-LENGTH:   5  \r\n\r\nhello");
    q.extend_from_slice(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n");
    q.extend_from_slice(
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n5;name=value\r\nHTTP/\r\nA \r\n1.1 200 OK\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
    );
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
