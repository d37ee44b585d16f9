//! Host-wide counters, one slot per CPU in the `GLOBAL` per-CPU array (summed by the daemon).

/// Indices into the per-CPU `GLOBAL` counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every packet the tc programs saw.
    PacketsSeen = 0,
    /// Well-formed packets that are not TCP (ARP, UDP, ICMP, ...).
    NotTcp = 1,
    /// Packets whose headers could not be parsed (truncated, fragments, too many IPv6 extension headers).
    ParseFailures = 2,
    /// New connections the `CONNS` map refused (should stay 0: the map is LRU).
    ConnInsertFailures = 3,
    /// New entries created in `CONNS` (inserts - entries now = LRU evictions: nothing else deletes).
    ConnInserts = 4,
    /// Events that found the `EVENTS` ring buffer full and were dropped (the map stays exact).
    EventsLost = 5,
    /// Resets the TCP stack sent / received (socket tracepoints), every connection together.
    ResetsSent = 6,
    ResetsReceived = 7,
    /// Segments the TCP stack retransmitted (successfully), every connection together.
    Retransmits = 8,
    /// `PAYLOAD` records dropped because the ring buffer was full (HTTP framing of that
    /// connection direction is lost until it resynchronises; the daemon counts that too).
    PayloadLost = 9,
    /// Data segments skipped because the daemon said they lie inside a message body.
    PayloadSkipped = 10,
    /// `PAYLOAD` records sent.
    PayloadSent = 11,
    /// Connections whose first bytes were not HTTP/1.x: their payload is never forwarded.
    NotHttp = 12,
    /// Trace records dropped because the trace ring buffer was full.
    TraceLost = 13,
    /// Gauges, not counters (the daemon takes the largest over CPUs): bytes waiting in the
    /// payload / events ring buffer when a program last wrote to it.
    PayloadBacklog = 14,
    EventsBacklog = 15,
    /// Segments whose sequence bookkeeping lost the compare-and-exchange race on every attempt
    /// (their bytes were counted as new). Should stay 0.
    SeqContention = 16,
    /// New `HTTP_FRAMES` entries the map refused (should stay 0: the map is LRU).
    FrameInsertFailures = 17,
    /// Messages the kernel framer counted that its full `HTTP_AGG` map could not add to the
    /// aggregates (`/metrics` then misses them). Should stay 0.
    HttpAggFull = 18,
    /// Inbound connection attempts (a SYN from a peer with no connection yet) entered in
    /// `HALF_OPEN`, and those among them that completed (or were refused) and moved to `CONNS`.
    HalfOpened = 19,
    HalfOpenPromoted = 20,
    /// Ingress segments whose checksum (TCP, or the IPv4 header's) the host's stack rejects:
    /// counted nowhere else, as the stack drops them (`observer-ebpf`'s `csum`).
    BadChecksum = 21,
}

/// Number of slots in the `GLOBAL` array.
pub const COUNTERS: u32 = 22;

/// Slots in the `GLOBAL` map: room for counters a later build adds, so that it can adopt the
/// pinned map of this one (its new counters start at 0).
pub const GLOBAL_SLOTS: u32 = 64;

impl Counter {
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::PacketsSeen,
        Counter::NotTcp,
        Counter::ParseFailures,
        Counter::ConnInsertFailures,
        Counter::ConnInserts,
        Counter::EventsLost,
        Counter::ResetsSent,
        Counter::ResetsReceived,
        Counter::Retransmits,
        Counter::PayloadLost,
        Counter::PayloadSkipped,
        Counter::PayloadSent,
        Counter::NotHttp,
        Counter::TraceLost,
        Counter::PayloadBacklog,
        Counter::EventsBacklog,
        Counter::SeqContention,
        Counter::FrameInsertFailures,
        Counter::HttpAggFull,
        Counter::HalfOpened,
        Counter::HalfOpenPromoted,
        Counter::BadChecksum,
    ];

    /// The name in the API (`kernel_counters` of `/api/v1/status`).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PacketsSeen => "packets_seen",
            Counter::NotTcp => "not_tcp",
            Counter::ParseFailures => "parse_failures",
            Counter::ConnInsertFailures => "conn_insert_failures",
            Counter::ConnInserts => "conn_inserts",
            Counter::EventsLost => "events_lost",
            Counter::ResetsSent => "resets_sent",
            Counter::ResetsReceived => "resets_received",
            Counter::Retransmits => "retransmits",
            Counter::PayloadLost => "payload_lost",
            Counter::PayloadSkipped => "payload_skipped",
            Counter::PayloadSent => "payload_sent",
            Counter::NotHttp => "not_http",
            Counter::TraceLost => "trace_lost",
            Counter::PayloadBacklog => "payload_backlog",
            Counter::EventsBacklog => "events_backlog",
            Counter::SeqContention => "seq_contention",
            Counter::FrameInsertFailures => "frame_insert_failures",
            Counter::HttpAggFull => "http_agg_full",
            Counter::HalfOpened => "half_opened",
            Counter::HalfOpenPromoted => "half_open_promoted",
            Counter::BadChecksum => "bad_checksum",
        }
    }
}
