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

/// Where the daemon answers, as `--server` (or `OBSERVER_SERVER`) names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    /// `HOST:PORT`, resolved when connecting (a name may have several addresses).
    Tcp(String),
    /// `unix:PATH`: the daemon's `--unix-socket`.
    Unix(std::path::PathBuf),
}

impl Server {
    /// Reads `HOST:PORT`, `[V6]:PORT`, `http://HOST:PORT` (a trailing `/` allowed) or
    /// `unix:PATH`. The URL form is accepted because that is how the API is written in docs and
    /// curl commands; anything it cannot honour is refused here, before a connection is tried.
    pub fn parse(s: &str) -> Result<Self, String> {
        const FORMS: &str = "expected HOST:PORT (127.0.0.1:9470), http://HOST:PORT, http://[V6]:PORT or unix:PATH";
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(format!("{s:?}: unix: needs the socket's path, e.g. unix:/run/observer.sock"));
            }
            return Ok(Server::Unix(path.into()));
        }
        if s.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://")) {
            return Err(format!(
                "{s:?}: TLS is not served: the daemon speaks plain HTTP on its --listen address (loopback by default); use http://HOST:PORT, or reach a remote daemon through an SSH tunnel or a TLS-terminating proxy"
            ));
        }
        let authority = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
                let authority = rest.strip_suffix('/').unwrap_or(rest);
                if authority.contains(['/', '?', '#']) {
                    return Err(format!("{s:?}: only the daemon's address, without a path: the API's routes are fixed ({FORMS})"));
                }
                authority
            }
            Some((scheme, _)) => return Err(format!("{s:?}: {scheme}: is not a scheme the daemon serves; {FORMS}")),
            None => s,
        };
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| format!("{s:?}: no port; {FORMS}"))?;
        if port.parse::<u16>().is_err() {
            return Err(format!("{s:?}: {port:?} is not a port (0 to 65535); {FORMS}"));
        }
        // An IPv6 address has colons of its own: only the bracketed form is unambiguous.
        let bare_v6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
        if host.is_empty() || bare_v6 {
            return Err(format!("{s:?}: {FORMS}"));
        }
        Ok(Server::Tcp(authority.to_owned()))
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Server::Tcp(a) => f.write_str(a),
            Server::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub struct Client {
    server: Server,
}

/// A response with its status and body.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Client {
    pub fn new(server: Server) -> Self {
        Self { server }
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    fn connect(&self) -> Result<Stream> {
        let server = &self.server;
        let authority = match server {
            Server::Unix(path) => {
                return match UnixStream::connect(path) {
                    Ok(s) => Ok(Stream::Unix(s)),
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        bail!("cannot open {server}: {e}: the daemon's socket is for its own user only (mode 0600); run this as that user (sudo)")
                    }
                    Err(e) => bail!("no daemon at {server}: is `observer run --unix-socket {}` running? ({e}); point at another with --server", path.display()),
                };
            }
            Server::Tcp(a) => a,
        };
        let addrs: Vec<SocketAddr> = authority
            .to_socket_addrs()
            .with_context(|| format!("--server {authority:?} is not an address: expected HOST:PORT, e.g. 127.0.0.1:9470, or unix:PATH"))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
                Ok(s) => return Ok(Stream::Tcp(s)),
                Err(e) => last = Some(e),
            }
        }
        bail!(
            "no daemon at {server}: is `observer run` running? ({}); point at another with --server",
            last.map(|e| e.to_string()).unwrap_or_else(|| "no address".into())
        )
    }

    fn request(&self, path: &str) -> Result<BufReader<Stream>> {
        let mut s = self.connect()?;
        // A socket path is no host name.
        let host = match &self.server {
            Server::Unix(_) => "localhost",
            Server::Tcp(a) => a,
        };
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

    /// GET that must succeed, read as `T` (one of [`crate::model`]'s types, or any JSON as a
    /// `serde_json::Value`); a 4xx/5xx carries the daemon's message.
    pub fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let reply = self.get(path)?;
        let not_json = || format!("the daemon answered {path} with something that is not JSON");
        if reply.status >= 400 {
            serde_json::from_str::<serde::de::IgnoredAny>(&reply.body).with_context(not_json)?;
            bail!("{}", error_message(&reply.body));
        }
        serde_json::from_str(&reply.body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                anyhow::Error::new(e).context(format!("the daemon's answer to {path} is not what this observer expects: is it another version?"))
            }
            _ => anyhow::Error::new(e).context(not_json()),
        })
    }

    /// A newline-delimited stream: calls `line` for each line until it returns false, the
    /// stream ends, or the deadline passes.
    pub fn stream(&self, path: &str, deadline: Option<std::time::Instant>, line: &mut dyn FnMut(&str) -> bool) -> Result<()> {
        let mut r = self.request(path)?;
        let status = Self::head(&mut r)?;
        if status >= 400 {
            let mut body = String::new();
            r.read_to_string(&mut body)?;
            bail!("{}", error_message(&body));
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

/// What the daemon says went wrong ([`crate::model::ApiError`]), or its answer whole when that
/// is not one.
pub fn error_message(body: &str) -> String {
    match serde_json::from_str::<crate::model::ApiError>(body) {
        Ok(e) => e.error,
        Err(_) => body.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_read_in_every_written_form() {
        let tcp = |a: &str| Ok(Server::Tcp(a.to_owned()));
        assert_eq!(Server::parse("127.0.0.1:9470"), tcp("127.0.0.1:9470"));
        assert_eq!(Server::parse("localhost:9470"), tcp("localhost:9470"));
        assert_eq!(Server::parse("http://127.0.0.1:9470"), tcp("127.0.0.1:9470"));
        assert_eq!(Server::parse("http://127.0.0.1:9470/"), tcp("127.0.0.1:9470"));
        assert_eq!(Server::parse("HTTP://[::1]:9470/"), tcp("[::1]:9470"));
        assert_eq!(Server::parse("[2001:db8::1]:9470"), tcp("[2001:db8::1]:9470"));
        assert_eq!(Server::parse("unix:/run/observer.sock"), Ok(Server::Unix("/run/observer.sock".into())));
        assert_eq!(Server::parse("unix:/run/observer.sock").unwrap().to_string(), "unix:/run/observer.sock");
        assert_eq!(Server::parse("http://[::1]:9470").unwrap().to_string(), "[::1]:9470");
    }

    #[test]
    fn servers_it_cannot_reach_are_refused_with_the_reason() {
        let err = |s: &str| Server::parse(s).unwrap_err();
        assert!(err("https://127.0.0.1:9470").contains("TLS is not served"), "{}", err("https://127.0.0.1:9470"));
        assert!(err("http://127.0.0.1:9470/api/v1").contains("without a path"));
        assert!(err("ftp://127.0.0.1:21").contains("ftp: is not a scheme"));
        assert!(err("127.0.0.1").contains("no port"));
        assert!(err("http://127.0.0.1").contains("no port"));
        assert!(err("127.0.0.1:http").contains("is not a port"));
        assert!(err("::1:9470").contains("http://[V6]:PORT"));
        assert!(err(":9470").contains("HOST:PORT"));
        assert!(err("unix:").contains("socket's path"));
    }
}
