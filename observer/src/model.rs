//! The API's types, declared once: the daemon serializes them (`/api/v1/...`, the trace stream),
//! the CLI and the end-to-end tests deserialize the same types. docs/api.md describes the
//! written form field by field.
#![forbid(unsafe_code)]
use serde::{Deserialize, Serialize};

pub use self::{
    status::{Attachment, DaemonConfig, HttpFraming, KernelCounters, ProgramStats, RingLag, Status, TableGauges, Tracepoint, Upstreams},
    timeline::{PacketDirection, ResetDirection, TimelineEvent},
};
pub use crate::{
    http::{Counts, Exchange, HttpView, WindowView},
    kernel_http::{Classes, KernelHttp},
};
pub use observer_common::{
    conn::{CloseReason, Closer, Role},
    proto::Protocol,
};

mod status;
mod timeline;
#[cfg(test)]
mod written_tests;

/// A value of one of these enums from its written name (`fin_wait2`, `outbound`).
pub fn from_name<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// The written name of a value of one of these enums (`fin_wait2`, `outbound`): what the API
/// writes, which is what the CLI shows.
pub fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// `value` as the daemon writes it: every object's members in name order (through serde_json's
/// map), as the API has always written them, whatever order the types declare them in. An error
/// only for a path that is not UTF-8.
pub fn written<T: Serialize>(value: &T) -> serde_json::Result<serde_json::Value> {
    serde_json::to_value(value)
}

/// Where a connection is in its life, as the daemon knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnStatus {
    Open,
    /// It ended; for a moment its final counts are still being gathered.
    Closing,
    /// Final: counts, close reason and HTTP outcome will not change.
    Closed,
}

/// The TCP state the socket layer last reported, as operators read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Closed,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// No socket event seen (e.g. refused before a socket existed).
    Unknown,
}

