//! Connection lifecycle: how each TCP connection opens and ends, as the observer reports it per
//! connection (role, `opened`/`closed`, `status`, `state`, `close_reason`, `closer`, socket-view
//! resets and retransmissions next to the wire view) and in its lifecycle metrics, plus the
//! filters of `GET /api/v1/connections` and the eviction accounting of a full kernel map.
//!
//! Ground truth: what each test itself did to the connections (raw sockets whose every step it
//! controls: half a request then an `SO_LINGER` 0 abort, a server that answers with a reset, a
//! connect to a port nobody listens on), what curl reports per transfer, the nginx access logs
//! (which client port each request came from), the error the client's own socket got (refused,
//! reset), and for retransmissions the kernel's own per-socket counter (`ss -tin`,
//! `tcpi_total_retrans`). Metrics are compared as deltas around the traffic of one test, whose lab
//! (namespaces, daemon) is its own.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use observer_tests::{
    addr::{self, http_base, GW_CLIENT_IF, GW_UPSTREAM_IF},
    curl,
    observer::WAIT,
    poll, root_or_skip, tcp, Connection, Lab, Nginx, Observer, Snapshot, Topology,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Reading /metrics and the connection JSON
// ---------------------------------------------------------------------------------------------

/// Every sample of `/metrics`: (name, labels) → value.
#[derive(Clone, Debug, Default)]
struct Metrics {
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    raw: String,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in metrics line {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").unwrap_or_else(|| panic!("bad label {p:?} in {line:?}"));
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.insert((name, labels), value);
        }
        Metrics { samples, raw: text.to_owned() }
    }

    /// The sample `name{labels}` with exactly these labels; 0 when absent (a counter not yet
    /// incremented has no series).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
    }

    /// The sum of every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series of `name` with its value, for messages.
    fn series(&self, name: &str) -> String {
        self.raw.lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
    }
}

fn metrics(o: &Observer) -> Metrics {
    Metrics::parse(&o.metrics())
}

/// Polls `/metrics` until `done` holds (up to [`WAIT`]) and returns that scrape.
fn wait_for_metrics(o: &Observer, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let mut last = Metrics::default();
    poll(WAIT, Duration::from_millis(50), || {
        last = metrics(o);
        done(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("waited {WAIT:?} for /metrics to show {what}; the last scrape had:\n{}\n{}", last.series("observer_connections"), last.series("observer_resets")))
}

const OPENED: &str = "observer_connections_opened_total";
const CLOSED: &str = "observer_connections_closed_total";
const RESETS: &str = "observer_resets_total";

fn text<'a>(c: &'a Connection, field: &str) -> &'a str {
    c.extra.get(field).and_then(Value::as_str).unwrap_or_else(|| panic!("{}: field {field} is not a string: {:?}", c.connection, c.extra.get(field)))
}

fn count(c: &Connection, field: &str) -> u64 {
    c.extra.get(field).and_then(Value::as_u64).unwrap_or_else(|| panic!("{}: field {field} is not a count: {:?}", c.connection, c.extra.get(field)))
}

/// A time field: `Some(unix seconds)` or `None` for JSON null; panics if it is missing.
fn time(c: &Connection, field: &str) -> Option<f64> {
    match c.extra.get(field) {
        Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().unwrap_or_else(|| panic!("{}: field {field} is not a time: {v}", c.connection))),
        None => panic!("{}: no field {field}", c.connection),
    }
}

/// The one entry of `snap` whose local and remote ends are these.
fn entry(snap: &Snapshot, local: SocketAddr, remote: SocketAddr) -> &Connection {
    let found: Vec<&Connection> = snap.connections.iter().filter(|c| c.local == local && c.remote == remote).collect();
    assert_eq!(found.len(), 1, "exactly one entry for {local} {remote}:\n{}", snap.pretty());
    found[0]
}

/// Asserts the close of a connection that opened: `status` closed, `state` closed, the reason,
/// and `first_seen <= opened <= closed`.
fn assert_closed_after_open(c: &Connection, reason: &str) {
    assert_eq!((text(c, "status"), text(c, "state"), c.extra.get("close_reason").and_then(Value::as_str)), ("closed", "closed", Some(reason)), "{}: {c:#?}", c.connection);
    let opened = time(c, "opened").unwrap_or_else(|| panic!("{}: opened is null for a connection that was established: {c:#?}", c.connection));
    let closed = time(c, "closed").unwrap_or_else(|| panic!("{}: closed is null for a closed connection: {c:#?}", c.connection));
    assert!(c.first_seen <= opened && opened <= closed, "{}: first_seen {} <= opened {opened} <= closed {closed}", c.connection, c.first_seen);
}

fn v4(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

// ---------------------------------------------------------------------------------------------
// 1, 6, 7: a normal open and close, IPv4 and IPv6, inbound and outbound
// ---------------------------------------------------------------------------------------------

/// `n` requests with `Connection: close` from the client to the proxy at `server`: each is one
/// inbound connection (client → proxy) and one outbound one (proxy → upstream, since nginx
/// proxies with HTTP/1.0). Every one must end "normal", with its open and close times, and the
/// lifecycle counters must grow by exactly `n` per role.
fn normal_open_and_close(lab: &Lab, server: IpAddr, client: IpAddr, family: &str) {
    const PATHS: &[&str] = &["/ok", "/size/1000", "/status/404"];
    let before = metrics(&lab.observer);
    let urls: Vec<String> = PATHS.iter().map(|p| format!("{}{p}", http_base(server))).collect();
    let transfers = curl(&lab.topo.client, &urls, &["--header", "Connection: close"]);
    assert!(transfers.iter().all(|t| t.num_connects == 1), "one connection per transfer: {transfers:#?}");
    let n = transfers.len() as f64;
    let upstream = v4(addr::UPSTREAM_V4, 80);

    // The closed counters move when the daemon finalises a connection (300 ms after its close),
    // with the final counters: from then on the entry is what the test asserts.
    let after = wait_for_metrics(&lab.observer, &format!("{n} inbound and {n} outbound connections closed"), |m| {
        m.sum(CLOSED, &[("role", "inbound")]) - before.sum(CLOSED, &[("role", "inbound")]) >= n
            && m.sum(CLOSED, &[("role", "outbound")]) - before.sum(CLOSED, &[("role", "outbound")]) >= n
    });
    let snap = lab.observer.connections();

    for t in &transfers {
        let c = entry(&snap, t.remote, t.local);
        assert_eq!((c.family.as_str(), text(c, "role")), (family, "inbound"), "{c:#?}");
        assert_eq!(c.local, SocketAddr::new(server, 80));
        assert_eq!(c.remote.ip(), client);
        assert_closed_after_open(c, "normal");
        assert_eq!((c.syn_in, c.syn_out, c.fin_in, c.fin_out, c.rst_in, c.rst_out), (1, 1, 1, 1, 0, 0), "SYN/FIN/RST in/out of {}", c.connection);
        assert_eq!((count(c, "resets_sent"), count(c, "resets_received")), (0, 0), "{}", c.connection);
        assert!(["local", "remote"].contains(&text(c, "closer")), "{}: a FIN went first, so the closer is known: {c:#?}", c.connection);
    }

    // The proxied connections: from the gateway's upstream side to the upstream server.
    let log = lab.upstream.wait_for_requests(PATHS.len());
    assert_eq!(log.entries.len(), PATHS.len(), "{}", log.raw);
    let outbound = snap.with_remote(upstream);
    assert_eq!(outbound.len(), PATHS.len(), "one outbound entry per proxied request:\n{}", snap.pretty());
    let logged: BTreeSet<SocketAddr> = log.entries.iter().map(|e| e.remote()).collect();
    let observed: BTreeSet<SocketAddr> = outbound.iter().map(|c| c.local).collect();
    assert_eq!(observed, logged, "the outbound entries' local ends vs the clients the upstream logged:\n{}", log.raw);
    for c in outbound {
        assert_eq!((c.family.as_str(), text(c, "role")), ("ipv4", "outbound"), "{c:#?}");
        assert_eq!(c.local.ip(), IpAddr::from(addr::GATEWAY_UPSTREAM_SIDE_V4), "{}", c.connection);
        assert_eq!(c.remote, upstream);
        assert_closed_after_open(c, "normal");
        assert_eq!((c.syn_in, c.syn_out, c.fin_in, c.fin_out, c.rst_in, c.rst_out), (1, 1, 1, 1, 0, 0), "SYN/FIN/RST in/out of {}", c.connection);
    }
    assert_eq!(snap.connections.len(), 2 * PATHS.len(), "nothing else was tracked:\n{}", snap.pretty());

    // Metrics: exactly n opened and n closed ("normal") per role, nothing else.
    // Label subsets: `observer_connections_closed_total` also carries `protocol`.
    let delta = |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    for role in ["inbound", "outbound"] {
        assert_eq!(delta(OPENED, &[("role", role), ("port", "80")]), n, "{OPENED}{{role={role},port=80}}:\n{}", after.series(OPENED));
        assert_eq!(delta(CLOSED, &[("role", role), ("port", "80"), ("reason", "normal"), ("protocol", "http1")]), n, "{CLOSED}{{role={role},port=80,reason=normal,protocol=http1}}:\n{}", after.series(CLOSED));
        assert_eq!(after.get("observer_connections_active", &[("role", role)]), 0.0, "no connection is open:\n{}", after.series("observer_connections_active"));
    }
    assert_eq!(after.sum(OPENED, &[]) - before.sum(OPENED, &[]), 2.0 * n, "{}", after.series(OPENED));
    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), 2.0 * n, "{}", after.series(CLOSED));
    assert_eq!(after.sum(RESETS, &[]) - before.sum(RESETS, &[]), 0.0, "{}", after.series(RESETS));
}

