//! The scripted servers' behaviours: what an upstream or a gateway server answers that nginx
//! cannot (delays, hand-made chunked responses, interim responses, tunnels, echo).
use std::{
    fmt::Write as _,
    io::{self, Read, Write},
    time::Duration,
};

use super::fake_heads;
use crate::scripted::{Peer, Request};

/// The scripted servers' behaviour, by path (a leading `/scripted` is ignored):
/// - `/delay/<ms>`: waits `ms` (or until the client closes, then closes too) and answers 200;
/// - `/chunked/<code>/<pieces>/<len>`: a hand-made chunked response of `pieces` chunks of `len`
///   bytes of [`fake_heads`], each chunk size line with extensions, and trailers (one of them
///   looking like a status line);
/// - `/until-close/<code>/<len>`: a response without length whose body ends when the server
///   closes;
/// - `/status/<code>`: a short body (none for 204; a Content-Length but no body for 304);
/// - `/bighead/<code>/<n>`: about `n` bytes of header fields, then a short body;
/// - `/continue/<code>`: `100 Continue` when the request expects it, then reads the body and
///   answers `code`;
/// - `/upgrade`: `101 Switching Protocols`, then echoes whatever comes, until the client closes;
/// - `CONNECT` (any target): 200, then echoes whatever comes, until the client closes;
/// - anything else: 404.
///
/// Answers to HEAD carry the head only. Keeps the connection for the next request unless the
/// request said otherwise.
pub fn script(p: &mut Peer) -> io::Result<()> {
    serve(p, false)
}

/// [`script`], except that requests already received together (pipelined) are answered with one
/// write: their responses share segments.
pub fn batch_script(p: &mut Peer) -> io::Result<()> {
    serve(p, true)
}

fn parts(req: &Request) -> Vec<String> {
    let path = req.target.strip_prefix("/scripted").unwrap_or(&req.target);
    path.split('/').skip(1).map(str::to_owned).collect()
}

fn num(s: &str) -> io::Result<u64> {
    s.parse::<u64>().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} is not a number")))
}

fn serve(p: &mut Peer, batch: bool) -> io::Result<()> {
    while let Some(mut req) = p.read_head()? {
        let parts = parts(&req);
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        if let ["continue", _] = parts[..] {
            if req.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
                p.respond(&req, 100, b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
        }
        p.read_body(&mut req)?;
        match parts[..] {
            ["delay", ms] if p.closed_within(Duration::from_millis(num(ms)?))? => return Ok(()),
            ["upgrade"] => {
                p.respond(&req, 101, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: scripted\r\nConnection: Upgrade\r\n\r\n")?;
                return echo(p);
            }
            _ if req.method == "CONNECT" => {
                p.respond(&req, 200, b"HTTP/1.1 200 Connection Established\r\n\r\n")?;
                return echo(p);
            }
            _ => {}
        }
        let mut answers = vec![response(&req)?];
        let mut requests = vec![req];
        while batch && p.has_request() {
            let mut next = p.read_head()?.expect("a whole head is buffered");
            p.read_body(&mut next)?;
            answers.push(response(&next)?);
            requests.push(next);
        }
        let close = requests.iter().zip(&answers).any(|(r, a)| !r.keep_alive() || a.2);
        let all: Vec<(Request, u16, Vec<u8>)> = requests.into_iter().zip(answers).map(|(r, (s, b, _))| (r, s, b)).collect();
        p.respond_all(&all)?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// The response to `req`: status, bytes, and whether the connection closes after it.
fn response(req: &Request) -> io::Result<(u16, Vec<u8>, bool)> {
    let parts = parts(req);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let connection = if req.keep_alive() { "" } else { "Connection: close\r\n" };
    let fixed = |code: u64, extra: &str, body: &str| {
        format!("HTTP/1.1 {code} Scripted\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}{connection}\r\n{body}", body.len()).into_bytes()
    };
    let (status, mut bytes, close) = match parts[..] {
        ["continue", code] => (num(code)?, fixed(num(code)?, "", &format!("got {} bytes\n", req.body.len())), false),
        ["delay", _] => (200, fixed(200, "", "delayed\n"), false),
        ["status", code] => {
            let code = num(code)?;
            let bytes = match code {
                204 => format!("HTTP/1.1 204 Scripted\r\n{connection}\r\n").into_bytes(),
                304 => format!("HTTP/1.1 304 Scripted\r\nContent-Length: 42\r\nETag: \"x\"\r\n{connection}\r\n").into_bytes(),
                _ => fixed(code, "", &format!("status {code}\n")),
            };
            (code, bytes, false)
        }
        ["chunked", code, pieces, len] => {
            let (code, pieces, len) = (num(code)?, num(pieces)?, num(len)? as usize);
            let mut r =
                format!("HTTP/1.1 {code} Scripted\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Pieces, X-Fake\r\n{connection}\r\n")
                    .into_bytes();
            for i in 0..pieces {
                r.extend(format!("{len:x};piece={i};note=\"a;b\"\r\n").into_bytes());
                r.extend(fake_heads(len));
                r.extend_from_slice(b"\r\n");
            }
            r.extend(format!("0;last=yes\r\nX-Pieces: {pieces}\r\nX-Fake: HTTP/1.1 200 OK\r\n\r\n").into_bytes());
            (code, r, false)
        }
        ["until-close", code, len] => {
            let (code, len) = (num(code)?, num(len)? as usize);
            let mut r = format!("HTTP/1.1 {code} Scripted\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n").into_bytes();
            r.extend(fake_heads(len));
            (code, r, true)
        }
        ["bighead", code, n] => {
            let (code, n) = (num(code)?, num(n)? as usize);
            let mut extra = String::new();
            for i in 0..n.div_ceil(1000) {
                writeln!(extra, "X-Pad-{i}: {}\r", "HTTP/1.1 200 OK ".repeat(60)).unwrap();
            }
            (code, fixed(code, &extra, "big head\n"), false)
        }
        _ => (404, fixed(404, "", "no such script\n"), false),
    };
    if req.method == "HEAD" {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        bytes.truncate(end);
    }
    Ok((status as u16, bytes, close))
}

/// A raw echo server: sends back whatever it receives, until the client closes.
pub fn echo(p: &mut Peer) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = p.stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        p.stream.write_all(&buf[..n])?;
    }
}
