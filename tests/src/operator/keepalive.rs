//! A raw keep-alive HTTP/1.1 client: a connection the test owns (its port before any request,
//! every byte counted).
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use crate::netns::Netns;

/// What one exchange on a [`KeepAlive`] connection moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub status: u16,
    /// The status line as received, without CRLF.
    pub status_line: String,
    /// Bytes of the request as written.
    pub request_bytes: u64,
    /// Bytes of the response as read: head and body (chunk framing included).
    pub response_bytes: u64,
}

/// One HTTP/1.1 keep-alive connection opened from inside a namespace, with a socket the test
/// owns: its local port is known before any request, and every byte is counted.
pub struct KeepAlive {
    stream: BufReader<TcpStream>,
    host: SocketAddr,
}

impl KeepAlive {
    pub const TIMEOUT: Duration = Duration::from_secs(20);

    /// Connects from inside `ns` to `server`.
    pub fn open(ns: &Netns, server: SocketAddr) -> io::Result<KeepAlive> {
        Ok(Self::open_many(ns, server, 1)?.pop().expect("one"))
    }

    /// Opens `n` connections from inside `ns` to `server`, all held open.
    pub fn open_many(ns: &Netns, server: SocketAddr, n: usize) -> io::Result<Vec<KeepAlive>> {
        let streams = ns.enter(move || (0..n).map(|_| TcpStream::connect_timeout(&server, Self::TIMEOUT)).collect::<io::Result<Vec<_>>>())??;
        streams
            .into_iter()
            .map(|s| {
                s.set_read_timeout(Some(Self::TIMEOUT))?;
                s.set_write_timeout(Some(Self::TIMEOUT))?;
                s.set_nodelay(true)?;
                Ok(KeepAlive { stream: BufReader::new(s), host: server })
            })
            .collect()
    }

    /// This (the client's) end.
    pub fn local(&self) -> SocketAddr {
        self.stream.get_ref().local_addr().expect("a connected socket has a local address")
    }

    /// Writes `GET path` (HTTP/1.1, keep-alive); returns the bytes written.
    pub fn send(&mut self, path: &str) -> io::Result<u64> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: observer-tests\r\n\r\n", self.host);
        self.stream.get_mut().write_all(req.as_bytes())?;
        Ok(req.len() as u64)
    }

    /// Reads one response (Content-Length or chunked); returns its status line and size.
    pub fn receive(&mut self) -> io::Result<(u16, String, u64)> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut total = 0u64;
        let mut line = String::new();
        let n = self.stream.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        total += n as u64;
        let status_line = line.trim_end().to_owned();
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            total += self.stream.read_line(&mut line)? as u64;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { return Err(bad(format!("bad header {header:?}"))) };
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.trim().parse::<u64>().map_err(|_| bad(format!("bad Content-Length {value:?}")))?),
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        if chunked {
            loop {
                line.clear();
                total += self.stream.read_line(&mut line)? as u64;
                let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                let mut chunk = vec![0; size as usize + 2];
                self.stream.read_exact(&mut chunk)?;
                total += size + 2;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            let mut body = vec![0; n as usize];
            self.stream.read_exact(&mut body)?;
            total += n;
        }
        Ok((status, status_line, total))
    }

    /// One request and its response.
    pub fn get(&mut self, path: &str) -> io::Result<Exchange> {
        let request_bytes = self.send(path)?;
        let (status, status_line, response_bytes) = self.receive()?;
        Ok(Exchange { status, status_line, request_bytes, response_bytes })
    }

    /// Closes the connection (FIN) and waits, up to [`Self::TIMEOUT`], for the server's FIN.
    pub fn close(mut self) {
        let _ = self.stream.get_ref().shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
    }
}
