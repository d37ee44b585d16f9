//! The lines of a connection's timeline, as `observer trace` and `/api/v1/trace` stream them
//! (one JSON object per line, [`TimelineEvent`]): lifecycle events, HTTP outcomes, packets.
//! Built here only.
#![forbid(unsafe_code)]
use observer_common::{
    conn::{ConnEvent, ConnEventKind, ConnKey, Role},
    http::DIR_IN,
    trace::TraceRecord,
};

use crate::{
    http::Outcome,
    model::{PacketDirection, ResetDirection, TcpState, TimelineEvent},
    sys::{self, ktime_to_unix_seconds},
};

/// A lifecycle event's line: opened, closed (with the state before), or a reset.
pub fn event_line(ev: &ConnEvent) -> TimelineEvent {
    let time = sys::ktime_to_unix_seconds(ev.ts_ns);
    let connection = ev.key.to_string();
    match ev.kind {
        k if k == ConnEventKind::Opened as u32 => TimelineEvent::Opened { time, connection, role: Role::from_u8(ev.stats.role) },
        k if k == ConnEventKind::Closed as u32 => TimelineEvent::Closed { time, connection, state_before: TcpState::of(ev.detail as u8) },
        _ => TimelineEvent::Reset { time, connection, direction: if ev.detail == 1 { ResetDirection::Sent } else { ResetDirection::Received } },
    }
}

/// What HTTP framing found, as a line.
pub fn outcome_line(key: &ConnKey, o: &Outcome, ts_ns: u64) -> TimelineEvent {
    let time = sys::ktime_to_unix_seconds(ts_ns);
    let connection = key.to_string();
    match o {
        Outcome::Request { method, target } => TimelineEvent::Request { time, connection, method: method.to_string(), target: target.to_string() },
        Outcome::Response { status, latency_ns } => {
            TimelineEvent::Response { time, connection, status: *status, latency_ms: latency_ns.map(|l| l as f64 / 1e6), method: None, target: None }
        }
        Outcome::NoResponse(n) => TimelineEvent::NoResponse { time, connection, requests: *n },
        Outcome::FramingLost => TimelineEvent::FramingLost { time, connection },
        Outcome::NotHttp => TimelineEvent::NotHttp { time, connection },
    }
}

fn flags(f: u8) -> String {
    let names = [(0x02, "SYN"), (0x10, "ACK"), (0x08, "PSH"), (0x01, "FIN"), (0x04, "RST"), (0x20, "URG")];
    names.iter().filter(|(b, _)| f & b != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

/// A traced packet as a timeline line.
pub fn packet_line(r: &TraceRecord) -> TimelineEvent {
    let n = (r.line_len as usize).min(r.line.len());
    let payload = &r.line[..n];
    // The request or status line, when the segment starts with one.
    let first_line = payload.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut b = [0u8; observer_common::http::START_LEN];
    let m = payload.len().min(b.len());
    b[..m].copy_from_slice(&payload[..m]);
    let http = match observer_common::http::classify(&b, m) {
        observer_common::http::Start::Neither => None,
        _ => Some(String::from_utf8_lossy(first_line).into_owned()),
    };
    TimelineEvent::Packet {
        time: ktime_to_unix_seconds(r.ts_ns),
        ts_us: r.ts_ns / 1000,
        connection: r.key.to_string(),
        direction: if r.dir == DIR_IN { PacketDirection::In } else { PacketDirection::Out },
        flags: flags(r.tcp_flags),
        seq: r.seq,
        ack: r.ack,
        window: r.window,
        len: r.payload_len,
        retransmit: r.retransmit != 0,
        http,
    }
}

/// A line as `/api/v1/trace` writes it (without its newline).
pub fn text(line: &TimelineEvent) -> String {
    // Strings, numbers and maps with string keys: nothing here fails to serialize.
    crate::model::written(line).map(|v| v.to_string()).expect("a timeline line is JSON")
}
