//! Scripted peers, for what curl and nginx cannot do: raw TCP servers that answer by a script
//! (delays, hand-made chunked responses, interim responses, echo), raw clients (pipelining, split
//! writes, resets), an HTTP/1.x response reader that is the ground truth of what a raw client
//! received, and curl runs with per-URL options that report every status line curl received.
//!
//! Sockets are created inside a namespace ([`Netns::enter`]) and stay in it whichever thread uses
//! them afterwards, so servers run on ordinary threads and clients are driven from the test's own.
use std::{
    io::{self, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::ExitStatus,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{curl::Transfer, netns::Netns};

/// How long a scripted peer waits for its counterpart before it gives up.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

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
                return if self.buf.is_empty() { Ok(None) } else { Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed in the middle of a request head")) };
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_request_head(head: &[u8]) -> io::Result<Request> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not a request head: {:?}", String::from_utf8_lossy(head)));
    let text = std::str::from_utf8(head).map_err(|_| bad())?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next().ok_or_else(bad)?.split(' ');
    let (Some(method), Some(target), Some(version)) = (first.next(), first.next(), first.next()) else { return Err(bad()) };
    let headers = lines.filter(|l| !l.is_empty()).map(|l| l.split_once(':').map(|(n, v)| (n.to_owned(), v.trim().to_owned())).ok_or_else(bad)).collect::<io::Result<_>>()?;
    Ok(Request { method: method.into(), target: target.into(), version: version.into(), headers, body: Vec::new() })
}

/// A TCP connection from inside `ns` to `server`: Nagle off (each write leaves at once); connecting,
/// reads and writes bounded by [`PEER_TIMEOUT`]. Panics if it cannot connect.
pub fn connect(ns: &Netns, server: SocketAddr) -> TcpStream {
    let s = ns
        .enter(move || TcpStream::connect_timeout(&server, PEER_TIMEOUT))
        .and_then(|r| r)
        .unwrap_or_else(|e| panic!("connecting to {server} from {}: {e}", ns.name()));
    s.set_nodelay(true).expect("TCP_NODELAY");
    s.set_read_timeout(Some(PEER_TIMEOUT)).expect("a read timeout");
    s.set_write_timeout(Some(PEER_TIMEOUT)).expect("a write timeout");
    s
}

/// The kernel's `TCP_INFO` of a socket.
pub fn tcp_info(s: &TcpStream) -> libc::tcp_info {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut info as *mut _ as *mut libc::c_void, &mut len);
        assert_eq!(rc, 0, "getsockopt(TCP_INFO): {}", io::Error::last_os_error());
        info
    }
}

/// Data segments this socket has sent, each once: `tcpi_data_segs_out` less the retransmitted
/// ones (`tcpi_total_retrans`), so that a tail loss probe on a loaded machine does not count.
pub fn data_segments_out(s: &TcpStream) -> u32 {
    let i = tcp_info(s);
    i.tcpi_data_segs_out - i.tcpi_total_retrans
}

/// Closes `s` with a reset (SO_LINGER with a zero timeout): what an aborting client does.
pub fn close_with_reset(s: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    let rc = unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger as *const _ as *const libc::c_void, std::mem::size_of::<libc::linger>() as libc::socklen_t) };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER): {}", io::Error::last_os_error());
    drop(s);
}

/// Shuts down the writing half and reads until the server closes: returns what it sent.
pub fn finish(mut s: TcpStream) -> io::Result<Vec<u8>> {
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(rest)
}

/// One HTTP response as a client received it.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads HTTP/1.x responses off a stream, framing each as RFC 9112 says: no body for 1xx, 204,
/// 304 and answers to HEAD; Content-Length; chunked (extensions and trailers); or until close.
pub struct ResponseReader<R> {
    pub inner: R,
    buf: Vec<u8>,
}

impl<R: Read> ResponseReader<R> {
    pub fn new(inner: R) -> Self {
        ResponseReader { inner, buf: Vec::new() }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.inner.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            self.fill()?;
        }
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn fields(&mut self) -> io::Result<Vec<(String, String)>> {
        let mut fields = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                return Ok(fields);
            }
            let (n, v) = l.split_once(':').ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header line {l:?}")))?;
            fields.push((n.to_owned(), v.trim().to_owned()));
        }
    }

    /// Reads one response (interim or final); `head` says the request was HEAD.
    pub fn read(&mut self, head: bool) -> io::Result<Response> {
        let r = self.read_head()?;
        if head || r.status < 200 || r.status == 204 || r.status == 304 {
            return Ok(r);
        }
        self.read_body(r)
    }

    /// Reads a response's status line and header fields, and no body (e.g. the answer to a
    /// CONNECT).
    pub fn read_head(&mut self) -> io::Result<Response> {
        let status_line = self.line()?;
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")))?;
        let headers = self.fields()?;
        Ok(Response { status, headers, body: Vec::new(), trailers: Vec::new() })
    }

    fn read_body(&mut self, mut r: Response) -> io::Result<Response> {
        if r.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size line {size_line:?}")))?;
                if size == 0 {
                    r.trailers = self.fields()?;
                    return Ok(r);
                }
                let data = self.take(size + 2)?;
                r.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(n) = r.header("content-length") {
            let n: usize = n.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad Content-Length {n:?}")))?;
            r.body = self.take(n)?;
        } else {
            r.body = std::mem::take(&mut self.buf);
            self.inner.read_to_end(&mut r.body)?;
        }
        Ok(r)
    }

    /// Reads the interim responses and the final one that answer one request, in order.
    pub fn read_exchange(&mut self, head: bool) -> io::Result<Vec<Response>> {
        let mut all = Vec::new();
        loop {
            let r = self.read(head)?;
            let done = r.status >= 200 || r.status == 101;
            all.push(r);
            if done {
                return Ok(all);
            }
        }
    }

    /// Bytes received and not consumed by a response yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}

