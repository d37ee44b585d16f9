//! HTTP/1.x counting, end to end: every connection's `http` counts (requests, responses per class,
//! unanswered requests, failed, error ratio, last status, recent exchanges in order, latency) and
//! the HTTP metrics are exact, on both sides of the proxy, whatever the traffic looks like:
//! keep-alive mixes of every status class and of bodies from 0 B to 10 MB, `Connection: close`,
//! bodies (and header fields) full of fake message heads, chunked bodies with extensions and
//! trailers, chunked request bodies, `100 Continue`, HEAD, 204 and 304, pipelined requests and
//! responses sharing segments, request lines split across segments, half-closes, errors sent
//! before the request body ends, clients that abort, slow upstreams, 101 and CONNECT tunnels,
//! IPv4 and IPv6, connections that are not HTTP, `--http-port`, retransmitted segments, and
//! payload the kernel's ring buffer could not hold.
//!
//! Ground truth: what the test's clients sent and received (curl's `--write-out` and the status
//! lines of its `--verbose` output; raw clients' own response framing), what the scripted servers
//! wrote, and each nginx's access log (client address and port, status, per request). Inbound
//! entries (client → proxy) are matched to the proxy's log by the client's port, outbound entries
//! (gateway → upstream) to the upstream's log (or the scripted server's record) by the gateway's
//! source port.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use observer_tests::{
    addr::{self, http_base, GW_CLIENT_IF, GW_UPSTREAM_IF},
    http_view::{field, http_of, kernel_agrees, kernel_http_of, settled, HttpView, Metrics, Window},
    nginx::LogEntry,
    poll, root_or_skip,
    scripted::{self, close_with_reset, connect, curl_each, data_segments_out, CurlOp, CurlRun, Peer, Request, ResponseReader, ScriptedServer, Served},
    Connection, Nginx, Observer, Snapshot, Topology,
};

/// Port of the scripted server in the upstream namespace (proxied under `/scripted/`).
const UPSTREAM_SCRIPTED_PORT: u16 = 8081;
/// Port of a scripted server in the gateway namespace, reached by the client without nginx.
const GATEWAY_SCRIPTED_PORT: u16 = 8082;
/// The proxy's second port (same server block as port 80).
const PROXY_SECOND_PORT: u16 = 8080;
/// Port of a raw echo server in the gateway namespace.
const ECHO_PORT: u16 = 7000;

/// How long a test waits for connections to settle in the daemon's view: a debug build on a
/// loaded machine may lag; success returns at once.
const SETTLE: Duration = Duration::from_secs(30);

/// Body sizes the upstream serves at `/size/<n>` from the start; tests add larger ones.
const SIZES: &[u64] = &[0, 1, 100, 1_000, 10_000, 100_000, 1_000_000];
/// Codes the upstream answers at `/status/<code>` (`return CODE "status CODE\n"`; 204 bodiless).
const STATUSES: &[u16] = &[200, 204, 404, 429, 500, 502, 503];

/// Text that looks like message heads, to fill bodies that must stay bodies.
const FAKE_HEADS: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Internal Server Error\r\n\r\nHTTP/1.0 404 Not Found\r\nContent-Length: 5\r\n\r\nGET /x HTTP/1.1\r\nHost: y\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n";

fn fake_heads(n: usize) -> Vec<u8> {
    FAKE_HEADS.bytes().cycle().take(n).collect()
}

/// The lab of these tests: the usual topology, an upstream nginx with more locations, a scripted
/// upstream server, and a proxy that also listens on [`PROXY_SECOND_PORT`] and proxies
/// `/scripted/` to the scripted server with HTTP/1.1 (chunked bodies allowed). Fields drop in
/// declaration order: the observer stops first.
struct HttpLab {
    observer: Observer,
    proxy: Nginx,
    upstream: Nginx,
    scripted: ScriptedServer,
    topo: Topology,
    started: Instant,
}

impl HttpLab {
    fn start(test: &str) -> HttpLab {
        HttpLab::start_with(test, &[])
    }

    /// Starts everything, the observer last (with `observer_args`), so that nothing before the
    /// test's own traffic is counted.
    fn start_with(test: &str, observer_args: &[&str]) -> HttpLab {
        let topo = Topology::new(test);
        let dir = topo.path("upstream");
        let www = dir.join("www");
        fs::create_dir_all(www.join("size")).expect("creating the upstream's document root");
        fs::create_dir_all(www.join("fake")).expect("creating the upstream's document root");
        let mut locations = String::new();
        writeln!(locations, "        root {};", www.display()).unwrap();
        writeln!(locations, "        client_max_body_size 64m;").unwrap();
        writeln!(locations, "        location = /ok {{ return 200 \"ok\\n\"; }}").unwrap();
        writeln!(locations, "        location /size/ {{ }}").unwrap();
        writeln!(locations, "        location /fake/ {{ }}").unwrap();
        writeln!(locations, "        location = /redirect {{ return 301 /x; }}").unwrap();
        for &code in STATUSES {
            match code {
                204 => writeln!(locations, "        location = /status/204 {{ return 204; }}").unwrap(),
                _ => writeln!(locations, "        location = /status/{code} {{ return {code} \"status {code}\\n\"; }}").unwrap(),
            }
        }
        let listen = vec![SocketAddr::new(addr::UPSTREAM_V4.into(), 80), SocketAddr::new(addr::UPSTREAM_V6.into(), 80)];
        let upstream = Nginx::start(&topo.upstream, "upstream", dir, listen, &locations);
        let scripted = ScriptedServer::start(&topo.upstream, SocketAddr::new(addr::UPSTREAM_V4.into(), UPSTREAM_SCRIPTED_PORT), script);

        let up = http_base(addr::UPSTREAM_V4.into());
        let mut locations = String::new();
        writeln!(locations, "        client_max_body_size 64m;").unwrap();
        writeln!(locations, "        location / {{ proxy_pass {up}:80; }}").unwrap();
        writeln!(locations, "        location /scripted/ {{ proxy_pass {up}:{UPSTREAM_SCRIPTED_PORT}; proxy_http_version 1.1; proxy_read_timeout 60s; }}").unwrap();
        writeln!(locations, "        location /v6/ {{ proxy_pass {}:80/; }}", http_base(addr::UPSTREAM_V6.into())).unwrap();
        writeln!(locations, "        location /limited/ {{ client_max_body_size 1k; proxy_pass {up}:80/; }}").unwrap();
        let listen = vec![
            SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 80),
            SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V6.into(), 80),
            SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), PROXY_SECOND_PORT),
        ];
        let proxy = Nginx::start(&topo.gateway, "proxy", topo.path("proxy"), listen, &locations);
        let lab = HttpLab { observer: Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], observer_args), proxy, upstream, scripted, topo, started: Instant::now() };
        for &n in SIZES {
            lab.add_size(n);
        }
        lab
    }

    /// Makes the upstream serve `/size/<n>`: a file of exactly `n` bytes.
    fn add_size(&self, n: u64) {
        let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        fs::write(self.upstream.dir.join("www/size").join(n.to_string()), body).expect("writing an upstream file");
    }

    /// The ETag the upstream gives its file at `path` (nginx: hex mtime, hex size).
    fn etag(&self, path: &str) -> String {
        let meta = fs::metadata(self.upstream.dir.join("www").join(path.trim_start_matches('/'))).expect("an upstream file");
        let mtime = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        format!("\"{mtime:x}-{:x}\"", meta.len())
    }

    /// Makes the upstream serve `/fake/<name>` with `body`.
    fn add_fake(&self, name: &str, body: &[u8]) {
        fs::write(self.upstream.dir.join("www/fake").join(name), body).expect("writing an upstream file");
    }

    fn metrics(&self) -> Metrics {
        Metrics::new(self.observer.metrics())
    }

    /// Polls until `n` entries match `select`, all have settled (closed, HTTP state final), and
    /// together they show at least `requests` requests and `answers` responses plus unanswered
    /// requests: everything the daemon must have processed. Returns the snapshot.
    fn wait_settled(&self, what: &str, n: usize, requests: u64, answers: u64, select: impl Fn(&Connection) -> bool) -> Snapshot {
        self.wait_settled_for(what, SETTLE, n, requests, answers, select)
    }

    fn wait_settled_for(&self, what: &str, timeout: Duration, n: usize, requests: u64, answers: u64, select: impl Fn(&Connection) -> bool) -> Snapshot {
        let done = |s: &Snapshot| {
            let picked: Vec<&Connection> = s.connections.iter().filter(|c| select(c)).collect();
            let views: Vec<Option<HttpView>> = picked.iter().map(|c| http_of(c)).collect();
            let (req, ans) = views.iter().flatten().fold((0, 0), |(r, a), h| (r + h.lifetime.requests, a + h.lifetime.responses() + h.lifetime.no_response));
            // The windows come from the message records, the lifetime from the kernel's exact
            // counts: an answer given while records still wait in the ring (its drain is bounded
            // under load) has windows behind the lifetime. Settled means they caught up (unless
            // the view says it lost records, or the lab is older than the 60 s window).
            let windows_caught_up = views.iter().flatten().all(|h| {
                !h.in_sync || h.framing_lost > 0 || self.started.elapsed() > Duration::from_secs(55) || (h.last_60s.requests, h.last_60s.responses() + h.last_60s.no_response) == (h.lifetime.requests, h.lifetime.responses() + h.lifetime.no_response)
            });
            picked.len() >= n && picked.iter().all(|c| settled(c)) && req >= requests && ans >= answers && windows_caught_up
        };
        let mut last = None;
        let found = poll(timeout, Duration::from_millis(50), || {
            let s = self.observer.connections();
            let ok = done(&s);
            last = Some(s);
            ok.then(|| last.clone().expect("just set"))
        });
        // The kernel's framer counts the same connections: where it kept its place, exactly the same.
        if let Some(s) = &found {
            let differ: Vec<String> = s.connections.iter().filter(|c| select(c)).filter_map(|c| kernel_agrees(c).err()).collect();
            assert!(differ.is_empty(), "kernel and daemon framing disagree:\n{}\n{}", differ.join("\n"), s.pretty());
        }
        found.unwrap_or_else(|| {
            let m = self.metrics();
            let losses: Vec<String> = ["observer_payload_records_lost_total", "observer_events_lost_total", "observer_http_framing_lost_total"].iter().map(|n| format!("{n} {}", m.value(n, &[]))).collect();
            panic!(
                "waited {timeout:?} for {what}: {n} settled entries with {requests} requests and {answers} responses or unanswered requests.\nThe daemon's loss counters: {}\nIts last answer of /api/v1/connections:\n{}",
                losses.join(", "),
                last.map(|s| s.pretty()).unwrap_or_default()
            )
        })
    }
}

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
fn script(p: &mut Peer) -> io::Result<()> {
    serve(p, false)
}

