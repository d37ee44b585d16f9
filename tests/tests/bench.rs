//! Benchmarks, run by `cargo xtask bench` (ignored by `cargo test`): what the observer costs a
//! gateway, against a baseline without it and against tshark dissecting HTTP on the gateway's
//! client interface, in one run with the variants interleaved (this machine is noisy: only
//! figures measured side by side compare). Numbers, never timed assertions: the suite does not
//! depend on a timing, and the benchmark prints its table whatever the figures are.
//!
//! Workloads, through the real nginx proxy of the test topology:
//! - `keep-alive`: wrk's connections kept alive, and the proxy's upstream connections too
//!   (HTTP/1.1, a pool of 128 idle connections: every upstream connection is reused);
//! - `close`: `Connection: close` from the client (a connection per request on both sides).
//!
//! Variants: baseline (nothing attached), observer (as operators run it: HTTP framed in the
//! kernel), observer with `--http-framing daemon` (every payload forwarded and framed by the
//! daemon: the design before), tshark.
//!
//! Per variant: median throughput and p99 latency of `REPEATS` runs (as ratios to the baseline),
//! kernel ns per request (the observer's programs, `kernel.bpf_stats_enabled`), user-space CPU µs
//! per request (the daemon, or tshark), resident memory.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use observer_tests::{nginx::Nginx, observer::Observer, root_or_skip, Topology};

const SECONDS: u32 = 6;
const REPEATS: usize = 3;
const CONNECTIONS: u32 = 50;

struct Wrk {
    requests: u64,
    per_second: f64,
    p99_ms: f64,
}

/// wrk's latency line `99%  1.23ms` in milliseconds.
fn latency_ms(v: &str) -> f64 {
    let v = v.trim();
    let (n, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, 1.0)
    };
    n.parse::<f64>().unwrap_or(0.0) * scale
}

fn wrk(topo: &Topology, close: bool) -> Wrk {
    let mut args = vec!["-t2".to_owned(), format!("-c{CONNECTIONS}"), format!("-d{SECONDS}s"), "--latency".to_owned()];
    if close {
        args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    }
    args.push("http://198.18.1.1/ok".to_owned());
    let out = topo.client.run("wrk", &args);
    let find = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    let requests = out.lines().find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>().unwrap_or(0))).unwrap_or(0);
    let per_second = find("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let p99_ms = find("99%").map(|v| latency_ms(&v)).unwrap_or(0.0);
    Wrk { requests, per_second, p99_ms }
}

/// User + system CPU seconds the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat, 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().unwrap_or(0.0))))
        .unwrap_or(0.0)
        / 1024.0
}

struct StatsOn;