#[test]
fn normal_close_is_counted_per_role_with_open_and_close_times() {
    const TEST: &str = "normal_close_is_counted_per_role_with_open_and_close_times";
    if root_or_skip(TEST) {
        let lab = Lab::start(TEST);
        assert_eq!(lab.observer.status()["lifecycle_hook"], "tp_btf", "this kernel loads the BTF-typed tracepoint");
        normal_open_and_close(&lab, addr::GATEWAY_CLIENT_SIDE_V4.into(), addr::CLIENT_V4.into(), "ipv4");
    }
}

/// The classic tracepoint (what the daemon falls back to where the BTF-typed one does not load)
/// follows the same lifecycle, on both families; the default hook is the BTF-typed one here.
#[test]
fn the_classic_tracepoint_follows_the_same_lifecycle() {
    const TEST: &str = "the_classic_tracepoint_follows_the_same_lifecycle";
    if root_or_skip(TEST) {
        let families: [(IpAddr, IpAddr, &str); 2] = [
            (addr::GATEWAY_CLIENT_SIDE_V4.into(), addr::CLIENT_V4.into(), "ipv4"),
            (addr::GATEWAY_CLIENT_SIDE_V6.into(), addr::CLIENT_V6.into(), "ipv6"),
        ];
        for (server, client, family) in families {
            let lab = Lab::start_with(TEST, &["--lifecycle-hook", "tracepoint"]);
            assert_eq!(lab.observer.status()["lifecycle_hook"], "tracepoint");
            normal_open_and_close(&lab, server, client, family);
        }
    }
}

#[test]
fn ipv6_normal_close_has_the_same_lifecycle() {
    const TEST: &str = "ipv6_normal_close_has_the_same_lifecycle";
    if root_or_skip(TEST) {
        let lab = Lab::start(TEST);
        normal_open_and_close(&lab, addr::GATEWAY_CLIENT_SIDE_V6.into(), addr::CLIENT_V6.into(), "ipv6");
    }
}

// ---------------------------------------------------------------------------------------------
// 2, 3: resets received and sent
// ---------------------------------------------------------------------------------------------

#[test]
fn client_abort_with_linger_zero_is_a_reset_received() {
    const TEST: &str = "client_abort_with_linger_zero_is_a_reset_received";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let proxy = v4(addr::GATEWAY_CLIENT_SIDE_V4, 80);
    let before = metrics(&lab.observer);

    // Half a request (no blank line: nginx waits for the rest), then a reset.
    let partial = "GET /ok HTTP/1.1\r\nHost: gateway\r\n";
    let mut s = tcp::connect(&lab.topo.client, proxy).expect("connecting to the proxy");
    let client_end = s.local_addr().expect("local address");
    s.write_all(partial.as_bytes()).expect("sending half a request");
    // The gateway has the bytes before the abort: the reset comes after data, not instead of it.
    lab.observer.wait_for("the partial request at the gateway", WAIT, |snap| snap.with_remote(client_end).iter().any(|c| c.bytes_in == partial.len() as u64));
    tcp::abort(s).expect("closing with SO_LINGER 0");

    let after = wait_for_metrics(&lab.observer, "one inbound connection closed by a received reset", |m| {
        m.sum(CLOSED, &[("role", "inbound"), ("port", "80"), ("reason", "reset_received")]) - before.sum(CLOSED, &[("role", "inbound"), ("port", "80"), ("reason", "reset_received")]) >= 1.0
    });
    let snap = lab.observer.connections();
    let c = entry(&snap, proxy, client_end);
    assert_eq!(text(c, "role"), "inbound");
    assert_closed_after_open(c, "reset_received");
    assert_eq!(text(c, "closer"), "remote", "the client aborted: {c:#?}");
    assert_eq!((count(c, "resets_received"), count(c, "resets_sent")), (1, 0), "socket view of {}: {c:#?}", c.connection);
    assert_eq!((c.rst_in, c.rst_out), (1, 0), "wire view of {}: {c:#?}", c.connection);
    assert_eq!((c.syn_in, c.syn_out, c.fin_in, c.fin_out), (1, 1, 0, 0), "{}", c.connection);
    assert_eq!((c.bytes_in, c.bytes_out), (partial.len() as u64, 0), "{}", c.connection);
    // An incomplete request is never proxied.
    assert_eq!(snap.connections.len(), 1, "only the aborted connection:\n{}", snap.pretty());

    let delta = |labels: &[(&str, &str)]| after.get(RESETS, labels) - before.get(RESETS, labels);
    assert_eq!((delta(&[("direction", "received")]), delta(&[("direction", "sent")])), (1.0, 0.0), "{}", after.series(RESETS));
    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), 1.0, "{}", after.series(CLOSED));
    assert_eq!(after.get(OPENED, &[("role", "inbound"), ("port", "80")]) - before.get(OPENED, &[("role", "inbound"), ("port", "80")]), 1.0, "{}", after.series(OPENED));
}