/// [`script`], except that requests already received together (pipelined) are answered with one
/// write: their responses share segments.
fn batch_script(p: &mut Peer) -> io::Result<()> {
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
    let fixed = |code: u64, extra: &str, body: &str| format!("HTTP/1.1 {code} Scripted\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}{connection}\r\n{body}", body.len()).into_bytes();
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
            let mut r = format!("HTTP/1.1 {code} Scripted\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Pieces, X-Fake\r\n{connection}\r\n").into_bytes();
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
fn echo(p: &mut Peer) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = p.stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        p.stream.write_all(&buf[..n])?;
    }
}

fn url(server: IpAddr, path: &str) -> String {
    format!("{}{path}", http_base(server))
}

fn url_port(server: IpAddr, port: u16, path: &str) -> String {
    format!("{}:{port}{path}", http_base(server))
}

fn proxy_v4() -> IpAddr {
    addr::GATEWAY_CLIENT_SIDE_V4.into()
}

fn upstream_http() -> SocketAddr {
    SocketAddr::new(addr::UPSTREAM_V4.into(), 80)
}

fn upstream_scripted() -> SocketAddr {
    SocketAddr::new(addr::UPSTREAM_V4.into(), UPSTREAM_SCRIPTED_PORT)
}

/// Runs `ops` with curl from the client and checks the run itself: success, one transfer per
/// operation, every final status line curl saw is its transfer's `http_code`.
fn curl_ok(lab: &HttpLab, ops: &[CurlOp]) -> CurlRun {
    curl_ok_within(lab, ops, Duration::from_secs(30))
}

fn curl_ok_within(lab: &HttpLab, ops: &[CurlOp], max_time: Duration) -> CurlRun {
    let run = curl_each(&lab.topo.client, ops, max_time);
    assert!(run.status.success(), "curl failed ({}):\n{}", run.status, run.stderr);
    assert_eq!(run.transfers.len(), ops.len(), "one --write-out line per operation:\n{}", run.stderr);
    let finals: Vec<u16> = run.status_lines.iter().copied().filter(|s| *s >= 200).collect();
    assert_eq!(finals, run.transfers.iter().map(|t| t.http_code).collect::<Vec<_>>(), "final status lines in curl's --verbose output vs its http_codes:\n{}", run.stderr);
    run
}

/// Checks that curl reused one connection for every operation; returns the client's end.
fn one_connection(run: &CurlRun) -> SocketAddr {
    assert_eq!(run.transfers.iter().map(|t| t.num_connects).sum::<u32>(), 1, "curl should open exactly one connection: {:#?}", run.transfers);
    let client_end = run.transfers[0].local;
    assert!(run.transfers.iter().all(|t| t.local == client_end), "every transfer on one connection: {:#?}", run.transfers);
    client_end
}

/// The entries of `snap` that `select` picks.
fn pick(snap: &Snapshot, select: impl Fn(&Connection) -> bool) -> Vec<&Connection> {
    snap.connections.iter().filter(|c| select(c)).collect()
}

/// The single entry of `snap` whose peer is `remote`.
fn entry_of(snap: &Snapshot, remote: SocketAddr) -> &Connection {
    let found = snap.with_remote(remote);
    assert_eq!(found.len(), 1, "exactly one entry for peer {remote}:\n{}", snap.pretty());
    found[0]
}

/// Asserts a settled connection's HTTP state: `expected` in the lifetime and both windows (the
/// 10 s window only while the lab is younger than 9 s: older traffic has left it), nothing in
/// flight, framing never lost and in sync. Returns the view.
fn assert_http(lab: &HttpLab, c: &Connection, expected: &Window) -> HttpView {
    let h = http_of(c).unwrap_or_else(|| panic!("{} has no http object: {c:#?}", c.connection));
    assert_eq!(h.lifetime, *expected, "lifetime HTTP counts of {} (left: observer, right: ground truth)", c.connection);
    assert_eq!(h.last_60s, *expected, "last_60s HTTP counts of {}", c.connection);
    if lab.started.elapsed() < Duration::from_secs(9) {
        assert_eq!(h.last_10s, *expected, "last_10s HTTP counts of {}", c.connection);
    }
    assert_eq!(h.in_flight, 0, "in_flight of {}", c.connection);
    assert_eq!(h.framing_lost, 0, "framing_lost of {}", c.connection);
    assert!(h.in_sync, "in_sync of {}", c.connection);
    h
}

/// Whether a status answers its request: a final status, or 101 (the connection stops being
/// HTTP). Other 1xx are interim.
fn answers(status: u16) -> bool {
    status >= 200 || status == 101
}

/// Asserts `recent` (the last 32 status lines, oldest first): statuses, methods and targets in
/// order, times within the connection's life and never going back, and a latency for each
/// response that answers its request (none for interim ones).
fn assert_recent(c: &Connection, h: &HttpView, expected: &[(u16, &str, &str)]) {
    let tail = &expected[expected.len().saturating_sub(32)..];
    let got: Vec<(u16, String, String)> = h.recent.iter().map(|e| (e.status, e.method.clone().unwrap_or_default(), e.target.clone().unwrap_or_default())).collect();
    let want: Vec<(u16, String, String)> = tail.iter().map(|(s, m, t)| (*s, m.to_string(), t.to_string())).collect();
    assert_eq!(got, want, "recent exchanges of {} (status, method, target)", c.connection);
    for (i, e) in h.recent.iter().enumerate() {
        assert!(e.time >= c.first_seen - 0.01 && e.time <= c.last_seen + 0.01, "recent[{i}].time {} outside {}..{} of {}", e.time, c.first_seen, c.last_seen, c.connection);
        // Responses of one segment share a kernel timestamp; its conversion to Unix time varies
        // by a rounding step (0.24 us at today's Unix times) from one entry to the next.
        if i > 0 {
            assert!(e.time >= h.recent[i - 1].time - 1e-6, "recent times go back at {i} on {}: {:?}", c.connection, h.recent);
        }
        match e.latency_ms {
            Some(l) => assert!(answers(e.status) && l >= 0.0, "recent[{i}] of {}: latency {l} ms for status {}", c.connection, e.status),
            None => assert!(!answers(e.status), "recent[{i}] of {}: a final response without latency", c.connection),
        }
    }
}

/// Asserts the HTTP metrics of one `role` and service `port`: `requests` requests, one response
/// per status line in `statuses` (by class and code), `unanswered` unanswered requests, and one
/// latency observation per response that answers its request, by class.
fn assert_metrics(m: &Metrics, role: &str, port: u16, requests: u64, statuses: &[u16], unanswered: u64) {
    let port = port.to_string();
    let (role, port) = (role, port.as_str());
    let l = [("role", role), ("port", port)];
    assert_eq!(m.count("observer_http_requests_total", &l), requests, "observer_http_requests_total{{role={role},port={port}}}");
    assert_eq!(m.count("observer_http_responses_total", &l), statuses.len() as u64, "observer_http_responses_total{{role={role},port={port}}}, all codes");
    let mut by_code: BTreeMap<u16, u64> = BTreeMap::new();
    for s in statuses {
        *by_code.entry(*s).or_default() += 1;
    }
    for (code, n) in &by_code {
        let code_s = code.to_string();
        let class = format!("{}xx", code / 100);
        let labels = [("role", role), ("port", port), ("class", class.as_str()), ("code", code_s.as_str())];
        assert_eq!(m.count("observer_http_responses_total", &labels), *n, "observer_http_responses_total{labels:?}");
    }
    assert_eq!(m.count("observer_http_requests_unanswered_total", &l), unanswered, "observer_http_requests_unanswered_total{{role={role},port={port}}}");
    for class in 1..=5u16 {
        let c = format!("{class}xx");
        let finals = statuses.iter().filter(|s| **s / 100 == class && answers(**s)).count() as u64;
        let labels = [("role", role), ("port", port), ("class", c.as_str())];
        assert_eq!(m.count("observer_http_response_latency_seconds_count", &labels), finals, "observer_http_response_latency_seconds_count{labels:?}");
    }
}

/// `(method, target)` of an access log line's request line.
fn request_of(e: &LogEntry) -> (String, String) {
    let mut f = e.request.split(' ');
    (f.next().unwrap_or("").to_owned(), f.next().unwrap_or("").to_owned())
}

/// The upstream's log lines, one per proxied request; asserts there are `n`, all from the
/// gateway's address `gateway`.
fn upstream_log(lab: &HttpLab, n: usize, gateway: IpAddr) -> Vec<LogEntry> {
    let log = lab.upstream.wait_for_requests(n);
    assert_eq!(log.entries.len(), n, "one upstream request per proxied request:\n{}", log.raw);
    assert!(log.entries.iter().all(|e| e.remote_addr == gateway), "all from {gateway}:\n{}", log.raw);
    log.entries
}

/// Checks the outbound side of `n` proxied requests to the upstream nginx: one settled entry per
/// request, each with exactly one request and the status the upstream logged for that gateway
/// source port, and its request line. Returns the upstream's log lines in order.
fn assert_outbound_nginx(lab: &HttpLab, n: usize) -> Vec<LogEntry> {
    assert_outbound_nginx_at(lab, n, upstream_http(), addr::GATEWAY_UPSTREAM_SIDE_V4.into())
}

/// [`assert_outbound_nginx`] for the upstream at `upstream`, reached from the gateway's `gateway`.
fn assert_outbound_nginx_at(lab: &HttpLab, n: usize, upstream: SocketAddr, gateway: IpAddr) -> Vec<LogEntry> {
    let entries = upstream_log(lab, n, gateway);
    let snap = lab.wait_settled("the proxied connections to the upstream", n, n as u64, n as u64, |c| c.remote == upstream);
    let conns = pick(&snap, |c| c.remote == upstream);
    assert_eq!(conns.len(), n, "one outbound entry per proxied request (HTTP/1.0, close):\n{}", snap.pretty());
    for e in &entries {
        let c = conns.iter().find(|c| c.local.port() == e.remote_port).unwrap_or_else(|| panic!("no outbound entry from gateway port {} (upstream log {e:?}):\n{}", e.remote_port, snap.pretty()));
        assert_eq!(field(c, "role"), "outbound", "{}", c.connection);
        let h = assert_http(lab, c, &Window::expected(1, &[e.status], 0));
        assert_eq!(h.last_status, Some(e.status), "last_status of {}", c.connection);
        let (method, target) = request_of(e);
        assert_recent(c, &h, &[(e.status, &method, &target)]);
    }
    entries
}

