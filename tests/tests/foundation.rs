//! Foundation: one entry per TCP connection, exact SYN/FIN counts and exact payload bytes in both
//! directions, on both sides of the proxy, over IPv4 and IPv6. Ground truth is what curl reports
//! per transfer and what each nginx logs per request.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use observer::model::Family;
use observer_tests::{
    addr::{self, http_base},
    curl,
    observer::WAIT,
    root_or_skip, Connection, ConnectionExt, Lab, Transfer,
};

/// Paths on the upstream (through the proxy): small and large bodies, an empty one, an error.
const PATHS: &[&str] = &["/ok", "/size/1000", "/size/100000", "/status/404", "/size/0"];

fn urls(server: IpAddr, paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| format!("{}{p}", http_base(server))).collect()
}

/// Asserts the handshake and close of one ordinary connection: one SYN each way (SYN, SYN-ACK),
/// one FIN each way, no reset.
fn assert_clean_lifecycle(c: &Connection) {
    assert_eq!((c.syn_in, c.syn_out), (1, 1), "SYN in/out of {}", c.connection);
    assert_eq!((c.fin_in, c.fin_out), (1, 1), "FIN in/out of {}", c.connection);
    assert_eq!((c.rst_in, c.rst_out), (0, 0), "RST in/out of {}", c.connection);
    assert!(c.first_seen <= c.last_seen && c.duration_seconds >= 0.0, "timestamps of {}: {c:?}", c.connection);
}

/// Several requests over one keep-alive connection from the client to the proxy at `server`
/// (the client's own address is `client`): the observer must show exactly one entry for it, with
/// exactly the bytes curl sent and received, and nginx must have logged every request on it.
fn keepalive(lab: &Lab, server: IpAddr, client: IpAddr, family: Family) {
    let transfers = curl(&lab.topo.client, &urls(server, PATHS), &[]);

    // The client's view first: one connection, reused by every transfer.
    assert_eq!(transfers.iter().map(|t| t.num_connects).sum::<u32>(), 1, "curl should open one connection: {transfers:#?}");
    let client_end = transfers[0].local;
    let server_end = SocketAddr::new(server, 80);
    assert!(transfers.iter().all(|t| t.local == client_end && t.remote == server_end), "{transfers:#?}");
    let expected_codes: Vec<u16> = PATHS.iter().map(|p| p.strip_prefix("/status/").map_or(200, |code| code.parse().unwrap())).collect();
    assert_eq!(transfers.iter().map(|t| t.http_code).collect::<Vec<_>>(), expected_codes);
    let sent: u64 = transfers.iter().map(|t| t.size_request).sum();
    let received: u64 = transfers.iter().map(Transfer::response_bytes).sum();

    let snap = lab.observer.wait_for("the client's connection, closed both ways", WAIT, |s| s.with_remote_ip(client).iter().any(|c| c.fin_both_ways()));
    let conns = snap.with_remote_ip(client);
    assert_eq!(conns.len(), 1, "one keep-alive connection, one entry:\n{}", snap.pretty());
    let c = conns[0];
    assert_eq!((c.local_addr(), c.remote_addr()), (server_end, client_end), "{}", snap.pretty());
    assert_eq!(c.connection, format!("{server_end} {client_end}"));
    assert_eq!(c.family, family);
    assert_clean_lifecycle(c);
    assert_eq!(c.bytes_in, sent, "bytes_in: the sum of curl's size_request over {} transfers", transfers.len());
    assert_eq!(c.bytes_out, received, "bytes_out: the sum of curl's size_header + size_download over {} transfers", transfers.len());

    // The proxy's view: every request logged on that one connection, from that client port.
    let log = lab.proxy.wait_for_requests(PATHS.len());
    assert_eq!(log.entries.len(), PATHS.len(), "{}", log.raw);
    assert!(log.entries.iter().all(|e| e.remote() == client_end && e.connection == log.entries[0].connection), "{}", log.raw);
    assert_eq!(log.entries.iter().map(|e| e.connection_requests).collect::<Vec<_>>(), (1..=PATHS.len() as u64).collect::<Vec<_>>(), "{}", log.raw);
    assert_eq!(
        (log.request_bytes(), log.response_bytes()),
        (c.bytes_in, c.bytes_out),
        "nginx's $request_length and $bytes_sent sums vs the observer's bytes_in and bytes_out:\n{}",
        log.raw
    );
}

#[test]
fn keepalive_requests_share_one_connection_entry() {
    const TEST: &str = "keepalive_requests_share_one_connection_entry";
    if root_or_skip(TEST) {
        Lab::run_exact(TEST, |lab| keepalive(lab, addr::GATEWAY_CLIENT_SIDE_V4.into(), addr::CLIENT_V4.into(), Family::Ipv4));
    }
}

#[test]
fn ipv6_is_counted_like_ipv4() {
    const TEST: &str = "ipv6_is_counted_like_ipv4";
    if root_or_skip(TEST) {
        Lab::run_exact(TEST, |lab| keepalive(lab, addr::GATEWAY_CLIENT_SIDE_V6.into(), addr::CLIENT_V6.into(), Family::Ipv6));
    }
}

#[test]
fn connection_close_requests_get_one_entry_each() {
    const TEST: &str = "connection_close_requests_get_one_entry_each";
    if root_or_skip(TEST) {
        Lab::run_exact(TEST, connection_close);
    }
}