#[test]
fn server_abort_with_linger_zero_is_a_reset_sent() {
    const TEST: &str = "server_abort_with_linger_zero_is_a_reset_sent";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let observer = Observer::start(&topo);
    let server = v4(addr::GATEWAY_CLIENT_SIDE_V4, 8081);
    let listener = tcp::listen(&topo.gateway, server).expect("listening in the gateway");
    let before = metrics(&observer);

    // The client says hello; the gateway's server reads it and aborts with a reset.
    let mut client = tcp::connect(&topo.client, server).expect("connecting");
    let client_end = client.local_addr().expect("local address");
    client.write_all(b"hello\n").expect("sending");
    let (mut accepted, peer) = listener.accept().expect("accepting");
    assert_eq!(peer, client_end);
    let mut hello = [0u8; 6];
    accepted.read_exact(&mut hello).expect("reading the hello");
    tcp::abort(accepted).expect("closing with SO_LINGER 0");
    // Ground truth on the other end: the client's socket got a reset, not an end of stream.
    let mut buf = [0u8; 16];
    let got = client.read(&mut buf);
    assert_eq!(got.as_ref().map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset), "the client's read after the server's abort: {got:?}");

    let after = wait_for_metrics(&observer, "one inbound connection closed by a sent reset", |m| {
        m.sum(CLOSED, &[("role", "inbound"), ("port", "8081"), ("reason", "reset_sent")]) - before.sum(CLOSED, &[("role", "inbound"), ("port", "8081"), ("reason", "reset_sent")]) >= 1.0
    });
    let snap = observer.connections();
    let c = entry(&snap, server, client_end);
    assert_eq!(text(c, "role"), "inbound");
    assert_closed_after_open(c, "reset_sent");
    assert_eq!(text(c, "closer"), "local", "the gateway aborted: {c:#?}");
    assert_eq!((count(c, "resets_sent"), count(c, "resets_received")), (1, 0), "socket view of {}: {c:#?}", c.connection);
    assert_eq!((c.rst_out, c.rst_in), (1, 0), "wire view of {}: {c:#?}", c.connection);
    assert_eq!((c.syn_in, c.syn_out, c.fin_in, c.fin_out), (1, 1, 0, 0), "{}", c.connection);
    assert_eq!((c.bytes_in, c.bytes_out), (6, 0), "{}", c.connection);

    let delta = |labels: &[(&str, &str)]| after.get(RESETS, labels) - before.get(RESETS, labels);
    assert_eq!((delta(&[("direction", "sent")]), delta(&[("direction", "received")])), (1.0, 0.0), "{}", after.series(RESETS));
    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), 1.0, "{}", after.series(CLOSED));
    drop(client);
}

// ---------------------------------------------------------------------------------------------
// 4: refused connections, both roles
// ---------------------------------------------------------------------------------------------

#[test]
fn syn_to_a_port_without_listener_is_refused_inbound() {
    const TEST: &str = "syn_to_a_port_without_listener_is_refused_inbound";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let observer = Observer::start(&topo);
    let closed_port = v4(addr::GATEWAY_CLIENT_SIDE_V4, 81);
    let before = metrics(&observer);

    let refused = tcp::connect(&topo.client, closed_port);
    assert_eq!(refused.as_ref().map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::ConnectionRefused), "connecting to {closed_port}: {refused:?}");

    // No socket ever existed on the gateway: the daemon's sweep finds it once it is quiet.
    let after = wait_for_metrics(&observer, "one refused inbound connection", |m| {
        m.sum(CLOSED, &[("role", "inbound"), ("port", "81"), ("reason", "refused")]) - before.sum(CLOSED, &[("role", "inbound"), ("port", "81"), ("reason", "refused")]) >= 1.0
    });
    let snap = observer.connections();
    assert_eq!(snap.connections.len(), 1, "only the refused connection:\n{}", snap.pretty());
    let c = &snap.connections[0];
    assert_eq!((c.local, c.remote.ip()), (closed_port, IpAddr::from(addr::CLIENT_V4)), "{c:#?}");
    assert_eq!(text(c, "role"), "inbound", "{c:#?}");
    assert_eq!((text(c, "status"), c.extra.get("close_reason").and_then(Value::as_str)), ("closed", Some("refused")), "{c:#?}");
    assert_eq!(time(c, "opened"), None, "it never opened: {c:#?}");
    assert!(time(c, "closed").is_some(), "{c:#?}");
    assert_eq!((c.syn_in, c.syn_out, c.rst_out, c.rst_in, c.fin_in, c.fin_out), (1, 0, 1, 0, 0, 0), "SYN in, RST out, nothing else: {c:#?}");
    assert_eq!((c.bytes_in, c.bytes_out), (0, 0));

    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), 1.0, "{}", after.series(CLOSED));
    assert_eq!(after.sum(OPENED, &[]) - before.sum(OPENED, &[]), 0.0, "a refused connection never opened:\n{}", after.series(OPENED));
}

#[test]
fn connect_to_an_upstream_port_without_listener_is_refused_outbound() {
    const TEST: &str = "connect_to_an_upstream_port_without_listener_is_refused_outbound";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let observer = Observer::start(&topo);
    let closed_port = v4(addr::UPSTREAM_V4, 81);
    let before = metrics(&observer);

    // From the gateway itself, as a proxy would connect to a dead backend.
    let refused = tcp::connect(&topo.gateway, closed_port);
    assert_eq!(refused.as_ref().map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::ConnectionRefused), "connecting to {closed_port}: {refused:?}");

    let after = wait_for_metrics(&observer, "one refused outbound connection", |m| {
        m.sum(CLOSED, &[("role", "outbound"), ("port", "81"), ("reason", "refused")]) - before.sum(CLOSED, &[("role", "outbound"), ("port", "81"), ("reason", "refused")]) >= 1.0
    });
    let snap = observer.connections();
    let mine = snap.with_remote(closed_port);
    assert_eq!(mine.len(), 1, "one entry for the refused connect:\n{}", snap.pretty());
    let c = mine[0];
    assert_eq!(c.local.ip(), IpAddr::from(addr::GATEWAY_UPSTREAM_SIDE_V4), "{c:#?}");
    assert_eq!(text(c, "role"), "outbound", "{c:#?}");
    assert_eq!((text(c, "status"), text(c, "state"), c.extra.get("close_reason").and_then(Value::as_str)), ("closed", "closed", Some("refused")), "{c:#?}");
    assert_eq!(time(c, "opened"), None, "it never opened: {c:#?}");
    assert_eq!((count(c, "resets_received"), count(c, "resets_sent")), (1, 0), "socket view: {c:#?}");
    assert_eq!((c.syn_out, c.syn_in, c.rst_in, c.rst_out, c.fin_in, c.fin_out), (1, 0, 1, 0, 0, 0), "SYN out, RST in, nothing else: {c:#?}");
    assert_eq!(snap.connections.len(), 1, "nothing else was tracked:\n{}", snap.pretty());

    let delta = |labels: &[(&str, &str)]| after.get(RESETS, labels) - before.get(RESETS, labels);
    assert_eq!((delta(&[("direction", "received")]), delta(&[("direction", "sent")])), (1.0, 0.0), "{}", after.series(RESETS));
    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), 1.0, "{}", after.series(CLOSED));
    assert_eq!(after.sum(OPENED, &[]) - before.sum(OPENED, &[]), 0.0, "{}", after.series(OPENED));
}

