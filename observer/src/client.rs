//! The CLI's side of the API: a minimal HTTP/1.0 client for the daemon on loopback or its Unix
//! socket (HTTP/1.0 so that bodies are delimited by the close, streams included: no chunked
//! coding to undo).
#![forbid(unsafe_code)]
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    os::unix::net::UnixStream,
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub struct Client {
    server: String,
}

/// A response with its status and body.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Client {
    pub fn new(server: &str) -> Self {
        Self { server: server.to_owned() }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn connect(&self) -> Result<Stream> {
        if let Some(path) = self.server.strip_prefix("unix:") {
            return match UnixStream::connect(path) {
                Ok(s) => Ok(Stream::Unix(s)),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    bail!("cannot open {}: {e}: the daemon's socket is for its own user only (mode 0600); run this as that user (sudo)", self.server)
                }
                Err(e) => bail!("no daemon at {}: is `observer run --unix-socket {path}` running? ({e}); point at another with --server", self.server),
            };
        }
        let addrs: Vec<SocketAddr> = self
            .server
            .to_socket_addrs()
            .with_context(|| format!("--server {:?} is not an address: expected HOST:PORT, e.g. 127.0.0.1:9470, or unix:PATH", self.server))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
                Ok(s) => return Ok(Stream::Tcp(s)),
                Err(e) => last = Some(e),
            }
        }
        bail!(
            "no daemon at {}: is `observer run` running? ({}); point at another with --server",
            self.server,
            last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
        )
    }

    fn request(&self, path: &str) -> Result<BufReader<Stream>> {
        let mut s = self.connect()?;
        // A socket path is no host name.
        let host = if self.server.starts_with("unix:") { "localhost" } else { &self.server };
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n")?;
        Ok(BufReader::new(s))
    }

    /// Reads the status line and headers; returns the status.
    fn head(r: &mut BufReader<Stream>) -> Result<u16> {
        let mut line = String::new();
        r.read_line(&mut line).context("reading the daemon's answer")?;
        let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("not an HTTP answer: {line:?}"))?;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                break;
            }
        }
        Ok(status)
    }

    pub fn get(&self, path: &str) -> Result<Reply> {
        let mut r = self.request(path)?;
        let status = Self::head(&mut r)?;
        let mut body = String::new();
        r.read_to_string(&mut body)?;
        Ok(Reply { status, body })
    }

    /// GET that must succeed, parsed as JSON; a 4xx/5xx carries the daemon's message.
    pub fn json(&self, path: &str) -> Result<serde_json::Value> {
        let reply = self.get(path)?;
        let v: serde_json::Value = serde_json::from_str(&reply.body).with_context(|| format!("the daemon answered {path} with something that is not JSON"))?;
        if reply.status >= 400 {
            bail!("{}", v.get("error").and_then(|e| e.as_str()).unwrap_or(&reply.body));
        }
        Ok(v)
    }

    /// A newline-delimited stream: calls `line` for each line until it returns false, the
    /// stream ends, or the deadline passes.
    pub fn stream(&self, path: &str, deadline: Option<std::time::Instant>, line: &mut dyn FnMut(&str) -> bool) -> Result<()> {
        let mut r = self.request(path)?;
        let status = Self::head(&mut r)?;
        if status >= 400 {
            let mut body = String::new();
            r.read_to_string(&mut body)?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            bail!("{}", v.get("error").and_then(|e| e.as_str()).unwrap_or(&body));
        }
        let mut buf = String::new();
        loop {
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                r.get_ref().set_read_timeout(Some(left))?;
            }
            match r.read_line(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) if buf.ends_with('\n') => {
                    let l = buf.trim_end().to_owned();
                    buf.clear();
                    if !l.is_empty() && !line(&l) {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A connection to the daemon, over TCP or its Unix socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}
