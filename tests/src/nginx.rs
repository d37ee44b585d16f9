//! nginx servers in the topology: the gateway's reverse proxy and the upstream, each with an access
//! log that records, per request, who asked and how many bytes went each way (ground truth).
use std::{
    ffi::OsString,
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    addr::{self, http_base},
    netns::{Netns, Topology},
    observer::WAIT,
    poll,
    process::Background,
};

/// Body sizes the upstream serves at `/size/<n>`: files of exactly `n` bytes.
pub const UPSTREAM_SIZES: &[u64] = &[0, 1, 100, 1_000, 10_000, 100_000, 1_000_000];
/// Status codes the upstream answers at `/status/<code>`, with a short fixed body (none for 204).
pub const UPSTREAM_STATUSES: &[u16] = &[200, 201, 204, 400, 403, 404, 429, 500, 502, 503, 504];
/// The body of the upstream's `/ok`.
pub const OK_BODY: &str = "ok\n";

/// The access log format: one line per request, space-separated, request line last in quotes.
const LOG_FORMAT: &str = r#"$remote_addr $remote_port $status $request_length $bytes_sent $connection $connection_requests "$request""#;

/// One nginx (master + one worker, running as root) with its own prefix directory: configuration,
/// pid file, logs and temp paths. Stopped (SIGTERM) on `Drop`.
pub struct Nginx {
    /// `proxy`, `upstream`, ...: names its directory and messages.
    pub name: String,
    pub ns: Netns,
    /// The prefix directory (`nginx.conf`, `access.log`, `error.log`, `www/`).
    pub dir: PathBuf,
    /// The addresses it listens on.
    pub listen: Vec<SocketAddr>,
    process: Background,
}

impl Nginx {
    /// The upstream server on 198.18.2.2:80 and [2001:db8:2::2]:80:
    /// - `/ok`: 200 with body [`OK_BODY`];
    /// - `/size/<n>` for `n` in [`UPSTREAM_SIZES`]: 200 with a file of exactly `n` bytes;
    /// - `/status/<code>` for `code` in [`UPSTREAM_STATUSES`]: that status with a short body;
    /// - anything else: 404.
    pub fn upstream(topo: &Topology) -> Nginx {
        let dir = topo.path("upstream");
        let www = dir.join("www");
        fs::create_dir_all(www.join("size")).expect("creating the upstream's document root");
        for &n in UPSTREAM_SIZES {
            let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            fs::write(www.join("size").join(n.to_string()), body).expect("writing an upstream file");
        }
        let mut locations = String::new();
        writeln!(locations, "        root {};", www.display()).unwrap();
        writeln!(locations, "        location = /ok {{ return 200 \"{}\"; }}", OK_BODY.escape_default()).unwrap();
        writeln!(locations, "        location /size/ {{ }}").unwrap();
        for &code in UPSTREAM_STATUSES {
            match code {
                204 => writeln!(locations, "        location = /status/204 {{ return 204; }}").unwrap(),
                _ => writeln!(locations, "        location = /status/{code} {{ return {code} \"status {code}\\n\"; }}").unwrap(),
            }
        }
        let listen = vec![SocketAddr::new(addr::UPSTREAM_V4.into(), 80), SocketAddr::new(addr::UPSTREAM_V6.into(), 80)];
        Nginx::start(&topo.upstream, "upstream", dir, listen, &locations)
    }

    /// The gateway's reverse proxy on 198.18.1.1:80 and [2001:db8:1::1]:80: every request goes to
    /// `http://198.18.2.2:80` with nginx's default `proxy_pass` (HTTP/1.0, `Connection: close`),
    /// so each proxied request opens one new upstream connection from 198.18.2.1.
    pub fn proxy(topo: &Topology) -> Nginx {
        let (listen, locations) = proxy_config();
        Nginx::start(&topo.gateway, "proxy", topo.path("proxy"), listen, &locations)
    }

    /// Starts nginx in `ns` with one `server` listening on `listen` and holding `locations`
    /// (directives inside `server { }`), and waits until it answers on every address. Each server
    /// also answers `/__ready` (not logged), which is how readiness is probed.
    pub fn start(ns: &Netns, name: &str, dir: PathBuf, listen: Vec<SocketAddr>, locations: &str) -> Nginx {
        Nginx::start_with_capacity(ns, name, dir, listen, locations, None, "")
    }

