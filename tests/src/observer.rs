//! The daemon under test, run in the gateway namespace, and a client for its API.
use std::{
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::Mutex,
    time::{Duration, SystemTime},
};

/// One connection as `GET /api/v1/connections` shows it: the daemon's own type.
pub use ::observer::model::Connection;
use ::observer::model::ConnectionList;
use serde_json::Value;

use crate::{
    addr::{GW_CLIENT_IF, GW_UPSTREAM_IF},
    netns::{Netns, Topology},
    poll,
    process::Background,
    workspace_root,
};

/// Where the daemon's API listens inside the gateway namespace (its own loopback: no collision
/// between tests).
pub const API: &str = "127.0.0.1:9470";

/// How long [`Observer::wait_for`] waits by default: a bound on failure only (a wait returns as
/// soon as its condition holds), sized for a CI machine with both cores busy, not a quiet one.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long the daemon may take to answer after it is started. A debug build loads and verifies
/// its programs in about a second on an idle machine, but many labs starting at once on a loaded
/// CI machine take much longer; success returns at once, so this only bounds a failure.
pub const STARTUP: Duration = Duration::from_secs(60);

/// The observer binary: `$OBSERVER_BIN`, else `target/debug/observer` of this workspace (honouring
/// `CARGO_TARGET_DIR`). Panics when it does not exist; warns when it is older than the sources.
pub fn observer_bin() -> PathBuf {
    let bin = match std::env::var_os("OBSERVER_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
            let target = if target.is_relative() { workspace_root().join(target) } else { target };
            target.join("debug").join("observer")
        }
    };
    if !bin.is_file() {
        panic!("observer binary {} is missing: build it with `cargo build` (or point OBSERVER_BIN at one)", bin.display());
    }
    if std::env::var_os("OBSERVER_BIN").is_none() {
        warn_if_stale(&bin);
    }
    bin
}

/// Warns when a source file of the daemon or its kernel programs is newer than the binary.
fn warn_if_stale(bin: &Path) {
    fn newest(dir: &Path) -> Option<SystemTime> {
        let mut latest = None;
        for entry in fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let t = if path.is_dir() { newest(&path) } else { entry.metadata().ok().and_then(|m| m.modified().ok()) };
            latest = latest.max(t);
        }
        latest
    }
    let Some(built) = fs::metadata(bin).and_then(|m| m.modified()).ok() else { return };
    let root = workspace_root();
    let sources = ["observer/src", "observer-common/src", "observer-ebpf/src"].iter().filter_map(|d| newest(&root.join(d))).max();
    if sources.is_some_and(|s| s > built) {
        eprintln!("warning: {} is older than the sources; run `cargo build` to test the current code", bin.display());
    }
}

/// What the tests ask of a [`Connection`] beyond its fields: its ends as addresses (the API writes
/// them as text; [`Snapshot::parse`] checks that every one parses) and whether both ends sent a FIN.
pub trait ConnectionExt {
    /// This host's end.
    fn local_addr(&self) -> SocketAddr;
    /// The peer's end.
    fn remote_addr(&self) -> SocketAddr;
    /// Both ends have sent a FIN.
    fn fin_both_ways(&self) -> bool;
}

impl ConnectionExt for Connection {
    fn local_addr(&self) -> SocketAddr {
        end(self, &self.local).unwrap_or_else(|e| panic!("{e}"))
    }

    fn remote_addr(&self) -> SocketAddr {
        end(self, &self.remote).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fin_both_ways(&self) -> bool {
        self.fin_in > 0 && self.fin_out > 0
    }
}

/// One end of `c`, written as `text`.
fn end(c: &Connection, text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|e| format!("{}: the end {text:?} is not an address ({e})", c.connection))
}

/// One answer of `GET /api/v1/connections`.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub count: usize,
    pub connections: Vec<Connection>,
    /// The JSON as received, for messages.
    pub raw: Value,
}

impl Snapshot {
    /// Parses the body of `GET /api/v1/connections`.
    pub fn parse(body: &str) -> Result<Snapshot, String> {
        let raw: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
        let list: ConnectionList = serde_json::from_value(raw.clone()).map_err(|e| format!("unexpected shape ({e}): {body}"))?;
        for c in &list.connections {
            end(c, &c.local).and(end(c, &c.remote)).map_err(|e| format!("unexpected shape ({e}): {body}"))?;
        }
        Ok(Snapshot { count: list.count, connections: list.connections, raw })
    }