/// Checks the outbound side of requests proxied to the scripted upstream server: one settled
/// entry per connection it served, each with one request and exactly the status lines the server
/// wrote on it. Returns what it served.
fn assert_outbound_scripted(lab: &HttpLab, connections: usize) -> Vec<Served> {
    let snap = lab.wait_settled("the proxied connections to the scripted upstream", connections, connections as u64, connections as u64, |c| c.remote == upstream_scripted());
    let conns = pick(&snap, |c| c.remote == upstream_scripted());
    assert_eq!(conns.len(), connections, "one outbound entry per proxied request:\n{}", snap.pretty());
    let served = lab.scripted.served();
    for c in &conns {
        let mine: Vec<&Served> = served.iter().filter(|s| s.peer.port() == c.local.port()).collect();
        assert!(!mine.is_empty(), "the scripted upstream served nothing to {}: {served:#?}", c.connection);
        let statuses: Vec<u16> = mine.iter().map(|s| s.status).collect();
        let h = assert_http(lab, c, &Window::expected(1, &statuses, 0));
        assert_eq!(h.last_status, statuses.last().copied(), "last_status of {}", c.connection);
        let want: Vec<(u16, &str, &str)> = mine.iter().map(|s| (s.status, s.method.as_str(), s.target.as_str())).collect();
        assert_recent(c, &h, &want);
    }
    served
}

/// The proxy's log lines for one client connection, in order; asserts they are numbered 1..n on
/// one nginx connection and carry `codes`.
fn assert_proxy_log(lab: &HttpLab, client_end: SocketAddr, codes: &[u16]) -> Vec<LogEntry> {
    let what = format!("{} requests from {client_end}", codes.len());
    let log = lab.proxy.wait_for_log(&what, SETTLE, |l| l.entries.iter().filter(|e| e.remote() == client_end).count() >= codes.len());
    let mine: Vec<LogEntry> = log.entries.iter().filter(|e| e.remote() == client_end).cloned().collect();
    assert_eq!(mine.iter().map(|e| e.status).collect::<Vec<_>>(), codes, "statuses the proxy logged for {client_end} vs what the client got:\n{}", log.raw);
    assert_eq!(mine.iter().map(|e| e.connection_requests).collect::<Vec<_>>(), (1..=codes.len() as u64).collect::<Vec<_>>(), "{}", log.raw);
    assert!(mine.iter().all(|e| e.connection == mine[0].connection), "one nginx connection:\n{}", log.raw);
    mine
}

/// Paths of the keep-alive mix and what the upstream answers: every class, bodies of 0 B to 5 MB.
const MIX: &[(&str, u16)] = &[
    ("/ok", 200),
    ("/status/204", 204),
    ("/redirect", 301),
    ("/size/0", 200),
    ("/status/404", 404),
    ("/size/5000000", 200),
    ("/status/429", 429),
    ("/size/1", 200),
    ("/status/500", 500),
    ("/size/100000", 200),
    ("/status/502", 502),
    ("/missing", 404),
    ("/status/503", 503),
    ("/size/1000000", 200),
    ("/size/10000", 200),
    ("/size/1000", 304),
    ("/status/200", 200),
    ("/size/100", 200),
];

/// curl operations for [`MIX`] on the proxy at `server`, paths prefixed with `prefix`; the 304 is
/// asked for with the file's ETag.
fn mix_ops(lab: &HttpLab, server: IpAddr, prefix: &str) -> Vec<CurlOp> {
    MIX.iter()
        .map(|(p, code)| {
            let op = CurlOp::get(url(server, &format!("{prefix}{p}")));
            if *code == 304 { op.with(&["--header", &format!("If-None-Match: {}", lab.etag(p))]) } else { op }
        })
        .collect()
}

/// The keep-alive mix over one connection to the proxy at `server`: the inbound entry's counts,
/// last status and recent exchanges equal what curl got and what the proxy logged; every
/// proxied request's outbound entry equals the upstream's log; the metrics agree. With `ipv6`,
/// the proxy reaches the upstream over IPv6 too.
fn keepalive_mix(lab: &HttpLab, server: IpAddr, family: &str, ipv6: bool) {
    lab.add_size(5_000_000);
    let prefix = if ipv6 { "/v6" } else { "" };
    let ops = mix_ops(lab, server, prefix);
    let run = curl_ok(lab, &ops);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, MIX.iter().map(|(_, c)| *c).collect::<Vec<_>>(), "the lab answers the mix as designed");
    assert_eq!(run.status_lines, codes, "no interim responses in the mix");
    let client_end = one_connection(&run);
    for (t, (p, code)) in run.transfers.iter().zip(MIX) {
        if let (Some(n), 200) = (p.strip_prefix("/size/"), code) {
            assert_eq!(t.size_download, n.parse::<u64>().unwrap(), "body of {p}");
        }
    }
    assert_proxy_log(lab, client_end, &codes);

    let n = MIX.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    assert_eq!(c.local, SocketAddr::new(server, 80));
    assert_eq!((c.family.as_str(), field(c, "role")), (family, "inbound"));
    let h = assert_http(lab, c, &Window::expected(n, &codes, 0));
    assert_eq!(h.last_status, Some(*codes.last().unwrap()), "last_status");
    let targets: Vec<String> = MIX.iter().map(|(p, _)| format!("{prefix}{p}")).collect();
    let want: Vec<(u16, &str, &str)> = MIX.iter().zip(&targets).map(|((_, s), t)| (*s, "GET", t.as_str())).collect();
    assert_recent(c, &h, &want);

    // nginx proxies the requests one after another: the upstream saw them in the client's order.
    let upstream = if ipv6 {
        assert_outbound_nginx_at(lab, MIX.len(), SocketAddr::new(addr::UPSTREAM_V6.into(), 80), addr::GATEWAY_UPSTREAM_SIDE_V6.into())
    } else {
        assert_outbound_nginx(lab, MIX.len())
    };
    assert_eq!(upstream.iter().map(|e| e.status).collect::<Vec<_>>(), codes, "statuses in the upstream's log");
    assert_eq!(upstream.iter().map(|e| request_of(e).1).collect::<Vec<_>>(), MIX.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>());

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
}

#[test]
fn keepalive_mix_counts_every_status_class_exactly() {
    const TEST: &str = "keepalive_mix_counts_every_status_class_exactly";
    if root_or_skip(TEST) {
        let lab = HttpLab::start(TEST);
        keepalive_mix(&lab, proxy_v4(), "ipv4", false);
    }
}

#[test]
fn keepalive_mix_over_ipv6_counts_every_status_class_exactly() {
    const TEST: &str = "keepalive_mix_over_ipv6_counts_every_status_class_exactly";
    if root_or_skip(TEST) {
        let lab = HttpLab::start(TEST);
        keepalive_mix(&lab, addr::GATEWAY_CLIENT_SIDE_V6.into(), "ipv6", true);
    }
}

#[test]
fn connection_close_gives_each_exchange_its_own_entry() {
    const TEST: &str = "connection_close_gives_each_exchange_its_own_entry";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let paths = ["/ok", "/status/404", "/size/100000", "/status/503", "/redirect", "/status/204"];
    let ops: Vec<CurlOp> = paths.iter().map(|p| CurlOp::get(url(proxy_v4(), p)).with(&["--header", "Connection: close"])).collect();
    let run = curl_ok(&lab, &ops);
    assert!(run.transfers.iter().all(|t| t.num_connects == 1), "one connection per transfer: {:#?}", run.transfers);
    assert_eq!(run.status_lines.len(), paths.len(), "one status line per transfer");

    let n = paths.len();
    let snap = lab.wait_settled("one connection per request", n, n as u64, n as u64, |c| c.remote.ip() == IpAddr::from(addr::CLIENT_V4));
    assert_eq!(pick(&snap, |c| c.remote.ip() == IpAddr::from(addr::CLIENT_V4)).len(), n, "one entry per connection:\n{}", snap.pretty());
    for (t, p) in run.transfers.iter().zip(paths) {
        assert_proxy_log(&lab, t.local, &[t.http_code]);
        let c = entry_of(&snap, t.local);
        let h = assert_http(&lab, c, &Window::expected(1, &[t.http_code], 0));
        assert_eq!(h.last_status, Some(t.http_code));
        assert_recent(c, &h, &[(t.http_code, "GET", p)]);
    }
    assert_outbound_nginx(&lab, n);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n as u64, &codes, 0);
    assert_metrics(&m, "outbound", 80, n as u64, &codes, 0);
}

#[test]
fn status_lines_inside_bodies_are_not_responses() {
    const TEST: &str = "status_lines_inside_bodies_are_not_responses";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    // Small bodies reach the daemon whole; large ones are skipped in the kernel once the daemon
    // knows their length; odd sizes put fake heads across the 4 KiB record boundaries.
    let files: [(&str, usize); 4] = [("starts", 3_000), ("odd", 12_345), ("large", 300_000), ("huge", 2_000_000)];
    for (name, n) in files {
        lab.add_fake(name, &fake_heads(n));
    }
    // Request bodies full of request lines too, one of them chunked.
    let small_post = lab.topo.path("post-small");
    let large_post = lab.topo.path("post-large");
    fs::write(&small_post, fake_heads(5_000)).unwrap();
    fs::write(&large_post, fake_heads(200_000)).unwrap();
    let post = |file: &std::path::Path| format!("@{}", file.display());
    let (small_arg, large_arg) = (post(&small_post), post(&large_post));
    let ops = vec![
        CurlOp::get(url(proxy_v4(), "/fake/starts")),
        CurlOp::get(url(proxy_v4(), "/fake/odd")),
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &small_arg, "--header", "Expect:"]),
        CurlOp::get(url(proxy_v4(), "/fake/large")),
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &large_arg, "--header", "Expect:"]),
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &large_arg, "--header", "Expect:", "--header", "Transfer-Encoding: chunked"]),
        CurlOp::head(url(proxy_v4(), "/fake/huge")),
        CurlOp::get(url(proxy_v4(), "/fake/huge")),
        CurlOp::get(url(proxy_v4(), "/fake/starts")),
    ];
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200; ops.len()]);
    assert_eq!(run.status_lines, codes, "curl itself saw one status line per request");
    let sizes: Vec<u64> = run.transfers.iter().map(|t| t.size_download).collect();
    assert_eq!(sizes, vec![3_000, 12_345, 3, 300_000, 3, 3, 0, 2_000_000, 3_000], "bodies as curl received them");
    assert!(run.stderr.contains("> Transfer-Encoding: chunked"), "curl sent a chunked request body:\n{}", run.stderr);
    assert_proxy_log(&lab, client_end, &codes);

    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = ops.iter().map(|o| (200, o.method(), o.url.strip_prefix(&http_base(proxy_v4())).unwrap())).collect();
    assert_recent(c, &h, &want);
    assert_outbound_nginx(&lab, ops.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
}