impl TcpState {
    /// From the kernel's state number (`observer_common::conn::tcp_state`).
    pub fn of(state: u8) -> Self {
        use observer_common::conn::tcp_state as s;
        match state {
            s::ESTABLISHED => Self::Established,
            s::SYN_SENT => Self::SynSent,
            s::SYN_RECV => Self::SynRecv,
            s::FIN_WAIT1 => Self::FinWait1,
            s::FIN_WAIT2 => Self::FinWait2,
            s::TIME_WAIT => Self::TimeWait,
            s::CLOSE => Self::Closed,
            s::CLOSE_WAIT => Self::CloseWait,
            s::LAST_ACK => Self::LastAck,
            s::LISTEN => Self::Listen,
            s::CLOSING => Self::Closing,
            s::NEW_SYN_RECV => Self::NewSynRecv,
            _ => Self::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One step in a connection's life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// `first_seen`, `opened` or `closed`.
    pub event: String,
    /// Unix time, seconds.
    pub time: f64,
    /// `first_seen`: the role; `closed`: the close reason.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

/// One connection as the API and CLI show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Connection {
    /// The connection's one written form: local then remote endpoint.
    pub connection: String,
    pub local: String,
    pub remote: String,
    pub family: Family,
    /// `inbound` (a peer connected to a local listener), `outbound` (this host connected out) or `unknown`.
    pub role: Role,
    /// `open`; `closing` (it ended; for a moment its final counts are still being gathered);
    /// `closed` (final: counts, close reason and HTTP outcome will not change).
    pub status: ConnStatus,
    /// The TCP state the socket layer last reported (`established`, `fin_wait2`, ...; `unknown` if none).
    pub state: TcpState,
    /// Segments on the wire (each segment of a GSO/GRO super-packet counts), retransmissions included.
    pub packets_in: u64,
    pub packets_out: u64,
    /// Payload bytes of the stream, each once: what the applications sent and received.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub syn_in: u64,
    pub syn_out: u64,
    pub fin_in: u64,
    pub fin_out: u64,
    /// Reset segments on the wire (tc view).
    pub rst_in: u64,
    pub rst_out: u64,
    /// Resets the TCP stack sent / received (socket view).
    pub resets_sent: u64,
    pub resets_received: u64,
    pub retransmits: u64,
    /// Segments seen on the wire that repeated sequence space already seen (out: this host sent
    /// again; in: the peer did, or they arrived out of order), and their repeated payload bytes.
    pub retransmitted_segments_in: u64,
    pub retransmitted_segments_out: u64,
    pub retransmitted_bytes_in: u64,
    pub retransmitted_bytes_out: u64,
    /// HTTP payload records the kernel could not hand over (full ring). Harmless when they held
    /// only body bytes; when framing missed a message because of them, `http.framing_lost` says so.
    pub payload_records_lost: u64,
    /// What it carries, from its first bytes: `http1`, `tls`, `h2` (HTTP/2 with prior
    /// knowledge), `other`, or `unknown` (no payload yet, or first seen mid-stream).
    pub protocol: Protocol,
    /// For `tls`: the server name its client asked for (SNI), when the ClientHello's first
    /// segment carried it.
    pub sni: Option<String>,
    /// Handshake round-trip time in milliseconds, when both handshake packets were seen here.
    pub handshake_rtt_ms: Option<f64>,
    /// Who closed first: `local`, `remote`, or `unknown` (still open, or no FIN/reset seen).
    pub closer: Closer,
    /// Why it ended (`normal`, `reset_sent`, `reset_received`, `refused`, `timed_out`); null while open.
    pub close_reason: Option<CloseReason>,
    /// Unix times in seconds. `opened` is when it reached ESTABLISHED (null if it never did).
    pub first_seen: f64,
    pub last_seen: f64,
    pub opened: Option<f64>,
    pub closed: Option<f64>,
    /// From the first packet to the close (closed) or to now (open).
    pub duration_seconds: f64,
    pub idle_seconds: f64,
    /// The connection's life as events, oldest first: first packet, established, closed (with
    /// the reason). Resets and retransmissions are counted above; live detail is `observer trace`.
    pub lifecycle: Vec<LifecycleEvent>,
    /// HTTP/1.x exchanges, when the connection carries HTTP.
    pub http: Option<HttpView>,
    /// HTTP/1.x as the kernel counted it (`observer_common::frame`), when it followed the
    /// connection from its SYN.
    pub http_kernel: Option<KernelHttp>,
    /// The daemon's key of this incarnation (not written; zero when read back).
    #[serde(skip, default = "no_incarnation")]
    pub incarnation: crate::table::Incarnation,
}

fn no_incarnation() -> crate::table::Incarnation {
    (observer_common::conn::ConnKey::zeroed(), 0)
}

/// `GET /api/v1/connections`: the connections that matched, after the limit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionList {
    pub count: usize,
    /// How many matched before the limit.
    pub matched: usize,
    pub connections: Vec<Connection>,
}

/// What a route answers when it cannot (4xx, 5xx): what was wrong, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `GET /readyz`: 200 when ready, 503 with the reasons otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names of a connection as the API writes them (docs/api.md): the server, the CLI
    /// and the tests share this type, so only a test of the written form catches a rename.
    #[test]
    fn a_connection_is_written_with_the_documented_fields() {
        let mut key = observer_common::conn::ConnKey::zeroed();
        key.family = observer_common::conn::FAMILY_IPV4;
        let stats = observer_common::conn::ConnStats { first_seen_ns: 1, last_seen_ns: 2, ..Default::default() };
        let json = serde_json::to_value(Connection::new(&key, &stats, true, 3)).expect("serializable");
        let mut names: Vec<&str> = json.as_object().expect("an object").keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut documented = vec![
            "connection",
            "local",
            "remote",
            "family",
            "role",
            "status",
            "state",
            "packets_in",
            "packets_out",
            "bytes_in",
            "bytes_out",
            "syn_in",
            "syn_out",
            "fin_in",
            "fin_out",
            "rst_in",
            "rst_out",
            "resets_sent",
            "resets_received",
            "retransmits",
            "retransmitted_segments_in",
            "retransmitted_segments_out",
            "retransmitted_bytes_in",
            "retransmitted_bytes_out",
            "payload_records_lost",
            "protocol",
            "sni",
            "handshake_rtt_ms",
            "closer",
            "close_reason",
            "first_seen",
            "last_seen",
            "opened",
            "closed",
            "duration_seconds",
            "idle_seconds",
            "lifecycle",
            "http",
            "http_kernel",
        ];
        documented.sort_unstable();
        assert_eq!(names, documented);
        assert_eq!((json["status"].as_str(), json["close_reason"].as_str(), json["family"].as_str()), (Some("closed"), Some("timed_out"), Some("ipv4")));
        let back: Connection = serde_json::from_value(json.clone()).expect("reads back");
        assert_eq!(serde_json::to_value(back).expect("serializable"), json);
    }

    #[test]
    fn the_written_names_are_the_api_s() {
        let json = |v: &dyn erased::Json| v.text();
        assert_eq!(json(&TcpState::FinWait2), "\"fin_wait2\"");
        assert_eq!(json(&TcpState::NewSynRecv), "\"new_syn_recv\"");
        assert_eq!(json(&TcpState::Closed), "\"closed\"");
        assert_eq!(json(&ConnStatus::Closing), "\"closing\"");
        assert_eq!(json(&Protocol::H2), "\"h2\"");
        assert_eq!(json(&Protocol::Http1), "\"http1\"");
        assert_eq!(json(&Family::Ipv6), "\"ipv6\"");
        assert_eq!(json(&Role::Outbound), "\"outbound\"");
        assert_eq!(json(&CloseReason::ResetReceived), "\"reset_received\"");
        assert_eq!(json(&Closer::Remote), "\"remote\"");
        for state in 0..=13u8 {
            let name = observer_common::conn::tcp_state::name(state);
            assert_eq!(json(&TcpState::of(state)), format!("{name:?}"), "state {state}");
        }
        for p in 0..=5u8 {
            assert_eq!(json(&Protocol::from_u8(p)), format!("{:?}", observer_common::proto::protocol_name(p)), "protocol {p}");
        }
    }

    mod erased {
        pub trait Json {
            fn text(&self) -> String;
        }
        impl<T: serde::Serialize> Json for T {
            fn text(&self) -> String {
                serde_json::to_string(self).expect("serializable")
            }
        }
    }
}
