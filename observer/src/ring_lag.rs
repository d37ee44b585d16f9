//! How far behind the kernel each ring-buffer pump is, for `/readyz` and `/api/v1/status`.
//!
//! The kernel cannot tell us how long a record has waited in a ring (its backlog gauge keeps the
//! last value it wrote through quiet periods, so it would report a stale backlog on an idle ring).
//! Each pump says what it knows instead: when it last found its ring empty, and whether it is
//! reading now. Records can have waited at most since the ring was last seen empty; a pump parked
//! after emptying its ring has nothing waiting, except, where the kernel does not wake it for
//! every first record, what arrived since its last look, which waits for its next tick by design.
#![forbid(unsafe_code)]
use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use crate::sys::monotonic_ns;

/// One ring and its pump.
pub struct RingLag {
    /// As operators know the ring: `events`, `payload`, `trace`.
    pub name: &'static str,
    /// `Some(p)`: the kernel wakes the pump only for a backlog (waking per record costs more than
    /// the record), so the pump also looks every `p`. `None`: the kernel wakes it for the first
    /// record after it caught up.
    poll: Option<Duration>,
    /// When the pump last found the ring empty (monotonic ns).
    drained_ns: AtomicU64,
    /// While the pump reads: since when the records it is reading may have waited (monotonic ns).
    /// 0 while it is parked.
    behind_since_ns: AtomicU64,
}

/// Marks the ring drained when dropped: a pump reads until its ring is empty.
pub struct Reading<'a>(&'a RingLag);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.end(monotonic_ns());
    }
}

impl RingLag {
    pub fn new(name: &'static str, poll: Option<Duration>) -> Self {
        Self::new_at(name, poll, monotonic_ns())
    }

    fn new_at(name: &'static str, poll: Option<Duration>, now: u64) -> Self {
        // Nothing was waiting for a pump that did not exist yet.
        Self { name, poll, drained_ns: AtomicU64::new(now), behind_since_ns: AtomicU64::new(0) }
    }

    /// The pump starts reading its ring; it has read it to the end when the guard drops.
    pub fn reading(&self) -> Reading<'_> {
        self.begin(monotonic_ns());
        Reading(self)
    }

    fn begin(&self, now: u64) {
        let since = match self.poll {
            // What a look finds may have come any time since the ring was last empty.
            Some(_) => self.drained_ns.load(Relaxed),
            // The kernel woke the pump with the first of them, a moment ago.
            None => now,
        };
        // 0 means parked: a pump started at boot time 0 is not one.
        self.behind_since_ns.store(since.max(1), Relaxed);
    }

    fn end(&self, now: u64) {
        self.drained_ns.store(now, Relaxed);
        self.behind_since_ns.store(0, Relaxed);
    }

    /// How long records may have waited unread: zero on a drained ring, however long it has been
    /// quiet.
    pub fn lag(&self) -> Duration {
        self.lag_at(monotonic_ns())
    }

    fn lag_at(&self, now: u64) -> Duration {
        let behind = self.behind_since_ns.load(Relaxed);
        let ns = if behind != 0 {
            now.saturating_sub(behind)
        } else {
            match self.poll {
                // Parked: records newer than its last look wait for the next tick, by design; a
                // tick later than that (a pump kept from running) is lag.
                Some(p) => now.saturating_sub(self.drained_ns.load(Relaxed)).saturating_sub(p.as_nanos() as u64),
                None => 0,
            }
        };
        Duration::from_nanos(ns)
    }
}

/// The daemon's three rings.
pub struct RingLags {
    /// Lifecycle events (`pump`).
    pub events: RingLag,
    /// HTTP records (`payload_pump`).
    pub payload: RingLag,
    /// Traced packets (`trace_pump`), woken by the kernel.
    pub trace: RingLag,
}

impl RingLags {
    /// `poll`: how often the event and payload pumps look without being woken.
    pub fn new(poll: Duration) -> Self {
        Self { events: RingLag::new("events", Some(poll)), payload: RingLag::new("payload", Some(poll)), trace: RingLag::new("trace", None) }
    }

    pub fn all(&self) -> [&RingLag; 3] {
        let Self { events, payload, trace } = self;
        [events, payload, trace]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const POLL: Duration = Duration::from_millis(10);

    #[test]
    fn a_quiet_ring_is_drained_however_long_it_stays_quiet() {
        let polled = RingLag::new_at("events", Some(POLL), 1_000 * MS);
        let woken = RingLag::new_at("trace", None, 1_000 * MS);
        for r in [&polled, &woken] {
            // Looked at (every tick for the polled one), found empty.
            r.begin(2_000 * MS);
            r.end(2_000 * MS);
        }
        assert_eq!(polled.lag_at(2_005 * MS), Duration::ZERO, "within its tick");
        // Nobody woke the trace pump for an hour: nothing came.
        assert_eq!(woken.lag_at(3_600_000 * MS), Duration::ZERO);
    }

    #[test]
    fn records_waiting_while_the_pump_reads_age_from_when_the_ring_was_last_empty() {
        let r = RingLag::new_at("payload", Some(POLL), 0);
        r.end(1_000 * MS);
        // The next look finds records (they came after the last empty look) and is slow (a held
        // lock, a flood): they have been waiting since then.
        r.begin(1_010 * MS);
        assert_eq!(r.lag_at(1_500 * MS), Duration::from_millis(500));
        assert_eq!(r.lag_at(3_000 * MS), Duration::from_millis(2_000));
        r.end(3_000 * MS);
        assert_eq!(r.lag_at(3_001 * MS), Duration::ZERO, "read to the end: drained");
    }

    #[test]
    fn a_woken_pump_is_behind_from_its_wakeup_not_from_its_last_records() {
        let r = RingLag::new_at("trace", None, 0);
        r.end(1_000 * MS);
        // A trace starts an hour later.
        r.begin(3_600_000 * MS);
        assert_eq!(r.lag_at(3_600_000 * MS + 20 * MS), Duration::from_millis(20));
        r.end(3_600_000 * MS + 20 * MS);
        assert_eq!(r.lag_at(3_700_000 * MS), Duration::ZERO);
    }

    #[test]
    fn a_polled_pump_that_misses_its_ticks_falls_behind() {
        let r = RingLag::new_at("events", Some(POLL), 0);
        r.end(1_000 * MS);
        // Parked, but its timer has not let it look for 2 s: whatever came since may be waiting.
        assert_eq!(r.lag_at(3_000 * MS), Duration::from_millis(2_000) - POLL);
    }

    #[test]
    fn the_guard_marks_the_ring_drained() {
        let lags = RingLags::new(POLL);
        {
            let _reading = lags.payload.reading();
            assert_ne!(lags.payload.behind_since_ns.load(Relaxed), 0, "reading");
        }
        assert_eq!(lags.payload.behind_since_ns.load(Relaxed), 0);
        assert_eq!(lags.all().map(|r| r.name), ["events", "payload", "trace"]);
        assert!(lags.all().iter().all(|r| r.lag() < Duration::from_secs(1)));
    }
}
