//! HTTP/1.x per connection: each direction's stream rebuilt in order (`stream`), framed into
//! messages (`framing`), requests paired with their responses, counted exactly, with latency and
//! per-second error windows.
//!
//! How a payload record from the kernel flows through the modules:
//! 1. [`table`]: `HttpTable::on_record` finds the connection's state by its four-tuple (made on a
//!    SYN or a first message; a reused four-tuple's old state retired until its close; the least
//!    recently active connection evicted from a full table) and hands the record on. A message
//!    the kernel framed itself (`SEG_MSG`) goes straight to pairing; a hand-off restarts the
//!    daemon's framer; payload goes to the connection. It answers with an `Update`: outcomes,
//!    the role, and hints for the kernel (skip a long body, stop: not HTTP).
//! 2. [`conn`]: `HttpConn` puts a direction's bytes in order ([`stream`]: duplicates dropped,
//!    reordered segments wait for their gap) and frames them into message heads ([`framing`]);
//!    it starts again at the next message when framing lost its place.
//! 3. [`pairing`]: each head is counted; a request waits for its response, a final response
//!    answers the oldest waiting request (its latency, the recent exchanges); each is an
//!    [`Outcome`] for `/metrics`.
//! 4. [`window`]: the counts go into per-second buckets as well as the lifetime counts.
//! 5. [`view`]: the API's [`HttpView`] is made from the counts, the windows and the recent
//!    exchanges; at the close (`HttpTable::close`, unanswered requests counted) history keeps an
//!    [`HttpRecord`] that makes the same view.
//!
//! [`text`] holds the method and target text every step shares; [`bounds`] counts the times the
//! state reached one of its bounds.
#![forbid(unsafe_code)]
mod conn;
#[cfg(test)]
mod differential;
pub mod framing;
mod pairing;
#[cfg(test)]
mod properties;
pub mod stream;
mod table;
#[cfg(test)]
mod testgen;
mod text;
mod view;
mod window;

pub use pairing::Outcome;
pub use table::{HttpTable, StreamEnds};
pub use text::{method_text, set_keep_query, Text};
pub use view::{Counts, Exchange, HttpRecord, HttpView, WindowView};

/// Times the daemon's HTTP state reached one of its bounds, since it started (all connections):
/// `/metrics` says so (`observer_bounds_reached_total`) instead of growing.
pub mod bounds {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Requests waiting beyond [`super::pairing::MAX_PENDING`] on one connection (kept as a count only).
    pub static PENDING_OVERFLOW: AtomicU64 = AtomicU64::new(0);
    /// Retired states dropped: more than 128 for one four-tuple, or as many four-tuples waiting as
    /// the table holds connections.
    pub static RETIRED_DROPPED: AtomicU64 = AtomicU64::new(0);

    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
