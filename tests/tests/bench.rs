//! Benchmarks, run by `cargo xtask bench` (ignored by `cargo test`): throughput through the real
//! nginx proxy with and without the observer, the kernel's own per-program run time
//! (`kernel.bpf_stats_enabled`), the daemon's memory, and whether counting stayed exact under
//! load. Targets are printed next to the measurements and checked at the end: a benchmark that
//! misses one fails, but no test of the suite depends on a timing.
use std::time::Duration;

use observer_tests::{nginx::Nginx, observer::Observer, root_or_skip, Topology};

/// Targets the observer is held to.
const MAX_AVG_TC_NS: f64 = 2_000.0;
const MAX_THROUGHPUT_LOSS: f64 = 0.25;
const MAX_DAEMON_RSS_MIB: f64 = 256.0;

struct Wrk {
    requests: u64,
    per_second: f64,
    non_2xx: u64,
}

fn wrk(topo: &Topology, connections: u32, seconds: u32, path: &str) -> Wrk {
    let out = topo.client.run("wrk", ["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", &format!("http://198.18.1.1{path}")]);
    let find = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    let requests = out.lines().find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>().unwrap_or(0))).unwrap_or(0);
    let per_second = find("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let non_2xx = find("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    println!("{out}");
    Wrk { requests, per_second, non_2xx }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b'{') || l.as_bytes().get(name.len()) == Some(&b' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn throughput_cost_and_exactness_under_load() {
    if !root_or_skip("bench") {
        return;
    }
    let topo = Topology::new("bench");
    let _upstream = Nginx::upstream(&topo);
    let proxy = Nginx::proxy(&topo);
    let seconds = 8;

    println!("== baseline: nginx proxy, no observer");
    let base = wrk(&topo, 50, seconds, "/ok");

    println!("== with the observer");
    let observer = Observer::start(&topo);
    let _stats = StatsOn::enable();
    let before_log = proxy.access_log().entries.len() as u64;
    let cpu_before = cpu_seconds(observer.pid());
    let with = wrk(&topo, 50, seconds, "/ok");
    let cpu = cpu_seconds(observer.pid()) - cpu_before;
    // Everything the kernel saw is in the daemon within a moment: wait until the counts settle.
    let mut last = -1.0;
    let mut text = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        text = observer.metrics();
        let now = metric(&text, "observer_http_responses_total");
        if now == last {
            break;
        }
        last = now;
    }
    let logged = proxy.access_log().entries.len() as u64 - before_log;
    let status = observer.status();
    let programs = status["programs"].as_array().cloned().unwrap_or_default();
    let rss = rss_mib(observer.pid());

    let inbound_requests = text.lines().filter(|l| l.starts_with("observer_http_requests_total{") && l.contains("role=\"inbound\"")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>() as u64;
    let payload_lost = metric(&text, "observer_payload_records_lost_total") as u64;
    let events_lost = metric(&text, "observer_events_lost_total") as u64;
    let framing_lost = metric(&text, "observer_http_framing_lost_total") as u64;
    let delay_sum = metric(&text, "observer_event_delay_seconds_sum");
    let delay_count = metric(&text, "observer_event_delay_seconds_count");

    println!("\n== results");
    let loss = 1.0 - with.per_second / base.per_second.max(1.0);
    println!("throughput: {:.0} req/s without, {:.0} req/s with the observer ({:+.1}%)", base.per_second, with.per_second, -100.0 * loss);
    println!("requests: wrk completed {} (non-2xx {}), nginx logged {logged}, observer counted {inbound_requests} inbound", with.requests, with.non_2xx);
    println!("losses: payload records {payload_lost}, events {events_lost}, framing {framing_lost}");
    println!("freshness: mean kernel→daemon event delay {:.1} µs over {delay_count} events", 1e6 * delay_sum / delay_count.max(1.0));
    println!("daemon RSS: {rss:.1} MiB; daemon CPU {cpu:.2} s over the {seconds} s run ({:.0}% of one core, {:.1} µs per request)", 100.0 * cpu / seconds as f64, 1e6 * cpu / logged.max(1) as f64);
    let mut worst_tc = 0.0f64;
    for p in &programs {
        let runs = p["run_count"].as_u64().unwrap_or(0);
        let ns = p["run_time_ns"].as_u64().unwrap_or(0);
        let avg = if runs > 0 { ns as f64 / runs as f64 } else { 0.0 };
        let name = p["program"].as_str().unwrap_or("?");
        println!("program {name:<28} runs {runs:>10}  avg {avg:>8.0} ns  verified insns {}", p["verified_instructions"]);
        if name.starts_with("observer_tc_") {
            worst_tc = worst_tc.max(avg);
        }
    }

    let mut missed = Vec::new();
    if worst_tc > MAX_AVG_TC_NS {
        missed.push(format!("average tc program run time {worst_tc:.0} ns > {MAX_AVG_TC_NS} ns"));
    }
    if loss > MAX_THROUGHPUT_LOSS {
        missed.push(format!("throughput loss {:.1}% > {:.0}%", 100.0 * loss, 100.0 * MAX_THROUGHPUT_LOSS));
    }
    if rss > MAX_DAEMON_RSS_MIB {
        missed.push(format!("daemon RSS {rss:.0} MiB > {MAX_DAEMON_RSS_MIB} MiB"));
    }
    if payload_lost == 0 && events_lost == 0 && inbound_requests != logged {
        missed.push(format!("no loss reported, yet the observer counted {inbound_requests} requests where nginx logged {logged}"));
    }
    assert!(missed.is_empty(), "benchmark targets missed:\n{}", missed.join("\n"));
}
