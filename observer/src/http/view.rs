//! What the API shows of a connection's HTTP: [`Counts`] over a window or a lifetime, a
//! window's [`WindowView`] (counts and ratios), the recent [`Exchange`]s, the whole [`HttpView`];
//! and [`HttpRecord`], what history keeps of a closed connection to make the same view.
use serde::{Deserialize, Serialize};

use super::{window::window, Text};

/// One response as history remembers it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exchange {
    /// Unix time of the status line, seconds.
    pub time: f64,
    #[serde(skip)]
    pub ts_ns: u64,
    pub status: u16,
    pub method: Option<Text>,
    pub target: Option<Text>,
    /// From the request's first byte to the response's status line.
    pub latency_ms: Option<f64>,
}

/// Counts over a window or a lifetime.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub responses_1xx: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    /// Requests the connection ended without answering (reset or close).
    pub no_response: u64,
}

impl Counts {
    pub(super) fn add_status(&mut self, status: u16) {
        match status / 100 {
            1 => self.responses_1xx += 1,
            2 => self.responses_2xx += 1,
            3 => self.responses_3xx += 1,
            4 => self.responses_4xx += 1,
            _ => self.responses_5xx += 1,
        }
    }

    pub(super) fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.responses_1xx += o.responses_1xx;
        self.responses_2xx += o.responses_2xx;
        self.responses_3xx += o.responses_3xx;
        self.responses_4xx += o.responses_4xx;
        self.responses_5xx += o.responses_5xx;
        self.no_response += o.no_response;
    }

    /// Failed exchanges: 5xx responses and requests that got none.
    pub fn failed(&self) -> u64 {
        self.responses_5xx + self.no_response
    }

    /// Failed over completed exchanges (final responses plus unanswered requests); 0 without any.
    pub fn error_ratio(&self) -> f64 {
        let exchanges = self.responses_2xx + self.responses_3xx + self.responses_4xx + self.responses_5xx + self.no_response;
        if exchanges == 0 {
            0.0
        } else {
            self.failed() as f64 / exchanges as f64
        }
    }
}

/// The counts and ratios of one window, as the API shows them.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct WindowView {
    #[serde(flatten)]
    pub counts: Counts,
    pub failed: u64,
    pub error_ratio: f64,
}

impl From<Counts> for WindowView {
    fn from(counts: Counts) -> Self {
        Self { failed: counts.failed(), error_ratio: counts.error_ratio(), counts }
    }
}

/// A connection's HTTP summary for the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpView {
    pub lifetime: WindowView,
    pub last_10s: WindowView,
    pub last_60s: WindowView,
    pub last_status: Option<u16>,
    /// Requests sent and not answered yet.
    pub in_flight: usize,
    /// Times framing lost its place (bytes the daemon never got) and started again.
    pub framing_lost: u64,
    /// Whether framing currently knows where messages start in both directions.
    pub in_sync: bool,
    pub recent: Vec<Exchange>,
}

#[expect(clippy::too_many_arguments, reason = "one view from the parts of a live or an archived connection")]
pub(super) fn make_view<'a>(
    lifetime: &Counts,
    seconds: impl Iterator<Item = &'a (u64, Counts)> + Clone,
    last_status: Option<u16>,
    in_flight: usize,
    framing_lost: u64,
    in_sync: bool,
    recent: impl Iterator<Item = &'a Exchange>,
    now_ns: u64,
    to_unix: &dyn Fn(u64) -> f64,
) -> HttpView {
    HttpView {
        lifetime: (*lifetime).into(),
        last_10s: window(seconds.clone(), now_ns, 10).into(),
        last_60s: window(seconds, now_ns, 60).into(),
        last_status,
        in_flight,
        framing_lost,
        in_sync,
        recent: recent.map(|e| Exchange { time: to_unix(e.ts_ns), ..e.clone() }).collect(),
    }
}

/// A closed connection's HTTP summary, as history keeps it (compact: no buffers).
pub struct HttpRecord {
    pub(super) in_sync: bool,
    pub(super) lifetime: Counts,
    pub(super) seconds: Vec<(u64, Counts)>,
    pub(super) last_status: Option<u16>,
    pub(super) framing_lost: u64,
    pub(super) recent: Vec<Exchange>,
}

impl HttpRecord {
    pub fn view(&self, now_ns: u64, to_unix: &dyn Fn(u64) -> f64) -> HttpView {
        make_view(&self.lifetime, self.seconds.iter(), self.last_status, 0, self.framing_lost, self.in_sync, self.recent.iter(), now_ns, to_unix)
    }
}
