//! The daemon as a user other than root, with only the capabilities it asks for (CAP_BPF,
//! CAP_NET_ADMIN, CAP_PERFMON as ambient capabilities of user `nobody`, through `setpriv`), as a
//! systemd unit would start it. `--ephemeral`: without CAP_SYS_ADMIN nothing mounts a BPF
//! filesystem to pin to. It must load, attach, keep only CAP_BPF, follow the lifecycle on
//! tp_btf (which needs no tracefs), say precisely why the tracefs tracepoints are not attached
//! (tracefs is root's), count a connection exactly, and exit cleanly on SIGTERM.
use std::{
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use observer::model::{Closer, ConnStatus};
use observer_tests::{
    addr::{self, GW_CLIENT_IF},
    http_view::{assert_window, expected_window, WindowExt},
    root_or_skip,
    scripted::{self, connect, Peer, ResponseReader, ScriptedServer},
    Observer, Topology,
};

const PORT: u16 = 8085;
const SETTLE: Duration = Duration::from_secs(30);
const CAP_BPF: u32 = 39;

fn server(p: &mut Peer) -> io::Result<()> {
    while let Some(req) = p.read_head()? {
        let status = if req.target == "/missing" { 404 } else { 200 };
        let body: &[u8] =
            if status == 200 { b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n" } else { b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n" };
        p.respond(&req, status, body)?;
    }
    Ok(())
}

/// A line of `/proc/PID/status`, its first value.
fn proc_status(pid: u32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's /proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim_start_matches(':').split_whitespace().next().unwrap_or("").to_string()))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

#[test]
fn a_daemon_without_root_counts_exactly_with_three_capabilities() {
    const TEST: &str = "a_daemon_without_root_counts_exactly_with_three_capabilities";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let at = SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), PORT);
    let scripted = ScriptedServer::start(&topo.gateway, at, server);
    let caps = "+bpf,+net_admin,+perfmon";
    let observer = Observer::start_wrapped(
        &topo,
        Path::new("setpriv"),
        &["--reuid=nobody", "--regid=nogroup", "--clear-groups", &format!("--inh-caps={caps}"), &format!("--ambient-caps={caps}")],
        &[GW_CLIENT_IF],
        &["--ephemeral"],
    );
    let pid = observer.pid();
    assert_eq!(proc_status(pid, "Uid"), "65534", "the daemon runs as nobody");
    let status = observer.status();
    assert_eq!(status["lifecycle_hook"], "tp_btf", "the lifecycle on tp_btf: {status}");
    let caps_kept = u64::from_str_radix(&proc_status(pid, "CapEff"), 16).unwrap();
    assert_eq!(caps_kept, 1 << CAP_BPF, "only CAP_BPF kept once attached");
    let log = observer.log();
    assert!(log.contains("tracefs is not mounted") || log.contains("not readable by this user"), "the tracefs tracepoints' reason named:\n{log}");
    let (code, body) = observer.get("/readyz");
    assert_eq!(code, 200, "ready: {body}");

    let mut s = connect(&topo.client, at);
    let end = s.local_addr().unwrap();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let targets = ["/a", "/missing", "/b"];
    let mut sent = 0u64;
    for t in targets {
        let req = format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        reader.read_exchange(false).unwrap();
        sent += req.len() as u64;
    }
    assert!(scripted::finish(s).unwrap().is_empty());
    let served: Vec<u16> = scripted.served().iter().filter(|x| x.peer == end).map(|x| x.status).collect();
    assert_eq!(served, vec![200, 404, 200], "what the server sent");
    let snap = observer.wait_for("the connection closed and answered", SETTLE, |s| {
        s.with_remote(end)
            .first()
            .is_some_and(|c| c.status == ConnStatus::Closed && c.http.as_ref().is_some_and(|h| h.in_flight == 0 && h.lifetime.responses() >= 3))
    });
    let c = snap.with_remote(end)[0];
    assert_window(&c.http.as_ref().unwrap().lifetime, &expected_window(3, &[200, 404, 200], 0), format_args!("counts\n{}", snap.pretty()));
    assert_eq!((c.bytes_in, c.syn_in, c.fin_in, c.fin_out), (sent, 1, 1, 1), "bytes and flags");
    assert_eq!(c.closer, Closer::Remote, "the close seen on tp_btf: the client ended it");
}
