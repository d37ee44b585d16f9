//! Benchmarks, run by `cargo xtask bench` (ignored by `cargo test`): what the observer costs a
//! gateway, against a baseline without it and against tshark dissecting HTTP on the gateway's
//! client interface, in one run with the variants interleaved (this machine is noisy: only
//! figures measured side by side compare). Numbers, never timed assertions: the suite does not
//! depend on a timing, and the benchmark prints its table whatever the figures are.
//!
//! Workloads, through the real nginx proxy of the test topology:
//! - `keep-alive`: wrk's connections kept alive, and the proxy's upstream connections too
//!   (HTTP/1.1, a pool of 128 idle connections: every upstream connection is reused);
//! - `close`: `Connection: close` from the client (a connection per request on both sides);
//! - `mixed`: full speed, statuses mixed: three wrk at once through the keep-alive proxy, keep-alive
//!   clients on `/ok` (200) and `/status/503`, and `Connection: close` clients on `/status/404`.
//!   For the observer, the sums of the per-connection counts (what `observer top` reads) by class
//!   are checked against `/metrics` and the proxy's access log, and every client connection that
//!   carried a request must have an HTTP view (column `exact`).
//!
//! Variants: baseline (nothing attached), observer (as operators run it: HTTP framed in the
//! kernel), observer with `--http-framing daemon` (every payload forwarded and framed by the
//! daemon: the design before), tshark.
//!
//! Two builds side by side: `OBSERVER_BENCH_BASE=/path/to/observer` adds the variant
//! `observer-base` (that build, kernel framing) next to `observer` (this build), in the same run.
//! `OBSERVER_BENCH_BASE_ARGS="--lifecycle-hook tracepoint"` gives that variant options (the same
//! build with other options, when `OBSERVER_BENCH_BASE` names this build).
//! `OBSERVER_BENCH_WORKLOADS=keep-alive,mixed` runs only those workloads,
//! `OBSERVER_BENCH_VARIANTS=observer,observer-base` only those variants (and the baseline).
//!
//! Per variant: median throughput and p99 latency of `REPEATS` runs (as ratios to the baseline),
//! kernel ns per request (the observer's programs, `kernel.bpf_stats_enabled`), user-space CPU µs
//! per request (the daemon, or tshark), the fallback fraction (connections whose kernel framer
//! handed a direction to the daemon's framer, per connection opened), resident memory.
use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use observer::model::ConnStatus;
use observer_tests::{
    http_view::Metrics,
    nginx::Nginx,
    observer::{Observer, WAIT},
    root_or_skip, ConnectionExt, Topology,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    KeepAlive,
    Close,
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::KeepAlive => "keep-alive",
            Workload::Close => "close",
            Workload::Mixed => "mixed",
        }
    }
}

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

fn wrk_run(topo: &Topology, threads: u32, connections: u32, close: bool, path: &str) -> Wrk {
    let mut args = vec![format!("-t{threads}"), format!("-c{connections}"), format!("-d{SECONDS}s"), "--latency".to_owned()];
    if close {
        args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
    }
    args.push(format!("http://198.18.1.1{path}"));
    let out = topo.client.run("wrk", &args);
    let find = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    let requests = out.lines().find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>().unwrap_or(0))).unwrap_or(0);
    let per_second = find("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let p99_ms = find("99%").map(|v| latency_ms(&v)).unwrap_or(0.0);
    Wrk { requests, per_second, p99_ms }
}