    /// [`Nginx::start`], with room for `worker_connections` connections (default 1024), a file
    /// limit to match and a deep listen backlog, when given.
    /// `http_extra` goes into the `http` block, before the server (e.g. an `upstream` block).
    pub fn start_with_capacity(
        ns: &Netns,
        name: &str,
        dir: PathBuf,
        listen: Vec<SocketAddr>,
        locations: &str,
        worker_connections: Option<u32>,
        http_extra: &str,
    ) -> Nginx {
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let d = dir.display();
        let mut conf = String::new();
        writeln!(conf, "user root;\nworker_processes 1;\ndaemon off;\nmaster_process on;").unwrap();
        if let Some(n) = worker_connections {
            writeln!(conf, "worker_rlimit_nofile {};", n * 2 + 64).unwrap();
        }
        writeln!(conf, "pid {d}/nginx.pid;\nerror_log {d}/error.log info;").unwrap();
        writeln!(conf, "events {{ worker_connections {}; }}", worker_connections.unwrap_or(1024)).unwrap();
        writeln!(conf, "http {{").unwrap();
        writeln!(conf, "    default_type application/octet-stream;").unwrap();
        writeln!(conf, "    log_format observer '{LOG_FORMAT}';").unwrap();
        writeln!(conf, "    access_log {d}/access.log observer;").unwrap();
        for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            writeln!(conf, "    {temp}_temp_path {d}/{temp};").unwrap();
        }
        writeln!(conf, "    keepalive_timeout 60s;\n    keepalive_requests 10000;").unwrap();
        conf.push_str(http_extra);
        writeln!(conf, "    server {{").unwrap();
        let backlog = if worker_connections.is_some() { " backlog=4096" } else { "" };
        for a in &listen {
            writeln!(conf, "        listen {a}{backlog};").unwrap();
        }
        writeln!(conf, "        location = /__ready {{ access_log off; return 200 \"ready\\n\"; }}").unwrap();
        conf.push_str(locations);
        writeln!(conf, "    }}\n}}").unwrap();
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).expect("writing nginx.conf");

        let args: [OsString; 6] = ["-p".into(), dir.clone().into(), "-c".into(), conf_path.into(), "-e".into(), dir.join("error.log").into()];
        let process = ns.spawn(&format!("nginx {name}"), "nginx", args, &dir.join("nginx.out"));
        let mut nginx = Nginx { name: name.to_owned(), ns: ns.clone(), dir, listen, process };
        nginx.wait_ready();
        nginx
    }

    fn wait_ready(&mut self) {
        for &a in &self.listen.clone() {
            let answered = poll(Duration::from_secs(30), Duration::from_millis(20), || {
                if let Some(status) = self.process.exited() {
                    panic!("nginx {} exited ({status}) before answering:\n{}\n{}", self.name, self.process.log(), self.error_log());
                }
                matches!(self.ns.http_get(a, "/__ready", Duration::from_secs(1)), Ok((200, _))).then_some(())
            });
            if answered.is_none() {
                panic!("nginx {} does not answer on {a} after 30 s:\n{}", self.name, self.error_log());
            }
        }
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    /// The access log as it is now.
    pub fn access_log(&self) -> AccessLog {
        AccessLog::read(&self.access_log_path())
    }

    /// Polls the access log until `done` holds (nginx logs a request after sending its response, so
    /// the client may be done before the line is written), up to `timeout`; panics with the log if
    /// it never does.
    pub fn wait_for_log(&self, what: &str, timeout: Duration, done: impl Fn(&AccessLog) -> bool) -> AccessLog {
        let mut last = AccessLog::default();
        match poll(timeout, Duration::from_millis(20), || {
            last = self.access_log();
            done(&last).then(|| last.clone())
        }) {
            Some(log) => log,
            None => panic!("nginx {}: waited {timeout:?} for the access log to show {what}; it has:\n{}", self.name, last.raw),
        }
    }

    /// Polls until the access log has at least `n` lines (see [`Nginx::wait_for_log`]), up to
    /// [`WAIT`] (a bound on failure only).
    pub fn wait_for_requests(&self, n: usize) -> AccessLog {
        self.wait_for_log(&format!("{n} requests"), WAIT, |l| l.entries.len() >= n)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(5));
        if std::thread::panicking() {
            eprintln!("nginx {}: logs in {}", self.name, self.dir.display());
        }
    }
}

