//! How each TCP connection opens and ends, as the observer reports it per connection (role,
//! `opened`/`closed`, `status`, `state`, `close_reason`, `closer`, socket-view resets next to the
//! wire view) and in its lifecycle metrics: a normal close (IPv4 and IPv6, inbound and outbound,
//! with the BTF-typed and the classic tracepoint), resets received and sent, and refused
//! connections in both roles.
//!
//! Ground truth: what each test itself did to the connections (raw sockets whose every step it
//! controls: half a request then an `SO_LINGER` 0 abort, a server that answers with a reset, a
//! connect to a port nobody listens on), what curl reports per transfer, the upstream's access
//! log (which gateway port each proxied request came from), and the error the client's own socket
//! got (refused, reset). Metrics are compared as deltas around the traffic of one test, whose lab
//! (namespaces, daemon) is its own.
use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr},
};

use observer::model::{CloseReason, Closer, ConnStatus, Family, Role, TcpState};
use observer_tests::{
    addr::{self, http_base},
    curl,
    lifecycle_view::{assert_closed_after_open, entry, metrics, v4, wait_for_metrics, CLOSED, OPENED, RESETS},
    observer::WAIT,
    root_or_skip, tcp, ConnectionExt, Lab, Observer, Topology,
};

// ---------------------------------------------------------------------------------------------
// 1, 6, 7: a normal open and close, IPv4 and IPv6, inbound and outbound
// ---------------------------------------------------------------------------------------------

/// `n` requests with `Connection: close` from the client to the proxy at `server`: each is one
/// inbound connection (client → proxy) and one outbound one (proxy → upstream, since nginx
/// proxies with HTTP/1.0). Every one must end "normal", with its open and close times, and the
/// lifecycle counters must grow by exactly `n` per role.
fn normal_open_and_close(lab: &Lab, server: IpAddr, client: IpAddr, family: Family) {
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
        assert_eq!((c.family, c.role), (family, Role::Inbound), "{c:#?}");
        assert_eq!(c.local_addr(), SocketAddr::new(server, 80));
        assert_eq!(c.remote_addr().ip(), client);
        assert_closed_after_open(c, CloseReason::Normal);
        assert_eq!((c.syn_in, c.syn_out, c.fin_in, c.fin_out, c.rst_in, c.rst_out), (1, 1, 1, 1, 0, 0), "SYN/FIN/RST in/out of {}", c.connection);
        assert_eq!((c.resets_sent, c.resets_received), (0, 0), "{}", c.connection);
        assert!([Closer::Local, Closer::Remote].contains(&c.closer), "{}: a FIN went first, so the closer is known: {c:#?}", c.connection);
    }

    // The proxied connections: from the gateway's upstream side to the upstream server.
    let log = lab.upstream.wait_for_requests(PATHS.len());
    assert_eq!(log.entries.len(), PATHS.len(), "{}", log.raw);
    let outbound = snap.with_remote(upstream);
    assert_eq!(outbound.len(), PATHS.len(), "one outbound entry per proxied request:\n{}", snap.pretty());
    let logged: BTreeSet<SocketAddr> = log.entries.iter().map(|e| e.remote()).collect();
    let observed: BTreeSet<SocketAddr> = outbound.iter().map(|c| c.local_addr()).collect();
    assert_eq!(observed, logged, "the outbound entries' local ends vs the clients the upstream logged:\n{}", log.raw);
    for c in outbound {
        assert_eq!((c.family, c.role), (Family::Ipv4, Role::Outbound), "{c:#?}");
        assert_eq!(c.local_addr().ip(), IpAddr::from(addr::GATEWAY_UPSTREAM_SIDE_V4), "{}", c.connection);
        assert_eq!(c.remote_addr(), upstream);
        assert_closed_after_open(c, CloseReason::Normal);
        assert_eq!((c.syn_in, c.syn_out, c.fin_in, c.fin_out, c.rst_in, c.rst_out), (1, 1, 1, 1, 0, 0), "SYN/FIN/RST in/out of {}", c.connection);
    }
    assert_eq!(snap.connections.len(), 2 * PATHS.len(), "nothing else was tracked:\n{}", snap.pretty());

    // Metrics: exactly n opened and n closed ("normal") per role, nothing else.
    // Label subsets: `observer_connections_closed_total` also carries `protocol`.
    let delta = |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    for role in ["inbound", "outbound"] {
        assert_eq!(delta(OPENED, &[("role", role), ("port", "80")]), n, "{OPENED}{{role={role},port=80}}:\n{}", after.series(OPENED));
        assert_eq!(
            delta(CLOSED, &[("role", role), ("port", "80"), ("reason", "normal"), ("protocol", "http1")]),
            n,
            "{CLOSED}{{role={role},port=80,reason=normal,protocol=http1}}:\n{}",
            after.series(CLOSED)
        );
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
        normal_open_and_close(&lab, addr::GATEWAY_CLIENT_SIDE_V4.into(), addr::CLIENT_V4.into(), Family::Ipv4);
    }
}

