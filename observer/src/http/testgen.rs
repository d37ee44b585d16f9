//! Generated HTTP/1.x traffic for the tests that compare or torture the two framers
//! (`differential`, `properties`): well-formed connections and what they mean, noise and
//! corruptions, segmentations with duplicates, reorders and overlapping retransmissions, and a
//! driver that feeds the kernel framer (`observer_common::frame`) as a BPF program does, checking
//! its bounds after every segment. One place, so that every test draws from the same generators.
use observer_common::{
    frame::{ConnFrame, Event, FrameCounts, LostReason, Phase, Scan, Turn, BLOCK, MAX_CHUNK_LINE, MAX_HEAD, PENDING_DEPTH},
    http::{DIR_IN, DIR_OUT, START_LEN},
};

pub const C: u8 = DIR_IN;
pub const S: u8 = DIR_OUT;

/// SplitMix64: small, deterministic, good enough to vary streams.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }

    /// `n` arbitrary bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One round: requests sent back to back (pipelined), then their responses.
pub struct Round {
    pub requests: Vec<u8>,
    pub responses: Vec<u8>,
}

/// A generated connection and what it means.
pub struct Script {
    pub rounds: Vec<Round>,
    pub methods: Vec<String>,
    pub statuses: Vec<u16>,
    pub unanswered: u64,
    /// The last response is delimited by the close (FIN after the last segment).
    pub until_close: bool,
    /// A deliberately malformed message ends the connection: both framers must lose it.
    pub broken: Option<u8>,
}