impl StatsOn {
    fn enable() -> Self {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enabling kernel.bpf_stats_enabled");
        StatsOn
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

/// Total run time (ns) of the observer's programs so far.
fn kernel_ns(observer: &Observer) -> u64 {
    let status = observer.status();
    status["programs"].as_array().map_or(0, |ps| ps.iter().map(|p| p["run_time_ns"].as_u64().unwrap_or(0)).sum())
}

/// tshark on the gateway's client-side interface, dissecting HTTP as the peer does.
struct Tshark(Child);

impl Tshark {
    fn start(topo: &Topology) -> Tshark {
        let out = std::fs::File::create(topo.path("tshark.out")).expect("tshark output file");
        let child = Command::new("ip")
            .args(["netns", "exec", topo.gateway.name(), "tshark", "-i", observer_tests::addr::GW_CLIENT_IF, "-l", "-Y", "http.response", "-T", "fields", "-e", "http.response.code"])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tshark (cargo xtask bench installs it)");
        // Capturing starts a moment after the process does.
        std::thread::sleep(Duration::from_secs(2));
        Tshark(child)
    }
}

impl Drop for Tshark {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Sample {
    per_second: f64,
    p99_ms: f64,
    kernel_ns_per_request: f64,
    user_us_per_request: f64,
    rss_mib: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn run(topo: &Topology, variant: &str, close: bool) -> Sample {
    match variant {
        "baseline" => {
            let w = wrk(topo, close);
            Sample { per_second: w.per_second, p99_ms: w.p99_ms, ..Sample::default() }
        }
        "observer" | "observer-daemon-framing" => {
            let extra: &[&str] = if variant == "observer" { &[] } else { &["--http-framing", "daemon"] };
            let observer = Observer::start_with(topo, &[observer_tests::addr::GW_CLIENT_IF, observer_tests::addr::GW_UPSTREAM_IF], extra);
            let _stats = StatsOn::enable();
            let (k0, c0) = (kernel_ns(&observer), cpu_seconds(observer.pid()));
            let w = wrk(topo, close);
            let (k1, c1) = (kernel_ns(&observer), cpu_seconds(observer.pid()));
            let n = w.requests.max(1) as f64;
            Sample { per_second: w.per_second, p99_ms: w.p99_ms, kernel_ns_per_request: (k1 - k0) as f64 / n, user_us_per_request: 1e6 * (c1 - c0) / n, rss_mib: rss_mib(observer.pid()) }
        }
        "tshark" => {
            let t = Tshark::start(topo);
            let pid = t.0.id();
            let c0 = cpu_seconds(pid);
            let w = wrk(topo, close);
            // `ip netns exec` execs tshark in place: the pid is tshark's (its dumpcap child is
            // not counted, so tshark's cost is if anything understated).
            let c1 = cpu_seconds(pid);
            let rss = rss_mib(pid);
            drop(t);
            Sample { per_second: w.per_second, p99_ms: w.p99_ms, user_us_per_request: 1e6 * (c1 - c0) / w.requests.max(1) as f64, rss_mib: rss, ..Sample::default() }
        }
        _ => unreachable!(),
    }
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn gateway_cost_against_baseline_and_tshark() {
    if !root_or_skip("bench") {
        return;
    }
    let variants = ["baseline", "observer", "observer-daemon-framing", "tshark"];
    let mut table = Vec::new();
    for (workload, close) in [("keep-alive", false), ("close", true)] {
        let topo = Topology::new("bench");
        // Connections a second for minutes: without reuse, TIME-WAIT sockets take every local
        // port of the client (and of the proxy's upstream side), and connect() then searches the
        // range at length for each new one (measured: 1.3k instead of 24k requests/s by the
        // second run). Reuse is what a gateway host would have.
        for ns in [&topo.client, &topo.gateway] {
            ns.run("sysctl", ["-q", "-w", "net.ipv4.tcp_tw_reuse=1"]);
            ns.run("sysctl", ["-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"]);
        }
        let _upstream = Nginx::upstream(&topo);
        let _proxy = if close { Nginx::proxy(&topo) } else { Nginx::proxy_keepalive(&topo) };
        let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
        for rep in 0..REPEATS {
            for (i, v) in variants.iter().enumerate() {
                let s = run(&topo, v, close);
                println!("{workload} #{rep} {v:<20} {:>9.0} req/s  p99 {:>7.2} ms  kernel {:>6.0} ns/req  user {:>6.2} µs/req  rss {:>5.0} MiB", s.per_second, s.p99_ms, s.kernel_ns_per_request, s.user_us_per_request, s.rss_mib);
                samples[i].push(s);
            }
        }
        let m = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
        let (base_rps, base_p99) = (m(0, |s| s.per_second), m(0, |s| s.p99_ms));
        for (i, v) in variants.iter().enumerate() {
            table.push(format!(
                "| {workload} | {v} | {:.0} | {:.2}× | {:.2}× | {} | {} | {} |",
                m(i, |s| s.per_second),
                m(i, |s| s.per_second) / base_rps.max(1.0),
                m(i, |s| s.p99_ms) / base_p99.max(1e-9),
                if i == 1 || i == 2 { format!("{:.0}", m(i, |s| s.kernel_ns_per_request)) } else { "-".into() },
                if i == 0 { "-".into() } else { format!("{:.2}", m(i, |s| s.user_us_per_request)) },
                if i == 0 { "-".into() } else { format!("{:.0}", m(i, |s| s.rss_mib)) },
            ));
        }
    }
    println!("\n| workload | variant | req/s (median of {REPEATS} × {SECONDS} s) | throughput | p99 | kernel ns/req | user-space CPU µs/req | RSS MiB |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in table {
        println!("{row}");
    }
}
