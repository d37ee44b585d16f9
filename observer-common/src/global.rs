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

const _: () = assert!(COUNTERS <= GLOBAL_SLOTS);

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

    /// One line for an operator (the Prometheus help text of the metric that exports it).
    pub const fn help(self) -> &'static str {
        match self {
            Counter::PacketsSeen => "Packets the tc programs saw.",
            Counter::NotTcp => "Well-formed packets that are not TCP (ARP, UDP, ICMP, ...).",
            Counter::ParseFailures => "Packets whose headers could not be parsed (truncated, fragments, too many IPv6 extension headers).",
            Counter::ConnInsertFailures => "New connections the CONNS map refused (should stay 0: the map is LRU).",
            Counter::ConnInserts => "New entries created in CONNS (inserts minus entries now are LRU evictions).",
            Counter::EventsLost => "Events dropped because the EVENTS ring buffer was full (the map stays exact).",
            Counter::ResetsSent => "Resets the TCP stack sent, every connection together.",
            Counter::ResetsReceived => "Resets the TCP stack received, every connection together.",
            Counter::Retransmits => "Segments the TCP stack retransmitted (successfully), every connection together.",
            Counter::PayloadLost => "PAYLOAD records dropped because the ring buffer was full (that direction's HTTP framing is lost until it resynchronises).",
            Counter::PayloadSkipped => "Data segments skipped because the daemon said they lie inside a message body.",
            Counter::PayloadSent => "PAYLOAD records sent.",
            Counter::NotHttp => "Connections whose first bytes were not HTTP/1.x: their payload is never forwarded.",
            Counter::TraceLost => "Trace records dropped because the trace ring buffer was full.",
            Counter::PayloadBacklog => "Bytes waiting in the payload ring buffer when a program last wrote to it.",
            Counter::EventsBacklog => "Bytes waiting in the events ring buffer when a program last wrote to it.",
            Counter::SeqContention => "Segments whose sequence bookkeeping lost the compare-and-exchange race on every attempt (should stay 0).",
            Counter::FrameInsertFailures => "New HTTP_FRAMES entries the map refused (should stay 0: the map is LRU).",
            Counter::HttpAggFull => "Messages the kernel framer counted that the full HTTP_AGG map could not add to the aggregates (should stay 0).",
            Counter::HalfOpened => "Inbound connection attempts (a peer's SYN) entered in HALF_OPEN.",
            Counter::HalfOpenPromoted => "Connection attempts that completed (or were refused) and moved from HALF_OPEN to CONNS.",
            Counter::BadChecksum => "Ingress segments whose checksum the host's stack rejects (counted nowhere else).",
        }
    }

    /// A gauge, not a counter: the daemon takes the largest over CPUs, not the sum.
    pub const fn is_gauge(self) -> bool {
        matches!(self, Counter::PayloadBacklog | Counter::EventsBacklog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_counter_once_in_slot_order() {
        assert_eq!(Counter::ALL.len(), COUNTERS as usize);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32, "{} is in slot {}", c.name(), *c as u32);
        }
    }

    #[test]
    fn names_are_unique_snake_case_and_help_is_one_line() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            let name = c.name();
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
            assert!(!name.starts_with('_') && !name.ends_with('_') && !name.contains("__"), "{name}");
            assert!(Counter::ALL[i + 1..].iter().all(|o| o.name() != name), "{name} named twice");
            let help = c.help();
            assert!(!help.is_empty() && !help.contains('\n') && help.ends_with('.'), "{name}: {help:?}");
        }
        let gauges: [bool; COUNTERS as usize] = Counter::ALL.map(Counter::is_gauge);
        assert_eq!(gauges.iter().filter(|g| **g).count(), 2);
        assert!(Counter::PayloadBacklog.is_gauge() && Counter::EventsBacklog.is_gauge());
    }
}
