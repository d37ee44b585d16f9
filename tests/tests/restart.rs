//! Restarts lose nothing: the programs and their maps are pinned (`--state-dir`), keep counting
//! while no daemon runs, and the next daemon continues every counter. Then `observer detach`
//! removes them.
//!
//! The daemon runs in its own mount namespace (`ip netns exec` mounts a fresh /sys, so a fresh
//! /sys/fs/bpf): the test mounts a BPF filesystem of its own in the topology's directory, shared
//! by every daemon it starts, and unmounts it at the end (which releases whatever is still pinned).
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use observer_tests::{
    addr::{self, GW_CLIENT_IF, GW_UPSTREAM_IF},
    http_view::{kernel_classes, status_classes, Metrics},
    root_or_skip, tcp, Connection, ConnectionExt, Nginx, Observer, Snapshot, Topology,
};

const SETTLE: Duration = Duration::from_secs(30);

/// A BPF filesystem mounted for the test; unmounted (lazily) on drop.
struct BpfFs(PathBuf);

impl BpfFs {
    fn mount(dir: &Path) -> BpfFs {
        std::fs::create_dir_all(dir).expect("creating the bpffs mount point");
        let status = std::process::Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir).status().expect("running mount");
        assert!(status.success(), "mount -t bpf bpf {}: {status}", dir.display());
        BpfFs(dir.to_path_buf())
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn proxy() -> SocketAddr {
    SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 80)
}

/// Sends GETs of `paths` one after the other on `s` and returns their statuses.
fn exchange(s: &mut TcpStream, paths: &[&str]) -> Vec<u16> {
    paths.iter().map(|p| tcp::http_exchange(s, &format!("GET {p} HTTP/1.1\r\nHost: gateway\r\n\r\n")).unwrap_or_else(|e| panic!("GET {p}: {e}")).0).collect()
}

/// (requests, responses by class) the kernel counted for the connection from `client`.
fn kernel_counts(snap: &Snapshot, client: SocketAddr) -> Option<(u64, BTreeMap<String, u64>)> {
    let c: &Connection = snap.with_remote(client).into_iter().next()?;
    let k = c.http_kernel.as_ref()?;
    Some((k.requests, kernel_classes(k)))
}

fn start(topo: &Topology, state: &Path) -> Observer {
    Observer::start_with(topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &["--state-dir", state.to_str().expect("a UTF-8 path")])
}

/// Waits until every client connection in `want` shows exactly its expected kernel counts.
fn wait_exact(o: &Observer, what: &str, want: &[(SocketAddr, Vec<u16>)]) -> Snapshot {
    let mut last = String::new();
    let snap = observer_tests::poll(SETTLE, Duration::from_millis(100), || {
        let snap = o.connections();
        let got: Vec<_> = want.iter().map(|(c, _)| kernel_counts(&snap, *c)).collect();
        let expected: Vec<_> = want.iter().map(|(_, s)| Some((s.len() as u64, status_classes(s)))).collect();
        last = format!("got {got:?}\nwant {expected:?}");
        (got == expected).then_some(snap)
    });
    snap.unwrap_or_else(|| panic!("{what}: the per-connection kernel counts never matched:\n{last}\n{}", o.log()))
}

/// `/metrics`' inbound and outbound request and response counters (port 80).
fn metric_totals(o: &Observer) -> [(u64, BTreeMap<String, u64>); 2] {
    let m = Metrics::new(o.metrics());
    ["inbound", "outbound"].map(|role| {
        let by_code = ["200", "404", "503"]
            .into_iter()
            .map(|code| (code.to_owned(), m.count("observer_http_responses_total", &[("role", role), ("port", "80"), ("code", code)])))
            .filter(|(_, n)| *n > 0)
            .collect();
        (m.count("observer_http_requests_total", &[("role", role), ("port", "80")]), by_code)
    })
}

fn program_ids(o: &Observer) -> Vec<u64> {
    o.status()["programs"].as_array().expect("programs in status").iter().map(|p| p["id"].as_u64().expect("a program id")).collect()
}

fn program_exists(ns: &observer_tests::Netns, id: u64) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "bpftool", "prog", "show", "id", &id.to_string()])
        .output()
        .expect("running bpftool")
        .status
        .success()
}