// ---------------------------------------------------------------------------------------------
// 5: retransmissions, compared with the kernel's own per-socket counters
// ---------------------------------------------------------------------------------------------
//
// How loss is made: this kernel has no netem (CONFIG_NET_SCH_NETEM is off) and the test machines
// have neither nft, iptables nor ethtool, so the loss is made with iproute2 alone. The client's
// address is removed for a moment while the gateway sends: the gateway's segments still leave it
// and cross the link (the observer sees them go), and the client's stack drops them, as a lossy
// network would. TCP retransmits on timeout until the address is back. The gateway's neighbour
// entry for the client is made permanent first, so that no retransmission can fail inside the
// gateway for want of ARP: the kernel's `total_retrans` counts a retransmission when it is
// attempted, the observer (by design) only the ones that were sent, and with this set-up they
// are the same.
//
// Ground truth is the kernel's own counters of that one socket, read with `ss -tin` in the
// gateway while the connection is still open and idle (everything acknowledged): `retrans:X/TOTAL`
// (tcpi_total_retrans, segments) and `bytes_retrans`.

/// The body the gateway's server sends across the outage.
const RETRANSMIT_BODY: usize = 1_000_000;

/// What one retransmission scenario measured.
struct Retransmitted {
    /// The gateway socket's `ss -tin` once everything was acknowledged.
    kernel: tcp::SocketInfo,
    /// The observer's entry for the connection, read right after.
    entry: Connection,
    /// Growth of `observer_retransmits_total` during the scenario.
    metric: f64,
    /// Growth of the gateway namespace's `RetransSegs` (every socket, SYN-ACKs and failed
    /// attempts included: an upper bound for the observer's total).
    namespace: u64,
}

/// A connection to a server of the test's own in the gateway (so it is the gateway that sends,
/// and so retransmits): the server writes [`RETRANSMIT_BODY`] while the client's address is gone,
/// the address comes back, the client reads everything and the connection stays open while the
/// counters are compared. `one_segment_per_skb` sets `gso_max_segs 1` on the gateway's
/// client-side link before the connection exists, so TCP builds no multi-segment (GSO) packets.
/// `small_qdisc` gives that link a token bucket with room for two packets, which drops some of
/// what TCP hands it when TCP sends in bursts (after the outage): retransmissions among them.
fn retransmissions(test: &str, one_segment_per_skb: bool, small_qdisc: bool) -> Retransmitted {
    let topo = Topology::new(test);
    if one_segment_per_skb {
        topo.gateway.run("ip", ["link", "set", "dev", GW_CLIENT_IF, "gso_max_segs", "1"]);
    }
    if small_qdisc {
        topo.gateway.run("tc", ["qdisc", "add", "dev", GW_CLIENT_IF, "root", "tbf", "rate", "100mbit", "burst", "3000", "limit", "3000"]);
    }
    let observer = Observer::start(&topo);
    let server = v4(addr::GATEWAY_CLIENT_SIDE_V4, 8080);
    let listener = tcp::listen(&topo.gateway, server).expect("listening in the gateway");
    let mut client = tcp::connect(&topo.client, server).expect("connecting");
    let client_end = client.local_addr().expect("local address");
    let (accepted, _) = listener.accept().expect("accepting");
    observer.wait_for("the connection, established", WAIT, |s| s.with_remote(client_end).iter().any(|c| c.extra.get("state").and_then(Value::as_str) == Some("established")));
    let info = |what: &str| tcp::socket_info(&topo.gateway, server, client_end).unwrap_or_else(|| panic!("no gateway socket {server} {client_end} {what}"));
    assert_eq!(info("before the outage").total_retrans, 0, "no retransmission before the outage");
    let before = metrics(&observer);
    let namespace_before = topo.gateway.tcp_retransmitted_segments();

    let mac = topo.client.run("cat", [format!("/sys/class/net/{}/address", addr::CLIENT_IF)]);
    topo.gateway.run("ip", ["neigh", "replace", &addr::CLIENT_V4.to_string(), "lladdr", mac.trim(), "dev", GW_CLIENT_IF, "nud", "permanent"]);
    let client_prefix = format!("{}/24", addr::CLIENT_V4);
    topo.client.run("ip", ["addr", "del", &client_prefix, "dev", addr::CLIENT_IF]);
    let writer = std::thread::spawn(move || {
        let mut accepted = accepted;
        accepted.write_all(&vec![b'r'; RETRANSMIT_BODY]).map(|()| accepted)
    });
    let retransmitting = poll(WAIT, Duration::from_millis(20), || (info("during the outage").total_retrans >= 2).then_some(()));
    let outage = info("during the outage");
    topo.client.run("ip", ["addr", "add", &client_prefix, "dev", addr::CLIENT_IF]);
    assert!(retransmitting.is_some(), "the gateway did not retransmit while its peer was unreachable:\n{}", outage.raw);

    let mut body = vec![0u8; RETRANSMIT_BODY];
    client.set_read_timeout(Some(Duration::from_secs(30))).expect("setting a read timeout");
    client.read_exact(&mut body).expect("reading the whole body once the address is back");
    assert!(body.iter().all(|&b| b == b'r'), "the body arrived intact");
    let accepted = writer.join().expect("the writer thread").expect("writing the body");
    // Both ends stay open. Once everything is acknowledged nothing more is retransmitted: the
    // kernel's counts are final, and the observer's must equal them.
    let kernel = poll(WAIT, Duration::from_millis(20), || {
        let i = info("after the transfer");
        (i.state == "ESTAB" && i.counter("unacked").is_none() && i.counter("bytes_acked") == Some(RETRANSMIT_BODY as u64)).then_some(i)
    })
    .unwrap_or_else(|| panic!("the gateway's socket never had everything acknowledged:\n{}", info("").raw));
    let snap = observer.connections();
    let entry = entry(&snap, server, client_end).clone();
    let after = metrics(&observer);
    let namespace = topo.gateway.tcp_retransmitted_segments() - namespace_before;
    assert_eq!(info("at the end").total_retrans, kernel.total_retrans, "the kernel's count moved while the test read the observer's");
    assert_eq!((text(&entry, "status"), text(&entry, "state")), ("open", "established"), "{entry:#?}");
    drop((accepted, client));
    Retransmitted { kernel, entry, metric: after.get("observer_retransmits_total", &[]) - before.get("observer_retransmits_total", &[]), namespace }
}