/// The classic tracepoint (what the daemon falls back to where the BTF-typed one does not load)
/// follows the same lifecycle, on both families; the default hook is the BTF-typed one here.
#[test]
fn the_classic_tracepoint_follows_the_same_lifecycle() {
    const TEST: &str = "the_classic_tracepoint_follows_the_same_lifecycle";
    if root_or_skip(TEST) {
        let families: [(IpAddr, IpAddr, Family); 2] = [
            (addr::GATEWAY_CLIENT_SIDE_V4.into(), addr::CLIENT_V4.into(), Family::Ipv4),
            (addr::GATEWAY_CLIENT_SIDE_V6.into(), addr::CLIENT_V6.into(), Family::Ipv6),
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
        normal_open_and_close(&lab, addr::GATEWAY_CLIENT_SIDE_V6.into(), addr::CLIENT_V6.into(), Family::Ipv6);
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
        m.sum(CLOSED, &[("role", "inbound"), ("port", "80"), ("reason", "reset_received")])
            - before.sum(CLOSED, &[("role", "inbound"), ("port", "80"), ("reason", "reset_received")])
            >= 1.0
    });
    let snap = lab.observer.connections();
    let c = entry(&snap, proxy, client_end);
    assert_eq!(c.role, Role::Inbound);
    assert_closed_after_open(c, CloseReason::ResetReceived);
    assert_eq!(c.closer, Closer::Remote, "the client aborted: {c:#?}");
    assert_eq!((c.resets_received, c.resets_sent), (1, 0), "socket view of {}: {c:#?}", c.connection);
    assert_eq!((c.rst_in, c.rst_out), (1, 0), "wire view of {}: {c:#?}", c.connection);
    assert_eq!((c.syn_in, c.syn_out, c.fin_in, c.fin_out), (1, 1, 0, 0), "{}", c.connection);
    assert_eq!((c.bytes_in, c.bytes_out), (partial.len() as u64, 0), "{}", c.connection);
    // An incomplete request is never proxied.
    assert_eq!(snap.connections.len(), 1, "only the aborted connection:\n{}", snap.pretty());

    let delta = |labels: &[(&str, &str)]| after.get(RESETS, labels) - before.get(RESETS, labels);
    assert_eq!((delta(&[("direction", "received")]), delta(&[("direction", "sent")])), (1.0, 0.0), "{}", after.series(RESETS));
    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), 1.0, "{}", after.series(CLOSED));
    assert_eq!(
        after.get(OPENED, &[("role", "inbound"), ("port", "80")]) - before.get(OPENED, &[("role", "inbound"), ("port", "80")]),
        1.0,
        "{}",
        after.series(OPENED)
    );
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
        m.sum(CLOSED, &[("role", "inbound"), ("port", "8081"), ("reason", "reset_sent")])
            - before.sum(CLOSED, &[("role", "inbound"), ("port", "8081"), ("reason", "reset_sent")])
            >= 1.0
    });
    let snap = observer.connections();
    let c = entry(&snap, server, client_end);
    assert_eq!(c.role, Role::Inbound);
    assert_closed_after_open(c, CloseReason::ResetSent);
    assert_eq!(c.closer, Closer::Local, "the gateway aborted: {c:#?}");
    assert_eq!((c.resets_sent, c.resets_received), (1, 0), "socket view of {}: {c:#?}", c.connection);
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
        m.sum(CLOSED, &[("role", "inbound"), ("port", "81"), ("reason", "refused")])
            - before.sum(CLOSED, &[("role", "inbound"), ("port", "81"), ("reason", "refused")])
            >= 1.0
    });
    let snap = observer.connections();
    assert_eq!(snap.connections.len(), 1, "only the refused connection:\n{}", snap.pretty());
    let c = &snap.connections[0];
    assert_eq!((c.local_addr(), c.remote_addr().ip()), (closed_port, IpAddr::from(addr::CLIENT_V4)), "{c:#?}");
    assert_eq!(c.role, Role::Inbound, "{c:#?}");
    assert_eq!((c.status, c.close_reason), (ConnStatus::Closed, Some(CloseReason::Refused)), "{c:#?}");
    assert_eq!(c.opened, None, "it never opened: {c:#?}");
    assert!(c.closed.is_some(), "{c:#?}");
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
        m.sum(CLOSED, &[("role", "outbound"), ("port", "81"), ("reason", "refused")])
            - before.sum(CLOSED, &[("role", "outbound"), ("port", "81"), ("reason", "refused")])
            >= 1.0
    });
    let snap = observer.connections();
    let mine = snap.with_remote(closed_port);
    assert_eq!(mine.len(), 1, "one entry for the refused connect:\n{}", snap.pretty());
    let c = mine[0];
    assert_eq!(c.local_addr().ip(), IpAddr::from(addr::GATEWAY_UPSTREAM_SIDE_V4), "{c:#?}");
    assert_eq!(c.role, Role::Outbound, "{c:#?}");
    assert_eq!((c.status, c.state, c.close_reason), (ConnStatus::Closed, TcpState::Closed, Some(CloseReason::Refused)), "{c:#?}");
    assert_eq!(c.opened, None, "it never opened: {c:#?}");
    assert_eq!((c.resets_received, c.resets_sent), (1, 0), "socket view: {c:#?}");
    assert_eq!((c.syn_out, c.syn_in, c.rst_in, c.rst_out, c.fin_in, c.fin_out), (1, 0, 1, 0, 0, 0), "SYN out, RST in, nothing else: {c:#?}");
    assert_eq!(snap.connections.len(), 1, "nothing else was tracked:\n{}", snap.pretty());

    let delta = |labels: &[(&str, &str)]| after.get(RESETS, labels) - before.get(RESETS, labels);
    assert_eq!((delta(&[("direction", "received")]), delta(&[("direction", "sent")])), (1.0, 0.0), "{}", after.series(RESETS));
    assert_eq!(after.sum(CLOSED, &[]) - before.sum(CLOSED, &[]), 1.0, "{}", after.series(CLOSED));
    assert_eq!(after.sum(OPENED, &[]) - before.sum(OPENED, &[]), 0.0, "{}", after.series(OPENED));
}