#[test]
fn kill_9_and_a_restart_lose_no_count_and_detach_removes_everything() {
    const TEST: &str = "kill_9_and_a_restart_lose_no_count_and_detach_removes_everything";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let _upstream = Nginx::upstream(&topo);
    let _proxy = Nginx::proxy(&topo);
    let bpffs = BpfFs::mount(&topo.path("bpffs"));
    let state = bpffs.0.join("observer");

    // Before: three keep-alive client connections, three requests each.
    let observer = start(&topo, &state);
    let mut conns: Vec<TcpStream> = (0..3).map(|_| tcp::connect(&topo.client, proxy()).expect("connecting to the proxy")).collect();
    let clients: Vec<SocketAddr> = conns.iter().map(|s| s.local_addr().expect("local address")).collect();
    let mut sent: Vec<Vec<u16>> = conns.iter_mut().map(|s| exchange(s, &["/ok", "/ok", "/status/503"])).collect();
    assert!(sent.iter().all(|s| s == &[200, 200, 503]), "{sent:?}");
    let want: Vec<_> = clients.iter().copied().zip(sent.clone()).collect();
    wait_exact(&observer, "before the kill", &want);
    let before = metric_totals(&observer);
    assert_eq!(before[0].0, 9, "inbound requests before the kill: {before:?}");

    // During: the daemon is killed; traffic goes on, one connection closes, a new one opens.
    observer.kill();
    for (s, statuses) in conns.iter_mut().zip(sent.iter_mut()) {
        statuses.extend(exchange(s, &["/ok", "/status/404"]));
    }
    let closed = conns.pop().expect("three connections");
    drop(closed);
    let mut late = tcp::connect(&topo.client, proxy()).expect("connecting to the proxy");
    let late_client = late.local_addr().expect("local address");
    let late_sent = exchange(&mut late, &["/ok", "/status/404"]);

    // After: a new daemon adopts the pinned state.
    let observer = start(&topo, &state);
    let mut want: Vec<_> = clients.iter().copied().zip(sent.clone()).collect();
    want.push((late_client, late_sent.clone()));
    let snap = wait_exact(&observer, "after the restart", &want);
    let closed_entry = snap.with_remote(clients[2]).into_iter().next().expect("the connection closed while no daemon ran");
    let settle = observer_tests::poll(SETTLE, Duration::from_millis(100), || {
        let snap = observer.connections();
        snap.with_remote(clients[2]).first().is_some_and(|c| c.fin_both_ways()).then_some(())
    });
    assert!(settle.is_some(), "the connection closed while no daemon ran is not shown closed: {closed_entry:#?}");
    // Every request of every phase, in /metrics too (the kernel's aggregates are pinned).
    let total = sent.iter().map(Vec::len).sum::<usize>() + late_sent.len();
    let all: Vec<u16> = sent.iter().flatten().chain(&late_sent).copied().collect();
    let mut by_code = BTreeMap::new();
    for s in &all {
        *by_code.entry(s.to_string()).or_insert(0u64) += 1;
    }
    let after = metric_totals(&observer);
    for (role, got) in ["inbound", "outbound"].iter().zip(&after) {
        assert_eq!(got, &(total as u64, by_code.clone()), "{role} requests and responses by code after the restart (before the kill: {before:?})");
    }

    // A graceful stop leaves the programs counting too; `observer detach` removes them.
    let ids = program_ids(&observer);
    assert!(!ids.is_empty());
    drop(observer);
    assert!(ids.iter().all(|id| program_exists(&topo.gateway, *id)), "after SIGTERM, the programs {ids:?} are still loaded (pinned)");
    sent[0].extend(exchange(&mut conns[0], &["/ok"]));
    let observer = start(&topo, &state);
    wait_exact(&observer, "after a graceful restart", &[(clients[0], sent[0].clone())]);
    let ids = program_ids(&observer);
    drop(observer);
    let out = topo
        .gateway
        .run(observer_tests::observer::observer_bin().to_str().expect("UTF-8 path"), ["detach", "--state-dir", state.to_str().expect("UTF-8 path")]);
    assert!(out.contains("removed"), "observer detach said: {out}");
    assert!(!state.exists(), "{} is still there after observer detach", state.display());
    // The kernel frees a program once its last link is gone, after an RCU grace period.
    let mut alive = Vec::new();
    let gone = observer_tests::poll(SETTLE, Duration::from_millis(100), || {
        alive = ids.iter().copied().filter(|id| program_exists(&topo.gateway, *id)).collect();
        alive.is_empty().then_some(())
    });
    assert!(gone.is_some(), "{SETTLE:?} after observer detach, programs {alive:?} are still loaded");
}
