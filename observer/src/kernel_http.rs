//! The HTTP counts the kernel keeps per connection (`observer_common::frame`, the `HTTP_FRAMES`
//! map), as the API shows them (`http_kernel`): exact where the kernel kept its place, they are
//! also the lifetime counts of the connection's `http` view ([`reconcile`]).
#![forbid(unsafe_code)]

use observer_common::{
    conn::{ConnStats, Role},
    frame::ConnFrame,
    http::{DIR_IN, DIR_OUT},
};
use serde::{Deserialize, Serialize};

/// Responses by status class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classes {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

/// One connection's HTTP as the kernel counted it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelHttp {
    /// Request lines.
    pub requests: u64,
    /// Status lines by class (interim 1xx ones included).
    pub responses: Classes,
    /// Requests waiting for their final response.
    pub in_flight: u64,
    /// Requests the connection ended without answering (once it is closed).
    pub unanswered: u64,
    /// Final responses with no request waiting (framing joined midway).
    pub unmatched_responses: u64,
    /// Mean time from a request's start to its response's status line.
    pub latency_avg_ms: Option<f64>,
    /// Per direction (this host received / sent): null while the kernel follows it, else why it
    /// lost its place (`not_http`, `gap`, `head_too_long`, ...).
    pub lost_in: Option<String>,
    pub lost_out: Option<String>,
}

/// Does `f` belong to the connection whose counters are `s` (and not to another one on the same,
/// reused, four-tuple)? The framing state keeps the client's initial sequence number.
pub fn belongs(f: &ConnFrame, s: &ConnStats) -> bool {
    let client_isn = match Role::from_u8(s.role) {
        Role::Inbound => s.isn_in,
        Role::Outbound => s.isn_out,
        Role::Unknown => return f.client_isn == 0,
    };
    f.client_isn == client_isn
}

impl KernelHttp {
    /// The view of a connection's kernel state; `None` when it framed nothing (no message and no
    /// loss: not a connection the kernel followed from its SYN, or no data yet). `closed`: the
    /// connection ended, so requests still waiting were never answered.
    pub fn of(f: &ConnFrame, closed: bool) -> Option<Self> {
        let c = &f.counts;
        let responses = Classes {
            informational: c.responses_1xx,
            success: c.responses_2xx,
            redirection: c.responses_3xx,
            client_error: c.responses_4xx,
            server_error: c.responses_5xx,
        };
        let (lost_in, lost_out) = (f.lost(DIR_IN).map(|r| r.name().to_owned()), f.lost(DIR_OUT).map(|r| r.name().to_owned()));
        if c.requests == 0 && !c.has_responses() && lost_in.is_none() && lost_out.is_none() {
            return None;
        }
        let in_flight = u64::from(f.in_flight());
        let lost = lost_in.is_some() || lost_out.is_some();
        Some(Self {
            requests: c.requests,
            responses,
            in_flight: if closed { 0 } else { in_flight },
            unanswered: c.unanswered + if closed && !lost { in_flight } else { 0 },
            unmatched_responses: c.unmatched_responses,
            latency_avg_ms: (c.latency_count > 0).then(|| c.latency_sum_ns as f64 / c.latency_count as f64 / 1e6),
            lost_in,
            lost_out,
        })
    }

    /// The lifetime counts as the daemon's view writes them.
    pub fn counts(&self) -> crate::http::Counts {
        let r = &self.responses;
        crate::http::Counts {
            requests: self.requests,
            responses_1xx: r.informational,
            responses_2xx: r.success,
            responses_3xx: r.redirection,
            responses_4xx: r.client_error,
            responses_5xx: r.server_error,
            no_response: self.unanswered,
        }
    }

    /// The kernel followed both directions all along: its counts are exact.
    pub fn in_step(&self) -> bool {
        self.lost_in.is_none() && self.lost_out.is_none()
    }
}

/// A connection's HTTP view with the kernel's exact lifetime counts, where the kernel kept its
/// place: the view is built from the kernel's message records, and a record the full ring
/// refused would leave it short. `closed`: every record has arrived, so a difference means
/// records were lost, and the view says it is not in sync (its windows and recent exchanges miss
/// what they carried).
pub fn reconcile(view: &mut crate::http::HttpView, k: &KernelHttp, closed: bool) {
    if !k.in_step() {
        return;
    }
    let exact = k.counts();
    if view.lifetime.counts != exact {
        if closed {
            view.in_sync = false;
        }
        view.lifetime = exact.into();
    }
}
