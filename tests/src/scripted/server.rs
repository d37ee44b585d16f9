//! A TCP server in a namespace that answers each connection by a script, and records every status
//! line it wrote: the ground truth of what a client was answered.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{find, PEER_TIMEOUT};
use crate::netns::Netns;

/// One status line a [`ScriptedServer`] wrote: its ground truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The client's end of the connection.
    pub peer: SocketAddr,
    pub method: String,
    pub target: String,
    pub status: u16,
}

/// A TCP server in a namespace that runs `script` on each accepted connection (one thread per
/// connection) and records every status line the script sends ([`Peer::respond`]). Stops accepting
/// on `Drop`; connections still open end when their peer does or after [`PEER_TIMEOUT`].
pub struct ScriptedServer {
    pub addr: SocketAddr,
    served: Arc<Mutex<Vec<Served>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Listens on `addr` inside `ns` (ready when this returns) and serves each connection with
    /// `script`. An error the script returns is printed, not fatal: peers abort on purpose.
    pub fn start(ns: &Netns, addr: SocketAddr, script: impl Fn(&mut Peer) -> io::Result<()> + Send + Sync + 'static) -> ScriptedServer {
        let listener = ns
            .enter(move || TcpListener::bind(addr))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("scripted server: cannot listen on {addr} in {}: {e}", ns.name()));
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let served = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let accept = {
            let (served, stop) = (served.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            let (script, served) = (script.clone(), served.clone());
                            std::thread::spawn(move || {
                                let mut p = match Peer::new(stream, peer, served) {
                                    Ok(p) => p,
                                    Err(e) => return eprintln!("scripted server {addr}: setting up the connection from {peer}: {e}"),
                                };
                                if let Err(e) = script(&mut p) {
                                    eprintln!("scripted server {addr}: connection from {peer}: {e}");
                                }
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                        Err(e) => {
                            eprintln!("scripted server {addr}: accept: {e}");
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            })
        };
        ScriptedServer { addr, served, stop, accept: Some(accept) }
    }

    /// Every status line written so far, in the order written.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A request head (and body, when read) as a scripted server received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The request's Content-Length (0 without one).
    pub fn content_length(&self) -> usize {
        self.header("content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }

    /// Whether the connection may carry another request after this one.
    pub fn keep_alive(&self) -> bool {
        let close = self.header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        self.version == "HTTP/1.1" && !close
    }
}

/// The server's end of one connection of a [`ScriptedServer`].
pub struct Peer {
    pub stream: TcpStream,
    /// The client's end.
    pub peer: SocketAddr,
    /// Bytes received and not consumed yet.
    buf: Vec<u8>,
    served: Arc<Mutex<Vec<Served>>>,
}

impl Peer {
    fn new(stream: TcpStream, peer: SocketAddr, served: Arc<Mutex<Vec<Served>>>) -> io::Result<Peer> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(PEER_TIMEOUT))?;
        stream.set_write_timeout(Some(PEER_TIMEOUT))?;
        Ok(Peer { stream, peer, buf: Vec::new(), served })
    }

    /// Reads more bytes into the buffer; `false` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads the next request head; `None` when the client closed between requests.
    pub fn read_head(&mut self) -> io::Result<Option<Request>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return parse_request_head(&head).map(Some);
            }
            if !self.fill()? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed in the middle of a request head"))
                };
            }
        }
    }

    /// Reads `req`'s body (Content-Length) into `req.body`.
    pub fn read_body(&mut self, req: &mut Request) -> io::Result<()> {
        let n = req.content_length();
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed in the middle of a request body"));
            }
        }
        req.body = self.buf.drain(..n).collect();
        Ok(())
    }

    /// Reads the next request, head and body; `None` when the client closed between requests.
    pub fn read_request(&mut self) -> io::Result<Option<Request>> {
        let Some(mut req) = self.read_head()? else { return Ok(None) };
        self.read_body(&mut req)?;
        Ok(Some(req))
    }

    /// Records that `status` answered `req` and writes `bytes` (a response, or an interim one,
    /// starting with its status line `status`). Recorded first, so that a client that has read
    /// the response finds it recorded.
    pub fn respond(&mut self, req: &Request, status: u16, bytes: &[u8]) -> io::Result<()> {
        self.served.lock().unwrap_or_else(|p| p.into_inner()).push(Served { peer: self.peer, method: req.method.clone(), target: req.target.clone(), status });
        self.stream.write_all(bytes)
    }

    /// Records several responses and writes them in one write (pipelined answers sharing
    /// segments): `(request, status, bytes)`.
    pub fn respond_all(&mut self, responses: &[(Request, u16, Vec<u8>)]) -> io::Result<()> {
        let all: Vec<u8> = responses.iter().flat_map(|(_, _, b)| b.iter().copied()).collect();
        {
            let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
            for (req, status, _) in responses {
                served.push(Served { peer: self.peer, method: req.method.clone(), target: req.target.clone(), status: *status });
            }
        }
        self.stream.write_all(&all)
    }

    /// Whether a whole request head has been received and not read yet.
    pub fn has_request(&self) -> bool {
        find(&self.buf, b"\r\n\r\n").is_some()
    }

    /// Waits up to `d` for the client to close its side. `true` if it did (what it sent meanwhile
    /// is kept), `false` if `d` passed first.
    pub fn closed_within(&mut self, d: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + d;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Ok(false);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.fill() {
                Ok(false) => break Ok(true),
                Ok(true) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break Ok(true),
                Err(e) => break Err(e),
            }
        };
        self.stream.set_read_timeout(Some(PEER_TIMEOUT))?;
        result
    }
}

fn parse_request_head(head: &[u8]) -> io::Result<Request> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not a request head: {:?}", String::from_utf8_lossy(head)));
    let text = std::str::from_utf8(head).map_err(|_| bad())?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next().ok_or_else(bad)?.split(' ');
    let (Some(method), Some(target), Some(version)) = (first.next(), first.next(), first.next()) else { return Err(bad()) };
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once(':').map(|(n, v)| (n.to_owned(), v.trim().to_owned())).ok_or_else(bad))
        .collect::<io::Result<_>>()?;
    Ok(Request { method: method.into(), target: target.into(), version: version.into(), headers, body: Vec::new() })
}
