//! Which request a `response` line answers, for the traces that keep only some statuses: they
//! drop the `request` lines, and "502" alone does not say what failed. The hub sees every line
//! of a followed connection in the order framing found them, so it keeps, per connection, the
//! requests not answered yet and pairs each final response with the oldest: HTTP/1.x answers
//! pipelined requests in the order they were sent (RFC 9112, section 9.3.2).
//!
//! A response goes out without its request rather than with a wrong one: whenever the queue may
//! not hold every unanswered request (a trace that starts mid-connection, a connection forgotten
//! past the bound, framing that lost its place), pairing waits until a response's latency points
//! at the first request waiting.
#![forbid(unsafe_code)]
use std::collections::{HashMap, VecDeque};

use observer_common::conn::ConnKey;

use crate::model::TimelineEvent;

/// Requests waiting per connection. Pipelining clients send a few at a time; a queue this deep is
/// a client that does not wait for answers at all.
pub const MAX_WAITING: usize = 16;
/// Bytes of methods and targets waiting per connection (a target may be a few KiB long).
pub const MAX_WAITING_BYTES: usize = 4096;
/// Connections remembered; past this the least recently active one is forgotten.
pub const MAX_CONNECTIONS: usize = 1024;
/// How close a response's `time - latency` must come to a request's `time` to be its answer.
/// Both are the kernel's timestamp of the same record when framing is in the kernel (they differ
/// by float rounding only, under a microsecond); far below the time between two requests a
/// client writes separately. (With `--http-framing daemon` a request head split over segments is
/// timed from its first: out of step, its response then goes out without it.) Two requests
/// written together, one before a trace started and one after, are the case this cannot tell
/// apart.
const SAME_REQUEST_SECONDS: f64 = 100e-6;

/// The request a response answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
}

struct Waiting {
    request: Request,
    /// Unix seconds of the `request` line.
    time: f64,
}

#[derive(Default)]
struct Conn {
    waiting: VecDeque<Waiting>,
    /// Bytes of `waiting`'s methods and targets.
    bytes: usize,
    /// Requests behind `waiting` that did not fit, counted only: they are answered after
    /// `waiting` is, and their responses go out without method and target.
    overflow: u64,
    /// `waiting` then `overflow` are every request not answered yet: the connection was followed
    /// from its start, or a response's latency pointed at the first of `waiting`. Until then the
    /// first response may answer a request sent before anyone followed, and only its latency
    /// can say which request it answers.
    in_step: bool,
    /// When this connection was last seen, in lines observed (for forgetting the least recent).
    last_seen: u64,
}

impl Conn {
    fn push(&mut self, request: Request, time: f64) {
        let size = request.method.len() + request.target.len();
        // Past the bound the request is counted, in its place in the order, and nothing more:
        // its response goes out without method and target, and so does every later one until
        // the counted requests are answered.
        if self.overflow > 0 || self.waiting.len() >= MAX_WAITING || self.bytes + size > MAX_WAITING_BYTES {
            self.overflow += 1;
        } else {
            self.bytes += size;
            self.waiting.push_back(Waiting { request, time });
        }
    }

    fn pop(&mut self) -> Option<Request> {
        let w = self.waiting.pop_front()?;
        self.bytes -= w.request.method.len() + w.request.target.len();
        Some(w.request)
    }

    /// A final response (`answered`: Unix seconds of the request it answers, from its latency).
    fn answer(&mut self, answered: Option<f64>) -> Option<Request> {
        if let Some(a) = answered {
            // Requests sent before the one answered never had a response here: answered while
            // nobody followed, or by an earlier use of the four-tuple.
            while self.waiting.front().is_some_and(|w| w.time + SAME_REQUEST_SECONDS < a) {
                self.pop();
                self.in_step = false;
            }
        }
        match (self.waiting.front(), answered) {
            (Some(_), _) if self.in_step => self.pop(),
            (Some(first), Some(a)) if a >= first.time - SAME_REQUEST_SECONDS => {
                self.in_step = true;
                self.pop()
            }
            // Sent before anyone followed; the queue stays for the responses after it.
            (Some(_), _) => None,
            (None, _) if self.in_step => {
                self.overflow = self.overflow.saturating_sub(1);
                None
            }
            // Out of step, the count of requests beyond the queue means nothing: counting no more
            // lets the next requests wait in the queue, where a latency can find them.
            (None, _) => {
                self.overflow = 0;
                None
            }
        }
    }
}