/// Chunked operations for the scripted servers: (status, pieces, piece length).
const CHUNKED: &[(u16, u64, u64)] = &[(200, 3, 100), (404, 1, 10), (500, 5, 5_000), (200, 2, 40_000), (200, 0, 0), (201, 300, 7), (503, 1, 1)];

#[test]
fn chunked_responses_with_extensions_and_trailers_are_framed_exactly() {
    const TEST: &str = "chunked_responses_with_extensions_and_trailers_are_framed_exactly";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);

    // 1. Through nginx: the scripted upstream's hand-made chunked responses (extensions,
    //    trailers) on the outbound side, nginx's own chunked re-encoding on the inbound side.
    let mut ops: Vec<CurlOp> = CHUNKED.iter().map(|(s, p, l)| CurlOp::get(url(proxy_v4(), &format!("/scripted/chunked/{s}/{p}/{l}")))).collect();
    ops.push(CurlOp::get(url(proxy_v4(), "/ok")));
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    let mut want_codes: Vec<u16> = CHUNKED.iter().map(|c| c.0).collect();
    want_codes.push(200);
    assert_eq!(codes, want_codes);
    for (t, (_, p, l)) in run.transfers.iter().zip(CHUNKED) {
        assert_eq!(t.size_download, p * l, "decoded body of {t:?}");
    }
    assert_proxy_log(&lab, client_end, &codes);
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(n, &run.status_lines, 0));
    let targets: Vec<String> = ops.iter().map(|o| o.url.strip_prefix(&http_base(proxy_v4())).unwrap().to_owned()).collect();
    let want: Vec<(u16, &str, &str)> = codes.iter().zip(&targets).map(|(s, t)| (*s, "GET", t.as_str())).collect();
    assert_recent(c, &h, &want);
    let served = assert_outbound_scripted(&lab, CHUNKED.len());
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), &want_codes[..CHUNKED.len()], "what the scripted upstream wrote");
    assert_outbound_nginx(&lab, 1);

    // 2. Without nginx: a scripted server in the gateway answers one keep-alive connection with
    //    the hand-made chunked responses, the last one delimited by closing the connection.
    let gateway = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), GATEWAY_SCRIPTED_PORT), script);
    let mut ops: Vec<CurlOp> = CHUNKED.iter().map(|(s, p, l)| CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, &format!("/chunked/{s}/{p}/{l}")))).collect();
    ops.push(CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/until-close/200/20000")));
    let direct = curl_ok(&lab, &ops);
    let direct_end = one_connection(&direct);
    let served: Vec<Served> = gateway.served().into_iter().filter(|s| s.peer == direct_end).collect();
    let direct_codes: Vec<u16> = served.iter().map(|s| s.status).collect();
    assert_eq!(direct.status_lines, direct_codes, "status lines curl received vs what the scripted server wrote");
    assert_eq!(direct.transfers.last().unwrap().size_download, 20_000);
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the keep-alive connection to the scripted server", 1, n, n, |c| c.remote == direct_end);
    let c = entry_of(&snap, direct_end);
    assert_eq!(c.local.port(), GATEWAY_SCRIPTED_PORT);
    let h = assert_http(&lab, c, &Window::expected(n, &direct_codes, 0));
    assert_eq!(h.last_status, Some(200));
    let want: Vec<(u16, &str, &str)> = served.iter().map(|s| (s.status, s.method.as_str(), s.target.as_str())).collect();
    assert_recent(c, &h, &want);

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, codes.len() as u64, &codes, 0);
    assert_metrics(&m, "outbound", UPSTREAM_SCRIPTED_PORT, CHUNKED.len() as u64, &want_codes[..CHUNKED.len()], 0);
    assert_metrics(&m, "inbound", GATEWAY_SCRIPTED_PORT, direct_codes.len() as u64, &direct_codes, 0);
}

#[test]
fn continue_is_an_interim_1xx_and_the_request_counts_once() {
    const TEST: &str = "continue_is_an_interim_1xx_and_the_request_counts_once";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let big = lab.topo.path("post-big");
    let small = lab.topo.path("post-small");
    fs::write(&big, fake_heads(2_000_000)).unwrap();
    fs::write(&small, b"a=1&b=2").unwrap();
    let (big_arg, small_arg) = (format!("@{}", big.display()), format!("@{}", small.display()));

    // 1. curl through nginx: nginx answers Expect itself with 100 Continue.
    let ops = vec![
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &big_arg, "--header", "Expect: 100-continue"]),
        CurlOp::get(url(proxy_v4(), "/status/404")),
        CurlOp::get(url(proxy_v4(), "/ok")).with(&["--data-binary", &small_arg, "--header", "Expect: 100-continue"]),
    ];
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    assert_eq!(run.status_lines, vec![100, 200, 404, 100, 200], "status lines curl received:\n{}", run.stderr);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    let log = assert_proxy_log(&lab, client_end, &codes);
    assert!(log[0].request_length > 2_000_000, "the proxy received the big body: {:?}", log[0]);
    let snap = lab.wait_settled("the client's keep-alive connection", 1, 3, 5, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(3, &run.status_lines, 0));
    assert_eq!(h.last_status, Some(200));
    assert_recent(c, &h, &[(100, "POST", "/ok"), (200, "POST", "/ok"), (404, "GET", "/status/404"), (100, "POST", "/ok"), (200, "POST", "/ok")]);
    // nginx does not forward Expect: the upstream answers each request once. (The upstream logs a
    // request when it is done with it, which for the big upload can come after the next one: compare
    // the statuses, not their order in its log.)
    let upstream = assert_outbound_nginx(&lab, 3);
    let mut logged: Vec<u16> = upstream.iter().map(|e| e.status).collect();
    let mut sent = codes.clone();
    logged.sort_unstable();
    sent.sort_unstable();
    assert_eq!(logged, sent);

    // 2. A raw client and a scripted server in the gateway: the head, 100 Continue, the body, the
    //    final response, then another request on the same connection.
    let gateway = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), GATEWAY_SCRIPTED_PORT), script);
    let mut s = connect(&lab.topo.client, gateway.addr);
    let client_end = s.local_addr().unwrap();
    let body = fake_heads(5_000);
    write!(s, "POST /continue/201 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len()).unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let interim = reader.read(false).expect("100 Continue");
    assert_eq!(interim.status, 100);
    s.write_all(&body).unwrap();
    let done = reader.read(false).expect("the final response");
    assert_eq!((done.status, done.body.as_slice()), (201, &b"got 5000 bytes\n"[..]));
    s.write_all(b"GET /chunked/200/2/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let last = reader.read(false).expect("the last response");
    assert_eq!((last.status, last.body.len()), (200, 20));
    drop(reader);
    drop(s);
    let served: Vec<u16> = gateway.served().iter().filter(|x| x.peer == client_end).map(|x| x.status).collect();
    assert_eq!(served, vec![100, 201, 200]);
    let snap = lab.wait_settled("the raw client's connection", 1, 2, 3, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(2, &served, 0));
    assert_recent(c, &h, &[(100, "POST", "/continue/201"), (201, "POST", "/continue/201"), (200, "GET", "/chunked/200/2/10")]);

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, 3, &run.status_lines, 0);
    assert_metrics(&m, "outbound", 80, 3, &codes, 0);
    assert_metrics(&m, "inbound", GATEWAY_SCRIPTED_PORT, 2, &served, 0);
}

#[test]
fn head_responses_do_not_swallow_the_next_response() {
    const TEST: &str = "head_responses_do_not_swallow_the_next_response";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let ops = vec![
        CurlOp::head(url(proxy_v4(), "/size/100000")),
        CurlOp::get(url(proxy_v4(), "/ok")),
        CurlOp::head(url(proxy_v4(), "/size/10000")),
        CurlOp::get(url(proxy_v4(), "/size/1000")),
        CurlOp::head(url(proxy_v4(), "/status/404")),
        CurlOp::get(url(proxy_v4(), "/status/503")),
        CurlOp::head(url(proxy_v4(), "/size/1000000")),
        CurlOp::head(url(proxy_v4(), "/size/0")),
        CurlOp::get(url(proxy_v4(), "/size/100")),
        CurlOp::head(url(proxy_v4(), "/redirect")),
        CurlOp::get(url(proxy_v4(), "/status/429")),
    ];
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200, 200, 200, 200, 404, 503, 200, 200, 200, 301, 429]);
    for (t, o) in run.transfers.iter().zip(&ops) {
        if o.method() == "HEAD" {
            assert_eq!(t.size_download, 0, "a HEAD response has no body: {t:?}");
        }
    }
    let log = assert_proxy_log(&lab, client_end, &codes);
    let logged: Vec<String> = log.iter().map(|e| request_of(e).0).collect();
    assert_eq!(logged, ops.iter().map(|o| o.method().to_owned()).collect::<Vec<_>>(), "methods the proxy logged");
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = ops.iter().zip(&codes).map(|(o, s)| (*s, o.method(), o.url.strip_prefix(&http_base(proxy_v4())).unwrap())).collect();
    assert_recent(c, &h, &want);
    let upstream = assert_outbound_nginx(&lab, ops.len());
    assert_eq!(upstream.iter().map(|e| request_of(e).0).collect::<Vec<_>>(), logged, "nginx forwards HEAD as HEAD");
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
}

/// The kernel framer lost its place in the request direction of `c` for `reason`, and the metric
/// by reason counted it.
fn assert_kernel_lost(lab: &HttpLab, c: &Connection, reason: &str) {
    let k = kernel_http_of(c).unwrap_or_else(|| panic!("{}: no http_kernel", c.connection));
    assert_eq!(k.lost_in.as_deref(), Some(reason), "{}: {k:?}", c.connection);
    let counted = lab.metrics().value("observer_http_fallback_total", &[("reason", reason)]);
    assert!(counted >= 1.0, "observer_http_fallback_total{{reason={reason:?}}} is {counted}");
}