/// Asserts the observer's counts of `r` against the kernel's: the socket view (`retransmits`),
/// the wire view (`retransmitted_segments_out`, `retransmitted_bytes_out`), the unaffected byte
/// count, and the global counter.
fn assert_retransmissions_exact(r: &Retransmitted) {
    let (k, c) = (&r.kernel, &r.entry);
    let total = k.total_retrans;
    let bytes_retrans = k.counter("bytes_retrans").unwrap_or(0);
    assert!(total >= 2, "{}", k.raw);
    assert_eq!(count(c, "retransmits"), total, "the observer's retransmits vs the kernel's total_retrans (retrans:X/TOTAL) of that socket:\n{}\n{c:#?}", k.raw);
    assert_eq!(
        (count(c, "retransmitted_segments_out"), count(c, "retransmitted_bytes_out")),
        (total, bytes_retrans),
        "the wire view (retransmitted segments and bytes out) vs the kernel's total_retrans and bytes_retrans:\n{}\n{c:#?}",
        k.raw
    );
    assert_eq!((c.bytes_out, count(c, "retransmitted_segments_in")), (RETRANSMIT_BODY as u64, 0), "bytes_out counts the body once: {c:#?}");
    assert!(
        r.metric >= total as f64 && r.metric <= r.namespace as f64,
        "observer_retransmits_total grew by {}: at least this socket's {total}, at most the namespace's RetransSegs growth {}",
        r.metric,
        r.namespace
    );
}

#[test]
fn retransmissions_equal_the_kernels_count_for_the_socket() {
    const TEST: &str = "retransmissions_equal_the_kernels_count_for_the_socket";
    if root_or_skip(TEST) {
        // One segment per packet: see `retransmitted_gso_packets_count_every_segment` for why.
        assert_retransmissions_exact(&retransmissions(TEST, true, false));
    }
}

/// A retransmission that TCP hands to the device but the device's queue drops (a full qdisc here;
/// on a starved host, a full backlog of the veth peer does the same) is counted by the kernel in
/// `total_retrans` (and in `RetransSegs`): the stack counts it before it transmits. The
/// `tcp:tcp_retransmit_skb` record says `err=1` (`NET_XMIT_DROP`, the device's verdict) and the
/// observer counts it to match the kernel. Only the socket view is compared: the tc egress program
/// runs before the qdisc, so the wire view also sees the first transmissions the qdisc dropped,
/// which TCP then sends again as new data, not as retransmissions.
#[test]
fn retransmissions_dropped_by_the_local_queue_still_count() {
    const TEST: &str = "retransmissions_dropped_by_the_local_queue_still_count";
    if root_or_skip(TEST) {
        let r = retransmissions(TEST, true, true);
        let total = r.kernel.total_retrans;
        assert!(total >= 2, "{}", r.kernel.raw);
        assert_eq!(count(&r.entry, "retransmits"), total, "the observer's retransmits vs the kernel's total_retrans (retrans:X/TOTAL) of that socket:\n{}\n{:#?}", r.kernel.raw, r.entry);
        assert_eq!(r.entry.bytes_out, RETRANSMIT_BODY as u64, "bytes_out counts the body once: {:#?}", r.entry);
        assert!(r.metric >= total as f64 && r.metric <= r.namespace as f64, "observer_retransmits_total grew by {}: at least this socket's {total}, at most the namespace's {}", r.metric, r.namespace);
    }
}

/// The same with the link's default GSO/TSO: TCP then builds packets of several segments, and a
/// retransmitted packet can carry several segments (`total_retrans` grows by `tcp_skb_pcount`).
/// The observer reads that count from the retransmitted skb (offsets from BTF) and its wire view
/// counts the packet's GSO segments, so both still equal the kernel's per-socket count.
#[test]
fn retransmitted_gso_packets_count_every_segment() {
    const TEST: &str = "retransmitted_gso_packets_count_every_segment";
    if root_or_skip(TEST) {
        assert_retransmissions_exact(&retransmissions(TEST, false, false));
    }
}

/// Handshake retransmissions: the gateway's first SYN-ACK (inbound) or SYN (outbound) goes to a
/// MAC address nobody has (the gateway's neighbour entry for the peer is made wrong, and permanent),
/// so it leaves the gateway and is lost; once the kernel has retransmitted it, the entry is set
/// right and the handshake completes. The kernel's `total_retrans` of the established socket counts
/// the retransmitted SYN (`tcp_retransmit_skb`) or SYN-ACKs (a child socket inherits its request's
/// `num_retrans`); the observer's `retransmits` must say the same, and every SYN or SYN-ACK sent is
/// one more on the wire (`syn_out`).
fn handshake_retransmissions(test: &str, inbound: bool) {
    let topo = Topology::new(test);
    let observer = Observer::start(&topo);
    let (listen_ns, connect_ns, peer_ns, peer_if, peer_ip, gateway_if) = if inbound {
        (&topo.gateway, &topo.client, &topo.client, addr::CLIENT_IF, addr::CLIENT_V4, GW_CLIENT_IF)
    } else {
        (&topo.upstream, &topo.gateway, &topo.upstream, addr::UPSTREAM_IF, addr::UPSTREAM_V4, GW_UPSTREAM_IF)
    };
    let server = if inbound { v4(addr::GATEWAY_CLIENT_SIDE_V4, 8082) } else { v4(addr::UPSTREAM_V4, 8082) };
    let listener = tcp::listen(listen_ns, server).expect("listening");
    let mac = peer_ns.run("cat", [format!("/sys/class/net/{peer_if}/address")]);
    let neigh = |lladdr: &str| topo.gateway.run("ip", ["neigh", "replace", &peer_ip.to_string(), "lladdr", lladdr, "dev", gateway_if, "nud", "permanent"]);
    neigh("02:00:00:00:00:01");
    let before = metrics(&observer);
    let namespace_before = topo.gateway.tcp_retransmitted_segments();

    let ns = connect_ns.clone();
    let connecting = std::thread::spawn(move || tcp::connect(&ns, server));
    let retransmitted = poll(WAIT, Duration::from_millis(20), || (topo.gateway.tcp_retransmitted_segments() > namespace_before).then_some(()));
    neigh(mac.trim());
    assert!(retransmitted.is_some(), "the gateway never retransmitted its {}", if inbound { "SYN-ACK" } else { "SYN" });
    let connected = connecting.join().expect("the connecting thread").expect("connecting once the neighbour entry is right");
    let (accepted, _) = listener.accept().expect("accepting");
    // The gateway's end of the connection.
    let (local, remote) = if inbound { (server, connected.local_addr().expect("address")) } else { (connected.local_addr().expect("address"), server) };
    let snap = observer.wait_for("the connection, established", WAIT, |s| s.connections.iter().any(|c| c.local == local && c.remote == remote && time(c, "opened").is_some()));
    let c = entry(&snap, local, remote);
    let kernel = tcp::socket_info(&topo.gateway, local, remote).unwrap_or_else(|| panic!("no gateway socket {local} {remote}"));
    let after = metrics(&observer);
    let namespace = topo.gateway.tcp_retransmitted_segments() - namespace_before;
    let total = kernel.total_retrans;
    assert!(total >= 1, "{}", kernel.raw);
    assert_eq!(text(c, "role"), if inbound { "inbound" } else { "outbound" });
    assert_eq!(count(c, "retransmits"), total, "the observer's retransmits vs the kernel's total_retrans (retrans:X/TOTAL) of that socket:\n{}\n{c:#?}", kernel.raw);
    assert_eq!(c.syn_out, 1 + total, "every {} the gateway sent is on the wire once: {c:#?}", if inbound { "SYN-ACK" } else { "SYN" });
    assert!(c.syn_in >= 1, "{c:#?}");
    let metric = after.get("observer_retransmits_total", &[]) - before.get("observer_retransmits_total", &[]);
    // Every socket of the gateway counts in both totals (on a starved machine the daemon's own
    // API connection on loopback may retransmit too): at least this socket's, and the same.
    assert!(metric >= total as f64, "observer_retransmits_total grew by {metric}, less than this socket's total_retrans {total}");
    assert_eq!(metric, namespace as f64, "observer_retransmits_total growth vs the gateway namespace's RetransSegs growth");
    drop((connected, accepted));
}

