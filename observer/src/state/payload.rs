//! HTTP records from the kernel (the payload ring): framed by the daemon's HTTP table, counted,
//! traced, and answered with hints the kernel follows (skip a body, not HTTP).
#![forbid(unsafe_code)]
use observer_common::{global::Counter, http::PayloadHeader};

use super::State;
use crate::{bpf::ring::Batch, sys::monotonic_ns};

impl State {
    /// Frames every payload record waiting in the ring.
    pub fn on_payload(&self, records: &mut Batch<'_, PayloadHeader>) {
        let _reading = self.ring_lag.payload.reading();
        let mut http = self.http.lock().expect("http lock poisoned");
        records.for_each(|h, tail| {
            let data = &tail[..(h.len as usize).min(tail.len())];
            let update = http.on_record(h.key, h.dir, h.seq, h.flags, data, h.ts_ns);
            self.metrics.http(&h.key, update.role, &update.outcomes, update.kernel_counted);
            for o in &update.outcomes {
                self.trace.publish(&h.key, || crate::timeline::outcome_line(&h.key, o, h.ts_ns));
            }
            if let Some(hints) = update.hints {
                // For the incarnation of the four-tuple these bytes came from, not a later one.
                let hints = observer_common::http::HttpHints { conn: h.conn, ..hints };
                if let Err(e) = self.maps().set_hints(&h.key, hints) {
                    log::debug!("HTTP hint for {}: {e}", h.key);
                }
            }
        });
    }

    /// About once a second: gaps followed by silence (bytes lost to us only if the kernel
    /// refused records) end the framing they hold up.
    pub fn expire_gaps(&self) {
        let records_lost = self.kernel_counter(Counter::PayloadLost) > 0;
        let changed = {
            let mut http = self.http.lock().expect("http lock poisoned");
            http.set_records_lost(records_lost);
            http.expire_gaps(monotonic_ns())
        };
        let now = monotonic_ns();
        for (key, role, outcomes) in changed {
            self.metrics.http(&key, role, &outcomes, false);
            for o in &outcomes {
                self.trace.publish(&key, || crate::timeline::outcome_line(&key, o, now));
            }
        }
    }
}
