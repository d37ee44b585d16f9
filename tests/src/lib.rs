//! End-to-end test harness for `observer`.
//!
//! A test builds a [`Topology`] — three network namespaces `client` ⇄ `gateway` ⇄ `upstream` joined
//! by veth pairs — starts real servers in it ([`Nginx`]), starts the daemon on the gateway
//! ([`Observer`]), drives traffic from the client ([`curl()`]) and compares what the daemon counted
//! with ground truth: what the client itself reports and what the servers' access logs record.
//! [`Lab`] bundles the usual set-up in one call.
//!
//! Everything a test creates carries a prefix unique to the test *and* the process
//! (`obs-<pid>-<n>`), so tests run in parallel and reruns never collide; everything is removed on
//! `Drop`, also when the test panics. Leftovers of a process that no longer exists are removed by
//! the next run.
//!
//! The tests need root. [`root_or_skip`] decides: root runs them; otherwise they are skipped with a
//! message, except under `CI=true`, where a missing privilege is an error.

pub mod curl;
pub mod hostile_lab;
pub mod http_lab;
pub mod http_view;
pub mod lifecycle_view;
pub mod netns;
pub mod nginx;
pub mod observer;
pub mod operator;
mod process;
pub mod scripted;
pub mod tcp;

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

pub use self::observer::{Connection, ConnectionExt, Observer, Snapshot};
pub use curl::{curl, Transfer};
pub use netns::{Netns, Topology};
pub use nginx::{AccessLog, LogEntry, Nginx};
pub use process::Background;

/// The addresses of the topology: 198.18.0.0/15 (benchmarking, RFC 2544) and 2001:db8::/32
/// (documentation, RFC 3849), used only inside namespaces the tests create.
pub mod addr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The client, on the client ⇄ gateway link (`eth0` in the client namespace).
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    /// The gateway on the client side (`gw-c`): where the proxy listens.
    pub const GATEWAY_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    pub const GATEWAY_CLIENT_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    /// The gateway on the upstream side (`gw-u`): the source of proxied connections.
    pub const GATEWAY_UPSTREAM_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
    pub const GATEWAY_UPSTREAM_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
    /// The upstream server (`eth0` in the upstream namespace).
    pub const UPSTREAM_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
    pub const UPSTREAM_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

    /// Interface names inside the namespaces (names are per namespace, so they never collide).
    pub const GW_CLIENT_IF: &str = "gw-c";
    pub const GW_UPSTREAM_IF: &str = "gw-u";
    pub const CLIENT_IF: &str = "eth0";
    pub const UPSTREAM_IF: &str = "eth0";

    /// `http://ADDR` with IPv6 addresses in brackets.
    pub fn http_base(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => format!("http://{v4}"),
            IpAddr::V6(v6) => format!("http://[{v6}]"),
        }
    }

    /// The gateway's proxy (port 80) on its client side, IPv4.
    pub fn proxy_v4() -> std::net::SocketAddr {
        std::net::SocketAddr::new(GATEWAY_CLIENT_SIDE_V4.into(), 80)
    }

    /// `http://PROXY/path` on the gateway's client side, IPv4.
    pub fn proxy_url(path: &str) -> String {
        format!("{}{path}", http_base(GATEWAY_CLIENT_SIDE_V4.into()))
    }

    /// [`proxy_url`] of each of `paths`.
    pub fn proxy_urls(paths: &[&str]) -> Vec<String> {
        paths.iter().map(|p| proxy_url(p)).collect()
    }

    /// The upstream's HTTP server (port 80), IPv4.
    pub fn upstream_http() -> std::net::SocketAddr {
        std::net::SocketAddr::new(UPSTREAM_V4.into(), 80)
    }
}

/// The written form (`LOCAL REMOTE`, as the gateway sees it) of the inbound connection of a
/// client transfer.
pub fn inbound(t: &Transfer) -> String {
    format!("{} {}", t.remote, t.local)
}

/// The written form (`LOCAL REMOTE`, as the gateway sees it) of a proxied connection to the
/// upstream's port 80, from the gateway's source port (`remote_port` in the upstream's access log).
pub fn outbound_of(remote_port: u16) -> String {
    format!("{}:{remote_port} {}:80", addr::GATEWAY_UPSTREAM_SIDE_V4, addr::UPSTREAM_V4)
}