#[test]
fn retransmitted_syn_is_counted_on_an_outbound_connection() {
    const TEST: &str = "retransmitted_syn_is_counted_on_an_outbound_connection";
    if root_or_skip(TEST) {
        handshake_retransmissions(TEST, false);
    }
}

#[test]
fn retransmitted_syn_ack_is_counted_on_an_inbound_connection() {
    const TEST: &str = "retransmitted_syn_ack_is_counted_on_an_inbound_connection";
    if root_or_skip(TEST) {
        handshake_retransmissions(TEST, true);
    }
}

// ---------------------------------------------------------------------------------------------
// 8: GET /api/v1/connections filters, one connection by its written form, bad input
// ---------------------------------------------------------------------------------------------

/// `GET /api/v1/connections?query`, expecting 200.
fn query(o: &Observer, query: &str) -> Snapshot {
    let path = format!("/api/v1/connections?{query}");
    let (status, body) = o.get(&path);
    assert_eq!(status, 200, "GET {path}: {body}");
    let snap = Snapshot::parse(&body).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(snap.count, snap.connections.len(), "GET {path}: count vs the list:\n{}", snap.pretty());
    snap
}

fn names<'a>(conns: impl IntoIterator<Item = &'a Connection>) -> BTreeSet<String> {
    conns.into_iter().map(|c| c.connection.clone()).collect()
}

/// The scenario: two client connections closed (`Connection: close`), one held open after one
/// exchange, one refused on port 81; the proxy made one upstream connection per request (three,
/// all closed). Seven connections, each known by its four-tuple from curl, the raw socket, or the
/// upstream's access log.
#[test]
fn connection_filters_select_exactly_the_matching_connections() {
    const TEST: &str = "connection_filters_select_exactly_the_matching_connections";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let o = &lab.observer;
    let proxy = v4(addr::GATEWAY_CLIENT_SIDE_V4, 80);
    let upstream = v4(addr::UPSTREAM_V4, 80);
    let closed_port = v4(addr::GATEWAY_CLIENT_SIDE_V4, 81);
    let before = metrics(o);

    let base = http_base(proxy.ip());
    let transfers = curl(&lab.topo.client, &[format!("{base}/ok"), format!("{base}/size/1000")], &["--header", "Connection: close"]);
    assert!(transfers.iter().all(|t| t.num_connects == 1 && t.http_code == 200), "{transfers:#?}");
    let mut open = tcp::connect(&lab.topo.client, proxy).expect("connecting to the proxy");
    let open_end = open.local_addr().expect("local address");
    let request = "GET /size/100 HTTP/1.1\r\nHost: gateway\r\n\r\n";
    let (code, head, body) = tcp::http_exchange(&mut open, request).expect("one exchange on the held connection");
    assert_eq!((code, body), (200, 100));
    let refused = tcp::connect(&lab.topo.client, closed_port);
    assert_eq!(refused.as_ref().map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::ConnectionRefused), "{refused:?}");

    // 2 + 3 normal closes and 1 refused: finalised, so every closed entry is final.
    wait_for_metrics(o, "six closed connections", |m| m.sum(CLOSED, &[]) - before.sum(CLOSED, &[]) >= 6.0);
    let log = lab.upstream.wait_for_requests(3);
    let all = query(o, "");

    let closed_inbound: BTreeSet<String> = transfers.iter().map(|t| format!("{} {}", t.remote, t.local)).collect();
    let open_one = format!("{proxy} {open_end}");
    let outbound: BTreeSet<String> = log.entries.iter().map(|e| format!("{} {upstream}", e.remote())).collect();
    assert_eq!(outbound.len(), 3, "{}", log.raw);
    let refused_one = {
        let r: Vec<&Connection> = all.connections.iter().filter(|c| c.local == closed_port).collect();
        assert_eq!(r.len(), 1, "one entry for the refused connection:\n{}", all.pretty());
        assert_eq!(r[0].remote.ip(), IpAddr::from(addr::CLIENT_V4));
        r[0].connection.clone()
    };
    let set = |parts: &[&BTreeSet<String>], singles: &[&String]| -> BTreeSet<String> {
        parts.iter().flat_map(|p| p.iter().cloned()).chain(singles.iter().map(|s| (*s).clone())).collect()
    };
    let everything = set(&[&closed_inbound, &outbound], &[&open_one, &refused_one]);
    assert_eq!(names(&all.connections), everything, "every connection, nothing else:\n{}", all.pretty());
    assert_eq!(all.count, 7);

    let cases: Vec<(&str, BTreeSet<String>)> = vec![
        ("state=closed", set(&[&closed_inbound, &outbound], &[&refused_one])),
        ("state=open", set(&[], &[&open_one])),
        ("state=established", set(&[], &[&open_one])),
        ("role=outbound", outbound.clone()),
        ("role=inbound", set(&[&closed_inbound], &[&open_one, &refused_one])),
        ("port=80", set(&[&closed_inbound, &outbound], &[&open_one])),
        ("port=81", set(&[], &[&refused_one])),
        ("local_port=80", set(&[&closed_inbound], &[&open_one])),
        ("remote_port=80", outbound.clone()),
        ("address=198.18.1.2", set(&[&closed_inbound], &[&open_one, &refused_one])),
        ("address=198.18.2.2", outbound.clone()),
        ("address=198.18.2.1", outbound.clone()),
        ("address=2001:db8:1::2", BTreeSet::new()),
        ("role=inbound&state=closed&port=80", closed_inbound.clone()),
        ("role=outbound&state=open", BTreeSet::new()),
    ];
    for (q, expected) in &cases {
        let got = query(o, q);
        assert_eq!(&names(&got.connections), expected, "GET /api/v1/connections?{q}:\n{}", got.pretty());
    }

    // Sorting and limits: N connections, in the key's order, and they are the first N of the full
    // list by that key, with the values the full list shows (all seven are quiet now: first_seen,
    // bytes and packets no longer change).
    type SortCase = (&'static str, usize, bool, fn(&Connection) -> f64);
    let sorted_cases: [SortCase; 4] = [
        ("sort=first_seen&limit=3", 3, false, |c| c.first_seen),
        ("sort=bytes_out&order=asc&limit=4", 4, true, |c| c.bytes_out as f64),
        ("sort=bytes_in&limit=2", 2, false, |c| c.bytes_in as f64),
        ("sort=packets&limit=5", 5, false, |c| (c.packets_in + c.packets_out) as f64),
    ];
    for (q, limit, ascending, key) in sorted_cases {
        let got = query(o, q);
        assert_eq!(got.count, limit, "GET /api/v1/connections?{q}:\n{}", got.pretty());
        let in_order = |v: &[f64]| -> Vec<f64> {
            let mut v = v.to_vec();
            v.sort_by(|a, b| if ascending { a.total_cmp(b) } else { b.total_cmp(a) });
            v
        };
        let mut expected = in_order(&all.connections.iter().map(key).collect::<Vec<_>>());
        expected.truncate(limit);
        let values: Vec<f64> = got.connections.iter().map(key).collect();
        assert_eq!(values, expected, "GET /api/v1/connections?{q}: the key's values, in order:\n{}", got.pretty());
        let from_full: Vec<f64> = got.connections.iter().map(|c| key(entry(&all, c.local, c.remote))).collect();
        assert_eq!(from_full, values, "GET /api/v1/connections?{q}: each connection's value as the full list shows it:\n{}", got.pretty());
    }

    // One connection by its written form (%20, or a comma).
    let one = |path: &str| -> Connection {
        let v = o.get_json(path);
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("GET {path}: not a connection ({e}): {v}"))
    };
    let c = one(&format!("/api/v1/connections/{}", open_one.replace(' ', "%20")));
    assert_eq!((c.connection.as_str(), c.local, c.remote), (open_one.as_str(), proxy, open_end));
    assert_eq!((text(&c, "status"), text(&c, "role")), ("open", "inbound"), "{c:#?}");
    assert_eq!((c.bytes_in, c.bytes_out), (request.len() as u64, (head + body) as u64), "the held connection's one exchange: {c:#?}");
    for name in &outbound {
        let c = one(&format!("/api/v1/connections/{}", name.replace(' ', ",")));
        let listed = all.connections.iter().find(|l| &l.connection == name).expect("listed");
        assert_eq!(&c.connection, name);
        assert_eq!(
            (c.packets_in, c.packets_out, c.bytes_in, c.bytes_out, text(&c, "close_reason"), text(&c, "closer")),
            (listed.packets_in, listed.packets_out, listed.bytes_in, listed.bytes_out, text(listed, "close_reason"), text(listed, "closer")),
            "{name} alone vs in the list"
        );
        assert_eq!((c.first_seen, time(&c, "opened"), time(&c, "closed")), (listed.first_seen, time(listed, "opened"), time(listed, "closed")), "{name}: times alone vs in the list");
    }

    // Bad input: 400 with a JSON message naming what was wrong; a connection never seen: 404.
    for (path, names_it) in [
        ("/api/v1/connections?port=http", "http"),
        ("/api/v1/connections?port=70000", "70000"),
        ("/api/v1/connections?sort=nonsense", "nonsense"),
        ("/api/v1/connections?colour=red", "colour"),
        ("/api/v1/connections?limit=many", "many"),
        ("/api/v1/connections?limit=1000000000", "1000000000"),
        ("/api/v1/connections?address=198.18.1", "198.18.1"),
        ("/api/v1/connections?role=sideways", "sideways"),
        ("/api/v1/connections/198.18.1.1:80", "198.18.1.1:80"),
        ("/api/v1/connections/198.18.1.1%20198.18.1.2:1", "198.18.1.1"),
        ("/api/v1/connections/198.18.1.1:80%20[2001:db8:1::2]:1", "both"),
    ] {
        let (status, body) = o.get(path);
        assert_eq!(status, 400, "GET {path}: {body}");
        let message = serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
        let message = message.unwrap_or_else(|| panic!("GET {path}: the body is not {{\"error\": \"...\"}}: {body}"));
        assert!(message.contains(names_it), "GET {path}: the message should name {names_it:?}: {message}");
    }
    let never = format!("{proxy} {}", v4(addr::CLIENT_V4, 9));
    let (status, body) = o.get(&format!("/api/v1/connections/{}", never.replace(' ', "%20")));
    assert_eq!(status, 404, "a connection never seen: {body}");
    assert!(serde_json::from_str::<Value>(&body).ok().and_then(|v| v.get("error").cloned()).is_some_and(|e| e.is_string()), "404 body: {body}");
    drop(open);
}

