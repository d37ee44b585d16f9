//! The CLI against a running daemon: `connections` (one row per connection, sorts, filters, the
//! daemon's errors), `status` (interfaces and tracepoints), what every command says without a
//! daemon, and `top`, as plain snapshots off a terminal and in a real pseudo-terminal (tmux) where
//! it follows keys.
//!
//! Ground truth: the traffic each test sends itself (curl's `--write-out`, a raw keep-alive client
//! whose port the test knows) and the daemon's own API for what the CLI must print.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use observer_tests::{
    addr::{proxy_urls as urls, proxy_v4, GW_CLIENT_IF, GW_UPSTREAM_IF},
    curl, inbound,
    observer::{observer_bin, WAIT},
    operator::{cli, conn_names, conn_set, text, wait_closed_and_counted, wait_json, KeepAlive, Tmux, TRACEPOINTS},
    poll, root_or_skip, Lab, Topology,
};
use serde_json::Value;

#[test]
fn cli_connections_prints_one_row_per_connection_and_sorts() {
    const TEST: &str = "cli_connections_prints_one_row_per_connection_and_sorts";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let busy = curl(&lab.topo.client, &urls(&["/ok"; 5]), &[]);
    let quiet = curl(&lab.topo.client, &urls(&["/ok", "/status/404"]), &[]);
    // 2 client connections and 7 upstream connections.
    let api = wait_closed_and_counted(&lab.observer, 9, 7);
    let all = conn_set(&api);
    let gw = &lab.topo.gateway;

    let out = cli(gw, &["connections"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    for col in ["CONNECTION (local remote)", "ROLE", "STATE", "REQ", "5XX", "ERR%", "IN", "OUT"] {
        assert!(header.contains(col), "header {header:?} lacks {col:?}");
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 9, "one row per connection:\n{table}");
    let row_conns: BTreeSet<String> = rows.iter().map(|r| r.split_whitespace().take(2).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(row_conns, all, "{table}");

    let out = cli(gw, &["connections", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!((v["count"].as_u64(), conn_set(&v)), (Some(9), all.clone()));

    // The busiest: 5 requests on one connection; everything else has 2 or 1. (Over the 60 s
    // window: a slow machine may take more than 10 s to get here.)
    let out = cli(gw, &["connections", "--sort", "requests", "--limit", "1", "--window", "60s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{table}");
    assert!(rows[0].starts_with(&format!("{} ", inbound(&busy[0]))), "the busiest connection first:\n{table}");
    assert!(rows[0].split_whitespace().any(|f| f == "5"), "its 5 requests:\n{table}");
    let out = cli(gw, &["connections", "--sort", "requests", "--limit", "1", "--window", "lifetime", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(conn_names(&v), [inbound(&busy[0])]);
    // Filters pass through.
    let out = cli(gw, &["connections", "--role", "inbound", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(conn_set(&v), BTreeSet::from([inbound(&busy[0]), inbound(&quiet[0])]));
    // A bad value comes back as the daemon's message.
    let out = cli(gw, &["connections", "--sort", "cost"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("error_ratio"), "{}", text(&out.stderr));
}

#[test]
fn cli_status_lists_interfaces_and_tracepoints() {
    const TEST: &str = "cli_status_lists_interfaces_and_tracepoints";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let out = cli(&lab.topo.gateway, &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.starts_with(&format!("observer {}", env!("CARGO_PKG_VERSION"))), "{s}");
    for interface in [GW_CLIENT_IF, GW_UPSTREAM_IF] {
        for direction in ["ingress", "egress"] {
            assert!(
                s.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(&"tc") && f.get(1) == Some(&interface) && f.get(2) == Some(&direction)
                }),
                "no tc line for {interface} {direction}:\n{s}"
            );
        }
    }
    // Every tracepoint the daemon reports, the four named in the architecture among them.
    let out = cli(&lab.topo.gateway, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json ({e}): {}", text(&out.stdout)));
    assert_eq!(v["netns_filter"], true);
    let reported: Vec<&str> = v["tracepoints"].as_array().unwrap().iter().map(|t| t["tracepoint"].as_str().unwrap()).collect();
    for tp in TRACEPOINTS {
        assert!(reported.contains(&tp), "{tp} not in {reported:?}");
    }
    for tp in reported {
        assert!(s.lines().any(|l| l.split_whitespace().eq(["tracepoint", tp, "attached"])), "no `tracepoint {tp} attached` line:\n{s}");
    }
    assert_eq!(s.lines().filter(|l| l.trim_start().starts_with("tc ")).count(), 4, "{s}");
}

#[test]
fn cli_without_a_daemon_says_where_it_looked() {
    const TEST: &str = "cli_without_a_daemon_says_where_it_looked";
    if !root_or_skip(TEST) {
        return;
    }
    // A namespace where nothing listens at all.
    let topo = Topology::new(TEST);
    for args in [
        &["connections", "--server", "127.0.0.1:1"][..],
        &["status", "--server", "127.0.0.1:1"],
        &["connections"],
        &["trace", "--local-port", "80", "--server", "127.0.0.1:1"],
    ] {
        let out = cli(&topo.gateway, args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "observer {args:?} succeeded without a daemon: {}", text(&out.stdout));
        let server = args.iter().position(|a| *a == "--server").map_or("127.0.0.1:9470", |i| args[i + 1]);
        assert!(err.contains(&format!("no daemon at {server}")), "observer {args:?}: {err}");
        assert!(err.contains("observer run"), "observer {args:?} should say how to start one: {err}");
    }
}

#[test]
fn cli_top_prints_plain_snapshots_when_not_on_a_terminal() {
    const TEST: &str = "cli_top_prints_plain_snapshots_when_not_on_a_terminal";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let busy = curl(&lab.topo.client, &urls(&["/status/500"; 4]), &[]);
    let busy = inbound(&busy[0]);
    wait_closed_and_counted(&lab.observer, 5, 4);
    let started = Instant::now();
    let out = cli(&lab.topo.gateway, &["top", "--iterations", "2"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let screen = text(&out.stdout);
    assert!(!screen.contains('\x1b'), "no terminal control sequences when stdout is not a terminal:\n{screen:?}");
    let lines: Vec<&str> = screen.lines().collect();
    let headers: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.starts_with("observer top")).map(|(i, _)| i).collect();
    assert_eq!(headers.len(), 2, "two snapshots:\n{screen}");
    for &h in &headers {
        assert!(lines[h].contains("sort: error_ratio (10s)"), "{}", lines[h]);
        assert!(lines[h + 1].starts_with("CONNECTION (local remote)"), "column header after {}:\n{screen}", lines[h]);
        // Sorted by error ratio: the connection with 4 × 500 first (ties with its upstream
        // connections at ratio 1, which have fewer failures).
        assert!(lines[h + 2].starts_with(&format!("{busy} ")), "worst connection first:\n{screen}");
    }
    assert!(took >= Duration::from_secs(1), "one second between the two snapshots, took {took:?}");
}

#[test]
fn cli_top_in_a_terminal_shows_the_busiest_connection_and_follows_keys() {
    const TEST: &str = "cli_top_in_a_terminal_shows_the_busiest_connection_and_follows_keys";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    // One busy healthy connection that keeps sending while top runs (the most requests in the 10 s
    // window) and one failing connection (the worst error ratio), made last, right before top
    // starts, so that its errors are still in top's 10 s window on a slow machine.
    let mut busy = KeepAlive::open(&lab.topo.client, proxy_v4()).unwrap();
    let busy_conn = format!("{} {}", proxy_v4(), busy.local());
    for _ in 0..10 {
        assert_eq!(busy.get("/ok").unwrap().status, 200);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = stop.clone();
    // Returns the connection, or what went wrong (never panics: the test may end first).
    let sender = std::thread::spawn(move || {
        while !stopper.load(std::sync::atomic::Ordering::Relaxed) {
            match busy.get("/ok") {
                Ok(e) if e.status == 200 => {}
                other => return Err(format!("{other:?}")),
            }
            // Pacing: a steady trickle of requests, not a flood.
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(busy)
    });
    wait_json(&lab.observer, &format!("/api/v1/connections/{}", busy_conn.replace(' ', "%20")), "the busy connection", WAIT, |v| {
        v["http"]["lifetime"]["requests"].as_u64() >= Some(10)
    });
    let failing = curl(&lab.topo.client, &urls(&["/status/503"; 2]), &[]);
    let failing = inbound(&failing[0]);

    // The shell records top's exit status (tmux's own #{pane_dead_status} can stay empty on a
    // loaded machine).
    let exit_file = lab.topo.path("top.exit");
    let command = format!("ip netns exec {} {} top; echo $? > {}", lab.topo.gateway.name(), observer_bin().display(), exit_file.display());
    let tmux = Tmux::start(&command, 200, 40);
    let first_row = |screen: &str| screen.lines().skip_while(|l| !l.starts_with("CONNECTION (local remote)")).nth(1).unwrap_or_default().to_owned();
    let screen = tmux.wait_for_screen("the header, the column header and both connections", WAIT, |s| {
        s.lines().any(|l| l.starts_with("observer top")) && s.contains("CONNECTION (local remote)") && s.contains(&busy_conn) && s.contains(&failing)
    });
    assert!(screen.lines().any(|l| l.starts_with("observer top") && l.contains("sort: error_ratio (10s)")), "{screen}");
    assert!(first_row(&screen).starts_with(&failing), "sorted by error ratio, the failing connection first:\n{screen}");
    assert!(screen.contains("keys: e error ratio  r requests"), "{screen}");
    assert!(!exit_file.exists(), "top keeps running");

    tmux.send_keys("r");
    let screen = tmux.wait_for_screen("sort: requests with the busy connection first", WAIT, |s| {
        s.lines().any(|l| l.starts_with("observer top") && l.contains("sort: requests (10s)")) && first_row(s).starts_with(&busy_conn)
    });
    assert!(screen.contains(&failing), "{screen}");

    tmux.send_keys("q");
    let status = poll(WAIT, Duration::from_millis(50), || std::fs::read_to_string(&exit_file).ok().filter(|s| s.ends_with('\n')));
    assert_eq!(status.as_deref(), Some("0\n"), "top exits with status 0 on q; pane: {}; screen:\n{}", tmux.pane_state(), tmux.capture());
    // Off the alternate screen: what the terminal showed before top is back.
    assert!(!tmux.capture().contains("observer top"), "top left its screen behind:\n{}", tmux.capture());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("the busy sender").expect("every request of the busy connection got a 200").close();
}