/// The requests waiting on each followed connection.
#[derive(Default)]
pub struct Pairing {
    conns: HashMap<ConnKey, Conn>,
    /// Lines observed: the clock of `Conn::last_seen`.
    seen: u64,
}

impl Pairing {
    /// Takes note of `line`, a timeline line of connection `key`; for a `response`, the request
    /// it answers when that is known.
    pub fn observe(&mut self, key: &ConnKey, line: &TimelineEvent) -> Option<Request> {
        match line {
            TimelineEvent::Opened { .. } => {
                // Nothing of this connection is unanswered yet. Requests already waiting are its
                // first ones (lines come from two rings, in no order between them), or an earlier
                // use of the four-tuple's, never answered: the latency of the first response
                // tells which (`Conn::answer` drops the older ones).
                let c = self.conn(key);
                c.in_step = c.waiting.is_empty() && c.overflow == 0;
                None
            }
            TimelineEvent::Request { time, method, target, .. } => {
                let request = Request { method: method.clone(), target: target.clone() };
                self.conn(key).push(request, *time);
                None
            }
            TimelineEvent::Response { time, status, latency_ms, .. } => {
                let c = self.conn(key);
                // An interim response (100 Continue, 103 Early Hints) answers nothing yet: it is
                // about the first request waiting. 101 switches protocols: that is the answer.
                if *status < 200 && *status != 101 {
                    return c.waiting.front().filter(|_| c.in_step).map(|w| w.request.clone());
                }
                let answered = latency_ms.map(|ms| time - ms / 1e3);
                c.answer(answered)
            }
            // The unanswered requests were counted as such (the connection ended), or there is
            // no HTTP to pair.
            TimelineEvent::NoResponse { .. } | TimelineEvent::NotHttp { .. } => {
                self.conns.remove(key);
                None
            }
            // Framing starts again at the next message: requests in the lost bytes were not seen.
            TimelineEvent::FramingLost { .. } => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.in_step = false;
                }
                None
            }
            TimelineEvent::Subscribed { .. } | TimelineEvent::Closed { .. } | TimelineEvent::Reset { .. } | TimelineEvent::Packet { .. } => None,
        }
    }

    /// Forgets the connections `keep` does not want (nobody follows them by status any more).
    pub fn retain(&mut self, keep: impl Fn(&ConnKey) -> bool) {
        self.conns.retain(|k, _| keep(k));
    }

    fn conn(&mut self, key: &ConnKey) -> &mut Conn {
        self.seen += 1;
        if self.conns.len() >= MAX_CONNECTIONS && !self.conns.contains_key(key) {
            // Forgotten, a connection starts again out of step if it is seen again: its next
            // responses go out without method and target until one's latency matches.
            if let Some(oldest) = self.conns.iter().min_by_key(|(_, c)| c.last_seen).map(|(k, _)| *k) {
                self.conns.remove(&oldest);
            }
        }
        let c = self.conns.entry(*key).or_default();
        c.last_seen = self.seen;
        c
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{query::parse_connection, trace::lines};

    const T: f64 = 1_750_000_000.0;

    fn key(port: u16) -> ConnKey {
        parse_connection(&format!("198.18.1.1:80 198.18.1.2:{port}")).unwrap()
    }

    fn opened(ms: f64) -> TimelineEvent {
        lines::opened(T + ms / 1e3)
    }

    fn request(ms: f64, target: &str) -> TimelineEvent {
        lines::request(T + ms / 1e3, target)
    }

    /// A response at `ms` to a request sent at `sent_ms` (its latency), or with none known.
    fn response(ms: f64, status: u16, sent_ms: Option<f64>) -> TimelineEvent {
        lines::response(T + ms / 1e3, status, sent_ms.map(|s| ms - s))
    }

    fn target(r: Option<Request>) -> Option<String> {
        r.map(|r| format!("{} {}", r.method, r.target))
    }

    #[test]
    fn pipelined_responses_answer_the_requests_in_order() {
        let (mut p, k) = (Pairing::default(), key(5000));
        p.observe(&k, &opened(0.0));
        for (ms, t) in [(1.0, "/a"), (1.0, "/b"), (2.0, "/c")] {
            assert_eq!(p.observe(&k, &request(ms, t)), None);
        }
        assert_eq!(target(p.observe(&k, &response(5.0, 200, Some(1.0)))).as_deref(), Some("GET /a"));
        assert_eq!(target(p.observe(&k, &response(5.0, 502, Some(1.0)))).as_deref(), Some("GET /b"));
        p.observe(&k, &request(6.0, "/d"));
        assert_eq!(target(p.observe(&k, &response(7.0, 503, Some(2.0)))).as_deref(), Some("GET /c"));
        // The latency is not needed once in step.
        assert_eq!(target(p.observe(&k, &response(8.0, 404, None))).as_deref(), Some("GET /d"));
        assert_eq!(p.observe(&k, &response(9.0, 500, None)), None, "nothing waits");
    }

    #[test]
    fn an_interim_response_names_the_request_without_answering_it() {
        let (mut p, k) = (Pairing::default(), key(5000));
        p.observe(&k, &opened(0.0));
        p.observe(&k, &TimelineEvent::Request { time: T, connection: String::new(), method: "PUT".into(), target: "/upload".into() });
        p.observe(&k, &request(1.0, "/next"));
        assert_eq!(target(p.observe(&k, &response(1.0, 100, None))).as_deref(), Some("PUT /upload"));
        assert_eq!(target(p.observe(&k, &response(3.0, 100, None))).as_deref(), Some("PUT /upload"), "a second 100 still waits");
        assert_eq!(target(p.observe(&k, &response(4.0, 500, Some(0.0)))).as_deref(), Some("PUT /upload"));
        assert_eq!(target(p.observe(&k, &response(5.0, 101, Some(1.0)))).as_deref(), Some("GET /next"), "101 is the answer");
    }

    #[test]
    fn a_trace_that_starts_mid_connection_pairs_once_a_latency_points_at_the_first_request_waiting() {
        let (mut p, k) = (Pairing::default(), key(5000));
        // /early was sent before anyone followed; /seen after.
        p.observe(&k, &request(10.0, "/seen"));
        assert_eq!(p.observe(&k, &response(12.0, 502, Some(5.0))), None, "the answer to /early is not /seen's");
        assert_eq!(p.observe(&k, &response(13.0, 502, None)), None, "without a latency, no telling");
        assert_eq!(target(p.observe(&k, &response(14.0, 503, Some(10.0)))).as_deref(), Some("GET /seen"));
        // In step from there on.
        p.observe(&k, &request(15.0, "/then"));
        assert_eq!(target(p.observe(&k, &response(16.0, 500, None))).as_deref(), Some("GET /then"));
    }

    #[test]
    fn requests_answered_unseen_are_dropped_and_an_earlier_use_of_the_four_tuple_is_forgotten() {
        let (mut p, k) = (Pairing::default(), key(5000));
        p.observe(&k, &opened(0.0));
        p.observe(&k, &request(1.0, "/old"));
        // A new connection on the same four-tuple (its `opened` line not seen yet) asks /new.
        p.observe(&k, &request(20.0, "/new"));
        assert_eq!(target(p.observe(&k, &response(21.0, 502, Some(20.0)))).as_deref(), Some("GET /new"), "/old was never answered here");
        // Its `opened` line comes after its first request: that request may be an earlier
        // connection's, until a latency says.
        p.observe(&k, &request(30.0, "/old2"));
        p.observe(&k, &request(41.0, "/new2"));
        p.observe(&k, &opened(40.0));
        assert_eq!(p.observe(&k, &response(42.0, 502, None)), None, "no telling which connection's");
        assert_eq!(target(p.observe(&k, &response(43.0, 502, Some(41.0)))).as_deref(), Some("GET /new2"));
        // A first request before the `opened` line (in the segment that completed the handshake).
        p.observe(&k, &request(59.9, "/first"));
        p.observe(&k, &opened(60.0));
        p.observe(&k, &request(61.0, "/second"));
        assert_eq!(target(p.observe(&k, &response(62.0, 200, Some(59.9)))).as_deref(), Some("GET /first"));
        assert_eq!(target(p.observe(&k, &response(63.0, 502, None))).as_deref(), Some("GET /second"), "in step");
    }

    #[test]
    fn past_the_bound_responses_go_out_without_a_request_rather_than_a_wrong_one() {
        let (mut p, k) = (Pairing::default(), key(5000));
        p.observe(&k, &opened(0.0));
        for i in 0..MAX_WAITING + 2 {
            p.observe(&k, &request(1.0, &format!("/{i}")));
        }
        for i in 0..MAX_WAITING {
            assert_eq!(target(p.observe(&k, &response(2.0, 502, None))), Some(format!("GET /{i}")));
        }
        // The two counted beyond the queue, and a request sent meanwhile, which waits behind them.
        p.observe(&k, &request(3.0, "/after"));
        assert_eq!(p.observe(&k, &response(4.0, 502, None)), None);
        assert_eq!(p.observe(&k, &response(4.0, 502, None)), None);
        assert_eq!(p.observe(&k, &response(4.0, 502, None)), None, "/after was counted too: it came behind them");
        p.observe(&k, &request(5.0, "/again"));
        assert_eq!(target(p.observe(&k, &response(6.0, 502, None))).as_deref(), Some("GET /again"), "in the queue again");

        // The bytes are bounded too: a long target is counted, not kept.
        let long = "/".repeat(MAX_WAITING_BYTES);
        p.observe(&k, &request(7.0, &long));
        p.observe(&k, &request(7.0, "/short"));
        assert_eq!(p.observe(&k, &response(8.0, 414, None)), None);
        assert_eq!(p.observe(&k, &response(8.0, 502, None)), None);

        // Out of step with requests counted beyond the queue, the count is dropped: the next
        // request waits in the queue, and only its own response takes it.
        let (mut p, k) = (Pairing::default(), key(5001));
        p.observe(&k, &request(10.0, &long));
        p.observe(&k, &request(10.0, "/counted"));
        assert_eq!(p.observe(&k, &response(11.0, 502, Some(10.0))), None);
        p.observe(&k, &request(12.0, "/queued"));
        assert_eq!(p.observe(&k, &response(13.0, 502, Some(10.0))), None, "the answer to /counted");
        assert_eq!(target(p.observe(&k, &response(14.0, 502, Some(12.0)))).as_deref(), Some("GET /queued"));
    }

    #[test]
    fn the_least_recent_connection_is_forgotten_past_the_bound() {
        let mut p = Pairing::default();
        for port in 0..MAX_CONNECTIONS as u16 {
            p.observe(&key(port), &opened(0.0));
            p.observe(&key(port), &request(1.0, "/x"));
        }
        p.observe(&key(0), &request(2.0, "/y"));
        p.observe(&key(60_000), &opened(0.0));
        assert_eq!(p.len(), MAX_CONNECTIONS);
        // Port 1 was the least recent: seen again, it is out of step.
        assert_eq!(p.observe(&key(1), &response(3.0, 502, None)), None);
        assert_eq!(target(p.observe(&key(0), &response(3.0, 502, None))).as_deref(), Some("GET /x"));
        assert_eq!(p.len(), MAX_CONNECTIONS);
        p.observe(&key(0), &lines::no_response(T));
        p.retain(|k| k.remote_port != 3);
        assert_eq!(p.len(), MAX_CONNECTIONS - 2);
    }
}
