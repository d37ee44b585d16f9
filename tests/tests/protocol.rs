//! What a connection carries, named from its first bytes: real connections from the client
//! namespace to a server on the gateway that reads whatever it is sent, one per protocol (TLS
//! with a server name, over IPv4 and IPv6; TLS whose ClientHello names no server; HTTP/2 with
//! prior knowledge; HTTP/1.1; SSH), and one that never sends a byte. Each must show its
//! `protocol` (and `sni`) in the API, before and after it closes.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use observer::model::{ConnStatus, Protocol};
use observer_tests::{
    addr::{self, GW_CLIENT_IF},
    root_or_skip, tcp, Observer, Topology,
};

const PORT: u16 = 8443;
const SETTLE: Duration = Duration::from_secs(30);

/// A TLS 1.3-style ClientHello record: a 32-byte session id, two cipher suites, then
/// `extensions` (type, body), with a server name extension first when `sni` is given.
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut ext: Vec<u8> = Vec::new();
    let mut add = |t: u16, body: &[u8]| {
        ext.extend(t.to_be_bytes());
        ext.extend((body.len() as u16).to_be_bytes());
        ext.extend(body);
    };
    add(0x2a2a, &[]); // GREASE
    add(10, &[0, 4, 0, 29, 0, 23]); // supported_groups
    if let Some(name) = sni {
        let mut e = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        e.push(0);
        e.extend((name.len() as u16).to_be_bytes());
        e.extend(name.as_bytes());
        add(0, &e);
    }
    add(43, &[2, 3, 4]); // supported_versions
    add(51, &[0u8; 40]); // key_share (opaque here)
    let mut body = vec![3, 3];
    body.extend([0x5a; 32]);
    body.push(32);
    body.extend([0x11; 32]);
    body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
    body.extend([1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend(hs);
    rec
}

/// Accepts connections on `l` and reads each until its peer closes (then closes too).
fn drain(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
}

#[test]
fn each_connection_names_what_it_carries() {
    const TEST: &str = "each_connection_names_what_it_carries";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let v4 = SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), PORT);
    let v6 = SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V6.into(), PORT);
    drain(tcp::listen(&topo.gateway, v4).expect("a listener (v4)"));
    drain(tcp::listen(&topo.gateway, v6).expect("a listener (v6)"));
    let observer = Observer::start_with(&topo, &[GW_CLIENT_IF], &[]);

    // (name, server, first bytes, protocol, sni)
    type Case = (&'static str, SocketAddr, Vec<u8>, Protocol, Option<&'static str>);
    let cases: Vec<Case> = vec![
        ("tls", v4, client_hello(Some("edge.example.com")), Protocol::Tls, Some("edge.example.com")),
        ("tls over ipv6", v6, client_hello(Some("v6.example.net")), Protocol::Tls, Some("v6.example.net")),
        ("tls without a name", v4, client_hello(None), Protocol::Tls, None),
        ("h2", v4, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Protocol::H2, None),
        ("http1", v4, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Protocol::Http1, None),
        ("ssh", v4, b"SSH-2.0-OpenSSH_9.2p1\r\n".to_vec(), Protocol::Other, None),
        ("silent", v4, Vec::new(), Protocol::Unknown, None),
    ];
    let mut open = Vec::new();
    for (name, at, first, _, _) in &cases {
        let mut s = tcp::connect(&topo.client, *at).unwrap_or_else(|e| panic!("{name}: {e}"));
        s.write_all(first).unwrap();
        open.push(s);
    }
    let ends: Vec<SocketAddr> = open.iter().map(|s| s.local_addr().unwrap()).collect();
    let check = |when: &str, done: &dyn Fn(&observer_tests::Connection) -> bool| {
        let snap = observer.wait_for(when, SETTLE, |s| {
            cases.iter().zip(&ends).all(|((_, _, first, _, _), e)| s.with_remote(*e).first().is_some_and(|c| c.bytes_in == first.len() as u64 && done(c)))
        });
        for ((name, _, _, protocol, sni), e) in cases.iter().zip(&ends) {
            let c = snap.with_remote(*e)[0];
            assert_eq!(c.protocol, *protocol, "{name} ({when})\n{}", snap.pretty());
            assert_eq!(c.sni.as_deref(), *sni, "{name}: the server name ({when})");
        }
    };
    check("every connection's first bytes counted", &|c| c.status == ConnStatus::Open);
    // The CLI's table says it too: `tls:NAME`, `h2`, `other`.
    let bin = observer_tests::observer::observer_bin();
    let table = topo.gateway.run(&bin.display().to_string(), ["connections", "--limit", "100"]);
    for (want, end) in [("tls:edge.example.com", ends[0]), ("h2", ends[3]), ("other", ends[5])] {
        let row = table.lines().find(|l| l.contains(&end.to_string())).unwrap_or_else(|| panic!("no row for {end}:\n{table}"));
        assert!(row.split_whitespace().any(|f| f == want), "{want} in the row of {end}:\n{table}");
    }
    drop(open);
    check("every connection closed", &|c| c.status == ConnStatus::Closed);
}
