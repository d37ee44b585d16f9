//! Typed views of what the daemon says about HTTP: a connection's `http` object (see
//! docs/api.md) and samples of `/metrics`, plus the counts ground truth predicts.
use serde::Deserialize;

use crate::observer::Connection;

/// One window of a connection's HTTP counts (`lifetime`, `last_10s`, `last_60s`). Equal when the
/// counts are equal and the ratios agree to 1e-12 (JSON numbers are not parsed to the last bit).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Window {
    pub requests: u64,
    pub responses_1xx: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub no_response: u64,
    pub failed: u64,
    pub error_ratio: f64,
}

impl PartialEq for Window {
    fn eq(&self, o: &Window) -> bool {
        (self.requests, self.responses_1xx, self.responses_2xx, self.responses_3xx, self.responses_4xx, self.responses_5xx, self.no_response, self.failed)
            == (o.requests, o.responses_1xx, o.responses_2xx, o.responses_3xx, o.responses_4xx, o.responses_5xx, o.no_response, o.failed)
            && (self.error_ratio - o.error_ratio).abs() <= 1e-12
    }
}

impl Window {
    /// What a connection that carried `requests` requests, received the status lines `statuses`
    /// (interim 1xx included) and ended with `no_response` requests unanswered must show:
    /// `failed` = 5xx + unanswered, `error_ratio` = failed / (final responses + unanswered).
    pub fn expected(requests: u64, statuses: &[u16], no_response: u64) -> Window {
        let mut w = Window { requests, no_response, ..Window::default() };
        for s in statuses {
            match s / 100 {
                1 => w.responses_1xx += 1,
                2 => w.responses_2xx += 1,
                3 => w.responses_3xx += 1,
                4 => w.responses_4xx += 1,
                5 => w.responses_5xx += 1,
                _ => panic!("status {s} has no class"),
            }
        }
        w.failed = w.responses_5xx + no_response;
        let exchanges = w.responses_2xx + w.responses_3xx + w.responses_4xx + w.responses_5xx + no_response;
        w.error_ratio = if exchanges == 0 { 0.0 } else { w.failed as f64 / exchanges as f64 };
        w
    }

    /// All responses, interim and final.
    pub fn responses(&self) -> u64 {
        self.responses_1xx + self.responses_2xx + self.responses_3xx + self.responses_4xx + self.responses_5xx
    }

    /// Nothing counted at all.
    pub fn is_zero(&self) -> bool {
        self.requests == 0 && self.responses() == 0 && self.no_response == 0 && self.failed == 0
    }
}

/// One entry of `http.recent`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Exchange {
    pub time: f64,
    pub status: u16,
    pub method: Option<String>,
    pub target: Option<String>,
    pub latency_ms: Option<f64>,
}

/// A connection's `http` object.
#[derive(Clone, Debug, Deserialize)]
pub struct HttpView {
    pub lifetime: Window,
    pub last_10s: Window,
    pub last_60s: Window,
    pub last_status: Option<u16>,
    pub in_flight: u64,
    pub framing_lost: u64,
    pub in_sync: bool,
    pub recent: Vec<Exchange>,
}

impl HttpView {
    /// The statuses of `recent`, oldest first.
    pub fn recent_statuses(&self) -> Vec<u16> {
        self.recent.iter().map(|e| e.status).collect()
    }

    /// `(method, target)` of each entry of `recent`, oldest first.
    pub fn recent_requests(&self) -> Vec<(String, String)> {
        self.recent.iter().map(|e| (e.method.clone().unwrap_or_default(), e.target.clone().unwrap_or_default())).collect()
    }
}

/// The `http` object of a connection: `None` when it is absent or null. Panics when it does not
/// have the documented shape.
pub fn http_of(c: &Connection) -> Option<HttpView> {
    match c.extra.get("http") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("the http object of {} does not have the documented shape ({e}): {v}", c.connection))),
    }
}

/// A string field of a connection (`status`, `role`, `close_reason`, ...), `""` when absent or null.
pub fn field<'a>(c: &'a Connection, name: &str) -> &'a str {
    c.extra.get(name).and_then(|v| v.as_str()).unwrap_or("")
}

/// A numeric field of a connection that the harness's [`Connection`] does not name, 0 when absent.
pub fn number(c: &Connection, name: &str) -> f64 {
    c.extra.get(name).and_then(|v| v.as_f64()).unwrap_or(0.0)
}

/// The connection has ended and its HTTP state is final: status `closed` and no request waiting
/// (a closed connection's unanswered requests are moved to `no_response` when it is finalised).
pub fn settled(c: &Connection) -> bool {
    field(c, "status") == "closed" && http_of(c).is_none_or(|h| h.in_flight == 0)
}

/// A `/metrics` answer.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub text: String,
}

impl Metrics {
    pub fn new(text: String) -> Metrics {
        Metrics { text }
    }

    /// The sum of the samples of `name` whose labels include every pair of `labels` (0 when there
    /// are none: a counter that never moved is absent).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for line in self.text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let (n, l) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
                None => (series, ""),
            };
            if n != name {
                continue;
            }
            let pairs: Vec<(&str, &str)> = l.split(',').filter_map(|p| p.split_once('=')).map(|(k, v)| (k, v.trim_matches('"'))).collect();
            if labels.iter().all(|want| pairs.contains(want)) {
                sum += value.parse::<f64>().unwrap_or_else(|_| panic!("metric line {line:?}: not a number"));
            }
        }
        sum
    }

    /// [`Metrics::value`] of a counter, as an integer.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self.value(name, labels);
        assert!(v >= 0.0 && v.fract() == 0.0, "{name} {labels:?} = {v} is not a count");
        v as u64
    }
}

/// The kernel's own HTTP counts of a connection (`http_kernel`, see docs/api.md).
#[derive(Clone, Debug, Deserialize)]
pub struct KernelHttp {
    pub requests: u64,
    pub responses: std::collections::BTreeMap<String, u64>,
    pub in_flight: u64,
    pub unanswered: u64,
    pub lost_in: Option<String>,
    pub lost_out: Option<String>,
}

/// `http_kernel` of a connection: `None` when absent or null.
pub fn kernel_http_of(c: &Connection) -> Option<KernelHttp> {
    match c.extra.get("http_kernel") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("the http_kernel object of {} does not have the documented shape ({e}): {v}", c.connection))),
    }
}

/// The differential check: where the kernel framed a settled connection without losing its
/// place, its counts equal the daemon's (the reference framer) exactly. `Err` says how they differ.
pub fn kernel_agrees(c: &Connection) -> Result<(), String> {
    let Some(k) = kernel_http_of(c) else { return Ok(()) };
    if k.lost_in.is_some() || k.lost_out.is_some() {
        return Ok(());
    }
    let Some(h) = http_of(c) else {
        return Err(format!("{}: the kernel counted HTTP ({k:?}), the daemon saw none", c.connection));
    };
    let l = &h.lifetime;
    let class = |n: &str| k.responses.get(n).copied().unwrap_or(0);
    let kernel = (k.requests, class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx"), k.unanswered);
    let daemon = (l.requests, l.responses_1xx, l.responses_2xx, l.responses_3xx, l.responses_4xx, l.responses_5xx, l.no_response);
    if kernel != daemon {
        return Err(format!("{}: kernel (requests, 1xx..5xx, unanswered) {kernel:?} vs daemon {daemon:?}", c.connection));
    }
    Ok(())
}