/// The workload's clients: one wrk, or for `mixed` three at once (throughput summed, the worst
/// p99 of the three).
fn wrk(topo: &Topology, workload: Workload) -> Wrk {
    match workload {
        Workload::KeepAlive => wrk_run(topo, 2, CONNECTIONS, false, "/ok"),
        Workload::Close => wrk_run(topo, 2, CONNECTIONS, true, "/ok"),
        Workload::Mixed => {
            let loads = [(30, false, "/ok"), (10, false, "/status/503"), (10, true, "/status/404")];
            let runs: Vec<Wrk> = thread::scope(|s| {
                let handles: Vec<_> = loads.iter().map(|&(c, close, path)| s.spawn(move || wrk_run(topo, 1, c, close, path))).collect();
                handles.into_iter().map(|h| h.join().expect("a wrk thread")).collect()
            });
            Wrk {
                requests: runs.iter().map(|w| w.requests).sum(),
                per_second: runs.iter().map(|w| w.per_second).sum(),
                p99_ms: runs.iter().map(|w| w.p99_ms).fold(0.0, f64::max),
            }
        }
    }
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

/// Run count and run time (ns) of each of the observer's programs so far.
fn program_stats(observer: &Observer) -> BTreeMap<String, (u64, u64)> {
    let status = observer.status();
    let programs = status["programs"].as_array().cloned().unwrap_or_default();
    programs
        .iter()
        .map(|p| (p["program"].as_str().unwrap_or("?").to_owned(), (p["run_count"].as_u64().unwrap_or(0), p["run_time_ns"].as_u64().unwrap_or(0))))
        .collect()
}

/// Per program, from `before` to `after`: runs per request and ns per run, busiest first.
fn per_program(before: &BTreeMap<String, (u64, u64)>, after: &BTreeMap<String, (u64, u64)>, requests: f64) -> Vec<String> {
    let mut v: Vec<(String, f64, f64, u64)> = after
        .iter()
        .map(|(name, (runs, ns))| {
            let (r0, n0) = before.get(name).copied().unwrap_or((0, 0));
            let (runs, ns) = (runs - r0, ns - n0);
            (name.clone(), runs as f64 / requests, if runs == 0 { 0.0 } else { ns as f64 / runs as f64 }, ns)
        })
        .filter(|p| p.3 > 0)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.3));
    v.into_iter().map(|(name, per_req, per_run, _)| format!("{name} {per_req:.2} runs/req × {per_run:.0} ns")).collect()
}

/// tshark on the gateway's client-side interface, dissecting HTTP as the peer does.
struct Tshark(Child);

impl Tshark {
    fn start(topo: &Topology) -> Tshark {
        let out = std::fs::File::create(topo.path("tshark.out")).expect("tshark output file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                topo.gateway.name(),
                "tshark",
                "-i",
                observer_tests::addr::GW_CLIENT_IF,
                "-l",
                "-Y",
                "http.response",
                "-T",
                "fields",
                "-e",
                "http.response.code",
            ])
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
    /// Connections whose kernel framer handed a direction over, per connection opened.
    fallback: f64,
    rss_mib: f64,
    /// The observer's programs: runs per request and ns per run.
    programs: Vec<String>,
    /// `mixed`, observer variants: what differs between the per-connection sums, `/metrics` and
    /// the access log (empty: exact).
    exact: Option<Vec<String>>,
}

/// Status classes as the API names them.
fn class(status: u16) -> String {
    format!("{}xx", status / 100)
}