fn connection_close(lab: &Lab) {
    let client: IpAddr = addr::CLIENT_V4.into();
    let transfers = curl(&lab.topo.client, &urls(addr::GATEWAY_CLIENT_SIDE_V4.into(), PATHS), &["--header", "Connection: close"]);
    assert!(transfers.iter().all(|t| t.num_connects == 1), "each transfer should open its own connection: {transfers:#?}");
    let client_ports: BTreeSet<u16> = transfers.iter().map(|t| t.local.port()).collect();
    assert_eq!(client_ports.len(), PATHS.len(), "distinct client ports: {transfers:#?}");

    let snap = lab.observer.wait_for(&format!("{} client connections, each closed both ways", PATHS.len()), WAIT, |s| {
        s.with_remote_ip(client).iter().filter(|c| c.fin_both_ways()).count() >= PATHS.len()
    });
    let conns = snap.with_remote_ip(client);
    assert_eq!(conns.len(), PATHS.len(), "one entry per connection:\n{}", snap.pretty());
    let observed_ports: BTreeSet<u16> = conns.iter().map(|c| c.remote_addr().port()).collect();
    assert_eq!(observed_ports, client_ports, "the entries' client ports vs curl's:\n{}", snap.pretty());
    for t in &transfers {
        let c = snap.with_remote(t.local)[0];
        assert_eq!(c.local_addr(), t.remote);
        assert_eq!(c.family, Family::Ipv4);
        assert_clean_lifecycle(c);
        assert_eq!((c.bytes_in, c.bytes_out), (t.size_request, t.response_bytes()), "bytes in/out of {} vs curl's transfer {t:?}", c.connection);
    }

    let log = lab.proxy.wait_for_requests(PATHS.len());
    assert_eq!(log.entries.len(), PATHS.len(), "{}", log.raw);
    let logged_ports: BTreeSet<u16> = log.entries.iter().map(|e| e.remote_port).collect();
    assert_eq!(logged_ports, observed_ports, "client ports in the proxy's access log vs the observer's entries:\n{}", log.raw);
    for e in &log.entries {
        let c = snap.with_remote(e.remote())[0];
        assert_eq!((e.connection_requests, c.bytes_in, c.bytes_out), (1, e.request_length, e.bytes_sent), "log line {e:?} vs {}", c.connection);
    }
}

#[test]
fn upstream_connections_appear_too() {
    const TEST: &str = "upstream_connections_appear_too";
    if root_or_skip(TEST) {
        Lab::run_exact(TEST, upstream_connections);
    }
}

fn upstream_connections(lab: &Lab) {
    let paths = ["/ok", "/size/1000000", "/status/204", "/status/503", "/size/1", "/size/10000"];
    let transfers = curl(&lab.topo.client, &urls(addr::GATEWAY_CLIENT_SIDE_V4.into(), &paths), &[]);
    assert_eq!(transfers.iter().map(|t| t.http_code).collect::<Vec<_>>(), [200, 200, 204, 503, 200, 200]);

    // nginx proxies with HTTP/1.0 and no upstream keep-alive: one upstream connection per request.
    let upstream = SocketAddr::new(addr::UPSTREAM_V4.into(), 80);
    let snap = lab.observer.wait_for(&format!("{} upstream connections, each closed both ways", paths.len()), WAIT, |s| {
        s.with_remote(upstream).iter().filter(|c| c.fin_both_ways()).count() >= paths.len()
    });
    let conns = snap.with_remote(upstream);
    assert_eq!(conns.len(), paths.len(), "one entry per proxied request:\n{}", snap.pretty());
    for c in &conns {
        assert_eq!(c.local_addr().ip(), IpAddr::from(addr::GATEWAY_UPSTREAM_SIDE_V4), "{}", c.connection);
        assert_eq!(c.family, Family::Ipv4);
        assert_clean_lifecycle(c);
    }

    let log = lab.upstream.wait_for_requests(paths.len());
    assert_eq!(log.entries.len(), paths.len(), "{}", log.raw);
    assert!(log.entries.iter().all(|e| e.remote_addr == IpAddr::from(addr::GATEWAY_UPSTREAM_SIDE_V4)), "{}", log.raw);
    let sum_out: u64 = conns.iter().map(|c| c.bytes_out).sum();
    let sum_in: u64 = conns.iter().map(|c| c.bytes_in).sum();
    assert_eq!(sum_out, log.request_bytes(), "gateway → upstream bytes vs the upstream's $request_length sum:\n{}\n{}", log.raw, snap.pretty());
    assert_eq!(sum_in, log.response_bytes(), "upstream → gateway bytes vs the upstream's $bytes_sent sum:\n{}\n{}", log.raw, snap.pretty());
    // And connection by connection, matched by the gateway's source port.
    let observed_ports: BTreeSet<u16> = conns.iter().map(|c| c.local_addr().port()).collect();
    let logged_ports: BTreeSet<u16> = log.entries.iter().map(|e| e.remote_port).collect();
    assert_eq!(observed_ports, logged_ports, "{}", log.raw);
    for e in &log.entries {
        let c = conns.iter().find(|c| c.local_addr().port() == e.remote_port).expect("matched above");
        assert_eq!((c.bytes_out, c.bytes_in), (e.request_length, e.bytes_sent), "upstream log line {e:?} vs {}", c.connection);
    }
}
