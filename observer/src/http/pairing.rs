//! Requests paired with their responses: each message head a connection's framing (or the
//! kernel's message record) finds is counted; a request waits for its response, a final response
//! answers the oldest waiting one (its latency, the recent exchanges), and what happened is an
//! [`Outcome`] for the aggregate metrics.
use observer_common::direction::Direction;

use super::{bounds, conn::HttpConn, framing::Head, text::shown_target, view::Exchange, window, Text};

/// Responses remembered per connection for `GET /api/v1/connections/{c}` and `observer trace`.
pub const RECENT: usize = 32;
/// Requests waiting for their responses whose method, target and time a connection keeps; beyond,
/// a request is only counted as waiting (in order: later ones wait behind it), its response has
/// no latency, and the overflow is counted ([`bounds::PENDING_OVERFLOW`]).
pub const MAX_PENDING: usize = 16_384;

/// What framing produced, for the aggregate metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Request {
        method: Text,
        target: Text,
    },
    Response {
        status: u16,
        latency_ns: Option<u64>,
    },
    NoResponse(u64),
    /// Framing lost its place in a stream and starts again at the next message.
    FramingLost,
    /// The daemon found the connection is not HTTP/1.x (the kernel's first look could not tell).
    NotHttp,
}

/// A request waiting for its response.
pub(super) struct Pending {
    pub(super) method: Text,
    pub(super) target: Text,
    pub(super) ts_ns: u64,
}

impl HttpConn {
    /// A message head of `dir` whose first byte came at `ts_ns`: counted, and paired.
    pub(super) fn on_head(&mut self, dir: Direction, head: Head, ts_ns: u64, out: &mut Vec<Outcome>) {
        self.messages += 1;
        match head {
            Head::Request { method, target, .. } => {
                let target = shown_target(target);
                self.request_dir.get_or_insert(dir);
                self.lifetime.requests += 1;
                window::bucket(&mut self.seconds, ts_ns).requests += 1;
                out.push(Outcome::Request { method: method.clone(), target: target.clone() });
                if self.overflow > 0 || self.pending.len() >= MAX_PENDING {
                    self.overflow += 1;
                    bounds::add(&bounds::PENDING_OVERFLOW);
                } else {
                    self.pending.push_back(Pending { method, target, ts_ns });
                }
            }
            Head::Response { status, .. } => {
                self.request_dir.get_or_insert(dir.opposite());
                self.lifetime.add_status(status);
                window::bucket(&mut self.seconds, ts_ns).add_status(status);
                self.last_status = Some(status);
                // An interim (1xx) response does not answer the request; 101 does (and ends HTTP).
                let answered = if status >= 200 || status == 101 {
                    // Waiting requests beyond the queue are answered once the queue is.
                    let a = self.pending.pop_front();
                    if a.is_none() && self.overflow > 0 {
                        self.overflow -= 1;
                    }
                    a
                } else {
                    None
                };
                let request_dir = dir.opposite();
                let switched = status == 101 || ((200..300).contains(&status) && answered.as_ref().is_some_and(|p| &*p.method == "CONNECT"));
                if switched {
                    // Both directions now carry another protocol.
                    self.tunneled = true;
                    self.dirs[request_dir.index()].framer.tunnel();
                } else if status >= 200 {
                    self.dirs[request_dir.index()].framer.resume();
                }
                let latency_ns = answered.as_ref().map(|p| ts_ns.saturating_sub(p.ts_ns));
                let front = answered.as_ref().or(self.pending.front());
                self.recent.push_back(Exchange {
                    time: 0.0,
                    ts_ns,
                    status,
                    method: front.map(|p| p.method.clone()),
                    target: front.map(|p| p.target.clone()),
                    latency_ms: latency_ns.map(|l| l as f64 / 1e6),
                });
                if self.recent.len() > RECENT {
                    self.recent.pop_front();
                }
                out.push(Outcome::Response { status, latency_ns });
            }
        }
    }
}
