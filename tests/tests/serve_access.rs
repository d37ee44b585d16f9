//! Who reaches the daemon, and with what privileges: the API on loopback port 9470 by default, on
//! a Unix socket only root may open (which the CLI reaches with `--server unix:PATH`), a daemon
//! that names the capabilities it lacks and keeps only CAP_BPF, and `/readyz` that says when an
//! observed interface is gone.
//!
//! Ground truth: what another user, the client and the gateway can reach, the daemon's
//! `/proc/PID/status`, and the traffic each test sends itself.
use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::Path,
    time::Duration,
};

use observer_tests::{
    addr::{self, proxy_urls as urls, GW_CLIENT_IF, GW_UPSTREAM_IF},
    curl, inbound,
    observer::{observer_bin, STARTUP, WAIT},
    operator::{cli, conn_set, text, wait_closed_and_counted, wait_json},
    poll, root_or_skip, Lab, Nginx, Observer, Topology,
};
use serde_json::Value;

#[test]
fn the_api_listens_on_loopback_port_9470_by_default() {
    const TEST: &str = "the_api_listens_on_loopback_port_9470_by_default";
    if !root_or_skip(TEST) {
        return;
    }
    let help = std::process::Command::new(observer_bin()).args(["run", "--help"]).output().expect("observer run --help");
    let help = text(&help.stdout);
    // Short help puts the default on the option's line, long help (when some option's values
    // have their own help) in the paragraph below it: up to the next option either way.
    let lines: Vec<&str> = help.lines().collect();
    let at = lines.iter().position(|l| l.trim_start().starts_with("--listen")).unwrap_or_else(|| panic!("no --listen in:\n{help}"));
    let listen: Vec<&str> = lines[at..].iter().take_while(|l| *l == &lines[at] || !l.trim_start().starts_with('-')).copied().collect();
    assert!(listen.iter().any(|l| l.contains("[default: 127.0.0.1:9470]")), "{listen:#?}");

    // The daemon without --listen.
    let topo = Topology::new(TEST);
    let bin = observer_bin();
    let mut daemon = topo.gateway.spawn("observer", &bin, ["run", "--interface", GW_CLIENT_IF, "--interface", GW_UPSTREAM_IF], &topo.path("observer.log"));
    let loopback: SocketAddr = "127.0.0.1:9470".parse().unwrap();
    let ready = poll(STARTUP, Duration::from_millis(50), || {
        assert!(daemon.exited().is_none(), "observer exited:\n{}", daemon.log());
        matches!(topo.gateway.http_get(loopback, "/healthz", Duration::from_secs(2)), Ok((200, ref b)) if b == "ok\n").then_some(())
    });
    assert!(ready.is_some(), "no answer on {loopback}:\n{}", daemon.log());

    // Not on the gateway's veth address: neither from the client nor from the gateway itself.
    let veth = SocketAddr::new(addr::GATEWAY_CLIENT_SIDE_V4.into(), 9470);
    for ns in [&topo.client, &topo.gateway] {
        let r = ns.enter(move || TcpStream::connect_timeout(&veth, WAIT).map(drop)).unwrap();
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionRefused), "{veth} from {}", ns.name());
    }
    let status = daemon.stop(WAIT);
    assert!(status.is_some_and(|s| s.success()), "observer did not exit cleanly ({status:?}):\n{}", daemon.log());
}