#[test]
fn pipelined_requests_in_one_write_are_counted_once_each_in_order() {
    const TEST: &str = "pipelined_requests_in_one_write_are_counted_once_each_in_order";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let requests: &[(&str, &str, &str)] = &[
        ("GET", "/ok", ""),
        ("HEAD", "/size/100000", ""),
        ("GET", "/status/404", ""),
        ("GET", "/size/10000", ""),
        ("POST", "/ok", "hello=world"),
        ("GET", "/status/503", ""),
        ("HEAD", "/status/204", ""),
        ("GET", "/redirect", ""),
        ("GET", "/size/100000", ""),
        ("HEAD", "/ok", ""),
        ("GET", "/status/429", ""),
    ];
    let mut all = Vec::new();
    for (m, t, body) in requests {
        let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
        all.extend(format!("{m} {t} HTTP/1.1\r\nHost: x\r\n{length}\r\n{body}").into_bytes());
    }
    let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
    let client_end = s.local_addr().unwrap();
    s.write_all(&all).unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let mut statuses = Vec::new();
    for (m, t, _) in requests {
        let exchange = reader.read_exchange(*m == "HEAD").unwrap_or_else(|e| panic!("the response to {m} {t}: {e}"));
        statuses.extend(exchange.iter().map(|r| r.status));
    }
    assert_eq!(statuses, vec![200, 200, 404, 200, 200, 503, 204, 301, 200, 200, 429], "what the raw client received");
    assert!(reader.buffered().is_empty(), "nothing after the last response");
    assert_eq!(data_segments_out(&s), 1, "the requests left in one segment ({} bytes)", all.len());
    assert_proxy_log(&lab, client_end, &statuses);

    // While the connection is still open: everything answered, nothing in flight.
    let n = requests.len() as u64;
    let snap = lab.observer.wait_for("the open pipelined connection with every response counted", SETTLE, |s| {
        s.with_remote(client_end).first().and_then(|c| http_of(c)).is_some_and(|h| h.lifetime.requests >= n && h.lifetime.responses() >= n)
    });
    let c = entry_of(&snap, client_end);
    assert_eq!(field(c, "status"), "open");
    let h = http_of(c).unwrap();
    assert_eq!((h.lifetime.clone(), h.in_flight), (Window::expected(n, &statuses, 0), 0), "the open connection's counts");
    drop(reader);
    let rest = scripted::finish(s).unwrap();
    assert!(rest.is_empty(), "the proxy sent nothing more: {:?}", String::from_utf8_lossy(&rest));

    let snap = lab.wait_settled("the pipelined connection, closed", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(n, &statuses, 0));
    let want: Vec<(u16, &str, &str)> = requests.iter().zip(&statuses).map(|((m, t, _), s)| (*s, *m, *t)).collect();
    assert_recent(c, &h, &want);
    assert_outbound_nginx(&lab, requests.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &statuses, 0);
    assert_metrics(&m, "outbound", 80, n, &statuses, 0);
    // Eleven requests in one write are deeper than the kernel framer's queue (8): it counted
    // eight, handed the requests over at the ninth's first byte, and the responses at the first
    // one it had no request for; the daemon's framer took both over there (exact counts above).
    assert_kernel_lost(&lab, c, "pipeline_too_deep");
    let k = kernel_http_of(c).unwrap();
    assert_eq!((k.lost_out.as_deref(), k.requests), (Some("unpaired"), 8), "{k:?}");
}

#[test]
fn a_request_line_split_across_segments_is_counted_once() {
    const TEST: &str = "a_request_line_split_across_segments_is_counted_once";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
    let client_end = s.local_addr().unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    // Each piece leaves in its own segment (no Nagle; a pause lets each go before the next).
    let requests: [&[&str]; 3] = [
        &["GE", "T /ok HTTP/1.1\r\nHost: x\r\n\r\n"],
        &["GET /status/404 HTTP/1.1\r", "\nHo", "st: x\r\n\r", "\n"],
        &["H", "EAD /size/1000 HTTP/1.", "1\r\nHost: x\r\n\r\n"],
    ];
    let mut statuses = Vec::new();
    for pieces in requests {
        for p in pieces {
            s.write_all(p.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let head = pieces[0].starts_with('H');
        statuses.extend(reader.read_exchange(head).unwrap().iter().map(|r| r.status));
    }
    assert_eq!(statuses, vec![200, 404, 200]);
    let pieces: u32 = requests.iter().map(|r| r.len() as u32).sum();
    assert_eq!(data_segments_out(&s), pieces, "each piece in its own segment");
    drop(reader);
    assert!(scripted::finish(s).unwrap().is_empty());
    assert_proxy_log(&lab, client_end, &statuses);

    let snap = lab.wait_settled("the raw client's connection", 1, 3, 3, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(3, &statuses, 0));
    assert_recent(c, &h, &[(200, "GET", "/ok"), (404, "GET", "/status/404"), (200, "HEAD", "/size/1000")]);
    assert_outbound_nginx(&lab, 3);
    assert_metrics(&lab.metrics(), "inbound", 80, 3, &statuses, 0);
}

#[test]
fn a_client_reset_mid_response_leaves_its_response_counted() {
    const TEST: &str = "a_client_reset_mid_response_leaves_its_response_counted";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    lab.add_size(10_000_000);
    let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
    let client_end = s.local_addr().unwrap();
    s.write_all(b"GET /size/10000000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while got.len() < 256 * 1024 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the proxy closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{:?}", String::from_utf8_lossy(&got[..64]));
    close_with_reset(s);

    let log = assert_proxy_log(&lab, client_end, &[200]);
    assert!(log[0].bytes_sent < 10_000_000, "the response was cut short: {:?}", log[0]);
    let snap = lab.wait_settled("the aborted connection", 1, 1, 1, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    assert!(c.rst_in >= 1, "the client's reset was seen: {c:?}");
    let h = assert_http(&lab, c, &Window::expected(1, &[200], 0));
    assert_eq!(h.last_status, Some(200));
    assert_recent(c, &h, &[(200, "GET", "/size/10000000")]);
    assert_outbound_nginx(&lab, 1);
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, 1, &[200], 0);
    assert_metrics(&m, "outbound", 80, 1, &[200], 0);
}

#[test]
fn requests_the_client_gives_up_on_are_counted_unanswered() {
    const TEST: &str = "requests_the_client_gives_up_on_are_counted_unanswered";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    // curl gives up after 1 s on an upstream that would answer after 5 s.
    let run = curl_each(&lab.topo.client, &[CurlOp::get(url(proxy_v4(), "/scripted/delay/5000"))], Duration::from_secs(1));
    assert_eq!(run.status.code(), Some(28), "curl times out:\n{}", run.stderr);
    assert!(run.status_lines.is_empty(), "curl received no status line:\n{}", run.stderr);
    let curl_end = run.transfers[0].local;
    // A raw client waits half a second for an answer, then resets the connection.
    let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
    let raw_end = s.local_addr().unwrap();
    s.write_all(b"GET /scripted/delay/5000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let err = s.read(&mut [0u8; 1]).expect_err("no answer within 500 ms");
    assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err}");
    close_with_reset(s);

    for end in [curl_end, raw_end] {
        assert_proxy_log(&lab, end, &[499]);
        let snap = lab.wait_settled("the abandoned connection", 1, 1, 1, |c| c.remote == end);
        let c = entry_of(&snap, end);
        let h = assert_http(&lab, c, &Window::expected(1, &[], 1));
        assert_eq!((h.lifetime.failed, h.lifetime.error_ratio), (1, 1.0));
        assert_eq!(h.last_status, None);
        assert_recent(c, &h, &[]);
    }
    // nginx gave up on the upstream too: its requests went unanswered.
    let snap = lab.wait_settled("the abandoned upstream connections", 2, 2, 2, |c| c.remote == upstream_scripted());
    for c in pick(&snap, |c| c.remote == upstream_scripted()) {
        let h = assert_http(&lab, c, &Window::expected(1, &[], 1));
        assert_recent(c, &h, &[]);
    }
    assert_eq!(lab.scripted.served(), vec![], "the scripted upstream never answered");
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, 2, &[], 2);
    assert_metrics(&m, "outbound", UPSTREAM_SCRIPTED_PORT, 2, &[], 2);
}

#[test]
fn latency_spans_the_upstream_delay() {
    const TEST: &str = "latency_spans_the_upstream_delay";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    const DELAY_MS: f64 = 400.0;
    let paths = ["/scripted/delay/400", "/ok", "/scripted/delay/400"];
    let ops: Vec<CurlOp> = paths.iter().map(|p| CurlOp::get(url(proxy_v4(), p))).collect();
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    assert_eq!(run.status_lines, vec![200, 200, 200]);
    let snap = lab.wait_settled("the client's keep-alive connection", 1, 3, 3, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(3, &[200, 200, 200], 0));
    assert_recent(c, &h, &[(200, "GET", paths[0]), (200, "GET", paths[1]), (200, "GET", paths[2])]);
    let inbound: Vec<f64> = h.recent.iter().map(|e| e.latency_ms.unwrap()).collect();
    // The gateway sees the request after curl sent it and the response before curl gets it. On a
    // reused connection curl takes its "connected" time when it picks the connection, which can
    // fall just after it handed the request to the kernel: allow it 2 ms of slack.
    for (i, ((connected, start), l)) in run.times.iter().zip(&inbound).enumerate() {
        let client_ms = (start - connected) * 1e3;
        assert!(*l <= client_ms + 2.0, "exchange {i}: the observer's latency {l} ms exceeds what curl measured, {client_ms} ms");
    }
    // And the upstream delayed its answer by DELAY_MS after reading the request.
    let snap = lab.wait_settled("the delayed upstream connections", 2, 2, 2, |c| c.remote == upstream_scripted());
    let mut outbound: Vec<(f64, f64)> = pick(&snap, |c| c.remote == upstream_scripted()).iter().map(|c| {
        let h = assert_http(&lab, c, &Window::expected(1, &[200], 0));
        (c.first_seen, h.recent[0].latency_ms.unwrap())
    }).collect();
    outbound.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (i, (o, l)) in [(0, inbound[0]), (1, inbound[2])].iter().enumerate() {
        let up = outbound[*o].1;
        assert!(up >= DELAY_MS, "upstream exchange {i}: latency {up} ms < the {DELAY_MS} ms delay");
        assert!(up <= *l, "upstream exchange {i}: latency {up} ms > the inbound one it is nested in, {l} ms");
    }
    assert!(inbound[1] < DELAY_MS, "the undelayed exchange: {} ms", inbound[1]);

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, 3, &[200, 200, 200], 0);
    assert_metrics(&m, "outbound", UPSTREAM_SCRIPTED_PORT, 2, &[200, 200], 0);
    assert_metrics(&m, "outbound", 80, 1, &[200], 0);
    let l = [("role", "inbound"), ("port", "80"), ("class", "2xx")];
    let sum = m.value("observer_http_response_latency_seconds_sum", &l);
    let expected_sum: f64 = inbound.iter().sum::<f64>() / 1e3;
    assert!((sum - expected_sum).abs() < 1e-6, "latency histogram sum {sum} s vs the recent latencies' {expected_sum} s");
    for le in ["0.25", "0.5", "1", "+Inf"] {
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().unwrap() * 1e3 };
        let within = inbound.iter().filter(|l| **l <= bound).count() as u64;
        let labels = [("role", "inbound"), ("port", "80"), ("class", "2xx"), ("le", le)];
        assert_eq!(m.count("observer_http_response_latency_seconds_bucket", &labels), within, "bucket le={le} vs latencies {inbound:?}");
    }
}