/// One operation of [`curl_each`]: a URL and the options that apply to it alone (`-I`,
/// `--data-binary @file`, `-H ...`).
#[derive(Clone, Debug)]
pub struct CurlOp {
    pub url: String,
    pub args: Vec<String>,
}

impl CurlOp {
    pub fn get(url: impl Into<String>) -> CurlOp {
        CurlOp { url: url.into(), args: Vec::new() }
    }

    /// `curl -I`: a HEAD request, reading no body.
    pub fn head(url: impl Into<String>) -> CurlOp {
        CurlOp { url: url.into(), args: vec!["--head".into()] }
    }

    /// Adds options for this URL.
    pub fn with(mut self, args: &[&str]) -> CurlOp {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The request method curl sends for this operation.
    pub fn method(&self) -> &str {
        if self.args.iter().any(|a| a == "--head" || a == "-I") {
            "HEAD"
        } else if let Some(i) = self.args.iter().position(|a| a == "--request" || a == "-X") {
            &self.args[i + 1]
        } else if self.args.iter().any(|a| a.starts_with("--data")) {
            "POST"
        } else {
            "GET"
        }
    }
}

/// What one [`curl_each`] run reports.
#[derive(Clone, Debug)]
pub struct CurlRun {
    /// One per operation (`http_code` 0 for a transfer that got no response).
    pub transfers: Vec<Transfer>,
    /// Per operation: seconds from the start of the transfer until its connection was
    /// established (`%{time_connect}`: before the request was sent; about 0 on a reused
    /// connection) and until the first response byte arrived (`%{time_starttransfer}`).
    pub times: Vec<(f64, f64)>,
    /// Every status line curl received, interim ones included, in order (from `--verbose`).
    pub status_lines: Vec<u16>,
    pub status: ExitStatus,
    pub stderr: String,
}

const WRITE_OUT: &str = "%{http_code} %{size_request} %{size_header} %{size_download} %{num_connects} %{local_ip} %{local_port} %{remote_ip} %{remote_port} %{time_connect} %{time_starttransfer}\\n";

/// Runs one curl in `ns` performing `ops` in order (`--next` between them: one connection cache,
/// so a keep-alive connection is reused across operations), bodies discarded, each transfer
/// bounded by `max_time`. Does not fail on transfer errors: the caller reads `status`.
pub fn curl_each(ns: &Netns, ops: &[CurlOp], max_time: Duration) -> CurlRun {
    let mut args: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            args.push("--next".into());
        }
        args.extend(["--silent", "--show-error", "--verbose", "--globoff", "--max-time"].iter().map(|s| s.to_string()));
        args.push(format!("{}", max_time.as_secs_f64()));
        args.extend(["--write-out".into(), WRITE_OUT.into(), "--output".into(), "/dev/null".into()]);
        args.extend(op.args.iter().cloned());
        args.push(op.url.clone());
    }
    let out = ns.exec("curl", &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut transfers = Vec::new();
    let mut times = Vec::new();
    for l in stdout.lines() {
        let (t, pre, start) = parse_write_out(l).unwrap_or_else(|| panic!("cannot parse curl's --write-out line {l:?}\nstderr:\n{stderr}"));
        transfers.push(t);
        times.push((pre, start));
    }
    let status_lines = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("< HTTP/1."))
        .filter_map(|s| s.get(2..5).and_then(|c| c.parse().ok()))
        .collect();
    CurlRun { transfers, times, status_lines, status: out.status, stderr }
}

fn parse_write_out(line: &str) -> Option<(Transfer, f64, f64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [code, req, hdr, dl, conns, lip, lport, rip, rport, pre, start] = f[..] else { return None };
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    let t = Transfer {
        http_code: code.parse().ok()?,
        size_request: req.parse().ok()?,
        size_header: hdr.parse().ok()?,
        size_download: dl.parse().ok()?,
        num_connects: conns.parse().ok()?,
        local: SocketAddr::new(ip(lip)?, lport.parse().ok()?),
        remote: SocketAddr::new(ip(rip)?, rport.parse().ok()?),
    };
    Some((t, pre.parse().ok()?, start.parse().ok()?))
}
