//! What the tests read of the daemon's HTTP views (a connection's `http` and `http_kernel`, the
//! daemon's own types, see docs/api.md): the window ground truth predicts and how one compares with
//! it, when a connection's HTTP state is final, the kernel's counts against the daemon's; and
//! samples of `/metrics`.
use std::{collections::BTreeMap, fmt::Display};

use ::observer::{
    http::{Counts, WindowView},
    model::{ConnStatus, KernelHttp},
};

use crate::observer::Connection;

/// What a window of a connection that carried `requests` requests, received the status lines
/// `statuses` (interim 1xx included) and ended with `no_response` requests unanswered must show:
/// `failed` = 5xx + unanswered, `error_ratio` = failed / (final responses + unanswered). Worked out
/// here from ground truth, not with the daemon's own arithmetic.
pub fn expected_window(requests: u64, statuses: &[u16], no_response: u64) -> WindowView {
    let mut c = Counts { requests, no_response, ..Counts::default() };
    for s in statuses {
        match s / 100 {
            1 => c.responses_1xx += 1,
            2 => c.responses_2xx += 1,
            3 => c.responses_3xx += 1,
            4 => c.responses_4xx += 1,
            5 => c.responses_5xx += 1,
            _ => panic!("status {s} has no class"),
        }
    }
    let failed = c.responses_5xx + no_response;
    let exchanges = c.responses_2xx + c.responses_3xx + c.responses_4xx + c.responses_5xx + no_response;
    let error_ratio = if exchanges == 0 { 0.0 } else { failed as f64 / exchanges as f64 };
    WindowView { counts: c, failed, error_ratio }
}

/// What the tests ask of a window of a connection's HTTP counts (`lifetime`, `last_10s`, `last_60s`).
pub trait WindowExt {
    /// All responses, interim and final.
    fn responses(&self) -> u64;
    /// Nothing counted at all.
    fn is_zero(&self) -> bool;
    /// The counts are equal and the ratios agree to 1e-12 (JSON numbers are not parsed to the last bit).
    fn same_as(&self, o: &WindowView) -> bool;
}

impl WindowExt for WindowView {
    fn responses(&self) -> u64 {
        let c = &self.counts;
        c.responses_1xx + c.responses_2xx + c.responses_3xx + c.responses_4xx + c.responses_5xx
    }

    fn is_zero(&self) -> bool {
        self.counts.requests == 0 && self.responses() == 0 && self.counts.no_response == 0 && self.failed == 0
    }

    fn same_as(&self, o: &WindowView) -> bool {
        self.counts == o.counts && self.failed == o.failed && (self.error_ratio - o.error_ratio).abs() <= 1e-12
    }
}

/// Asserts that the window `got` (the daemon's) is [`WindowExt::same_as`] `want` (ground truth).
#[track_caller]
pub fn assert_window(got: &WindowView, want: &WindowView, what: impl Display) {
    assert!(got.same_as(want), "{what}\n  observer:     {got:?}\n  ground truth: {want:?}");
}

/// The connection has ended and its HTTP state is final: status `closed` and no request waiting
/// (a closed connection's unanswered requests are moved to `no_response` when it is finalised).
pub fn settled(c: &Connection) -> bool {
    c.status == ConnStatus::Closed && c.http.as_ref().is_none_or(|h| h.in_flight == 0)
}

/// Responses by class (`"2xx"` → n), classes that occur only.
pub fn status_classes(statuses: &[u16]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for s in statuses {
        *m.entry(format!("{}xx", s / 100)).or_default() += 1;
    }
    m
}

/// The kernel's responses by class (`"2xx"` → n), classes that occur only.
pub fn kernel_classes(k: &KernelHttp) -> BTreeMap<String, u64> {
    let r = &k.responses;
    [("1xx", r.informational), ("2xx", r.success), ("3xx", r.redirection), ("4xx", r.client_error), ("5xx", r.server_error)]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(class, n)| (class.to_owned(), n))
        .collect()
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

/// The differential check: where the kernel framed a settled connection without losing its
/// place, its counts equal the daemon's (the reference framer) exactly. `Err` says how they differ.
pub fn kernel_agrees(c: &Connection) -> Result<(), String> {
    let Some(k) = &c.http_kernel else { return Ok(()) };
    if k.lost_in.is_some() || k.lost_out.is_some() {
        return Ok(());
    }
    let Some(h) = &c.http else {
        return Err(format!("{}: the kernel counted HTTP ({k:?}), the daemon saw none", c.connection));
    };
    let (l, r) = (&h.lifetime.counts, &k.responses);
    let kernel = (k.requests, r.informational, r.success, r.redirection, r.client_error, r.server_error, k.unanswered);
    let daemon = (l.requests, l.responses_1xx, l.responses_2xx, l.responses_3xx, l.responses_4xx, l.responses_5xx, l.no_response);
    if kernel != daemon {
        return Err(format!("{}: kernel (requests, 1xx..5xx, unanswered) {kernel:?} vs daemon {daemon:?}", c.connection));
    }
    Ok(())
}