/// A TLS 1.2 ClientHello's first bytes: record header, handshake header, version, random.
fn client_hello() -> Vec<u8> {
    let mut b = vec![0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03];
    b.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    b.extend_from_slice(&[0x00, 0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f, 0x01, 0x00]);
    b.extend(std::iter::repeat_n(0u8, 0xc8 + 5 - b.len()));
    b
}

#[test]
fn connections_that_are_not_http_are_never_counted_and_disturb_nothing() {
    const TEST: &str = "connections_that_are_not_http_are_never_counted_and_disturb_nothing";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    lab.add_size(5_000_000);
    let echo_server = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), ECHO_PORT), echo);
    // The HTTP exchange runs while the other connections come and go.
    let client = lab.topo.client.clone();
    let ops = mix_ops(&lab, proxy_v4(), "");
    let http = std::thread::spawn(move || curl_each(&client, &ops, Duration::from_secs(30)));

    let garbage: Vec<u8> = b"\x00\x01\x02\x03 not HTTP at all \xff\xfe\r\n\r\n".iter().copied().cycle().take(300).collect();
    let hello = client_hello();
    let mut others = Vec::new();
    // To nginx: it answers 400 and closes; the answer is no HTTP response of an HTTP connection.
    for first in [&garbage, &hello] {
        let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), 80));
        others.push(s.local_addr().unwrap());
        s.write_all(first).unwrap();
        let answer = scripted::finish(s).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 400"), "nginx answers 400: {:?}", String::from_utf8_lossy(&answer));
    }
    // To the echo server: later bytes look like HTTP in both directions.
    for first in [&garbage, &hello] {
        let mut s = connect(&lab.topo.client, SocketAddr::new(proxy_v4(), ECHO_PORT));
        others.push(s.local_addr().unwrap());
        s.write_all(first).unwrap();
        let mut back = vec![0u8; first.len()];
        s.read_exact(&mut back).unwrap();
        for later in [&b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"] {
            // Pacing only: each write follows the echo of the previous one anyway, and what is
            // decided about the first bytes does not depend on when later bytes come.
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(later).unwrap();
            let mut back = vec![0u8; later.len()];
            s.read_exact(&mut back).unwrap();
        }
        let rest = scripted::finish(s).unwrap();
        assert!(rest.is_empty());
    }
    let run = http.join().expect("the curl thread");
    assert!(run.status.success(), "curl failed:\n{}", run.stderr);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, MIX.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    let client_end = one_connection(&run);
    assert_proxy_log(&lab, client_end, &codes);
    let log = lab.proxy.wait_for_log("the 400s for the garbage", SETTLE, |l| others[..2].iter().all(|o| l.entries.iter().any(|e| e.remote() == *o)));
    for o in &others[..2] {
        let e: Vec<&LogEntry> = log.entries.iter().filter(|e| e.remote() == *o).collect();
        assert_eq!(e.iter().map(|e| e.status).collect::<Vec<_>>(), vec![400], "the proxy's view of {o}:\n{}", log.raw);
    }

    let n = MIX.len() as u64;
    let snap = lab.wait_settled("the HTTP connection", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = MIX.iter().map(|(p, s)| (*s, "GET", *p)).collect();
    assert_recent(c, &h, &want);
    let snap = lab.observer.wait_for("the other connections, closed", SETTLE, |s| others.iter().all(|o| s.with_remote(*o).first().is_some_and(|c| settled(c))));
    for o in &others {
        let c = entry_of(&snap, *o);
        if let Some(h) = http_of(c) {
            assert!(h.lifetime.is_zero() && h.last_60s.is_zero() && h.last_status.is_none() && h.recent.is_empty() && h.in_flight == 0, "{} is not HTTP, yet: {h:?}", c.connection);
        }
    }
    assert_outbound_nginx(&lab, MIX.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
    assert_metrics(&m, "inbound", ECHO_PORT, 0, &[], 0);
    assert_eq!(m.count("observer_not_http_connections_total", &[]), others.len() as u64, "connections whose first bytes were not HTTP");
    drop(echo_server);
}

#[test]
fn http_port_restricts_parsing_to_the_listed_ports() {
    const TEST: &str = "http_port_restricts_parsing_to_the_listed_ports";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start_with(TEST, &["--http-port", "80"]);
    let paths = ["/ok", "/status/404", "/size/10000", "/status/503"];
    let on_80: Vec<CurlOp> = paths.iter().map(|p| CurlOp::get(url(proxy_v4(), p))).collect();
    let on_8080: Vec<CurlOp> = paths.iter().map(|p| CurlOp::get(url_port(proxy_v4(), PROXY_SECOND_PORT, p))).collect();
    let run_80 = curl_ok(&lab, &on_80);
    let run_8080 = curl_ok(&lab, &on_8080);
    let (end_80, end_8080) = (one_connection(&run_80), one_connection(&run_8080));
    let codes: Vec<u16> = run_80.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200, 404, 200, 503]);
    assert_eq!(run_8080.transfers.iter().map(|t| t.http_code).collect::<Vec<_>>(), codes);
    assert_proxy_log(&lab, end_80, &codes);
    assert_proxy_log(&lab, end_8080, &codes);

    let n = paths.len() as u64;
    let snap = lab.wait_settled("the connection to port 80", 1, n, n, |c| c.remote == end_80);
    let c = entry_of(&snap, end_80);
    let h = assert_http(&lab, c, &Window::expected(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = paths.iter().zip(&codes).map(|(p, s)| (*s, "GET", *p)).collect();
    assert_recent(c, &h, &want);
    let snap = lab.observer.wait_for("the connection to port 8080, closed", SETTLE, |s| s.with_remote(end_8080).first().is_some_and(|c| settled(c)));
    let c = entry_of(&snap, end_8080);
    assert_eq!(c.local.port(), PROXY_SECOND_PORT);
    if let Some(h) = http_of(c) {
        assert!(h.lifetime.is_zero() && h.recent.is_empty(), "port {PROXY_SECOND_PORT} is not parsed, yet {}: {h:?}", c.connection);
    }
    // The upstream's port is 80: every proxied request counts, whichever client port it came in on.
    assert_outbound_nginx(&lab, 2 * paths.len());
    let both: Vec<u16> = codes.iter().chain(&codes).copied().collect();
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "inbound", PROXY_SECOND_PORT, 0, &[], 0);
    assert_metrics(&m, "outbound", 80, 2 * n, &both, 0);
}

#[test]
fn retransmitted_segments_are_counted_once() {
    const TEST: &str = "retransmitted_segments_are_counted_once";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    // The gateway loses segments it sends to the client: a token bucket with a short queue drops
    // what overflows it (this kernel has no netem). The qdisc runs after the observer's tc hook,
    // so the observer sees both the lost segments and their retransmissions.
    lab.topo.gateway.run("tc", ["qdisc", "add", "dev", GW_CLIENT_IF, "root", "tbf", "rate", "20mbit", "burst", "20kb", "limit", "40kb"]);
    let retransmitted_before = lab.topo.gateway.tcp_retransmitted_segments();
    let cycle: &[(&str, u16)] = &[("/size/100000", 200), ("/status/404", 404), ("/size/1000000", 200), ("/status/503", 503), ("/ok", 200), ("/size/10000", 200), ("/status/204", 204), ("/redirect", 301)];
    let mix: Vec<(&str, u16)> = cycle.iter().copied().cycle().take(24).collect();
    let ops: Vec<CurlOp> = mix.iter().map(|(p, _)| CurlOp::get(url(proxy_v4(), p))).collect();
    let run = curl_ok_within(&lab, &ops, Duration::from_secs(120));
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, mix.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    assert_proxy_log(&lab, client_end, &codes);
    let retransmitted = lab.topo.gateway.tcp_retransmitted_segments() - retransmitted_before;
    assert!(retransmitted > 0, "the gateway retransmitted nothing: the loss did not happen");

    let n = mix.len() as u64;
    let snap = lab.wait_settled_for("the lossy keep-alive connection", Duration::from_secs(30), 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    assert!(c.extra.get("retransmitted_segments_out").and_then(|v| v.as_u64()).is_some_and(|r| r > 0), "the observer saw retransmissions: {c:?}");
    eprintln!("{TEST}: the gateway retransmitted {retransmitted} segments; the observer saw {:?} retransmitted segments out on {}", c.extra.get("retransmitted_segments_out"), c.connection);
    let h = assert_http(&lab, c, &Window::expected(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = mix.iter().map(|(p, s)| (*s, "GET", *p)).collect();
    assert_recent(c, &h, &want);
    assert_outbound_nginx(&lab, mix.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_eq!(m.count("observer_http_framing_lost_total", &[]), 0, "framing never lost its place");
}

/// Starts a scripted server running `script` on the gateway's client side, port
/// [`GATEWAY_SCRIPTED_PORT`]: reached by the client without nginx.
fn gateway_server(lab: &HttpLab, script: fn(&mut Peer) -> io::Result<()>) -> ScriptedServer {
    ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), GATEWAY_SCRIPTED_PORT), script)
}

/// The status lines a scripted server wrote on the connection from `client_end`, and its
/// `(status, method, target)` list for [`assert_recent`].
fn served_to(server: &ScriptedServer, client_end: SocketAddr) -> Vec<Served> {
    server.served().into_iter().filter(|s| s.peer == client_end).collect()
}

fn recent_of(served: &[Served]) -> Vec<(u16, &str, &str)> {
    served.iter().map(|s| (s.status, s.method.as_str(), s.target.as_str())).collect()
}

#[test]
fn pipelined_responses_sharing_segments_are_counted_each_in_order() {
    const TEST: &str = "pipelined_responses_sharing_segments_are_counted_each_in_order";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let server = gateway_server(&lab, batch_script);
    // Every kind of response framing, answered together in one write.
    let requests: &[(&str, &str, &str)] = &[
        ("GET", "/status/200", ""),
        ("HEAD", "/chunked/200/3/10", ""),
        ("GET", "/status/304", ""),
        ("GET", "/chunked/404/2/5", ""),
        ("HEAD", "/status/200", ""),
        ("GET", "/status/204", ""),
        ("POST", "/status/201", "x=1&y=GET / HTTP/1.1"),
        ("GET", "/bighead/200/3000", ""),
        ("GET", "/chunked/500/0/0", ""),
        ("GET", "/status/503", ""),
        ("GET", "/until-close/200/100", ""),
    ];
    let mut all = Vec::new();
    for (m, t, body) in requests {
        let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
        all.extend(format!("{m} {t} HTTP/1.1\r\nHost: x\r\n{length}\r\n{body}").into_bytes());
    }
    let mut s = connect(&lab.topo.client, server.addr);
    let client_end = s.local_addr().unwrap();
    s.write_all(&all).unwrap();
    assert_eq!(data_segments_out(&s), 1, "the requests left in one segment ({} bytes)", all.len());
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let mut statuses = Vec::new();
    for (m, t, _) in requests {
        let exchange = reader.read_exchange(*m == "HEAD").unwrap_or_else(|e| panic!("the response to {m} {t}: {e}"));
        statuses.extend(exchange.iter().map(|r| r.status));
    }
    assert_eq!(statuses, vec![200, 200, 304, 404, 200, 204, 201, 200, 500, 503, 200], "what the raw client received");
    drop(reader);
    drop(s);
    let served = served_to(&server, client_end);
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), statuses, "what the server wrote");

    let n = requests.len() as u64;
    let snap = lab.wait_settled("the pipelined connection", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(n, &statuses, 0));
    assert_eq!(h.last_status, Some(200));
    assert_recent(c, &h, &recent_of(&served));
    assert_metrics(&lab.metrics(), "inbound", GATEWAY_SCRIPTED_PORT, n, &statuses, 0);
}

