//! Noise and corruptions: bytes that are mostly pieces of HTTP (heads, lengths that are and are
//! not numbers, status codes in and out of range), and random edits of well-formed bytes.
use super::Rng;

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