/// `GET path` over the daemon's Unix socket (HTTP/1.0: the body ends with the connection).
fn unix_get(socket: &Path, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    io::Read::read_to_string(&mut s, &mut answer).unwrap_or_else(|e| panic!("GET {path} on {}: {e}", socket.display()));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("GET {path}: no head in {answer:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("GET {path}: {head:?}"));
    (status, body.to_owned())
}

/// `--unix-socket`: the whole API on a socket only root may open (mode 0600), replacing a stale
/// socket file left by a daemon that did not exit cleanly; the CLI reaches it with
/// `--server unix:PATH`; the daemon removes it on exit. Also: every ring buffer is drained, with
/// its lag in /api/v1/status, while the daemon keeps up.
#[test]
fn the_api_on_a_unix_socket_is_roots_alone_and_serves_the_cli() {
    const TEST: &str = "the_api_on_a_unix_socket_is_roots_alone_and_serves_the_cli";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let socket = topo.path("api.sock");
    // A daemon killed with its socket still there: nothing answers on it.
    drop(UnixListener::bind(&socket).expect("a stale socket"));
    let upstream = Nginx::upstream(&topo);
    let proxy = Nginx::proxy(&topo);
    let observer = Observer::start_with(&topo, &[GW_CLIENT_IF, GW_UPSTREAM_IF], &["--unix-socket", socket.to_str().expect("a UTF-8 path")]);
    let mut lab = Lab { observer, proxy, upstream, topo };

    assert!(lab.observer.log().contains("removed the stale socket"), "{}", lab.observer.log());
    let m = std::fs::symlink_metadata(&socket).expect("the socket");
    assert!(m.file_type().is_socket(), "{} is not a socket: {m:?}", socket.display());
    assert_eq!((m.permissions().mode() & 0o7777, m.uid()), (0o600, 0), "mode 0600, owned by root");
    // Another user is refused by the mode (the directory is open to them).
    let dir_mode = std::fs::metadata(&lab.topo.dir).unwrap().permissions().mode();
    let as_nobody = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]).args(args).output().expect("setpriv")
    };
    let curl_runs = as_nobody(&["--version".as_ref()]);
    assert!(curl_runs.status.success(), "curl as nobody: {}", text(&curl_runs.stderr));
    let refused =
        as_nobody(&["-sS".as_ref(), "--max-time".as_ref(), "10".as_ref(), "--unix-socket".as_ref(), socket.as_os_str(), "http://localhost/healthz".as_ref()]);
    assert!(!refused.status.success(), "nobody reached the API through {} (directory mode {dir_mode:o}): {}", socket.display(), text(&refused.stdout));
    assert_eq!(unix_get(&socket, "/healthz"), (200, "ok\n".to_owned()), "root reaches it");

    // Traffic, then the same connections through either door.
    let t = curl(&lab.topo.client, &urls(&["/ok", "/status/503"]), &[]);
    let tcp = wait_closed_and_counted(&lab.observer, 3, 2);
    let server = format!("unix:{}", socket.display());
    let out = cli(&lab.topo.gateway, &["connections", "--json", "--server", &server]);
    assert!(out.status.success(), "observer connections --server {server}: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json is not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!((v["count"].as_u64(), v["matched"].as_u64(), conn_set(&v)), (Some(3), Some(3), conn_set(&tcp)));
    assert!(conn_set(&v).contains(&inbound(&t[0])), "{v:#}");
    let out = cli(&lab.topo.gateway, &["status", "--server", &server]);
    assert!(out.status.success(), "observer status --server {server}: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("observer {}", env!("CARGO_PKG_VERSION"))), "{}", text(&out.stdout));
    let (code, body) = unix_get(&socket, &format!("/api/v1/connections/{}", inbound(&t[0]).replace(' ', "%20")));
    assert_eq!(code, 200, "{body}");
    let one: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["http"]["lifetime"]["requests"], 2, "{one:#}");

    // Rings: each reported; quiet now, so drained: their lag is about zero (it must not stay at
    // what it was during the traffic), and the daemon is ready.
    let rings = |status: &Value| -> BTreeMap<String, f64> {
        status["rings"].as_array().expect("rings").iter().map(|r| (r["ring"].as_str().unwrap().to_owned(), r["lag_seconds"].as_f64().unwrap())).collect()
    };
    let status = poll(WAIT, Duration::from_millis(100), || {
        let (code, body) = unix_get(&socket, "/api/v1/status");
        assert_eq!(code, 200, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        rings(&status).values().all(|lag| *lag < 0.1).then_some(status)
    })
    .unwrap_or_else(|| panic!("rings still lag {WAIT:?} after the traffic: {}", unix_get(&socket, "/api/v1/status").1));
    assert_eq!(rings(&status).keys().map(String::as_str).collect::<Vec<_>>(), ["events", "payload", "trace"], "{status:#}");
    assert_eq!(status["config"]["ready_max_lag_seconds"], 1.0, "{status:#}");
    let ready = poll(WAIT, Duration::from_millis(100), || (unix_get(&socket, "/readyz").0 == 200).then_some(()));
    assert!(ready.is_some(), "/readyz: {}", unix_get(&socket, "/readyz").1);

    // Gone with the daemon.
    let exit = lab.observer.stop();
    assert!(exit.is_some_and(|s| s.success()), "observer did not exit cleanly ({exit:?}):\n{}", lab.observer.log());
    assert!(!socket.exists(), "{} is left after the daemon exited", socket.display());
    let out = cli(&lab.topo.gateway, &["status", "--server", &server]);
    assert!(text(&out.stderr).contains(&format!("no daemon at {server}")), "{}", text(&out.stderr));
}

/// Least privilege: a daemon started without CAP_PERFMON (nor CAP_SYS_ADMIN, which stands in for
/// it) says exactly that; one started as root
/// keeps only CAP_BPF once its programs are attached, and goes on counting and tracing.
#[test]
fn the_daemon_needs_named_capabilities_and_keeps_only_cap_bpf() {
    const TEST: &str = "the_daemon_needs_named_capabilities_and_keeps_only_cap_bpf";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    // (`timeout`: a daemon that wrongly starts must not hang the test.)
    let out = topo.gateway.exec(
        "timeout",
        [
            "20",
            "capsh",
            "--drop=cap_perfmon,cap_sys_admin",
            "--",
            "-c",
            &format!("exec {} run --interface {GW_CLIENT_IF} --ephemeral", observer_bin().display()),
        ]
        .map(std::ffi::OsString::from),
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "started without CAP_PERFMON: {err}");
    assert!(err.contains("lacks CAP_PERFMON:"), "names the missing one, and only it: {err}");
    drop(topo);

    let lab = Lab::start(TEST);
    let status = std::fs::read_to_string(format!("/proc/{}/status", lab.observer.pid())).expect("the daemon's status");
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|v| u64::from_str_radix(v.trim(), 16).expect("hex")).expect("CapEff");
    let prm = status.lines().find_map(|l| l.strip_prefix("CapPrm:")).map(|v| u64::from_str_radix(v.trim(), 16).expect("hex")).expect("CapPrm");
    assert_eq!((eff, prm), (1 << 39, 1 << 39), "effective and permitted: CAP_BPF (bit 39) alone");
    assert_eq!(lab.observer.status()["capabilities"], serde_json::json!(["CAP_BPF"]));
    // Still counting, reading its maps, and tracing (a kernel filter written through its map).
    let t = curl(&lab.topo.client, &urls(&["/ok", "/status/503"]), &[]);
    let v = wait_json(&lab.observer, &format!("/api/v1/connections/{}", inbound(&t[0]).replace(' ', "%20")), "two requests", WAIT, |v| {
        v["http"]["lifetime"]["requests"] == 2
    });
    assert_eq!(v["http"]["lifetime"]["responses_5xx"], 1, "{v:#}");
    let trace = cli(&lab.topo.gateway, &["trace", "--local-port", "80", "--count", "1", "--duration", "5", "--json"]);
    assert!(trace.status.success(), "observer trace: {}", text(&trace.stderr));
    assert!(lab.observer.status()["programs"].as_array().is_some_and(|p| !p.is_empty()), "program stats through their own descriptors");
}

/// `/readyz`: ready while everything attached observes; an interface that goes away makes it
/// say so (503), while `/healthz` stays ok.
#[test]
fn readyz_says_when_an_observed_interface_is_gone() {
    const TEST: &str = "readyz_says_when_an_observed_interface_is_gone";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let (code, body) = lab.observer.get("/readyz");
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()), (200, serde_json::json!({"ready": true, "problems": []})), "{body}");
    lab.topo.gateway.run("ip", ["link", "del", GW_UPSTREAM_IF]);
    let (code, body) = lab.observer.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    let problems = v["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{v:#}");
    assert!(problems[0].as_str().unwrap().contains(&format!("interface {GW_UPSTREAM_IF} is gone")), "{v:#}");
    assert_eq!(lab.observer.get("/healthz").0, 200, "liveness is not readiness");
}
