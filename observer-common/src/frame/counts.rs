//! What a connection's framing keeps besides its directions: the requests waiting for their
//! responses ([`Pending`]) and the counts ([`FrameCounts`]).

use super::PENDING_DEPTH;

/// Requests waiting for their responses, oldest first: a ring of [`PENDING_DEPTH`] entries.
/// 80 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Per entry (index `& (PENDING_DEPTH - 1)`): the time of the block that completed the
    /// request's start (its first [`START_LEN`](crate::http::START_LEN) bytes, or its whole start line if shorter).
    pub ts_ns: [u64; PENDING_DEPTH],
    /// Per entry: [`ReqFlags`](crate::flags::ReqFlags) as u8 (HEAD, CONNECT).
    pub flags: [u8; PENDING_DEPTH],
    /// Requests answered so far (the oldest waiting one's index). Written by the response direction.
    pub head: u16,
    /// Requests queued so far. Written by the request direction.
    pub tail: u16,
    /// 1 + the direction that carries requests ([`crate::http::DIR_IN`] or `DIR_OUT`); 0 while unknown.
    pub request_dir: u8,
    /// 1 once a response switched the connection to another protocol (101, 2xx to CONNECT).
    /// Written by the response direction (before `head`).
    pub switched: u8,
    pub _pad: [u8; 2],
}

impl Pending {
    pub const fn zeroed() -> Self {
        Self { ts_ns: [0; PENDING_DEPTH], flags: [0; PENDING_DEPTH], head: 0, tail: 0, request_dir: 0, switched: 0, _pad: [0; 2] }
    }

    /// Requests waiting for a (final) response.
    #[inline(always)]
    pub const fn in_flight(&self) -> u16 {
        self.tail.wrapping_sub(self.head)
    }
}

/// What framing counted on a connection. 80 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounts {
    /// Requests (counted at their start line).
    pub requests: u64,
    /// Responses by status class (counted at their status line; 1xx interim ones included).
    pub responses_1xx: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    /// Sum of request start → response start over answered requests (final or 101 responses
    /// paired with a waiting request), and how many those are.
    pub latency_sum_ns: u64,
    pub latency_count: u64,
    /// Final responses with no request waiting (framing joined midway, or missed the request).
    pub unmatched_responses: u64,
    /// Requests the connection ended without answering ([`ConnFrame::close`](super::ConnFrame::close)).
    pub unanswered: u64,
}

impl FrameCounts {
    pub const fn zeroed() -> Self {
        Self {
            requests: 0,
            responses_1xx: 0,
            responses_2xx: 0,
            responses_3xx: 0,
            responses_4xx: 0,
            responses_5xx: 0,
            latency_sum_ns: 0,
            latency_count: 0,
            unmatched_responses: 0,
            unanswered: 0,
        }
    }

    /// Any status line counted (interim ones included).
    #[inline(always)]
    pub const fn has_responses(&self) -> bool {
        self.responses_1xx | self.responses_2xx | self.responses_3xx | self.responses_4xx | self.responses_5xx != 0
    }

    #[inline(always)]
    pub(super) fn add_status(&mut self, status: u16) {
        if status < 200 {
            self.responses_1xx = self.responses_1xx.wrapping_add(1);
        } else if status < 300 {
            self.responses_2xx = self.responses_2xx.wrapping_add(1);
        } else if status < 400 {
            self.responses_3xx = self.responses_3xx.wrapping_add(1);
        } else if status < 500 {
            self.responses_4xx = self.responses_4xx.wrapping_add(1);
        } else {
            self.responses_5xx = self.responses_5xx.wrapping_add(1);
        }
    }
}
