//! Hostile peers: a flood of spoofed SYNs while honest clients work. The honest clients' counts
//! stay exact, the daemon answers `/metrics` and the API throughout, and its memory stays bounded.
use std::{
    net::{SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use observer_tests::{
    addr,
    http_view::{kernel_classes, status_classes, Metrics},
    root_or_skip, tcp, Lab,
};

const SYNS: usize = 100_000;
const HONEST: usize = 8;
const IDLE: usize = 4;
const SETTLE: Duration = Duration::from_secs(30);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn a_spoofed_syn_flood_leaves_honest_counts_exact_and_the_api_answering() {
    const TEST: &str = "a_spoofed_syn_flood_leaves_honest_counts_exact_and_the_api_answering";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let proxy = SocketAddrV4::new(addr::GATEWAY_CLIENT_SIDE_V4, 80);
    let rss_before = rss_kib(lab.observer.pid());

    // Idle established connections: two requests each, then silence through the flood. More
    // spoofed SYNs than the connection map holds must not push them out.
    let idle: Vec<(TcpStream, SocketAddr, Vec<u16>)> = (0..IDLE)
        .map(|_| {
            let mut s = tcp::connect(&lab.topo.client, proxy.into()).expect("connecting to the proxy");
            let local = s.local_addr().expect("local address");
            let statuses = ["/ok", "/status/404"]
                .iter()
                .map(|p| tcp::http_exchange(&mut s, &format!("GET {p} HTTP/1.1\r\nHost: gateway\r\n\r\n")).expect("an idle client's request").0)
                .collect();
            (s, local, statuses)
        })
        .collect();

    // Honest keep-alive clients, requesting until the flood is over.
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..HONEST)
        .map(|i| {
            let mut s: TcpStream = tcp::connect(&lab.topo.client, proxy.into()).expect("connecting to the proxy");
            let local = s.local_addr().expect("local address");
            let done = done.clone();
            let handle = std::thread::spawn(move || {
                let mut statuses = Vec::new();
                let path = if i % 2 == 0 { "/ok" } else { "/status/503" };
                while !done.load(Ordering::Relaxed) || statuses.len() < 5 {
                    let (status, _, _) = tcp::http_exchange(&mut s, &format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n")).expect("an honest request");
                    statuses.push(status);
                    std::thread::sleep(Duration::from_millis(20));
                }
                (s, statuses)
            });
            (local, handle)
        })
        .collect();

    // The flood, from another thread; the API is asked while it lasts.
    let flood = {
        let ns = lab.topo.client.clone();
        std::thread::spawn(move || tcp::syn_flood(&ns, std::net::Ipv4Addr::new(198, 18, 1, 0), proxy, SYNS, 0x5eed).expect("sending the flood"))
    };
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while !flood.is_finished() || asked < 3 {
        for path in ["/metrics", "/api/v1/connections?limit=20&sort=error_ratio"] {
            let t = Instant::now();
            let (code, _) = lab.observer.try_get(path).unwrap_or_else(|e| panic!("{path} during the flood: {e}"));
            assert_eq!(code, 200, "{path} during the flood");
            slowest = slowest.max(t.elapsed());
        }
        asked += 1;
    }
    let sent = flood.join().expect("the flood thread");
    let flood_end = Instant::now();
    // And right after it, while the kernel and the daemon digest it.
    let mut after_slowest = Duration::ZERO;
    while flood_end.elapsed() < Duration::from_secs(15) {
        let t = Instant::now();
        let (code, _) = lab.observer.try_get("/metrics").unwrap_or_else(|e| panic!("/metrics after the flood: {e}"));
        assert_eq!(code, 200);
        after_slowest = after_slowest.max(t.elapsed());
    }
    done.store(true, Ordering::Relaxed);
    let mut honest: Vec<(SocketAddr, Vec<u16>)> = clients.into_iter().map(|(local, h)| (local, h.join().expect("an honest client").1)).collect();
    honest.extend(idle.iter().map(|(_, local, statuses)| (*local, statuses.clone())));
    let rss_after = rss_kib(lab.observer.pid());
    eprintln!(
        "{TEST}: {sent} SYNs sent; slowest answer during the flood {slowest:?}, in the 15 s after it {after_slowest:?}; daemon RSS {rss_before} KiB before, {rss_after} KiB after"
    );

    // Every honest connection's kernel counts are exact.
    let mut last = String::new();
    let exact = observer_tests::poll(SETTLE, Duration::from_millis(200), || {
        let snap = lab.observer.connections();
        let mut wrong = Vec::new();
        for (local, statuses) in &honest {
            let want = status_classes(statuses);
            let got = snap.with_remote(*local).first().and_then(|c| c.http_kernel.as_ref()).map(|k| (k.requests, kernel_classes(k)));
            if got != Some((statuses.len() as u64, want.clone())) {
                wrong.push(format!("{local}: got {got:?}, sent {} with {want:?}", statuses.len()));
            }
        }
        last = wrong.join("\n");
        wrong.is_empty().then_some(())
    });
    assert!(exact.is_some(), "honest connections' counts after the flood:\n{last}");
    let m = Metrics::new(lab.observer.metrics());
    let total: u64 = honest.iter().map(|(_, s)| s.len() as u64).sum();
    assert_eq!(m.count("observer_http_requests_total", &[("role", "inbound"), ("port", "80")]), total, "inbound requests in /metrics");
    // Attempts: every honest connection completed its handshake (and only they did); the spoofed
    // ones stayed attempts (how many reached the gateway depends on what the veth queue dropped).
    let attempts = m.count("observer_inbound_attempts_total", &[]);
    let completed = m.count("observer_inbound_attempts_completed_total", &[]);
    assert_eq!(completed, (HONEST + IDLE) as u64, "inbound attempts completed");
    assert!(attempts > completed + (SYNS as u64) / 2, "inbound attempts {attempts}: the flood did not reach the gateway");
    assert!(rss_after < rss_before + 128 * 1024, "the daemon grew from {rss_before} to {rss_after} KiB");
}