/// One access log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub remote_addr: IpAddr,
    pub remote_port: u16,
    pub status: u16,
    /// `$request_length`: request line, headers and body as received.
    pub request_length: u64,
    /// `$bytes_sent`: everything sent to the client for this request, headers included.
    pub bytes_sent: u64,
    /// `$connection`: nginx's serial number of the connection.
    pub connection: u64,
    /// `$connection_requests`: this request's number on its connection, from 1.
    pub connection_requests: u64,
    /// `$request`: the request line.
    pub request: String,
}

impl LogEntry {
    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.remote_addr, self.remote_port)
    }

    fn parse(line: &str) -> Option<LogEntry> {
        let mut f = line.splitn(8, ' ');
        Some(LogEntry {
            remote_addr: f.next()?.parse().ok()?,
            remote_port: f.next()?.parse().ok()?,
            status: f.next()?.parse().ok()?,
            request_length: f.next()?.parse().ok()?,
            bytes_sent: f.next()?.parse().ok()?,
            connection: f.next()?.parse().ok()?,
            connection_requests: f.next()?.parse().ok()?,
            request: f.next()?.trim_matches('"').to_owned(),
        })
    }
}

/// An access log, parsed.
#[derive(Clone, Debug, Default)]
pub struct AccessLog {
    pub entries: Vec<LogEntry>,
    /// The file's text, for messages.
    pub raw: String,
}

impl AccessLog {
    /// Reads and parses `path` (missing file: empty log). Panics on a line it cannot parse.
    pub fn read(path: &Path) -> AccessLog {
        let raw = fs::read_to_string(path).unwrap_or_default();
        // A line is complete once its newline is written.
        let complete = raw.rfind('\n').map_or("", |i| &raw[..i]);
        let entries =
            complete.lines().map(|l| LogEntry::parse(l).unwrap_or_else(|| panic!("{}: cannot parse access log line {l:?}", path.display()))).collect();
        AccessLog { entries, raw }
    }

    /// The entries whose client address is `ip`.
    pub fn from_ip(&self, ip: IpAddr) -> Vec<&LogEntry> {
        self.entries.iter().filter(|e| e.remote_addr == ip).collect()
    }

    /// Sum of `$request_length` over the entries.
    pub fn request_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.request_length).sum()
    }

    /// Sum of `$bytes_sent` over the entries.
    pub fn response_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes_sent).sum()
    }
}

impl Nginx {
    /// Like [`Nginx::proxy`], but with room for `worker_connections` connections (clients and
    /// upstream connections together; [`Nginx::start`] allows 1024) and a file limit to match,
    /// for tests that hold many client connections open at once.
    pub fn proxy_with_worker_connections(topo: &Topology, worker_connections: u32) -> Nginx {
        let (listen, locations) = proxy_config();
        Nginx::start_with_capacity(&topo.gateway, "proxy", topo.path("proxy"), listen, &locations, Some(worker_connections), "")
    }

    /// Like [`Nginx::proxy`], but keeping its upstream connections alive (HTTP/1.1, a pool of
    /// 128 idle connections), as production gateways do: a client's keep-alive request then costs no new connection.
    pub fn proxy_keepalive(topo: &Topology) -> Nginx {
        let (listen, _) = proxy_config();
        // Idle connections kept per worker: more than a benchmark's concurrent clients, so every
        // upstream connection is reused.
        let upstream = format!("    upstream backend {{ server {}:80; keepalive 128; }}\n", addr::UPSTREAM_V4);
        let locations = "        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }\n";
        Nginx::start_with_capacity(&topo.gateway, "proxy", topo.path("proxy"), listen, locations, None, &upstream)
    }
}

/// The gateway proxy's listen addresses and locations: everything to the upstream nginx.
fn proxy_config() -> (Vec<SocketAddr>, String) {
    let locations = format!("        location / {{ proxy_pass {}:80; }}\n", http_base(addr::UPSTREAM_V4.into()));
    let listen = vec![SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 80), SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V6.into(), 80)];
    (listen, locations)
}
