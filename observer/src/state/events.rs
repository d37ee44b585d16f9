//! Lifecycle events from the kernel, and the end of connections: each closed connection is
//! archived once, with its final counts, whether its close event arrived or the sweep found it.
#![forbid(unsafe_code)]
use std::{sync::Arc, time::Duration};

use observer_common::{
    conn::{ConnEvent, ConnEventKind, ConnKey, ConnStats},
    frame::ConnFrame,
};

use super::{State, QUIET_NS};
use crate::{http::StreamEnds, sys::monotonic_ns, table};

/// A closed connection is archived this long after its CLOSE, so that the resets and final ACKs
/// the stack sends right after the state change are in its counters.
pub const CLOSE_GRACE: Duration = Duration::from_millis(300);
/// How long after its close the sweep finalises a connection that had a socket here (its close
/// event, drained every 10 ms, normally did it 300 ms after the close; this is for lost events).
const SWEEP_SOCKET_GRACE: Duration = Duration::from_secs(3);

impl State {
    /// Archives a closed connection once, and counts it.
    /// `frame`: the kernel's HTTP framing state taken at the close (from the close event); `None`
    /// reads the map (the sweep, for connections no event reported closed).
    fn finalize(&self, key: ConnKey, at_close: ConnStats, frame: Option<ConnFrame>) {
        if self.is_own(&key) {
            return;
        }
        // The kernel entry has the final counters, unless a new connection reused the four-tuple.
        let current = self.maps().conn(&key);
        // If it did, the kernel said what the entry held last (a FIN after the close included).
        let last = self.superseded.lock().expect("superseded lock poisoned").remove(&(key, at_close.first_seen_ns));
        let (stats, frame) = match (current, last) {
            (Some(s), _) if s.first_seen_ns == at_close.first_seen_ns => (s, frame),
            (_, Some((s, f))) => (s, f.or(frame)),
            _ => (at_close, frame),
        };
        // One lock over check and archive: the close event's task and the sweep may both get
        // here for the same connection, and only one may count it.
        let mut history = self.history.lock().expect("history lock poisoned");
        if history.contains(&(key, stats.first_seen_ns)) {
            return;
        }
        // Where each direction's data ended, by the kernel's count (the FIN takes one number).
        let ends = StreamEnds {
            seq: [observer_common::seq::data_end(stats.seq_in, stats.fin_in > 0), observer_common::seq::data_end(stats.seq_out, stats.fin_out > 0)],
            carried: [stats.bytes_in > 0, stats.bytes_out > 0],
            records_lost: stats.payload_records_lost > 0,
        };
        // Requests still unanswered when the connection ended are failures.
        let http = self.http.lock().expect("http lock poisoned").close(&key, stats.first_seen_ns, stats.closed_ns.max(stats.last_seen_ns), &ends);
        let http = http.map(|(conn, outcomes)| {
            self.metrics.http(&key, conn.role(), &outcomes, false);
            conn.into_record()
        });
        // From the map only if it is still this connection's (the four-tuple may be reused).
        let frame = frame.or_else(|| self.maps().frame(&key).filter(|f| crate::kernel_http::belongs(f, &stats)));
        if history.archive(key, stats, http, frame, monotonic_ns()) {
            self.metrics.connection_closed(&key, &stats);
            if let Some(archived) = history.get(&(key, stats.first_seen_ns)) {
                self.metrics.upstreams.finished(&table::closed_connection(archived, monotonic_ns()));
            }
        }
    }

    /// Finds connections that ended without a close event (no socket here, or a lost event).
    pub fn sweep(&self) {
        let now = monotonic_ns();
        let closed: Vec<(ConnKey, ConnStats)> = self
            .kernel_entries()
            .into_iter()
            .filter(|(_, s)| {
                // A connection with a socket here gets a close event, which carries its final
                // HTTP framing state: the sweep takes it only once that event is overdue.
                let grace = if s.state != 0 { SWEEP_SOCKET_GRACE } else { CLOSE_GRACE };
                table::is_closed(s, now, QUIET_NS) && now.saturating_sub(s.closed_ns.max(s.last_seen_ns)) >= grace.as_nanos() as u64
            })
            .collect();
        for (k, s) in closed {
            self.finalize(k, s, None);
        }
        self.history.lock().expect("history lock poisoned").expire(now);
        self.sweeps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// One lifecycle event from the kernel.
    pub fn on_event(self: &Arc<Self>, ev: ConnEvent) {
        let delay = monotonic_ns().saturating_sub(ev.ts_ns);
        self.metrics.event_delay.observe(delay as f64 / 1e9);
        let kind = ConnEventKind::try_from(ev.kind).ok();
        // A superseded entry is bookkeeping, not a moment of the connection's timeline.
        if kind != Some(ConnEventKind::Superseded) {
            self.trace.publish(&ev.key, || crate::timeline::event_line(&ev));
        }
        if self.is_own(&ev.key) {
            return;
        }
        match kind {
            Some(ConnEventKind::Opened) => self.metrics.connection_opened(&ev.key, &ev.stats),
            Some(ConnEventKind::Superseded) => {
                if self.history.lock().expect("history lock poisoned").contains(&(ev.key, ev.stats.first_seen_ns)) {
                    return; // archived already, with the entry's final counts
                }
                let mut superseded = self.superseded.lock().expect("superseded lock poisoned");
                // Bounded; an entry is taken when its connection is archived (within a second).
                if superseded.len() < 4096 {
                    superseded.insert((ev.key, ev.stats.first_seen_ns), (ev.stats, (ev.frame_valid == 1).then_some(ev.frame)));
                }
            }
            Some(ConnEventKind::Closed) => {
                let state = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(CLOSE_GRACE).await;
                    state.finalize(ev.key, ev.stats, (ev.frame_valid == 1).then_some(ev.frame));
                });
            }
            Some(ConnEventKind::Reset) | None => {}
        }
    }
}