/// One request and response, then `switch` (a request whose answer ends HTTP on the connection:
/// expected `status`), then bytes of another protocol that look like HTTP in both directions
/// (echoed by the server): only the two exchanges count, and nothing is left unanswered.
fn tunnel_after(test: &str, switch: &[u8], status: u16) {
    let lab = HttpLab::start(test);
    let server = gateway_server(&lab, script);
    let mut s = connect(&lab.topo.client, server.addr);
    let client_end = s.local_addr().unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(reader.read(false).unwrap().status, 200);
    s.write_all(switch).unwrap();
    let r = reader.read_head().unwrap();
    assert_eq!(r.status, status);
    for later in [&client_hello()[..], b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", b"POST / HTTP/1.1\r\n\r\n"] {
        s.write_all(later).unwrap();
        let mut back = vec![0u8; later.len()];
        reader.inner.read_exact(&mut back).unwrap();
        assert_eq!(back, later);
    }
    assert!(reader.buffered().is_empty());
    drop(reader);
    assert!(scripted::finish(s).unwrap().is_empty());
    let served = served_to(&server, client_end);
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), vec![200, status]);

    let snap = lab.wait_settled("the switched connection", 1, 2, 2, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(2, &[200, status], 0));
    assert_eq!(h.last_status, Some(status));
    assert_recent(c, &h, &recent_of(&served));
    assert_metrics(&lab.metrics(), "inbound", GATEWAY_SCRIPTED_PORT, 2, &[200, status], 0);
}

#[test]
fn an_upgraded_connection_stops_being_counted_after_101() {
    const TEST: &str = "an_upgraded_connection_stops_being_counted_after_101";
    if root_or_skip(TEST) {
        tunnel_after(TEST, b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: scripted\r\n\r\n", 101);
    }
}

#[test]
fn a_connect_tunnel_stops_being_counted_after_its_2xx() {
    const TEST: &str = "a_connect_tunnel_stops_being_counted_after_its_2xx";
    if root_or_skip(TEST) {
        tunnel_after(TEST, b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n", 200);
    }
}

#[test]
fn heads_spanning_many_segments_are_counted_once() {
    const TEST: &str = "heads_spanning_many_segments_are_counted_once";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    // Request heads of about 21 KB through nginx (each field under its 8 KB line limit), their
    // values made of status lines.
    let big: Vec<String> = (0..3).map(|i| format!("X-Big-{i}: {}", "HTTP/1.1 200 OK ".repeat(430))).collect();
    let with_big = |op: CurlOp| op.with(&["--header", &big[0], "--header", &big[1], "--header", &big[2]]);
    let ops = vec![
        with_big(CurlOp::get(url(proxy_v4(), "/ok"))),
        CurlOp::get(url(proxy_v4(), "/status/404")),
        with_big(CurlOp::get(url(proxy_v4(), "/size/100000"))),
        with_big(CurlOp::head(url(proxy_v4(), "/status/503"))),
    ];
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200, 404, 200, 503]);
    assert!(run.transfers[0].size_request > 20_000, "a big request head: {:?}", run.transfers[0]);
    assert_proxy_log(&lab, client_end, &codes);
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's connection", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(&lab, c, &Window::expected(n, &codes, 0));
    assert_recent(c, &h, &[(200, "GET", "/ok"), (404, "GET", "/status/404"), (200, "GET", "/size/100000"), (503, "HEAD", "/status/503")]);
    assert_outbound_nginx(&lab, ops.len());
    // A 21 KB request head is beyond what the kernel framer follows (16 KiB): it says so, by
    // reason, and the daemon's framer counted the connection exactly all the same.
    assert_kernel_lost(&lab, c, "head_too_long");

    // Response heads of up to 20 KB from a scripted server, on one keep-alive connection.
    let server = gateway_server(&lab, script);
    let ops = vec![
        CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/bighead/200/20000")),
        CurlOp::head(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/bighead/404/9000")),
        with_big(CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/bighead/500/20000"))),
        CurlOp::get(url_port(proxy_v4(), GATEWAY_SCRIPTED_PORT, "/status/200")),
    ];
    let direct = curl_ok(&lab, &ops);
    let direct_end = one_connection(&direct);
    assert!(direct.transfers[0].size_header > 19_000, "a big response head: {:?}", direct.transfers[0]);
    let served = served_to(&server, direct_end);
    let direct_codes: Vec<u16> = served.iter().map(|s| s.status).collect();
    assert_eq!(direct.status_lines, direct_codes);
    let snap = lab.wait_settled("the connection to the scripted server", 1, 4, 4, |c| c.remote == direct_end);
    let c = entry_of(&snap, direct_end);
    let h = assert_http(&lab, c, &Window::expected(4, &direct_codes, 0));
    assert_recent(c, &h, &recent_of(&served));

    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "inbound", GATEWAY_SCRIPTED_PORT, 4, &direct_codes, 0);
}

#[test]
fn requests_sent_before_a_half_close_are_answered_and_counted() {
    const TEST: &str = "requests_sent_before_a_half_close_are_answered_and_counted";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let server = gateway_server(&lab, script);
    let mut s = connect(&lab.topo.client, server.addr);
    let client_end = s.local_addr().unwrap();
    s.write_all(b"GET /chunked/200/2/10 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/404 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // The client's FIN follows its requests at once; the server answers both, then closes.
    let rest = scripted::finish(s).unwrap();
    let mut reader = ResponseReader::new(&rest[..]);
    let statuses = vec![reader.read(false).unwrap().status, reader.read(false).unwrap().status];
    assert_eq!(statuses, vec![200, 404]);
    assert!(reader.buffered().is_empty());
    let served = served_to(&server, client_end);
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), statuses);

    let snap = lab.wait_settled("the half-closed connection", 1, 2, 2, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    assert_eq!((c.fin_in, c.fin_out), (1, 1), "{c:?}");
    let h = assert_http(&lab, c, &Window::expected(2, &statuses, 0));
    assert_recent(c, &h, &recent_of(&served));
    assert_metrics(&lab.metrics(), "inbound", GATEWAY_SCRIPTED_PORT, 2, &statuses, 0);
}

#[test]
fn an_error_sent_before_the_request_body_ends_is_counted() {
    const TEST: &str = "an_error_sent_before_the_request_body_ends_is_counted";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let body = lab.topo.path("post-body");
    fs::write(&body, fake_heads(300_000)).unwrap();
    let body_arg = format!("@{}", body.display());
    // /limited/ accepts bodies up to 1 KB: nginx answers 413 as soon as it has the head (and
    // closes), while the body is still coming or, with Expect, instead of 100 Continue.
    let ops = vec![
        CurlOp::get(url(proxy_v4(), "/ok")),
        CurlOp::get(url(proxy_v4(), "/limited/ok")).with(&["--data-binary", &body_arg, "--header", "Expect:"]),
        CurlOp::get(url(proxy_v4(), "/status/404")),
        CurlOp::get(url(proxy_v4(), "/limited/ok")).with(&["--data-binary", &body_arg, "--header", "Expect: 100-continue"]),
        CurlOp::get(url(proxy_v4(), "/ok")),
    ];
    let run = curl_ok(&lab, &ops);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, vec![200, 413, 404, 413, 200]);
    assert_eq!(run.status_lines, codes, "no 100 Continue:\n{}", run.stderr);
    // Group the transfers by connection, as curl reports them.
    type Exchanges<'a> = Vec<(u16, &'a str, &'a str)>;
    let mut by_conn: Vec<(SocketAddr, Exchanges)> = Vec::new();
    for (t, o) in run.transfers.iter().zip(&ops) {
        let target = o.url.strip_prefix(&http_base(proxy_v4())).unwrap();
        match by_conn.iter_mut().find(|(end, _)| *end == t.local) {
            Some((_, v)) => v.push((t.http_code, o.method(), target)),
            None => by_conn.push((t.local, vec![(t.http_code, o.method(), target)])),
        }
    }
    assert_eq!(by_conn.iter().map(|(_, v)| v.len()).collect::<Vec<_>>(), vec![2, 2, 1], "nginx closes after each 413: {:#?}", run.transfers);
    for (end, exchanges) in &by_conn {
        let statuses: Vec<u16> = exchanges.iter().map(|e| e.0).collect();
        assert_proxy_log(&lab, *end, &statuses);
        let k = statuses.len() as u64;
        let snap = lab.wait_settled("a client connection", 1, k, k, |c| c.remote == *end);
        let c = entry_of(&snap, *end);
        let h = assert_http(&lab, c, &Window::expected(k, &statuses, 0));
        assert_recent(c, &h, exchanges);
    }
    assert_outbound_nginx(&lab, 3);
    assert_metrics(&lab.metrics(), "inbound", 80, ops.len() as u64, &codes, 0);
}

/// Connections to an echo server whose first segment is shorter than the kernel's 16-byte look
/// (so the daemon decides they are not HTTP); later bytes look like HTTP in both directions.
/// Returns the client ends.
fn short_garbage(lab: &HttpLab, echo_server: &ScriptedServer) -> Vec<SocketAddr> {
    let mut ends = Vec::new();
    // The second starts like a method and goes wrong after.
    for pieces in [vec![client_hello()[..5].to_vec(), client_hello()[5..].to_vec()], vec![b"GE".to_vec(), b"\x00\x01\x02 binary \xff".to_vec()]] {
        let mut s = connect(&lab.topo.client, echo_server.addr);
        ends.push(s.local_addr().unwrap());
        for p in pieces.iter().map(|p| p.as_slice()).chain([&b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]) {
            s.write_all(p).unwrap();
            let mut back = vec![0u8; p.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, p);
        }
        assert_eq!(data_segments_out(&s), 4, "each piece in its own segment");
        assert!(scripted::finish(s).unwrap().is_empty());
    }
    let snap = lab.observer.wait_for("the echo connections, closed", SETTLE, |s| ends.iter().all(|e| s.with_remote(*e).first().is_some_and(|c| settled(c))));
    for e in &ends {
        let c = entry_of(&snap, *e);
        if let Some(h) = http_of(c) {
            assert!(h.lifetime.is_zero() && h.last_status.is_none() && h.recent.is_empty(), "{} is not HTTP, yet: {h:?}", c.connection);
        }
    }
    ends
}

