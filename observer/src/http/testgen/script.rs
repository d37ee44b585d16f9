//! Well-formed connections and what they mean ([`Script`]): pipelined requests of any method
//! with bodies by length or chunked, interim, final and body-less responses, responses delimited
//! by the close, upgrades and CONNECT, unanswered requests, and now and then a malformed message
//! that ends the connection.
use super::{Rng, C, S};

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
const SNIPPETS: [&[u8]; 7] = [
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"0\r\n\r\n",
    b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n",
    b"\r\n\r\n",
    b"chunked",
    b"abcdefghij",
];

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
    const NAMES: [&str; 12] = [
        "Host",
        "User-Agent",
        "Accept",
        "X-Request-Id",
        "Content-Type",
        "Cache-Control",
        "X-Content-Length",
        "Content-Lengths",
        "Transfer-Encodings",
        "Upgrade-Insecure-Requests",
        "Connection",
        "Te",
    ];
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
                    let (st, head) = if connect {
                        (200, "HTTP/1.1 200 Connection Established\r\n\r\n")
                    } else {
                        (101, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    };
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
