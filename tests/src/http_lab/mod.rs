//! The lab of the HTTP tests (tests/tests/http_*.rs): the usual topology, an upstream nginx with
//! more locations, a scripted upstream server, a proxy that also listens on a second port, the
//! scripted servers' behaviours ([`scripts`]), and the checks that compare what the daemon counted
//! with ground truth ([`checks`]).
//!
//! Ground truth: what the test's clients sent and received (curl's `--write-out` and the status
//! lines of its `--verbose` output; raw clients' own response framing), what the scripted servers
//! wrote, and each nginx's access log (client address and port, status, per request). Inbound
//! entries (client → proxy) are matched to the proxy's log by the client's port, outbound entries
//! (gateway → upstream) to the upstream's log (or the scripted server's record) by the gateway's
//! source port.
use std::{
    fmt::Write as _,
    fs, io,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use ::observer::model::HttpView;

use crate::{
    addr::{self, http_base, GW_CLIENT_IF, GW_UPSTREAM_IF},
    http_view::{kernel_agrees, settled, Metrics, WindowExt},
    poll,
    scripted::{CurlOp, Peer, ScriptedServer, Served},
    Connection, Nginx, Observer, Snapshot, Topology,
};

pub mod checks;
pub mod scripts;

pub use crate::addr::upstream_http;
pub use checks::{
    assert_http, assert_kernel_lost, assert_metrics, assert_outbound_nginx, assert_outbound_nginx_at, assert_outbound_scripted, assert_proxy_log,
    assert_recent, curl_ok, curl_ok_within, entry_of, one_connection, pick, request_of, upstream_log,
};
pub use scripts::{batch_script, echo, script};

/// Port of the scripted server in the upstream namespace (proxied under `/scripted/`).
pub const UPSTREAM_SCRIPTED_PORT: u16 = 8081;
/// Port of a scripted server in the gateway namespace, reached by the client without nginx.
pub const GATEWAY_SCRIPTED_PORT: u16 = 8082;
/// The proxy's second port (same server block as port 80).
pub const PROXY_SECOND_PORT: u16 = 8080;
/// Port of a raw echo server in the gateway namespace.
pub const ECHO_PORT: u16 = 7000;

/// How long a test waits for connections to settle in the daemon's view: a debug build on a
/// loaded machine may lag; success returns at once.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Body sizes the upstream serves at `/size/<n>` from the start; tests add larger ones.
pub const SIZES: &[u64] = &[0, 1, 100, 1_000, 10_000, 100_000, 1_000_000];
/// Codes the upstream answers at `/status/<code>` (`return CODE "status CODE\n"`; 204 bodiless).
pub const STATUSES: &[u16] = &[200, 204, 404, 429, 500, 502, 503];

/// Text that looks like message heads, to fill bodies that must stay bodies.
pub const FAKE_HEADS: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Internal Server Error\r\n\r\nHTTP/1.0 404 Not Found\r\nContent-Length: 5\r\n\r\nGET /x HTTP/1.1\r\nHost: y\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n";

/// `n` bytes of [`FAKE_HEADS`], over and over.
pub fn fake_heads(n: usize) -> Vec<u8> {
    FAKE_HEADS.bytes().cycle().take(n).collect()
}

/// The lab of these tests: the usual topology, an upstream nginx with more locations, a scripted
/// upstream server, and a proxy that also listens on [`PROXY_SECOND_PORT`] and proxies
/// `/scripted/` to the scripted server with HTTP/1.1 (chunked bodies allowed). Fields drop in
/// declaration order: the observer stops first.
pub struct HttpLab {
    pub observer: Observer,
    pub proxy: Nginx,
    pub upstream: Nginx,
    pub scripted: ScriptedServer,
    pub topo: Topology,
    pub(crate) started: Instant,
}

impl HttpLab {
    pub fn start(test: &str) -> HttpLab {
        HttpLab::start_with(test, &[])
    }

    /// Starts everything, the observer last (with `observer_args`), so that nothing before the
    /// test's own traffic is counted.
    pub fn start_with(test: &str, observer_args: &[&str]) -> HttpLab {
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
        writeln!(locations, "        location /scripted/ {{ proxy_pass {up}:{UPSTREAM_SCRIPTED_PORT}; proxy_http_version 1.1; proxy_read_timeout 60s; }}")
            .unwrap();
        writeln!(locations, "        location /v6/ {{ proxy_pass {}:80/; }}", http_base(addr::UPSTREAM_V6.into())).unwrap();
        writeln!(locations, "        location /limited/ {{ client_max_body_size 1k; proxy_pass {up}:80/; }}").unwrap();
        let listen = vec![
            SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 80),
            SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V6.into(), 80),
            SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), PROXY_SECOND_PORT),
        ];
        let proxy = Nginx::start(&topo.gateway, "proxy", topo.path("proxy"), listen, &locations);
        let lab = HttpLab {
            observer: Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], observer_args),
            proxy,
            upstream,
            scripted,
            topo,
            started: Instant::now(),
        };
        for &n in SIZES {
            lab.add_size(n);
        }
        lab
    }

    /// Makes the upstream serve `/size/<n>`: a file of exactly `n` bytes.
    pub fn add_size(&self, n: u64) {
        let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
        fs::write(self.upstream.dir.join("www/size").join(n.to_string()), body).expect("writing an upstream file");
    }

    /// The ETag the upstream gives its file at `path` (nginx: hex mtime, hex size).
    pub fn etag(&self, path: &str) -> String {
        let meta = fs::metadata(self.upstream.dir.join("www").join(path.trim_start_matches('/'))).expect("an upstream file");
        let mtime = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        format!("\"{mtime:x}-{:x}\"", meta.len())
    }

    /// Makes the upstream serve `/fake/<name>` with `body`.
    pub fn add_fake(&self, name: &str, body: &[u8]) {
        fs::write(self.upstream.dir.join("www/fake").join(name), body).expect("writing an upstream file");
    }

    pub fn metrics(&self) -> Metrics {
        Metrics::new(self.observer.metrics())
    }

    /// Polls until `n` entries match `select`, all have settled (closed, HTTP state final), and
    /// together they show at least `requests` requests and `answers` responses plus unanswered
    /// requests: everything the daemon must have processed. Returns the snapshot.
    pub fn wait_settled(&self, what: &str, n: usize, requests: u64, answers: u64, select: impl Fn(&Connection) -> bool) -> Snapshot {
        self.wait_settled_for(what, SETTLE, n, requests, answers, select)
    }

    pub fn wait_settled_for(&self, what: &str, timeout: Duration, n: usize, requests: u64, answers: u64, select: impl Fn(&Connection) -> bool) -> Snapshot {
        let done = |s: &Snapshot| {
            let picked: Vec<&Connection> = s.connections.iter().filter(|c| select(c)).collect();
            let views: Vec<&HttpView> = picked.iter().filter_map(|c| c.http.as_ref()).collect();
            let (req, ans) =
                views.iter().fold((0, 0), |(r, a), h| (r + h.lifetime.counts.requests, a + h.lifetime.responses() + h.lifetime.counts.no_response));
            // The windows come from the message records, the lifetime from the kernel's exact
            // counts: an answer given while records still wait in the ring (its drain is bounded
            // under load) has windows behind the lifetime. Settled means they caught up (unless
            // the view says it lost records, or the lab is older than the 60 s window).
            let windows_caught_up = views.iter().all(|h| {
                let (last_60s, lifetime) = (&h.last_60s, &h.lifetime);
                !h.in_sync
                    || h.framing_lost > 0
                    || self.started.elapsed() > Duration::from_secs(55)
                    || (last_60s.counts.requests, last_60s.responses() + last_60s.counts.no_response)
                        == (lifetime.counts.requests, lifetime.responses() + lifetime.counts.no_response)
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

/// `http://SERVER/path`, IPv6 addresses in brackets.
pub fn url(server: IpAddr, path: &str) -> String {
    format!("{}{path}", http_base(server))
}

/// `http://SERVER:PORT/path`.
pub fn url_port(server: IpAddr, port: u16, path: &str) -> String {
    format!("{}:{port}{path}", http_base(server))
}

/// The proxy's IPv4 address, on the gateway's client side.
pub fn proxy_v4() -> IpAddr {
    addr::GATEWAY_CLIENT_SIDE_V4.into()
}

/// The scripted upstream server.
pub fn upstream_scripted() -> SocketAddr {
    SocketAddr::new(addr::UPSTREAM_V4.into(), UPSTREAM_SCRIPTED_PORT)
}

/// Starts a scripted server running `script` on the gateway's client side, port
/// [`GATEWAY_SCRIPTED_PORT`]: reached by the client without nginx.
pub fn gateway_server(lab: &HttpLab, script: fn(&mut Peer) -> io::Result<()>) -> ScriptedServer {
    ScriptedServer::start(&lab.topo.gateway, SocketAddr::new(proxy_v4(), GATEWAY_SCRIPTED_PORT), script)
}

/// The status lines a scripted server wrote on the connection from `client_end`, and its
/// `(status, method, target)` list for [`assert_recent`].
pub fn served_to(server: &ScriptedServer, client_end: SocketAddr) -> Vec<Served> {
    server.served().into_iter().filter(|s| s.peer == client_end).collect()
}

pub fn recent_of(served: &[Served]) -> Vec<(u16, &str, &str)> {
    served.iter().map(|s| (s.status, s.method.as_str(), s.target.as_str())).collect()
}

/// Paths of the keep-alive mix and what the upstream answers: every class, bodies of 0 B to 5 MB.
pub const MIX: &[(&str, u16)] = &[
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
pub fn mix_ops(lab: &HttpLab, server: IpAddr, prefix: &str) -> Vec<CurlOp> {
    MIX.iter()
        .map(|(p, code)| {
            let op = CurlOp::get(url(server, &format!("{prefix}{p}")));
            if *code == 304 {
                op.with(&["--header", &format!("If-None-Match: {}", lab.etag(p))])
            } else {
                op
            }
        })
        .collect()
}