#[test]
fn garbage_in_a_short_first_segment_is_never_counted_as_http() {
    const TEST: &str = "garbage_in_a_short_first_segment_is_never_counted_as_http";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let echo_server = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), ECHO_PORT), echo);
    short_garbage(&lab, &echo_server);
    assert_metrics(&lab.metrics(), "inbound", ECHO_PORT, 0, &[], 0);
}

#[test]
fn garbage_in_a_short_first_segment_counts_as_a_not_http_connection() {
    const TEST: &str = "garbage_in_a_short_first_segment_counts_as_a_not_http_connection";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    let echo_server = ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), ECHO_PORT), echo);
    let ends = short_garbage(&lab, &echo_server);
    assert_eq!(lab.metrics().count("observer_not_http_connections_total", &[]), ends.len() as u64, "connections whose first bytes were not HTTP/1.x");
}

/// A keep-alive sequence through the proxy: each of `big` bodies followed by small exchanges of
/// every class. Returns the operations and their expected statuses.
fn big_then_small(big: &[u64]) -> Vec<(String, u16)> {
    let mut paths = Vec::new();
    for b in big {
        paths.push((format!("/size/{b}"), 200));
        for (p, code) in [("/ok", 200), ("/status/404", 404), ("/status/503", 503), ("/redirect", 301), ("/size/100", 200), ("/status/204", 204)] {
            paths.push((p.to_owned(), code));
        }
    }
    paths
}

/// Big bodies then small exchanges on one keep-alive connection through the proxy, each
/// counted exactly on both sides of the proxy.
fn big_then_small_exchanges_count_exactly(lab: &HttpLab, big: &[u64]) {
    let seq = big_then_small(big);
    let ops: Vec<CurlOp> = seq.iter().map(|(p, _)| CurlOp::get(url(proxy_v4(), p))).collect();
    let run = curl_ok(lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, seq.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    assert_proxy_log(lab, client_end, &codes);
    let n = ops.len() as u64;
    let snap = lab.wait_settled("the client's keep-alive connection", 1, n, n, |c| c.remote == client_end);
    let c = entry_of(&snap, client_end);
    let h = assert_http(lab, c, &Window::expected(n, &codes, 0));
    let want: Vec<(u16, &str, &str)> = seq.iter().map(|(p, s)| (*s, "GET", p.as_str())).collect();
    assert_recent(c, &h, &want);
    assert_outbound_nginx(lab, ops.len());
    let m = lab.metrics();
    assert_metrics(&m, "inbound", 80, n, &codes, 0);
    assert_metrics(&m, "outbound", 80, n, &codes, 0);
}

/// Megabytes of body cross the wire faster than the daemon drains its payload ring (default
/// size); the exchanges after them must still count.
#[test]
fn exchanges_after_multi_megabyte_bodies_are_counted() {
    const TEST: &str = "exchanges_after_multi_megabyte_bodies_are_counted";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start(TEST);
    lab.add_size(5_000_000);
    lab.add_size(10_000_000);
    big_then_small_exchanges_count_exactly(&lab, &[10_000_000, 5_000_000, 10_000_000]);
}

/// An 8 KiB ring (the next test overflows it with payload), HTTP framed in the kernel: only one
/// small record per message goes through the ring, nothing is lost, every count is exact.
#[test]
fn a_ring_too_small_for_payload_loses_nothing_when_the_kernel_frames() {
    const TEST: &str = "a_ring_too_small_for_payload_loses_nothing_when_the_kernel_frames";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start_with(TEST, &["--payload-kib", "8"]);
    big_then_small_exchanges_count_exactly(&lab, &[1_000_000, 1_000_000, 1_000_000]);
    assert_eq!(lab.metrics().count("observer_payload_records_lost_total", &[]), 0, "records lost");
}

/// `/metrics` counts requests and responses from the kernel's own aggregates: a daemon that
/// stalls (stopped here, so that nothing drains an 8 KiB ring) loses message records, yet the
/// aggregates stay exact, and so do the kernel's per-connection counts. Only what the records
/// carry is short (the views, which say so, and latency observations).
#[test]
fn a_stalled_daemon_loses_message_records_yet_metrics_stay_exact() {
    const TEST: &str = "a_stalled_daemon_loses_message_records_yet_metrics_stay_exact";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = HttpLab::start_with(TEST, &["--payload-kib", "8"]);
    let cycle: &[(&str, u16)] = &[("/ok", 200), ("/status/404", 404), ("/status/503", 503), ("/redirect", 301), ("/size/100", 200), ("/status/204", 204)];
    let mix: Vec<(&str, u16)> = cycle.iter().copied().cycle().take(120).collect();
    let ops: Vec<CurlOp> = mix.iter().map(|(p, _)| CurlOp::get(url(proxy_v4(), p))).collect();
    let pid = lab.observer.pid() as libc::pid_t;
    // SAFETY: signals to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "stopping the daemon");
    let run = curl_each(&lab.topo.client, &ops, Duration::from_secs(60));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "resuming the daemon");
    assert!(run.status.success(), "curl failed: {:?}", run.status);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, mix.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    assert_proxy_log(&lab, client_end, &codes);
    let n = mix.len() as u64;

    let snap = lab.observer.wait_for("the client's connection, settled", SETTLE, |s| s.with_remote(client_end).first().is_some_and(|c| settled(c)));
    let c = entry_of(&snap, client_end);
    let k = kernel_http_of(c).expect("http_kernel");
    let by_class = |class: u16| codes.iter().filter(|s| **s / 100 == class).count() as u64;
    let kernel: Vec<u64> = (1..=5).map(|cl| k.responses.get(&format!("{cl}xx")).copied().unwrap_or(0)).collect();
    assert_eq!((k.requests, kernel, k.lost_in.clone(), k.lost_out.clone()), (n, (1..=5).map(by_class).collect(), None, None), "the kernel's counts of {}", c.connection);

    let m = lab.metrics();
    assert!(m.count("observer_payload_records_lost_total", &[]) > 0, "the ring lost no record: the scenario did not happen");
    for role in ["inbound", "outbound"] {
        let l = [("role", role), ("port", "80")];
        assert_eq!(m.count("observer_http_requests_total", &l), n, "observer_http_requests_total{l:?}");
        let mut by_code: BTreeMap<u16, u64> = BTreeMap::new();
        for s in &codes {
            *by_code.entry(*s).or_default() += 1;
        }
        for (code, want) in &by_code {
            let (code, class) = (code.to_string(), format!("{}xx", code / 100));
            let labels = [("role", role), ("port", "80"), ("class", class.as_str()), ("code", code.as_str())];
            assert_eq!(m.count("observer_http_responses_total", &labels), *want, "observer_http_responses_total{labels:?}");
        }
        assert_eq!(m.count("observer_http_requests_unanswered_total", &l), 0, "unanswered{l:?}");
        let observed = m.count("observer_http_response_latency_seconds_count", &l);
        assert!(observed <= n, "latency observations {observed} (from the records that arrived) of {n} responses");
    }
    assert_eq!(m.count("observer_http_kernel_aggregates_full_total", &[]), 0);
}

#[test]
fn payload_lost_to_a_full_ring_is_reported_on_its_connection() {
    const TEST: &str = "payload_lost_to_a_full_ring_is_reported_on_its_connection";
    if !root_or_skip(TEST) {
        return;
    }
    // A ring of 8 KiB holds at most one full record: megabyte bodies overflow it before the daemon
    // drains it, however quickly it is woken. (The daemon's framer: with the kernel's, bodies never
    // travel, see the next test.)
    let lab = HttpLab::start_with(TEST, &["--payload-kib", "8", "--http-framing", "daemon"]);
    let seq = big_then_small(&[1_000_000, 1_000_000, 1_000_000]);
    let ops: Vec<CurlOp> = seq.iter().map(|(p, _)| CurlOp::get(url(proxy_v4(), p))).collect();
    let run = curl_ok(&lab, &ops);
    let client_end = one_connection(&run);
    let codes: Vec<u16> = run.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(codes, seq.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    assert_proxy_log(&lab, client_end, &codes);
    let upstream = upstream_log(&lab, ops.len(), addr::GATEWAY_UPSTREAM_SIDE_V4.into());

    // Everything has closed: wait for the entries (their counts may fall short).
    let n = ops.len();
    let snap = lab.observer.wait_for("every connection of the test, settled", SETTLE, |s| {
        s.with_remote(client_end).first().is_some_and(|c| settled(c)) && pick(s, |c| c.remote == upstream_http() && settled(c)).len() >= n
    });
    let m = lab.metrics();
    let lost = m.count("observer_payload_records_lost_total", &[]);
    assert!(lost > 0, "the ring lost no record: the scenario did not happen");
    // Each connection either has exactly its ground truth, or says that its framing lost its
    // place. (A connection whose every record was lost has no http object: nothing to say.)
    let mut short = Vec::new();
    let mut check = |c: &Connection, expected: Window| {
        let Some(h) = http_of(c) else { return };
        if h.lifetime != expected {
            short.push(format!("{}: counted {:?} of {:?}, framing_lost {}, in_sync {}", c.connection, h.lifetime, expected, h.framing_lost, h.in_sync));
            assert!(h.framing_lost > 0 || !h.in_sync, "{} misses exchanges yet says its framing never lost its place: {h:?}\nground truth {expected:?}; {lost} payload records lost", c.connection);
        }
    };
    check(entry_of(&snap, client_end), Window::expected(n as u64, &codes, 0));
    for e in &upstream {
        if let Some(c) = pick(&snap, |c| c.remote == upstream_http() && c.local.port() == e.remote_port).first() {
            check(c, Window::expected(1, &[e.status], 0));
        }
    }
    if !short.is_empty() {
        // The loss is counted when a closed connection is finalised (a moment after its close).
        let counted = poll(SETTLE, Duration::from_millis(100), || (lab.metrics().count("observer_http_framing_lost_total", &[]) > 0).then_some(()));
        assert!(counted.is_some(), "connections fell short, yet observer_http_framing_lost_total stays 0:\n{}", short.join("\n"));
    }
}
