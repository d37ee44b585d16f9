//! Retransmissions, as the observer counts them per connection (the socket view, `retransmits`, and
//! the wire view, `retransmitted_segments_out` and `retransmitted_bytes_out`) and in
//! `observer_retransmits_total`: data retransmitted after an outage, with one segment per packet
//! and with GSO packets, retransmissions the local queue dropped, and a retransmitted SYN or
//! SYN-ACK during the handshake.
//!
//! Ground truth: the kernel's own per-socket counters (`ss -tin`, `tcpi_total_retrans`) and the
//! gateway namespace's `RetransSegs`. Metrics are compared as deltas around the traffic of one
//! test, whose lab (namespaces, daemon) is its own.
use std::{
    io::{Read, Write},
    time::Duration,
};

use observer::model::{ConnStatus, Role, TcpState};
use observer_tests::{
    addr::{self, GW_CLIENT_IF, GW_UPSTREAM_IF},
    lifecycle_view::{entry, metrics, v4},
    observer::WAIT,
    poll, root_or_skip, tcp, Connection, ConnectionExt, Observer, Topology,
};

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
    observer.wait_for("the connection, established", WAIT, |s| s.with_remote(client_end).iter().any(|c| c.state == TcpState::Established));
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
    assert_eq!((entry.status, entry.state), (ConnStatus::Open, TcpState::Established), "{entry:#?}");
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
    assert_eq!(c.retransmits, total, "the observer's retransmits vs the kernel's total_retrans (retrans:X/TOTAL) of that socket:\n{}\n{c:#?}", k.raw);
    assert_eq!(
        (c.retransmitted_segments_out, c.retransmitted_bytes_out),
        (total, bytes_retrans),
        "the wire view (retransmitted segments and bytes out) vs the kernel's total_retrans and bytes_retrans:\n{}\n{c:#?}",
        k.raw
    );
    assert_eq!((c.bytes_out, c.retransmitted_segments_in), (RETRANSMIT_BODY as u64, 0), "bytes_out counts the body once: {c:#?}");
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
        assert_eq!(
            r.entry.retransmits, total,
            "the observer's retransmits vs the kernel's total_retrans (retrans:X/TOTAL) of that socket:\n{}\n{:#?}",
            r.kernel.raw, r.entry
        );
        assert_eq!(r.entry.bytes_out, RETRANSMIT_BODY as u64, "bytes_out counts the body once: {:#?}", r.entry);
        assert!(
            r.metric >= total as f64 && r.metric <= r.namespace as f64,
            "observer_retransmits_total grew by {}: at least this socket's {total}, at most the namespace's {}",
            r.metric,
            r.namespace
        );
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
    let snap = observer.wait_for("the connection, established", WAIT, |s| {
        s.connections.iter().any(|c| c.local_addr() == local && c.remote_addr() == remote && c.opened.is_some())
    });
    let c = entry(&snap, local, remote);
    let kernel = tcp::socket_info(&topo.gateway, local, remote).unwrap_or_else(|| panic!("no gateway socket {local} {remote}"));
    let after = metrics(&observer);
    let namespace = topo.gateway.tcp_retransmitted_segments() - namespace_before;
    let total = kernel.total_retrans;
    assert!(total >= 1, "{}", kernel.raw);
    assert_eq!(c.role, if inbound { Role::Inbound } else { Role::Outbound });
    assert_eq!(c.retransmits, total, "the observer's retransmits vs the kernel's total_retrans (retrans:X/TOTAL) of that socket:\n{}\n{c:#?}", kernel.raw);
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
