//! The lab and the checks of the hostile-traffic tests (tests/tests/hostile_*.rs): a topology whose
//! nginx the test configures, and exact counts checked against what raw clients sent and received
//! (their own response framing) and each nginx's access log, where they are knowable.
use std::{collections::BTreeMap, fmt::Write as _, fs, net::SocketAddr, time::Duration};

use ::observer::model::KernelHttp;

use crate::{
    addr::{self, proxy_v4 as proxy, upstream_http},
    http_view::{expected_window, kernel_classes, status_classes, Metrics, WindowExt},
    poll, Connection, Nginx, Observer, Snapshot, Topology,
};

/// How long a test waits for the daemon's view to reach the expected counts: a bound on failure
/// only (success returns at once).
pub const SETTLE: Duration = Duration::from_secs(30);

/// The kernel's (requests, responses by class, unanswered), classes that occur only.
fn kernel_counts(k: &KernelHttp) -> (u64, BTreeMap<String, u64>, u64) {
    (k.requests, kernel_classes(k), k.unanswered)
}

/// Checks a settled connection's HTTP counts against `requests` requests answered by `statuses`:
/// the daemon's `http.lifetime` always; the kernel's `http_kernel` too where the kernel kept its
/// place in both directions (where it handed a direction over to the daemon's framer, its own
/// counts stop there and `http` is the view that must be exact, as in http_keepalive.rs's pipelining test).
/// `Err` says what differs.
pub fn check_http(c: &Connection, requests: u64, statuses: &[u16]) -> Result<&'static str, String> {
    let want = expected_window(requests, statuses, 0);
    let h = c.http.as_ref().ok_or_else(|| format!("{}: no http object", c.connection))?;
    // A view may say it missed records only when the kernel refused some of this connection's
    // (a full ring, under load): then the kernel's counts carry the view, which says so.
    let honest_gap = c.payload_records_lost > 0 && h.framing_lost > 0 && !h.in_sync;
    if !h.lifetime.same_as(&want) || h.in_flight != 0 || (!honest_gap && (h.framing_lost != 0 || !h.in_sync)) {
        return Err(format!(
            "{}: http.lifetime {:?} (in_flight {}, framing_lost {}, in_sync {}), want {want:?}",
            c.connection, h.lifetime, h.in_flight, h.framing_lost, h.in_sync
        ));
    }
    let Some(k) = &c.http_kernel else { return Ok("http (no http_kernel)") };
    if k.lost_in.is_some() || k.lost_out.is_some() {
        return Ok("http (the kernel handed over)");
    }
    let want_k = (requests, status_classes(statuses), 0);
    if kernel_counts(k) != want_k {
        return Err(format!("{}: http_kernel {:?}, want {want_k:?} ({k:?})", c.connection, kernel_counts(k)));
    }
    Ok("http and http_kernel")
}

/// Polls `probe` until it returns `Ok`, up to [`SETTLE`]; panics with its last `Err` otherwise.
pub fn wait_ok<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    poll(SETTLE, Duration::from_millis(100), || match probe() {
        Ok(v) => Some(v),
        Err(e) => {
            last = e;
            None
        }
    })
    .unwrap_or_else(|| panic!("waited {SETTLE:?} for {what}; last:\n{last}"))
}

/// The single entry whose peer is `remote`.
pub fn only_entry(snap: &Snapshot, remote: SocketAddr) -> Result<&Connection, String> {
    match snap.with_remote(remote)[..] {
        [c] => Ok(c),
        ref v => Err(format!("{} entries for peer {remote}", v.len())),
    }
}

/// `/metrics`: requests and responses by code of `role` on port 80.
pub fn metric_counts(m: &Metrics, role: &str, codes: &[u16]) -> (u64, BTreeMap<u16, u64>) {
    let by_code = codes
        .iter()
        .map(|c| (*c, m.count("observer_http_responses_total", &[("role", role), ("port", "80"), ("code", &c.to_string())])))
        .filter(|(_, n)| *n > 0)
        .collect();
    (m.count("observer_http_requests_total", &[("role", role), ("port", "80")]), by_code)
}

/// Responses by status code.
pub fn by_code(statuses: &[u16]) -> BTreeMap<u16, u64> {
    let mut m = BTreeMap::new();
    for s in statuses {
        *m.entry(*s).or_default() += 1;
    }
    m
}

/// A topology with an upstream nginx and a proxy configured by the test, then the observer
/// (started last: nothing before the test's traffic is counted). Fields drop in declaration
/// order: the observer stops first.
pub struct CustomLab {
    pub observer: Observer,
    pub proxy: Nginx,
    pub upstream: Nginx,
    pub topo: Topology,
}

impl CustomLab {
    /// The upstream serves `/ok`, `/status/404` and files under `/size/` (none yet: see
    /// [`CustomLab::size_path`]); `upstream_extra` and `proxy_extra` are directives for their
    /// `server` blocks; the proxy passes everything to the upstream (HTTP/1.0, one upstream
    /// connection per request) with `proxy_location` inside its `location /`.
    pub fn start(test: &str, upstream_extra: &str, proxy_extra: &str, proxy_location: &str) -> CustomLab {
        let topo = Topology::new(test);
        let dir = topo.path("upstream");
        fs::create_dir_all(dir.join("www/size")).expect("creating the upstream's document root");
        let mut up = String::new();
        writeln!(up, "        root {};", dir.join("www").display()).unwrap();
        up.push_str(upstream_extra);
        writeln!(up, "        location = /ok {{ return 200 \"ok\\n\"; }}").unwrap();
        writeln!(up, "        location = /status/404 {{ return 404 \"status 404\\n\"; }}").unwrap();
        writeln!(up, "        location /size/ {{ }}").unwrap();
        let upstream = Nginx::start(&topo.upstream, "upstream", dir, vec![upstream_http()], &up);
        let mut px = String::new();
        px.push_str(proxy_extra);
        writeln!(px, "        location / {{ proxy_pass http://{}:80; {proxy_location} }}", addr::UPSTREAM_V4).unwrap();
        let proxy = Nginx::start(&topo.gateway, "proxy", topo.path("proxy"), vec![proxy()], &px);
        let observer = Observer::start(&topo);
        CustomLab { observer, proxy, upstream, topo }
    }

    /// Where the upstream's `/size/<n>` file goes.
    pub fn size_path(&self, n: u64) -> std::path::PathBuf {
        self.upstream.dir.join("www/size").join(n.to_string())
    }
}

/// Parses one whole response read until close: (status, Content-Length, head length).
pub fn parse_response(bytes: &[u8]) -> (u16, usize, usize) {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("a status line in {head:?}"));
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("a Content-Length in {head:?}"));
    (status, length, head_end)
}