// ---------------------------------------------------------------------------------------------
// 9: a full kernel map evicts, and counts every eviction
// ---------------------------------------------------------------------------------------------

const MAP_SIZE: u64 = 16;

fn kernel_inserts(o: &Observer) -> u64 {
    let s = o.status();
    s["kernel_counters"]["conn_inserts"].as_u64().unwrap_or_else(|| panic!("no kernel_counters.conn_inserts in /api/v1/status: {s}"))
}

/// With room for 16 entries, twelve proxied requests make 24 connections (one client connection
/// and one upstream connection each). Every one is one new entry; whatever the map does not hold
/// any more was evicted, and `observer_connection_evictions_total` must say exactly how many. The
/// map keeps taking new connections: one made afterwards and held open is listed as open, which
/// only the kernel's map can say (closed connections the map evicted are still listed from the
/// daemon's history).
///
/// One thing besides the test's connections can insert an entry: a TCP retransmission in the
/// gateway, which the socket tracepoints count on whatever socket it happens, also the daemon's
/// own API connection on loopback (hidden from the API, but an entry in the map) and an evicted
/// connection. On an idle machine there is none; on a starved one a loopback segment is sometimes
/// retransmitted. So, like `Lab::run_exact`, a failed attempt during which the gateway
/// retransmitted is repeated on a fresh lab; a failure without retransmissions fails the test.
#[test]
fn a_full_connection_map_evicts_and_counts_every_eviction() {
    const TEST: &str = "a_full_connection_map_evicts_and_counts_every_eviction";
    if !root_or_skip(TEST) {
        return;
    }
    for attempt in 1..=observer_tests::EXACT_ATTEMPTS {
        let topo = Topology::new(TEST);
        let upstream = Nginx::upstream(&topo);
        let proxy = Nginx::proxy(&topo);
        let observer = Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &["--max-connections", &MAP_SIZE.to_string()]);
        let lab = Lab { observer, proxy, upstream, topo };
        let before = lab.topo.gateway.tcp_retransmitted_segments();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| full_map_evicts(&lab)));
        let Err(panic) = result else { return };
        let retransmitted = lab.topo.gateway.tcp_retransmitted_segments() - before;
        if retransmitted == 0 || attempt == observer_tests::EXACT_ATTEMPTS {
            std::panic::resume_unwind(panic);
        }
        eprintln!("{TEST}: attempt {attempt} failed (above) while the gateway retransmitted {retransmitted} segments: repeating it on a fresh lab");
    }
}