/// The `mixed` check, once wrk has stopped: every client connection closed in the observer's view,
/// then per class the sum of the connections' counts (inbound, port 80), `/metrics` and the
/// access log entries since `logged_before` (499: the client left before the answer) must be
/// equal, and every client connection that carried a request must have an HTTP view.
fn check_exact(observer: &Observer, proxy: &Nginx, logged_before: usize) -> Vec<String> {
    let ours = |c: &observer_tests::Connection| {
        c.local_addr().port() == 80 && c.local_addr().ip() == std::net::IpAddr::from(observer_tests::addr::GATEWAY_CLIENT_SIDE_V4)
    };
    let snap = observer.wait_for("every client connection closed", WAIT, |s| s.connections.iter().filter(|c| ours(c)).all(|c| c.status == ConnStatus::Closed));
    let log = proxy.wait_for_log("the access log", WAIT, |_| true);
    let mut by_log: BTreeMap<String, u64> = BTreeMap::new();
    let mut ports_with_requests = std::collections::BTreeSet::new();
    for e in log.entries.iter().skip(logged_before) {
        ports_with_requests.insert(e.remote_port);
        if e.status != 499 {
            *by_log.entry(class(e.status)).or_default() += 1;
        }
    }
    let mut by_conn: BTreeMap<String, u64> = BTreeMap::new();
    let mut with_view = std::collections::BTreeSet::new();
    for c in snap.connections.iter().filter(|c| ours(c)) {
        let Some(h) = c.http.as_ref() else { continue };
        with_view.insert(c.remote_addr().port());
        let l = &h.lifetime.counts;
        for (cl, n) in [("1xx", l.responses_1xx), ("2xx", l.responses_2xx), ("3xx", l.responses_3xx), ("4xx", l.responses_4xx), ("5xx", l.responses_5xx)] {
            if n > 0 {
                *by_conn.entry(cl.to_owned()).or_default() += n;
            }
        }
    }
    let m = Metrics::new(observer.metrics());
    let by_metrics: BTreeMap<String, u64> = ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|cl| (cl.to_string(), m.count("observer_http_responses_total", &[("role", "inbound"), ("port", "80"), ("class", cl)])))
        .filter(|(_, n)| *n > 0)
        .collect();
    let mut wrong = Vec::new();
    if by_conn != by_metrics {
        wrong.push(format!("per-connection sums {by_conn:?} vs /metrics {by_metrics:?}"));
    }
    if by_conn != by_log {
        wrong.push(format!("per-connection sums {by_conn:?} vs the access log {by_log:?}"));
    }
    let without = ports_with_requests.difference(&with_view).count();
    if without > 0 {
        wrong.push(format!("{without} client connections that carried requests have no HTTP view"));
    }
    wrong
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Where the daemon spends its time under `workload`: `perf record` of its process during one extra
/// run (outside the measured ones), the top symbols of `perf report`. Empty without `perf`.
fn profile_daemon(topo: &Topology, workload: Workload) -> Vec<String> {
    if Command::new("perf").arg("--version").output().map_or(true, |o| !o.status.success()) {
        return vec!["(perf is not installed: no profile)".to_owned()];
    }
    let observer = Observer::start_with(topo, &[observer_tests::addr::GW_CLIENT_IF, observer_tests::addr::GW_UPSTREAM_IF], &[]);
    let data = topo.path("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-F", "999", "-g", "-o"])
        .arg(&data)
        .args(["-p", &observer.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting perf record");
    wrk(topo, workload);
    // SIGINT ends the recording cleanly.
    let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
    let _ = perf.wait();
    let report = Command::new("perf").args(["report", "--no-children", "--sort", "symbol", "--stdio", "-g", "none", "-i"]).arg(&data).output();
    let text = report.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines().filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit())).take(15).map(|l| l.trim().to_owned()).collect()
}