fn mixed_case(rng: &mut Rng, name: &str) -> String {
    match rng.range(0, 3) {
        0 => name.to_owned(),
        1 => name.to_ascii_lowercase(),
        2 => name.to_ascii_uppercase(),
        _ => name.chars().map(|c| if rng.chance(50) { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect(),
    }
}

fn ows(rng: &mut Rng) -> &'static str {
    rng.pick(&["", "", " ", "  ", "\t", " \t"])
}

/// Text that looks like message starts and chunk sizes: what bodies and noise are made of.
const SNIPPETS: [&[u8]; 7] = [b"HTTP/1.1 200 OK\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", b"0\r\n\r\n", b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n", b"\r\n\r\n", b"chunked", b"abcdefghij"];

/// Bytes of a body: text that looks like message starts and chunk sizes, and arbitrary bytes.
pub fn body(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        if rng.chance(60) {
            v.extend_from_slice(rng.pick(&SNIPPETS));
        } else {
            v.push(rng.next() as u8);
        }
    }
    v.truncate(n);
    v
}

/// A body length, at most `max` (drawn the same way whatever `max`, so a seed makes the same
/// connection apart from its body lengths).
fn body_len(rng: &mut Rng, max: usize) -> usize {
    let n = match rng.range(0, 9) {
        0..=2 => 0,
        3..=5 => rng.range(1, 100) as usize,
        6..=8 => rng.range(100, 3000) as usize,
        _ => rng.range(3000, 100_000) as usize,
    };
    n.min(max)
}

fn extra_headers(rng: &mut Rng) -> String {
    const NAMES: [&str; 12] = ["Host", "User-Agent", "Accept", "X-Request-Id", "Content-Type", "Cache-Control", "X-Content-Length", "Content-Lengths", "Transfer-Encodings", "Upgrade-Insecure-Requests", "Connection", "Te"];
    let mut s = String::new();
    for _ in 0..rng.range(0, 5) {
        let name = rng.pick(&NAMES);
        let name = mixed_case(rng, name);
        let len = if rng.chance(5) { rng.range(500, 3000) } else { rng.range(0, 40) };
        let value: String = (0..len).map(|_| (b' ' + (rng.next() % 95) as u8) as char).collect();
        s.push_str(&format!("{name}:{}{}\r\n", ows(rng), value.trim()));
    }
    s
}

fn length_header(rng: &mut Rng, n: usize) -> String {
    let one = |rng: &mut Rng| format!("{}:{}{}{}\r\n", mixed_case(rng, "Content-Length"), ows(rng), n, ows(rng));
    let mut s = one(rng);
    if rng.chance(5) {
        s.push_str(&one(rng));
    }
    s
}

fn chunked_header(rng: &mut Rng) -> String {
    let value = rng.pick(&["chunked", "Chunked", "CHUNKED", "gzip, chunked", "gzip,chunked", "deflate , chunked "]);
    format!("{}:{}{value}\r\n", mixed_case(rng, "Transfer-Encoding"), ows(rng))
}

fn chunked(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    let max = rng.pick(&[1usize, 7, 100, 5000, 70_000]);
    while at < data.len() {
        let n = (rng.range(1, max as u64) as usize).min(data.len() - at);
        let size = if rng.chance(50) { format!("{n:x}") } else { format!("{n:X}") };
        let size = if rng.chance(10) { format!("000{size}") } else { size };
        let ext = rng.pick(&["", "", ";a=b", ";x", " ;name=\"v\"", ";a;b=c"]);
        out.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
        out.extend_from_slice(&data[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
    }
    out.extend_from_slice(rng.pick(&[&b"0\r\n"[..], b"0;done\r\n", b"000\r\n"]));
    for _ in 0..rng.range(0, 2) {
        out.extend_from_slice(rng.pick(&[&b"X-Checksum: abc\r\n"[..], b"Expires: never\r\n", b"Content-Length: 5\r\n"]));
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A request (head and body) with `method`.
fn request(rng: &mut Rng, method: &str, expect_continue: bool, max_body: usize) -> Vec<u8> {
    let target = match (method, rng.range(0, 5)) {
        ("OPTIONS", 0) => "*".to_owned(),
        (_, 1) => "http://example.test/a?b=c".to_owned(),
        _ => format!("/{}", rng.range(0, 1_000_000)),
    };
    let mut head = String::new();
    if rng.chance(5) {
        head.push_str("\r\n");
    }
    head.push_str(&format!("{method} {target} HTTP/1.{}\r\n", rng.range(0, 1)));
    head.push_str(&extra_headers(rng));
    let mut data = Vec::new();
    if matches!(method, "POST" | "PUT" | "PATCH") && rng.chance(80) {
        let n = body_len(rng, max_body);
        let b = body(rng, n);
        if expect_continue {
            head.push_str("Expect: 100-continue\r\n");
        }
        if rng.chance(60) {
            head.push_str(&length_header(rng, b.len()));
            data = b;
        } else {
            head.push_str(&chunked_header(rng));
            data = chunked(rng, &b);
        }
    } else if rng.chance(10) {
        head.push_str(&length_header(rng, 0));
    }
    head.push_str(&extra_headers(rng));
    head.push_str("\r\n");
    let mut v = head.into_bytes();
    v.extend(data);
    v
}

fn status_line(rng: &mut Rng, status: u16) -> String {
    let reason = rng.pick(&[" OK", " Whatever It Is", " ", " X"]);
    format!("HTTP/1.{} {status}{reason}\r\n", rng.range(0, 1))
}

/// A final response. `no_body`: the request was HEAD, or the status has none: headers may say
/// anything, no body follows. `until_close`: delimited by the close.
fn response(rng: &mut Rng, status: u16, no_body: bool, until_close: bool, max_body: usize) -> Vec<u8> {
    let mut head = status_line(rng, status);
    head.push_str(&extra_headers(rng));
    let n = body_len(rng, max_body);
    let b = body(rng, n);
    let mut data = Vec::new();
    if until_close {
        if rng.chance(30) {
            head.push_str(&format!("{}: gzip\r\n", mixed_case(rng, "Transfer-Encoding")));
        }
        data = b;
    } else if rng.chance(60) {
        head.push_str(&length_header(rng, b.len()));
        if !no_body {
            data = b;
        }
    } else if rng.chance(90) || !no_body {
        head.push_str(&chunked_header(rng));
        if !no_body {
            data = chunked(rng, &b);
        }
    }
    head.push_str(&extra_headers(rng));
    head.push_str("\r\n");
    let mut v = head.into_bytes();
    v.extend(data);
    v
}

fn interim(rng: &mut Rng) -> (u16, Vec<u8>) {
    match rng.range(0, 2) {
        0 => (100, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        1 => (102, b"HTTP/1.1 102 Processing\r\n\r\n".to_vec()),
        _ => (103, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec()),
    }
}

/// A malformed message, and the direction it is in. Malformed the same way for both framers.
fn broken(rng: &mut Rng) -> (u8, Vec<u8>) {
    match rng.range(0, 7) {
        0 => (S, b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n".to_vec()),
        1 => (S, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde".to_vec()),
        2 => (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec()),
        3 => (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n".to_vec()),
        4 => (S, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http at all".to_vec()),
        5 => (C, b"GET / HTTP/1.1\r\nno colon\r\n\r\n".to_vec()),
        _ => (C, b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n".to_vec()),
    }
}

/// A connection of one to six rounds, bodies up to 100 KB.
pub fn script(rng: &mut Rng, allow_broken: bool) -> Script {
    script_sized(rng, allow_broken, usize::MAX)
}

/// [`script`] with bodies of at most `max_body` bytes (before chunking): the many-case tests
/// keep their connections small.
pub fn script_sized(rng: &mut Rng, allow_broken: bool, max_body: usize) -> Script {
    let mut s = Script { rounds: Vec::new(), methods: Vec::new(), statuses: Vec::new(), unanswered: 0, until_close: false, broken: None };
    let rounds = rng.range(1, 6);
    for r in 0..rounds {
        let last_round = r + 1 == rounds;
        let k = rng.range(1, 4);
        let mut round = Round { requests: Vec::new(), responses: Vec::new() };
        // The last round may end the connection specially.
        let ending = if last_round && !allow_broken { rng.range(0, 9) } else { 9 };
        // How many of this round's requests get responses (the rest are unanswered at close).
        let answered = if ending == 0 { rng.range(0, k - 1) } else { k };
        for i in 0..k {
            let last = i + 1 == k;
            let leave = if last && (ending == 2 || ending == 3) {
                // Asks to leave HTTP: the last request of its round (framing holds after it).
                Some(ending == 3)
            } else if last && !last_round && rng.chance(8) {
                Some(rng.chance(50))
            } else {
                None
            };
            let method = match leave {
                Some(true) => "CONNECT",
                Some(false) => "GET",
                None => rng.pick(&["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
            };
            let expect = rng.chance(20);
            let req = match leave {
                Some(true) => b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n".to_vec(),
                Some(false) => format!("GET /ws HTTP/1.1\r\nHost: h\r\n{}: websocket\r\nConnection: Upgrade\r\n\r\n", mixed_case(rng, "Upgrade")).into_bytes(),
                None => request(rng, method, expect, max_body),
            };
            round.requests.extend(req);
            s.methods.push(method.to_owned());
            if i >= answered {
                continue;
            }
            if expect || rng.chance(10) {
                let (st, bytes) = interim(rng);
                round.responses.extend(bytes);
                s.statuses.push(st);
            }
            if let Some(connect) = leave {
                // A switch ends HTTP on the connection: only in the last round.
                if last_round {
                    let (st, head) = if connect { (200, "HTTP/1.1 200 Connection Established\r\n\r\n") } else { (101, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n") };
                    round.responses.extend_from_slice(head.as_bytes());
                    round.responses.extend(body(rng, 300));
                    s.statuses.push(st);
                } else {
                    let st = if connect { 407 } else { 400 };
                    round.responses.extend(response(rng, st, false, false, max_body));
                    s.statuses.push(st);
                }
                continue;
            }
            let st = rng.pick(&[200u16, 200, 200, 201, 204, 206, 301, 302, 304, 400, 404, 429, 500, 502, 503, 504]);
            let until_close = last_round && last && ending == 1 && method != "HEAD" && st != 204 && st != 304;
            s.until_close |= until_close;
            round.responses.extend(response(rng, st, method == "HEAD" || st == 204 || st == 304, until_close, max_body));
            s.statuses.push(st);
        }
        s.unanswered += k - answered;
        s.rounds.push(round);
        if last_round && (ending == 2 || ending == 3) {
            // After the switch: another protocol in both directions, HTTP-looking at times.
            s.rounds.push(Round { requests: body(rng, 500), responses: body(rng, 200) });
        }
    }
    if allow_broken {
        let (dir, bytes) = broken(rng);
        s.broken = Some(dir);
        let round = if dir == C {
            Round { requests: bytes, responses: Vec::new() }
        } else {
            s.methods.push("GET".to_owned());
            Round { requests: b"GET /last HTTP/1.1\r\n\r\n".to_vec(), responses: bytes }
        };
        // A broken message ends the connection: nothing follows it.
        s.rounds.push(round);
    }
    s
}

/// Tokens noise is made of, besides arbitrary bytes: pieces of heads, lengths that are and are
/// not numbers, status codes in and out of 100..=599, chunk sizes, line ends.
const TOKENS: [&[u8]; 40] = [
    b"GET / HTTP/1.1\r\n",
    b"HEAD /h HTTP/1.1\r\n",
    b"POST /p HTTP/1.0\r\n",
    b"CONNECT a:443 HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 101 Switching\r\n",
    b"HTTP/1.1 100 Continue\r\n",
    b"HTTP/1.1 204 \r\n",
    b"HTTP/1.1 304 X\r\n",
    b"HTTP/1.0 503\r\n",
    b"HTTP/1.1 000 X\r\n",
    b"HTTP/1.1 600 X\r\n",
    b"HTTP/1.1 99 X\r\n",
    b"HTTP/1.1 1000 X\r\n",
    b"HTTP/1.2 200 X\r\n",
    b"Content-Length: ",
    b"content-length:",
    b"Transfer-Encoding: chunked",
    b"transfer-encoding: gzip",
    b"Upgrade: websocket",
    b"Host: h",
    b"5",
    b"+5",
    b"-1",
    b" 5 5",
    b"99999999999999999999",
    b"18446744073709551615",
    b"4294967296",
    b"2147483648",
    b"0",
    b"1a;ext=1",
    b"ffffffffffffffff",
    b"\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b": ",
    b" ",
    b"\t",
    b"\r\n\r\n",
];

/// Bytes that are mostly pieces of HTTP, put together at random.
pub fn http_noise(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 32);
    while v.len() < n {
        if rng.chance(80) {
            v.extend_from_slice(rng.pick(&TOKENS));
        } else {
            v.push(rng.next() as u8);
        }
    }
    v.truncate(n);
    v
}

/// A few random edits of `data`: bytes changed, inserted, deleted, a range repeated, a token
/// inserted, the end cut off.
pub fn corrupt(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        let at = if data.is_empty() { 0 } else { rng.range(0, data.len() as u64 - 1) as usize };
        match rng.range(0, 5) {
            0 if !data.is_empty() => data[at] = rng.next() as u8,
            1 => data.insert(at, rng.pick(&[b'\r', b'\n', b' ', b':', b'0', b'9', 0, 0xff])),
            2 if !data.is_empty() => {
                let end = (at + rng.range(1, 20) as usize).min(data.len());
                data.drain(at..end);
            }
            3 if !data.is_empty() => {
                let end = (at + rng.range(1, 40) as usize).min(data.len());
                let piece = data[at..end].to_vec();
                data.splice(at..at, piece);
            }
            4 => {
                let token = rng.pick(&TOKENS);
                data.splice(at..at, token.iter().copied());
            }
            _ => data.truncate(at),
        }
    }
}

/// Cuts `len` bytes into segments of up to `max` bytes, with now and then a larger one (so that
/// long bodies do not make thousands of tiny segments). Offsets `(start, end)`.
pub fn segments(rng: &mut Rng, len: usize, max: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < len {
        let max = if max < 1448 && rng.chance(10) { 4096 } else { max };
        let n = (rng.range(1, max as u64) as usize).min(len - at);
        v.push((at, at + n));
        at += n;
    }
    v
}

/// How a network (and two CPUs racing on one flow) mess up the order of segments, in percent
/// per segment.
#[derive(Clone, Copy, Debug)]
pub struct Mess {
    /// Delivered again, right after or a few segments later.
    pub dup: u64,
    /// Swapped with the next one.
    pub swap: u64,
    /// Delivered two to four places later.
    pub delay: u64,
    /// Followed by a retransmission that overlaps it and its neighbours.
    pub overlap: u64,
}

impl Mess {
    pub const NONE: Mess = Mess { dup: 0, swap: 0, delay: 0, overlap: 0 };

    pub fn random(rng: &mut Rng) -> Mess {
        let p = |rng: &mut Rng| if rng.chance(50) { 0 } else { rng.pick(&[2, 5, 10, 30]) };
        Mess { dup: p(rng), swap: p(rng), delay: p(rng), overlap: p(rng) }
    }
}

/// The order segments `cuts` (of a stream of `len` bytes) arrive in, messed up by `mess`: every
/// byte arrives at least once.
pub fn deliveries(rng: &mut Rng, cuts: &[(usize, usize)], len: usize, mess: Mess) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = Vec::with_capacity(cuts.len() * 2);
    for &(a, b) in cuts {
        v.push((a, b));
        if rng.chance(mess.overlap) {
            let a2 = a - rng.range(0, a.min(300) as u64) as usize;
            let b2 = (b + rng.range(0, 300) as usize).min(len);
            v.push((a2, b2));
        }
    }
    let mut i = 0;
    while i + 1 < v.len() {
        if rng.chance(mess.swap) {
            v.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
    for i in 0..v.len() {
        if rng.chance(mess.delay) {
            let s = v.remove(i);
            let to = (i + rng.range(2, 4) as usize).min(v.len());
            v.insert(to, s);
        }
    }
    let mut i = 0;
    while i < v.len() {
        if rng.chance(mess.dup) {
            let to = (i + rng.range(1, 3) as usize).min(v.len());
            v.insert(to, v[i]);
            i += 1;
        }
        i += 1;
    }
    v
}

/// The kernel framer fed segment by segment as the tc program feeds it (`begin_segment`, turns
/// of `step` as `bpf_loop` makes them, `finish_segment`), with its bounds checked after every
/// segment: everything a property needs to say about it.
pub struct KernelFeed {
    pub f: ConnFrame,
    /// Per-CPU scratch, reused across segments: its stale contents must not matter.
    scan: Scan,
    /// Turns per segment (`bpf_loop`'s count).
    budget: usize,
    pub events: Vec<(u8, Event)>,
    /// Sequence number of each direction's first byte, when framing started at the SYNs.
    base: [Option<u32>; 2],
    /// One past the furthest byte delivered in each direction, as an offset from `base`.
    furthest: [u64; 2],
    counts: FrameCounts,
    /// The most blocks loaded for one segment.
    pub max_loads: usize,
}

impl KernelFeed {
    /// Framing from the SYNs (`isn`: client, server), or joining midway (`None`).
    pub fn new(isn: Option<[u32; 2]>, budget: usize) -> Self {
        let mut f = ConnFrame::zeroed();
        let mut base = [None; 2];
        if let Some([c, s]) = isn {
            f.on_syn(C, c, false);
            f.on_syn(S, s, true);
            base = [Some(c.wrapping_add(1)), Some(s.wrapping_add(1))];
        }
        Self { f, scan: Scan::zeroed(), budget, events: Vec::new(), base, furthest: [0; 2], counts: FrameCounts::zeroed(), max_loads: 0 }
    }

    /// One segment `[seq, seq + data.len())` of `dir` seen at `ts`: returns how many events it
    /// made.
    pub fn segment(&mut self, dir: u8, seq: u32, data: &[u8], ts: u64) -> usize {
        self.feed(dir, seq, data.len() as u32, ts, |off, block: &mut [u8; BLOCK], n| {
            assert!((1..=BLOCK).contains(&n), "a load of {n} bytes");
            assert!(off as usize + n <= data.len(), "a load past the segment: {off} + {n} > {}", data.len());
            block[..n].copy_from_slice(&data[off as usize..off as usize + n]);
            true
        })
    }

    /// A segment of `len` bytes of `dir` at `seq` that lies inside a body: framed without a load
    /// (one fails the test), however long.
    pub fn body(&mut self, dir: u8, seq: u32, len: u32, ts: u64) -> usize {
        self.feed(dir, seq, len, ts, |off, _: &mut [u8; BLOCK], _| panic!("a load at {off} of a segment inside a body"))
    }

    fn feed(&mut self, dir: u8, seq: u32, len: u32, ts: u64, mut load: impl FnMut(u32, &mut [u8; BLOCK], usize) -> bool) -> usize {
        let before = self.events.len();
        let first = self.f.begin_segment(&mut self.scan, dir, seq, len, ts);
        if first.event != Event::None {
            self.events.push((dir, first.event));
        }
        let (mut turns, mut loads, mut done) = (0usize, 0usize, false);
        for _ in 0..self.budget {
            let turn = self.f.step(&mut self.scan, |off, block: &mut [u8; BLOCK], n| {
                loads += 1;
                load(off, block, n)
            });
            match turn {
                Turn::Continue => turns += 1,
                Turn::Event(e) => {
                    turns += 1;
                    self.events.push((dir, e));
                }
                Turn::Done => {
                    done = true;
                    break;
                }
            }
        }
        let last = self.f.finish_segment(&self.scan);
        if let Event::Lost(LostReason::Budget) = last.event {
            assert!(!done);
            self.events.push((dir, last.event));
        }
        // Every turn takes a byte or more (or syncs an unsynced direction, once a segment): the
        // budget holds for any segment shorter than it.
        assert!(turns as u64 <= len as u64 + 1, "{turns} turns for a segment of {len} bytes");
        self.max_loads = self.max_loads.max(loads);
        if let Some(base) = self.base[dir as usize] {
            // Distances in sequence space (a body skipped may take the stream past 4 GiB).
            let ahead = seq.wrapping_add(len).wrapping_sub(base.wrapping_add(self.furthest[dir as usize] as u32)) as i32;
            if ahead > 0 {
                self.furthest[dir as usize] += ahead as u64;
            }
        }
        self.check(ts);
        self.events.len() - before
    }

    /// A FIN in `dir`, after its segment's bytes.
    pub fn fin(&mut self, dir: u8) {
        self.f.fin(dir);
        self.check(u64::MAX);
    }

    /// What the framer keeps stays within its bounds, counts never go backwards, every count has
    /// its event, every status is one HTTP has.
    fn check(&mut self, now: u64) {
        let f = &self.f;
        for (i, d) in f.dirs.iter().enumerate() {
            let phase = Phase::from_u8(d.phase);
            assert_eq!(phase as u8, d.phase, "dir {i}: phase {} is none", d.phase);
            assert_eq!(phase == Phase::Lost, d.lost != 0, "dir {i}: {d:?}");
            if phase == Phase::Lost {
                assert!(LostReason::from_u8(d.lost).is_some(), "dir {i}: lost {}", d.lost);
            }
            assert!(d.start_len as usize <= START_LEN, "dir {i}: {d:?}");
            assert!(d.name_idx < 32, "dir {i}: {d:?}");
            match phase {
                Phase::Start | Phase::Head | Phase::Trailers => assert!(d.head_len <= MAX_HEAD, "dir {i}: {d:?}"),
                Phase::ChunkSize => assert!(d.head_len <= MAX_CHUNK_LINE, "dir {i}: {d:?}"),
                Phase::Body | Phase::ChunkData => assert!(d.remaining > 0, "dir {i}: {d:?}"),
                _ => {}
            }
            // Framing never runs ahead of the bytes it was given (a body skipped is skipped up
            // to the end of a segment that carried it, at most).
            if let (Some(base), true) = (self.base[i], phase != Phase::Unsynced) {
                let behind = base.wrapping_add(self.furthest[i] as u32).wrapping_sub(d.next_seq) as i32;
                assert!(behind >= 0, "dir {i}: next byte {} past the furthest delivered {}", d.next_seq.wrapping_sub(base), self.furthest[i]);
            }
        }
        assert!(f.in_flight() as usize <= PENDING_DEPTH, "{} requests in flight", f.in_flight());
        let (c, p) = (f.counts, self.counts);
        let fields = |c: &FrameCounts| [c.requests, c.responses_1xx, c.responses_2xx, c.responses_3xx, c.responses_4xx, c.responses_5xx, c.latency_sum_ns, c.latency_count, c.unmatched_responses, c.unanswered];
        for (now_v, then) in fields(&c).iter().zip(fields(&p)) {
            assert!(*now_v >= then, "counts went backwards: {p:?} then {c:?}");
        }
        self.counts = c;
        let requests = self.events.iter().filter(|(_, e)| matches!(e, Event::Request { .. })).count() as u64;
        let responses: Vec<(u16, Option<u64>)> = self.events.iter().filter_map(|(_, e)| if let Event::Response { status, latency_ns } = e { Some((*status, *latency_ns)) } else { None }).collect();
        assert_eq!(c.requests, requests, "requests counted without their event");
        assert_eq!(c.responses_1xx + c.responses_2xx + c.responses_3xx + c.responses_4xx + c.responses_5xx, responses.len() as u64, "responses counted without their event");
        assert_eq!(c.latency_count, responses.iter().filter(|(_, l)| l.is_some()).count() as u64);
        assert_eq!(c.latency_sum_ns, responses.iter().filter_map(|(_, l)| *l).sum::<u64>());
        for (status, latency) in responses {
            assert!((100..=599).contains(&status), "a response with status {status}");
            assert!(latency.is_none_or(|l| l <= now), "latency {latency:?} at {now}");
        }
    }

    /// This run's events of `dir`, up to its first loss, and whether it lost its place.
    pub fn before_loss(&self, dir: u8) -> (Vec<Event>, Option<LostReason>) {
        let mut v = Vec::new();
        for (d, e) in &self.events {
            if *d != dir {
                continue;
            }
            if let Event::Lost(why) = e {
                return (v, Some(*why));
            }
            v.push(*e);
        }
        (v, None)
    }

    pub fn lost(&self) -> Vec<(u8, LostReason)> {
        self.events.iter().filter_map(|(d, e)| if let Event::Lost(r) = e { Some((*d, *r)) } else { None }).collect()
    }
}
