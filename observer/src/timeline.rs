//! The lines of a connection's timeline, as `observer trace` and `/api/v1/trace` stream them
//! (one JSON object per line): lifecycle events, HTTP outcomes, packets. Built here only.
#![forbid(unsafe_code)]
use observer_common::conn::{ConnEvent, ConnEventKind, ConnKey, Role};
use serde_json::{json, Value};

use crate::{http::Outcome, sys};

/// A lifecycle event's line: opened, closed (with the state before), or a reset.
pub fn event_line(ev: &ConnEvent) -> Value {
    let time = sys::ktime_to_unix_seconds(ev.ts_ns);
    let c = ev.key.to_string();
    match ev.kind {
        k if k == ConnEventKind::Opened as u32 => json!({"type": "opened", "time": time, "connection": c, "role": Role::from_u8(ev.stats.role).name()}),
        k if k == ConnEventKind::Closed as u32 => json!({"type": "closed", "time": time, "connection": c, "state_before": observer_common::conn::tcp_state::name(ev.detail as u8)}),
        _ => json!({"type": "reset", "time": time, "connection": c, "direction": if ev.detail == 1 { "sent" } else { "received" }}),
    }
}

/// What HTTP framing found, as a line.
pub fn outcome_line(key: &ConnKey, o: &Outcome, ts_ns: u64) -> Value {
    let time = sys::ktime_to_unix_seconds(ts_ns);
    let c = key.to_string();
    match o {
        Outcome::Request { method, target } => json!({"type": "request", "time": time, "connection": c, "method": method, "target": target}),
        Outcome::Response { status, latency_ns } => json!({"type": "response", "time": time, "connection": c, "status": status, "latency_ms": latency_ns.map(|l| l as f64 / 1e6)}),
        Outcome::NoResponse(n) => json!({"type": "no_response", "time": time, "connection": c, "requests": n}),
        Outcome::FramingLost => json!({"type": "framing_lost", "time": time, "connection": c}),
        Outcome::NotHttp => json!({"type": "not_http", "time": time, "connection": c}),
    }
}
