//! The sliding windows of a connection's counts (`last_10s`, `last_60s`): a bucket of
//! [`Counts`] per monotonic second for the last minute, and the sum of the buckets a window covers.
use std::collections::VecDeque;

use super::view::Counts;

/// Per-second buckets a connection keeps: the last 60 seconds and the current one.
pub(super) const SECONDS_KEPT: usize = 61;

/// The bucket of the second of `ts_ns` in `seconds` (monotonic second, counts; oldest first),
/// started if it is the newest, the oldest ones dropped beyond [`SECONDS_KEPT`].
pub(super) fn bucket(seconds: &mut VecDeque<(u64, Counts)>, ts_ns: u64) -> &mut Counts {
    let sec = ts_ns / 1_000_000_000;
    if seconds.back().is_none_or(|(s, _)| *s < sec) {
        seconds.push_back((sec, Counts::default()));
        while seconds.len() > SECONDS_KEPT {
            seconds.pop_front();
        }
    }
    // An event older than the newest bucket (reordered across CPUs) goes into its own second if kept.
    let idx = seconds.iter().rposition(|(s, _)| *s <= sec).unwrap_or(seconds.len() - 1);
    &mut seconds[idx].1
}

/// The counts of the last `secs` seconds at `now_ns`.
pub(super) fn window<'a>(seconds: impl Iterator<Item = &'a (u64, Counts)>, now_ns: u64, secs: u64) -> Counts {
    let now = now_ns / 1_000_000_000;
    let mut c = Counts::default();
    for (s, counts) in seconds {
        if s + secs > now {
            c.add(counts);
        }
    }
    c
}
