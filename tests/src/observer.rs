//! The daemon under test, run in the gateway namespace, and a client for its API.
use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, SystemTime},
};

use serde::Deserialize;
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

/// How long [`Observer::wait_for`] waits by default.
pub const WAIT: Duration = Duration::from_secs(10);

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

/// One connection as `GET /api/v1/connections` shows it. Fields the harness does not know yet
/// land in `extra`.
#[derive(Clone, Debug, Deserialize)]
pub struct Connection {
    /// `LOCAL REMOTE`.
    pub connection: String,
    /// This host's end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
    /// `ipv4` or `ipv6`.
    pub family: String,
    pub packets_in: u64,
    pub packets_out: u64,
    /// TCP payload bytes received by the gateway on this connection.
    pub bytes_in: u64,
    /// TCP payload bytes sent by the gateway on this connection.
    pub bytes_out: u64,
    pub syn_in: u64,
    pub syn_out: u64,
    pub fin_in: u64,
    pub fin_out: u64,
    pub rst_in: u64,
    pub rst_out: u64,
    pub first_seen: f64,
    pub last_seen: f64,
    pub duration_seconds: f64,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

impl Connection {
    /// Both ends have sent a FIN.
    pub fn closed(&self) -> bool {
        self.fin_in > 0 && self.fin_out > 0
    }
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
        #[derive(Deserialize)]
        struct Answer {
            count: usize,
            connections: Vec<Connection>,
        }
        let raw: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
        let a: Answer = serde_json::from_value(raw.clone()).map_err(|e| format!("unexpected shape ({e}): {body}"))?;
        Ok(Snapshot { count: a.count, connections: a.connections, raw })
    }

    /// The connections whose peer has address `ip`.
    pub fn with_remote_ip(&self, ip: impl Into<IpAddr>) -> Vec<&Connection> {
        let ip = ip.into();
        self.connections.iter().filter(|c| c.remote.ip() == ip).collect()
    }

    /// The connections whose peer is `remote`.
    pub fn with_remote(&self, remote: SocketAddr) -> Vec<&Connection> {
        self.connections.iter().filter(|c| c.remote == remote).collect()
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
    process: Background,
}

impl Observer {
    /// Starts the daemon on the gateway's two interfaces and waits until `/healthz` answers.
    pub fn start(topo: &Topology) -> Observer {
        Observer::start_with(topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &[])
    }

    /// Starts `observer run --interface I... --listen API EXTRA...` in the gateway namespace and
    /// waits (up to 10 s) until `/healthz` answers; panics with its output otherwise.
    pub fn start_with(topo: &Topology, interfaces: &[&str], extra: &[&str]) -> Observer {
        let bin = observer_bin();
        let mut args: Vec<String> = vec!["run".into()];
        for i in interfaces {
            args.extend(["--interface".into(), (*i).into()]);
        }
        args.extend(["--listen".into(), API.into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut process = topo.gateway.spawn("observer", &bin, &args, &topo.path("observer.log"));
        let api: SocketAddr = API.parse().expect("valid address");
        let ready = poll(Duration::from_secs(10), Duration::from_millis(50), || {
            if let Some(status) = process.exited() {
                panic!("observer exited ({status}) before answering on {api}:\n{}", process.log());
            }
            matches!(topo.gateway.http_get(api, "/healthz", Duration::from_secs(1)), Ok((200, _))).then_some(())
        });
        if ready.is_none() {
            panic!("observer does not answer /healthz on {api} after 10 s:\n{}", process.log());
        }
        Observer { ns: topo.gateway.clone(), api, process }
    }

    /// `GET path` on the daemon's API: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.ns.http_get(self.api, path, Duration::from_secs(5)).unwrap_or_else(|e| panic!("GET {path} from observer: {e}\n--- observer log ---\n{}", self.log()))
    }

    /// `GET path`, expecting 200 and JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// `GET /api/v1/connections`, parsed.
    pub fn connections(&self) -> Snapshot {
        let (status, body) = self.get("/api/v1/connections");
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

    /// SIGTERM, wait (up to 10 s), and return the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.stop(Duration::from_secs(10))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let status = self.stop();
        if std::thread::panicking() {
            eprintln!("--- observer log ({}) ---\n{}--- end of observer log ---", self.process.log_path().display(), self.log());
        } else if !status.is_some_and(|s| s.success()) {
            panic!("observer did not exit cleanly on SIGTERM ({status:?}):\n{}", self.log());
        }
    }
}