fn full_map_evicts(lab: &Lab) {
    const REQUESTS: usize = 12;
    let o = &lab.observer;
    assert_eq!(o.status()["config"]["max_connections"].as_u64(), Some(MAP_SIZE));
    let tracked = |m: &Metrics| m.get("observer_connections_tracked", &[]);
    let evictions = |m: &Metrics| m.get("observer_connection_evictions_total", &[]);

    let (m0, inserts0) = (metrics(o), kernel_inserts(o));
    let base = http_base(addr::GATEWAY_CLIENT_SIDE_V4.into());
    let urls: Vec<String> = (0..REQUESTS).map(|i| format!("{base}/size/{}", [1, 100, 1000][i % 3])).collect();
    let transfers = curl(&lab.topo.client, &urls, &["--header", "Connection: close"]);
    assert_eq!(transfers.iter().map(|t| t.num_connects).sum::<u32>() as usize, REQUESTS, "{transfers:#?}");
    let log = lab.upstream.wait_for_requests(REQUESTS);
    assert_eq!(log.entries.len(), REQUESTS, "one upstream connection per request:\n{}", log.raw);
    let created = (2 * REQUESTS) as u64;
    let m1 = wait_for_metrics(o, &format!("{created} connections closed"), |m| m.sum(CLOSED, &[]) - m0.sum(CLOSED, &[]) >= created as f64);
    let inserts1 = kernel_inserts(o);
    let m1b = metrics(o);
    assert_eq!((tracked(&m1b), evictions(&m1b)), (tracked(&m1), evictions(&m1)), "the map changed while the test read it");

    assert_eq!(inserts1 - inserts0, created, "one new entry per connection the test made:\n{}", o.connections().pretty());
    assert!(tracked(&m1) <= MAP_SIZE as f64, "observer_connections_tracked {} in a map of {MAP_SIZE}", tracked(&m1));
    assert_eq!(
        evictions(&m1) - evictions(&m0),
        created as f64 - (tracked(&m1) - tracked(&m0)),
        "evictions = connections created ({created}) - growth of the entries tracked ({} -> {})",
        tracked(&m0),
        tracked(&m1)
    );
    assert!(evictions(&m1) > 0.0, "{created} connections in a map of {MAP_SIZE} must evict");
    assert_eq!(m1.get("observer_connection_insert_failures_total", &[]), 0.0, "an LRU map never refuses");
    // Evicted or not, every closed connection is still listed (from the daemon's history), final.
    let snap = o.connections();
    for t in &transfers {
        let c = entry(&snap, t.remote, t.local);
        assert_closed_after_open(c, "normal");
        assert_eq!((c.bytes_in, c.bytes_out), (t.size_request, t.response_bytes()), "{}", c.connection);
    }
    assert_eq!(snap.connections.len(), 2 * REQUESTS, "{}", snap.pretty());

    // The map still takes new connections: one more request, its client connection held open.
    let mut open = tcp::connect(&lab.topo.client, v4(addr::GATEWAY_CLIENT_SIDE_V4, 80)).expect("connecting to the proxy");
    let open_end = open.local_addr().expect("local address");
    let (code, _, _) = tcp::http_exchange(&mut open, "GET /ok HTTP/1.1\r\nHost: gateway\r\n\r\n").expect("one exchange");
    assert_eq!(code, 200);
    let log = lab.upstream.wait_for_requests(REQUESTS + 1);
    let newest_upstream = log.entries.last().expect("the last request").remote();
    let m2 = wait_for_metrics(o, "the newest upstream connection closed", |m| m.sum(CLOSED, &[]) - m1.sum(CLOSED, &[]) >= 1.0);
    let snap = o.connections();
    let c = entry(&snap, v4(addr::GATEWAY_CLIENT_SIDE_V4, 80), open_end);
    assert_eq!((text(c, "status"), text(c, "state"), text(c, "role")), ("open", "established", "inbound"), "the newest connection, from the kernel's map: {c:#?}");
    let u = entry(&snap, newest_upstream, v4(addr::UPSTREAM_V4, 80));
    assert_closed_after_open(u, "normal");
    assert_eq!(kernel_inserts(o) - inserts1, 2, "two more entries:\n{}", o.connections().pretty());
    assert!(tracked(&m2) <= MAP_SIZE as f64);
    assert_eq!(evictions(&m2) - evictions(&m1), 2.0 - (tracked(&m2) - tracked(&m1)), "evictions for the last two connections");
    drop(open);
}

// ---------------------------------------------------------------------------------------------
// Times of a connection that has ended are facts: every answer must give the same ones
// ---------------------------------------------------------------------------------------------

/// A closed connection's `first_seen`, `opened`, `closed` and `last_seen` never change: reading it
/// twenty times (list and single route) must give the same numbers each time.
#[test]
fn closed_connection_times_are_the_same_in_every_answer() {
    const TEST: &str = "closed_connection_times_are_the_same_in_every_answer";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let before = metrics(&lab.observer);
    let t = curl(&lab.topo.client, &[format!("{}/ok", http_base(addr::GATEWAY_CLIENT_SIDE_V4.into()))], &["--header", "Connection: close"]).remove(0);
    wait_for_metrics(&lab.observer, "both connections closed", |m| m.sum(CLOSED, &[]) - before.sum(CLOSED, &[]) >= 2.0);
    let times = |c: &Connection| (c.first_seen, time(c, "opened"), time(c, "closed"), c.last_seen);
    let first = times(entry(&lab.observer.connections(), t.remote, t.local));
    let path = format!("/api/v1/connections/{}%20{}", t.remote, t.local);
    for i in 0..20 {
        let listed = times(entry(&lab.observer.connections(), t.remote, t.local));
        let alone: Connection = serde_json::from_value(lab.observer.get_json(&path)).expect("a connection");
        assert_eq!((listed, times(&alone)), (first, first), "answer {i}: (first_seen, opened, closed, last_seen) in the list and alone vs the first answer");
    }
}

// ---------------------------------------------------------------------------------------------
// Every connection that ends is counted once, also when many end together
// ---------------------------------------------------------------------------------------------

/// 300 proxied requests with `Connection: close`: 600 connections, each closed normally, so
/// `observer_connections_closed_total` must grow by exactly 600. A connection's end is finalised
/// twice over (300 ms after its close event, and by the daemon's periodic sweep, every 5 s, that
/// finds closed entries), and exactly one of the two may count it.
#[test]
fn every_closed_connection_is_counted_once_under_churn() {
    const TEST: &str = "every_closed_connection_is_counted_once_under_churn";
    if !root_or_skip(TEST) {
        return;
    }
    const REQUESTS: usize = 300;
    let lab = Lab::start(TEST);
    let before = metrics(&lab.observer);
    let base = http_base(addr::GATEWAY_CLIENT_SIDE_V4.into());
    let transfers = curl(&lab.topo.client, &vec![format!("{base}/ok"); REQUESTS], &["--header", "Connection: close"]);
    assert_eq!(transfers.iter().map(|t| t.num_connects).sum::<u32>() as usize, REQUESTS);
    assert_eq!(lab.upstream.wait_for_requests(REQUESTS).entries.len(), REQUESTS);
    let expected = (2 * REQUESTS) as f64;
    wait_for_metrics(&lab.observer, &format!("{expected} connections closed"), |m| m.sum(CLOSED, &[]) - before.sum(CLOSED, &[]) >= expected);
    // Two whole sweeps of the kernel map later (each finds closed entries and may finalise them),
    // nothing more may have been counted.
    let swept = lab.observer.status()["sweeps"].as_u64().expect("status names its sweeps");
    let done = poll(WAIT, Duration::from_millis(100), || (lab.observer.status()["sweeps"].as_u64() >= Some(swept + 2)).then_some(()));
    assert!(done.is_some(), "the daemon did not sweep twice within {WAIT:?}");
    let after = metrics(&lab.observer);
    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), expected, "{}", after.series(CLOSED));
    for role in ["inbound", "outbound"] {
        assert_eq!(after.sum(CLOSED, &[("role", role), ("port", "80"), ("reason", "normal")]) - before.sum(CLOSED, &[("role", role), ("port", "80"), ("reason", "normal")]), REQUESTS as f64, "{}", after.series(CLOSED));
        assert_eq!(after.get(OPENED, &[("role", role), ("port", "80")]) - before.get(OPENED, &[("role", role), ("port", "80")]), REQUESTS as f64, "{}", after.series(OPENED));
    }
}