    /// The connections whose peer has address `ip`.
    pub fn with_remote_ip(&self, ip: impl Into<IpAddr>) -> Vec<&Connection> {
        let ip = ip.into();
        self.connections.iter().filter(|c| c.remote_addr().ip() == ip).collect()
    }

    /// The connections whose peer is `remote`.
    pub fn with_remote(&self, remote: SocketAddr) -> Vec<&Connection> {
        self.connections.iter().filter(|c| c.remote_addr() == remote).collect()
    }

    /// The JSON, pretty-printed.
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.raw).unwrap_or_default()
    }
}

/// `observer run` in the gateway namespace, attached to `gw-c` and `gw-u`, API on [`API`]. Its
/// output goes to a file printed when the test fails. `Drop` sends SIGTERM and waits; an unclean
/// exit then fails the test.
pub struct Observer {
    pub ns: Netns,
    pub api: SocketAddr,
    /// One keep-alive connection to the API, opened in the gateway namespace and reused by every
    /// request (the daemon tracks the host's own connections too: polling it over a new connection
    /// each time would fill its table with the harness's own traffic).
    client: Mutex<Option<ApiConnection>>,
    process: Background,
    /// Ended by [`Observer::kill`]: its exit is not checked.
    killed: bool,
}

impl Observer {
    /// The daemon's process id (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Starts the daemon on the gateway's two interfaces and waits until `/healthz` answers.
    pub fn start(topo: &Topology) -> Observer {
        Observer::start_with(topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &[])
    }

    /// Starts `observer run --interface I... --listen API EXTRA...` in the gateway namespace and
    /// waits (up to [`STARTUP`]) until `/healthz` answers; panics with its output otherwise.
    pub fn start_with(topo: &Topology, interfaces: &[&str], extra: &[&str]) -> Observer {
        Observer::start_bin(topo, &observer_bin(), interfaces, extra)
    }

    /// [`Observer::start_with`] with another build of the daemon (e.g. a benchmark's base build).
    pub fn start_bin(topo: &Topology, bin: &Path, interfaces: &[&str], extra: &[&str]) -> Observer {
        Observer::start_via(topo, bin, &[], interfaces, extra)
    }

    /// [`Observer::start_bin`] through a wrapper that ends by executing the daemon in place (its
    /// process id stays the daemon's): `program WRAPPER_ARGS... BIN run ...`, e.g. `setpriv`.
    pub fn start_wrapped(topo: &Topology, program: &Path, wrapper_args: &[&str], interfaces: &[&str], extra: &[&str]) -> Observer {
        let mut leading: Vec<String> = wrapper_args.iter().map(|s| s.to_string()).collect();
        leading.push(observer_bin().display().to_string());
        Observer::start_via(topo, program, &leading, interfaces, extra)
    }