fn run(topo: &Topology, proxy: &Nginx, variant: &str, workload: Workload) -> Sample {
    match variant {
        "baseline" => {
            let w = wrk(topo, workload);
            Sample { per_second: w.per_second, p99_ms: w.p99_ms, ..Sample::default() }
        }
        "observer" | "observer-base" | "observer-daemon-framing" => {
            let base_args = std::env::var("OBSERVER_BENCH_BASE_ARGS").unwrap_or_default();
            let extra: Vec<&str> = match variant {
                "observer-daemon-framing" => vec!["--http-framing", "daemon"],
                "observer-base" => base_args.split_whitespace().collect(),
                _ => vec![],
            };
            let bin = match variant {
                "observer-base" => std::path::PathBuf::from(std::env::var_os("OBSERVER_BENCH_BASE").expect("OBSERVER_BENCH_BASE")),
                _ => observer_tests::observer::observer_bin(),
            };
            let observer = Observer::start_bin(topo, &bin, &[observer_tests::addr::GW_CLIENT_IF, observer_tests::addr::GW_UPSTREAM_IF], &extra);
            let _stats = StatsOn::enable();
            let logged_before = proxy.access_log().entries.len();
            let (p0, c0) = (program_stats(&observer), cpu_seconds(observer.pid()));
            let w = wrk(topo, workload);
            let (p1, c1) = (program_stats(&observer), cpu_seconds(observer.pid()));
            let n = w.requests.max(1) as f64;
            let total = |p: &BTreeMap<String, (u64, u64)>| p.values().map(|(_, ns)| ns).sum::<u64>();
            let (k0, k1) = (total(&p0), total(&p1));
            let m = Metrics::new(observer.metrics());
            // Every reason but `not_http` (a connection nobody frames) hands a direction over.
            let handed = m.value("observer_http_fallback_total", &[]) - m.value("observer_http_fallback_total", &[("reason", "not_http")]);
            let opened = m.value("observer_connections_opened_total", &[]).max(1.0);
            let fallback = if variant == "observer-daemon-framing" { 1.0 } else { handed / opened };
            let exact = (workload == Workload::Mixed).then(|| check_exact(&observer, proxy, logged_before));
            Sample {
                per_second: w.per_second,
                p99_ms: w.p99_ms,
                kernel_ns_per_request: (k1 - k0) as f64 / n,
                user_us_per_request: 1e6 * (c1 - c0) / n,
                fallback,
                rss_mib: rss_mib(observer.pid()),
                programs: per_program(&p0, &p1, n),
                exact,
            }
        }
        "tshark" => {
            let t = Tshark::start(topo);
            let pid = t.0.id();
            let c0 = cpu_seconds(pid);
            let w = wrk(topo, workload);
            // `ip netns exec` execs tshark in place: the pid is tshark's (its dumpcap child is
            // not counted, so tshark's cost is if anything understated).
            let c1 = cpu_seconds(pid);
            let rss = rss_mib(pid);
            drop(t);
            Sample {
                per_second: w.per_second,
                p99_ms: w.p99_ms,
                user_us_per_request: 1e6 * (c1 - c0) / w.requests.max(1) as f64,
                rss_mib: rss,
                ..Sample::default()
            }
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
    let mut variants = vec!["baseline", "observer", "observer-daemon-framing", "tshark"];
    if std::env::var_os("OBSERVER_BENCH_BASE").is_some() {
        variants.insert(2, "observer-base");
    }
    let chosen = std::env::var("OBSERVER_BENCH_VARIANTS").unwrap_or_default();
    variants.retain(|v| *v == "baseline" || chosen.is_empty() || chosen.split(',').any(|c| c.trim() == *v));
    let only = std::env::var("OBSERVER_BENCH_WORKLOADS").unwrap_or_default();
    let mut table = Vec::new();
    for workload in [Workload::KeepAlive, Workload::Close, Workload::Mixed] {
        if !only.is_empty() && !only.split(',').any(|w| w.trim() == workload.name()) {
            continue;
        }
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
        let proxy = if workload == Workload::Close { Nginx::proxy(&topo) } else { Nginx::proxy_keepalive(&topo) };
        let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
        for rep in 0..REPEATS {
            for (i, v) in variants.iter().enumerate() {
                let s = run(&topo, &proxy, v, workload);
                let exact = match &s.exact {
                    None => String::new(),
                    Some(w) if w.is_empty() => "  exact".to_owned(),
                    Some(w) => format!("  NOT EXACT: {}", w.join("; ")),
                };
                println!(
                    "{} #{rep} {v:<23} {:>9.0} req/s  p99 {:>7.2} ms  kernel {:>6.0} ns/req  user {:>6.2} µs/req  fallback {:>5.1} %  rss {:>5.0} MiB{exact}",
                    workload.name(),
                    s.per_second,
                    s.p99_ms,
                    s.kernel_ns_per_request,
                    s.user_us_per_request,
                    100.0 * s.fallback,
                    s.rss_mib
                );
                if !s.programs.is_empty() {
                    println!("    {}", s.programs.join(", "));
                }
                samples[i].push(s);
            }
        }
        println!("{}: where the daemon's time goes (perf, one extra run):\n    {}", workload.name(), profile_daemon(&topo, workload).join("\n    "));
        let m = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
        let (base_rps, base_p99) = (m(0, |s| s.per_second), m(0, |s| s.p99_ms));
        for (i, v) in variants.iter().enumerate() {
            let exact: Vec<&Vec<String>> = samples[i].iter().filter_map(|s| s.exact.as_ref()).collect();
            let exact = if exact.is_empty() { "-".to_owned() } else { format!("{} of {}", exact.iter().filter(|w| w.is_empty()).count(), exact.len()) };
            table.push(format!(
                "| {} | {v} | {:.0} | {:.2}× | {:.2}× | {} | {} | {} | {} | {exact} |",
                workload.name(),
                m(i, |s| s.per_second),
                m(i, |s| s.per_second) / base_rps.max(1.0),
                m(i, |s| s.p99_ms) / base_p99.max(1e-9),
                if v.starts_with("observer") { format!("{:.0}", m(i, |s| s.kernel_ns_per_request)) } else { "-".into() },
                if i == 0 { "-".into() } else { format!("{:.2}", m(i, |s| s.user_us_per_request)) },
                if v.starts_with("observer") { format!("{:.1} %", 100.0 * m(i, |s| s.fallback)) } else { "-".into() },
                if i == 0 { "-".into() } else { format!("{:.0}", m(i, |s| s.rss_mib)) },
            ));
        }
    }
    println!("\n| workload | variant | req/s (median of {REPEATS} × {SECONDS} s) | throughput | p99 | kernel ns/req | user-space CPU µs/req | fallback | RSS MiB | exact (runs) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in table {
        println!("{row}");
    }
}
