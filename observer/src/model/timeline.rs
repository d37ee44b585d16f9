//! The lines of `GET /api/v1/trace` (newline-delimited JSON, one event a line), which `observer
//! trace --json` passes on as they came.
#![forbid(unsafe_code)]
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Role, TcpState};

/// One line of a trace: the subscription, then each moment of a followed connection. Times are
/// Unix seconds; `connection` is the connection's written form (local then remote endpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimelineEvent {
    /// The first line: the trace's parameters as the daemon read them.
    Subscribed { filter: BTreeMap<String, String> },
    /// It reached ESTABLISHED.
    Opened { time: f64, connection: String, role: Role },
    /// The socket closed, from this TCP state.
    Closed { time: f64, connection: String, state_before: TcpState },
    /// A reset the TCP stack sent or received.
    Reset { time: f64, connection: String, direction: ResetDirection },
    /// A request head.
    Request { time: f64, connection: String, method: String, target: String },
    /// A status line, `latency_ms` after its request's first byte (null when that was not seen).
    Response {
        time: f64,
        connection: String,
        status: u16,
        latency_ms: Option<f64>,
        /// A trace by status (which drops the request lines) names the request answered, when
        /// known.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        method: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        target: Option<String>,
    },
    /// The connection ended with this many requests unanswered.
    NoResponse { time: f64, connection: String, requests: u64 },
    /// Framing lost its place in a stream and starts again at the next message.
    FramingLost { time: f64, connection: String },
    /// The daemon found the connection is not HTTP/1.x.
    NotHttp { time: f64, connection: String },
    /// A segment on the wire.
    Packet {
        time: f64,
        /// The kernel's timestamp in microseconds, to order and space packets.
        ts_us: u64,
        connection: String,
        direction: PacketDirection,
        /// Comma-separated: `SYN,ACK`, `ACK,PSH`, ...
        flags: String,
        seq: u32,
        ack: u32,
        window: u16,
        /// Payload bytes.
        len: u32,
        /// It starts before data already seen in its direction (or, received, out of order).
        retransmit: bool,
        /// The request or status line, when the segment starts with one.
        http: Option<String>,
    },
}

/// Which way a reset went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetDirection {
    /// This host sent it.
    Sent,
    Received,
}

/// Which way a packet went, as seen from this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketDirection {
    In,
    Out,
}

impl TimelineEvent {
    /// Unix seconds; `None` for the subscription line.
    pub fn time(&self) -> Option<f64> {
        match self {
            Self::Subscribed { .. } => None,
            Self::Opened { time, .. }
            | Self::Closed { time, .. }
            | Self::Reset { time, .. }
            | Self::Request { time, .. }
            | Self::Response { time, .. }
            | Self::NoResponse { time, .. }
            | Self::FramingLost { time, .. }
            | Self::NotHttp { time, .. }
            | Self::Packet { time, .. } => Some(*time),
        }
    }

    /// The connection's written form; `None` for the subscription line.
    pub fn connection(&self) -> Option<&str> {
        match self {
            Self::Subscribed { .. } => None,
            Self::Opened { connection, .. }
            | Self::Closed { connection, .. }
            | Self::Reset { connection, .. }
            | Self::Request { connection, .. }
            | Self::Response { connection, .. }
            | Self::NoResponse { connection, .. }
            | Self::FramingLost { connection, .. }
            | Self::NotHttp { connection, .. }
            | Self::Packet { connection, .. } => Some(connection),
        }
    }
}