    fn start_via(topo: &Topology, bin: &Path, leading: &[String], interfaces: &[&str], extra: &[&str]) -> Observer {
        let mut args: Vec<String> = leading.to_vec();
        args.push("run".into());
        for i in interfaces {
            args.extend(["--interface".into(), (*i).into()]);
        }
        args.extend(["--listen".into(), API.into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = topo.gateway.spawn("observer", bin, &args, &topo.path("observer.log"));
        let api: SocketAddr = API.parse().expect("valid address");
        let mut observer = Observer { ns: topo.gateway.clone(), api, client: Mutex::new(None), process, killed: false };
        let mut last_error = String::new();
        let started = std::time::Instant::now();
        let ready = poll(STARTUP, Duration::from_millis(50), || {
            if let Some(status) = observer.process.exited() {
                panic!("observer exited ({status}) before answering on {api}:\n{}", observer.log());
            }
            match observer.try_get("/healthz") {
                Ok((200, _)) => Some(()),
                Ok((code, body)) => {
                    last_error = format!("{code} {body}");
                    None
                }
                Err(e) => {
                    last_error = e.to_string();
                    None
                }
            }
        });
        if ready.is_none() {
            observer.process.stop(Duration::from_secs(5));
            panic!("observer does not answer /healthz on {api} after {STARTUP:?} (last: {last_error}):\n{}", observer.log());
        }
        let took = started.elapsed();
        if took > Duration::from_secs(5) {
            eprintln!("observer took {took:?} to answer /healthz");
        }
        observer
    }

    /// `GET path` on the daemon's API over the kept-alive connection (reconnecting once if the
    /// daemon closed it).
    pub fn try_get(&self, path: &str) -> io::Result<(u16, String)> {
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if client.is_none() {
                *client = Some(ApiConnection::open(&self.ns, self.api)?);
            }
            match client.as_mut().expect("just opened").get(path) {
                Ok((status, body, reusable)) => {
                    if !reusable {
                        *client = None;
                    }
                    return Ok((status, body));
                }
                Err(e) => {
                    *client = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!()
    }

    /// `GET path` on the daemon's API: status and body. Panics if the daemon does not answer.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap_or_else(|e| panic!("GET {path} from observer: {e}\n--- observer log ---\n{}", self.log()))
    }

    /// `GET path`, expecting 200 and JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// `GET /api/v1/connections`, parsed.
    pub fn connections(&self) -> Snapshot {
        let (status, body) = self.get("/api/v1/connections?limit=100000");
        assert_eq!(status, 200, "GET /api/v1/connections: {body}");
        Snapshot::parse(&body).unwrap_or_else(|e| panic!("GET /api/v1/connections: {e}"))
    }

    /// `GET /api/v1/status`.
    pub fn status(&self) -> Value {
        self.get_json("/api/v1/status")
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Polls `/api/v1/connections` until `done` holds, for up to `timeout`, and returns the snapshot
    /// that satisfied it. The kernel counts packets on their way, independently of when a client
    /// process exits (the last FIN and ACK may still be in flight), so tests wait for the state
    /// they expect rather than sleep. On timeout, panics naming `what` and printing the last JSON.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let mut last = None;
        let found = poll(timeout, Duration::from_millis(50), || {
            let s = self.connections();
            let ok = done(&s);
            last = Some(s);
            ok.then(|| last.clone().expect("just set"))
        });
        found.unwrap_or_else(|| {
            panic!("waited {timeout:?} for {what}; the last answer of /api/v1/connections was:\n{}", last.map(|s| s.pretty()).unwrap_or_default())
        })
    }

    /// What the daemon has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// SIGTERM, wait (up to [`WAIT`]: detaching takes longer on a loaded machine; an exit returns
    /// at once), and return the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.stop(WAIT)
    }

    /// SIGKILL (no chance to clean up, as a crash or the OOM killer), and waits for the end.
    pub fn kill(mut self) {
        self.process.signal(libc::SIGKILL);
        let ended = poll(WAIT, Duration::from_millis(10), || self.process.exited());
        assert!(ended.is_some(), "observer still running {WAIT:?} after SIGKILL");
        self.killed = true;
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let status = self.stop();
        if self.killed {
            return;
        }
        if std::thread::panicking() {
            eprintln!("--- observer log ({}) ---\n{}--- end of observer log ---", self.process.log_path().display(), self.log());
        } else if !status.is_some_and(|s| s.success()) {
            panic!("observer did not exit cleanly on SIGTERM ({status:?}):\n{}", self.log());
        }
    }
}

/// A minimal HTTP/1.1 client on one kept-alive connection (bodies framed by Content-Length or
/// chunked encoding).
struct ApiConnection {
    stream: BufReader<TcpStream>,
    host: SocketAddr,
}

impl ApiConnection {
    /// Bounds connecting and each read or write: a failure only (an answer returns at once), so
    /// sized for a loaded machine.
    const TIMEOUT: Duration = WAIT;

    fn open(ns: &Netns, server: SocketAddr) -> io::Result<ApiConnection> {
        // The socket stays in the namespace it was created in, whichever thread uses it later.
        let stream = ns.enter(move || TcpStream::connect_timeout(&server, Self::TIMEOUT))??;
        stream.set_read_timeout(Some(Self::TIMEOUT))?;
        stream.set_write_timeout(Some(Self::TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(ApiConnection { stream: BufReader::new(stream), host: server })
    }

    /// Status, body, and whether the connection can carry another request.
    fn get(&mut self, path: &str) -> io::Result<(u16, String, bool)> {
        self.exchange(path).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::new(io::ErrorKind::TimedOut, format!("no answer to GET {path} within {:?}", Self::TIMEOUT))
            }
            _ => e,
        })
    }

    fn exchange(&mut self, path: &str) -> io::Result<(u16, String, bool)> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        write!(self.stream.get_mut(), "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: observer-tests\r\n\r\n", self.host)?;
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the API closed the connection"));
        }
        let status: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { return Err(bad(format!("bad header {header:?}"))) };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse::<usize>().map_err(|_| bad(format!("bad Content-Length {value:?}")))?),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.stream.read_exact(&mut body)?;
        } else {
            self.stream.read_to_end(&mut body)?;
            close = true;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned(), !close))
    }
}
