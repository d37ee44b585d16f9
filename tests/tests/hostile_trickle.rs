//! A 64 KiB request head sent one byte per segment: counted once, on both sides of the proxy, while
//! the daemon's memory stays bounded.
//!
//! Ground truth: what the raw client sent (one data segment per byte, from its own socket's
//! counters) and received, and each nginx's access log.
use std::{
    fmt::Write as _,
    fs,
    io::{self, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use observer_tests::{
    addr::{proxy_v4 as proxy, upstream_http},
    hostile_lab::{by_code, check_http, metric_counts, only_entry, wait_ok, CustomLab},
    http_view::{settled, Metrics},
    root_or_skip,
    scripted::{self, data_segments_out, ResponseReader},
};

/// The daemon's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// Bytes written to `s` that have not been sent yet (`SIOCOUTQNSD`).
fn unsent_bytes(s: &TcpStream) -> libc::c_int {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: a valid socket and a live c_int for the answer.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCOUTQNSD, &mut n) };
    assert_eq!(rc, 0, "ioctl(SIOCOUTQNSD): {}", io::Error::last_os_error());
    n
}

/// Size of the request head sent one byte per segment.
const TRICKLE_HEAD: usize = 64 * 1024;

#[test]
fn a_64_kib_request_head_sent_one_byte_per_segment_counts_once_in_bounded_memory() {
    const TEST: &str = "a_64_kib_request_head_sent_one_byte_per_segment_counts_once_in_bounded_memory";
    if !root_or_skip(TEST) {
        return;
    }
    let started = Instant::now();
    // nginx's default large_client_header_buffers (4 x 8k) refuses a head over 32 KiB: both nginx
    // get 16 x 8k, so that a 64 KiB head of 1 KiB lines is accepted and proxied (a real exchange,
    // 200, on both sides of the proxy).
    let buffers = "        large_client_header_buffers 16 8k;\n        client_header_timeout 60s;\n";
    let lab = CustomLab::start(TEST, buffers, buffers, "");
    let mut head = String::from("GET /ok HTTP/1.1\r\nHost: gateway\r\n");
    let mut i = 0;
    while head.len() < TRICKLE_HEAD - 1100 {
        // Values made of status lines and request lines: nothing in a head may be taken for a message.
        let _ = write!(head, "X-Hostile-{i:04}: {}\r\n", "HTTP/1.1 200 OK GET / HTTP/1.1 ".repeat(32));
        i += 1;
    }
    let pad = TRICKLE_HEAD - head.len() - "X-Pad: \r\n\r\n".len();
    let _ = write!(head, "X-Pad: {}\r\n\r\n", "p".repeat(pad));
    assert_eq!(head.len(), TRICKLE_HEAD);

    // TCP autocorking would hold a small write back while the previous one is still queued below
    // the socket, merging bytes into one segment: off in the client's namespace.
    lab.topo.client.run("sysctl", ["-q", "-w", "net.ipv4.tcp_autocorking=0"]);
    let pid = lab.observer.pid();
    let rss_before = rss_kib(pid);
    let mut rss_max = rss_before;
    let mut s = scripted::connect(&lab.topo.client, proxy());
    let client_end = s.local_addr().unwrap();
    let segments_before = data_segments_out(&s);
    let deadline = Instant::now() + Duration::from_secs(40);
    for (i, b) in head.as_bytes().iter().enumerate() {
        s.write_all(std::slice::from_ref(b)).expect("writing one byte");
        // The next byte is written only once this one has left: a write that finds unsent data
        // queued (window or congestion limited, or a busy CPU) would join it in one segment.
        while unsent_bytes(&s) > 0 {
            assert!(Instant::now() < deadline, "byte {i} of the head still unsent after 40 s");
            std::thread::yield_now();
        }
        if i % 4096 == 4095 {
            rss_max = rss_max.max(rss_kib(pid));
        }
    }
    let segments = data_segments_out(&s) - segments_before;
    let sent_in = started.elapsed();
    let mut reader = ResponseReader::new(s.try_clone().unwrap());
    let ex = reader.read_exchange(false).expect("the response to the 64 KiB head");
    let statuses: Vec<u16> = ex.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200], "nginx accepts the head (16 x 8k buffers)");
    let received = reader.buffered().len();
    drop(reader);
    let rest = scripted::finish(s).expect("closing");
    assert!(rest.is_empty() && received == 0, "nothing after the response");
    rss_max = rss_max.max(rss_kib(pid));
    eprintln!("{TEST}: {TRICKLE_HEAD} bytes of head in {segments} data segments, in {sent_in:?}");
    assert_eq!(segments as usize, TRICKLE_HEAD, "one data segment per byte of the head (retransmissions not counted)");
    let log = lab.proxy.wait_for_requests(1);
    assert_eq!((log.entries.len(), log.entries[0].status, log.entries[0].request_length), (1, 200, TRICKLE_HEAD as u64), "the proxy's log:\n{}", log.raw);
    let up_log = lab.upstream.wait_for_requests(1);
    assert_eq!(up_log.entries.len(), 1, "{}", up_log.raw);

    let (mode, k) = wait_ok("the trickled connection, settled with one request and one 200", || {
        let snap = lab.observer.connections();
        let c = only_entry(&snap, client_end)?;
        if !settled(c) {
            return Err(format!("{} not settled yet", c.connection));
        }
        if c.bytes_in != TRICKLE_HEAD as u64 {
            return Err(format!("{}: bytes_in {}, the head is {TRICKLE_HEAD}", c.connection, c.bytes_in));
        }
        check_http(c, 1, &statuses).map(|m| (m, c.http_kernel.clone()))
    });
    eprintln!("{TEST}: inbound checked {mode}; http_kernel {k:?}");
    // The proxied request (the same head, in large segments) on the outbound side.
    wait_ok("the outbound connection, settled with one request and one 200", || {
        let snap = lab.observer.connections();
        let c = only_entry(&snap, upstream_http())?;
        if !settled(c) {
            return Err(format!("{} not settled yet", c.connection));
        }
        if c.bytes_in != up_log.entries[0].bytes_sent {
            return Err(format!("{}: bytes_in {}, the upstream sent {}", c.connection, c.bytes_in, up_log.entries[0].bytes_sent));
        }
        check_http(c, 1, &[up_log.entries[0].status])
    });
    let m = Metrics::new(lab.observer.metrics());
    assert_eq!(metric_counts(&m, "inbound", &[200]), (1, by_code(&[200])), "/metrics inbound");
    rss_max = rss_max.max(rss_kib(pid));
    eprintln!("{TEST}: daemon RSS {rss_before} KiB before, at most {rss_max} KiB; {:?} in all", started.elapsed());
    assert!(rss_max < rss_before + 32 * 1024, "the daemon grew from {rss_before} to {rss_max} KiB for one 64 KiB head");
}