/// Decides whether an end-to-end test can run: `true` as root. Otherwise prints why the test is
/// skipped and returns `false` — except when `CI=true`, where it panics: CI must never pass by
/// skipping.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: end-to-end tests need root; CI must run them as root (CI=true)");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests,
    // and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "{test}: skipped: needs root (network namespaces, eBPF); run `sudo -E cargo test -p observer-tests`");
    false
}

/// The workspace's root directory (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Polls `probe` every `interval` until it returns `Some`, or `timeout` passes (then `None`).
/// The probe runs at least once.
pub fn poll<T>(timeout: Duration, interval: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// The usual set-up: a topology, the upstream server, the gateway's reverse proxy and the observer
/// on the gateway's two interfaces, each ready when this returns.
///
/// Fields drop in declaration order: the observer stops first, then the servers, then the
/// namespaces go.
pub struct Lab {
    pub observer: Observer,
    /// nginx on the gateway: reverse proxy to the upstream.
    pub proxy: Nginx,
    /// nginx on the upstream: fixed responses and files.
    pub upstream: Nginx,
    pub topo: Topology,
}

impl Lab {
    /// Builds the topology and starts everything; `test` names it in logs.
    pub fn start(test: &str) -> Lab {
        Lab::start_with(test, &[])
    }

    /// [`Lab::start`] with `observer run` options beyond the interfaces and the listen address.
    pub fn start_with(test: &str, observer_options: &[&str]) -> Lab {
        Lab::start_with_proxy(test, Nginx::proxy, observer_options)
    }

    /// [`Lab::start_with`], with a proxy that takes `worker_connections` connections at once, for
    /// tests that hold thousands open (they raise their own limit of open files first:
    /// [`operator::raise_nofile`]).
    pub fn start_with_worker_connections(test: &str, worker_connections: u32, observer_options: &[&str]) -> Lab {
        Lab::start_with_proxy(test, |topo| Nginx::proxy_with_worker_connections(topo, worker_connections), observer_options)
    }

    fn start_with_proxy(test: &str, proxy: impl FnOnce(&Topology) -> Nginx, observer_options: &[&str]) -> Lab {
        let topo = Topology::new(test);
        let upstream = Nginx::upstream(&topo);
        let proxy = proxy(&topo);
        let observer = Observer::start_with(&topo, &[addr::GW_CLIENT_IF, addr::GW_UPSTREAM_IF], observer_options);
        Lab { observer, proxy, upstream, topo }
    }

    /// Runs `scenario` (traffic and assertions) on a fresh lab, for tests that compare the wire
    /// with what the applications sent.
    ///
    /// The observer counts what crosses the wire, retransmissions included (as designed), while
    /// ground truth (curl, access logs) counts each byte once. The two agree exactly unless TCP
    /// retransmitted something, which on veth happens only when a host is starved of CPU (a tail
    /// loss probe fires before a delayed ACK). So: when `scenario` panics *and* a namespace
    /// retransmitted segments during it, the run proves nothing either way; it is reported and
    /// repeated on a fresh lab, up to [`EXACT_ATTEMPTS`] times. A failure without retransmissions,
    /// or on the last attempt, fails the test.
    pub fn run_exact(test: &str, scenario: impl Fn(&Lab)) {
        for attempt in 1..=EXACT_ATTEMPTS {
            let lab = Lab::start(test);
            let before = lab.topo.tcp_retransmitted_segments();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&lab)));
            let Err(panic) = result else { return };
            let retransmitted = lab.topo.tcp_retransmitted_segments() - before;
            if retransmitted == 0 || attempt == EXACT_ATTEMPTS {
                if retransmitted > 0 {
                    eprintln!("{test}: {retransmitted} TCP segments were retransmitted during this last attempt ({attempt})");
                }
                std::panic::resume_unwind(panic);
            }
            eprintln!(
                "{test}: attempt {attempt} failed (above) while TCP retransmitted {retransmitted} segments, which count twice on the wire: repeating it on a fresh lab"
            );
        }
    }
}

/// How many times [`Lab::run_exact`] tries a scenario that retransmissions spoiled.
pub const EXACT_ATTEMPTS: u32 = 3;
