//! Prometheus metrics. Aggregates only: never a four-tuple label. Every label set is bounded:
//! `port` (the service port: local for inbound connections, remote for outbound) takes at most
//! [`MAX_PORT_LABELS`] distinct values, then `other`.
#![forbid(unsafe_code)]
use std::sync::Mutex;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use observer_common::{
    conn::{ConnKey, ConnStats, Role},
    global::Counter,
    http::AggKey,
};
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::bpf::Attachment;

pub const MAX_PORT_LABELS: usize = 64;

fn port_name(port: Option<u16>) -> String {
    port.map_or_else(|| "other".to_owned(), |p| p.to_string())
}

/// What the kernel counted, read at scrape time.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct KernelCounters {
    pub packets_seen: u64,
    pub not_tcp: u64,
    pub parse_failures: u64,
    pub conn_insert_failures: u64,
    pub conn_inserts: u64,
    pub events_lost: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub retransmits: u64,
    pub payload_lost: u64,
    pub payload_skipped: u64,
    pub payload_sent: u64,
    pub not_http: u64,
    pub trace_lost: u64,
    pub payload_backlog: u64,
    pub events_backlog: u64,
    pub seq_contention: u64,
    pub frame_insert_failures: u64,
    pub http_agg_full: u64,
    pub half_opened: u64,
    pub half_open_promoted: u64,
    pub bad_checksum: u64,
}

impl KernelCounters {
    pub fn read(maps: &crate::bpf::Maps) -> Self {
        let sum = |c: Counter| maps.counter(c);
        let max = |c: Counter| maps.counter_max(c);
        Self {
            packets_seen: sum(Counter::PacketsSeen),
            not_tcp: sum(Counter::NotTcp),
            parse_failures: sum(Counter::ParseFailures),
            conn_insert_failures: sum(Counter::ConnInsertFailures),
            conn_inserts: sum(Counter::ConnInserts),
            events_lost: sum(Counter::EventsLost),
            resets_sent: sum(Counter::ResetsSent),
            resets_received: sum(Counter::ResetsReceived),
            retransmits: sum(Counter::Retransmits),
            payload_lost: sum(Counter::PayloadLost),
            payload_skipped: sum(Counter::PayloadSkipped),
            payload_sent: sum(Counter::PayloadSent),
            not_http: sum(Counter::NotHttp),
            trace_lost: sum(Counter::TraceLost),
            payload_backlog: max(Counter::PayloadBacklog),
            events_backlog: max(Counter::EventsBacklog),
            seq_contention: sum(Counter::SeqContention),
            frame_insert_failures: sum(Counter::FrameInsertFailures),
            http_agg_full: sum(Counter::HttpAggFull),
            half_opened: sum(Counter::HalfOpened),
            half_open_promoted: sum(Counter::HalfOpenPromoted),
            bad_checksum: sum(Counter::BadChecksum),
        }
    }
}

/// What the daemon's table holds, read at scrape time.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct TableGauges {
    pub kernel_entries: u64,
    pub open_inbound: u64,
    pub open_outbound: u64,
    pub open_unknown: u64,
    pub closed_kept: u64,
    /// Times a daemon bound was reached, by bound (`observer_bounds_reached_total`).
    pub bounds: [(&'static str, u64); 4],
}

pub struct Metrics {
    registry: Registry,
    packets_seen: IntCounter,
    packets_not_tcp: IntCounter,
    packets_parse_failures: IntCounter,
    conn_insert_failures: IntCounter,
    evictions: IntCounter,
    events_lost: IntCounter,
    resets: IntCounterVec,
    retransmits: IntCounter,
    connections_tracked: IntGauge,
    connections_active: IntGaugeVec,
    connections_closed_kept: IntGauge,
    opened: IntCounterVec,
    closed: IntCounterVec,
    handshake_rtt: HistogramVec,
    pub event_delay: Histogram,
    http_requests: IntCounterVec,
    http_responses: IntCounterVec,
    http_unanswered: IntCounterVec,
    http_latency: HistogramVec,
    http_framing_lost: IntCounter,
    payload_lost: IntCounter,
    not_http: IntCounterVec,
    program_runs: IntCounterVec,
    trace_lost: IntCounter,
    seq_contention: IntCounter,
    frame_insert_failures: IntCounter,
    kernel_framing_lost: IntCounterVec,
    ring_backlog: IntGaugeVec,
    pub ring_size: IntGaugeVec,
    program_run_seconds: CounterVec,
    program_verified: IntGaugeVec,
    top_error_ratio: GaugeVec,
    top_requests: IntGaugeVec,
    top_failed: IntGaugeVec,
    /// The (local, remote) label pairs of the per-connection series now exported.
    top_labels: Mutex<HashSet<(String, String)>>,
    ports: Mutex<HashSet<u16>>,
    /// This host's ephemeral port range (`net.ipv4.ip_local_port_range`): a connection whose role
    /// is unknown (open before the daemon started) takes as service port the end outside it.
    ephemeral: (u16, u16),
    /// The HTTP series by (role, port label, status; 0 for the per-port ones), looked up once:
    /// a message costs one hash lookup instead of formatting and hashing its label values.
    http_series: Mutex<HashMap<SeriesKey, HttpSeries>>,
    /// The kernel's HTTP aggregates as last added ([`Metrics::kernel_http`]).
    kernel_http_seen: Mutex<HashMap<AggKey, u64>>,
    http_agg_full: IntCounter,
    attempts: IntCounter,
    attempts_completed: IntCounter,
    bad_checksum: IntCounter,
    bounds: IntCounterVec,
    /// Live traces refused: as many were following as the daemon keeps at once.
    pub trace_refused: IntCounter,
    /// API connections closed at once: as many were open as the daemon serves at once.
    pub api_refused: IntCounter,
    /// The `observer_upstream_*` series of outbound connections.
    pub upstreams: crate::upstream::Upstreams,
}

/// Role (as u8), service port (`None`: `other`), status (0 for the per-port series).
type SeriesKey = (u8, Option<u16>, u16);

/// The series one HTTP outcome adds to.
#[derive(Clone)]
enum HttpSeries {
    Port { requests: IntCounter, unanswered: IntCounter },
    Status { responses: IntCounter, latency: Histogram },
}

/// One connection of the top K, for the per-connection series.
pub struct TopConnection {
    pub local: String,
    pub remote: String,
    pub error_ratio: f64,
    pub requests: u64,
    pub failed: u64,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry.register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

impl Metrics {
    pub fn new(attachments: &[Attachment], tracepoints: &[(String, bool)], upstreams: crate::upstream::Policy) -> Self {
        let r = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: the
        // names every Prometheus client library exports, so standard dashboards find the daemon.
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("process metrics register once");
        let info = reg(&r, IntGaugeVec::new(Opts::new("observer_build_info", "Version of the running observer and the kernel it runs on (always 1)."), &["version", "kernel"]).expect("valid"));
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), &crate::sys::kernel_release()]).set(1);
        let attached = reg(&r, IntGaugeVec::new(Opts::new("observer_tc_attached", "tc programs attached, by interface, direction and mode (tcx or clsact); 1 while attached."), &["interface", "direction", "mode"]).expect("valid"));
        for a in attachments {
            attached.with_label_values(&[&a.interface, a.direction, a.mode]).set(1);
        }
        let tp = reg(&r, IntGaugeVec::new(Opts::new("observer_tracepoint_attached", "Socket tracepoints: 1 attached, 0 missing on this kernel (the rest keeps working)."), &["tracepoint"]).expect("valid"));
        for (name, ok) in tracepoints {
            tp.with_label_values(&[name]).set(i64::from(*ok));
        }
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| reg(&r, IntCounterVec::new(Opts::new(name, help), labels).expect("valid"));
        Self {
            packets_seen: counter("observer_packets_seen_total", "Packets the tc programs saw, on every attached interface and direction."),
            packets_not_tcp: counter("observer_packets_not_tcp_total", "Well-formed packets that are not TCP (ARP, UDP, ICMP, ...)."),
            packets_parse_failures: counter("observer_packets_parse_failures_total", "Packets whose headers could not be parsed (truncated, IP fragments, long IPv6 extension chains)."),
            conn_insert_failures: counter("observer_connection_insert_failures_total", "New connections the kernel map refused (expected to stay 0: the map is LRU)."),
            evictions: counter("observer_connection_evictions_total", "Connections the full kernel map evicted (least recently active first) to make room."),
            events_lost: counter("observer_events_lost_total", "Lifecycle events dropped because the ring buffer was full; per-connection counters stay exact."),
            resets: counter_vec("observer_resets_total", "TCP resets by direction (sent by this host's stack, received from peers), every connection together.", &["direction"]),
            retransmits: counter("observer_retransmits_total", "TCP segments this host retransmitted, every connection together."),
            connections_tracked: reg(&r, IntGauge::new("observer_connections_tracked", "Entries in the kernel's connection map (open and recently closed).").expect("valid")),
            connections_active: reg(&r, IntGaugeVec::new(Opts::new("observer_connections_active", "Open connections by role."), &["role"]).expect("valid")),
            connections_closed_kept: reg(&r, IntGauge::new("observer_connections_closed_kept", "Closed connections the daemon keeps for post-mortems (bounded, see --closed-retention).").expect("valid")),
            opened: counter_vec("observer_connections_opened_total", "Connections that reached ESTABLISHED, by role and service port.", &["role", "port"]),
            closed: counter_vec("observer_connections_closed_total", "Connections that ended, by role, service port, reason (normal, reset_sent, reset_received, refused, timed_out) and protocol (from the first bytes: http1, tls, h2, other, unknown).", &["role", "port", "reason", "protocol"]),
            handshake_rtt: reg(&r, HistogramVec::new(
                HistogramOpts::new("observer_handshake_rtt_seconds", "TCP handshake round-trip time as seen on this host's interfaces, by role.")
                    .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["role"],
            ).expect("valid")),
            event_delay: reg(&r, Histogram::with_opts(
                HistogramOpts::new("observer_event_delay_seconds", "Freshness: delay from an event in the kernel to the daemon having it.")
                    .buckets(vec![0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
            ).expect("valid")),
            http_requests: counter_vec("observer_http_requests_total", "HTTP/1.x requests, by role and service port.", &["role", "port"]),
            http_responses: counter_vec("observer_http_responses_total", "HTTP/1.x responses (interim 1xx included), by role, service port, status class and code.", &["role", "port", "class", "code"]),
            http_unanswered: counter_vec("observer_http_requests_unanswered_total", "HTTP/1.x requests whose connection ended (reset or close) before a response: failures.", &["role", "port"]),
            http_latency: reg(&r, HistogramVec::new(
                HistogramOpts::new("observer_http_response_latency_seconds", "From a request's first byte to its response's status line, as seen on this host, by role, service port and status class.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["role", "port", "class"],
            ).expect("valid")),
            http_framing_lost: counter("observer_http_framing_lost_total", "Times HTTP framing of a connection lost its place (bytes the daemon never got) and resynchronised at the next message."),
            payload_lost: counter("observer_payload_records_lost_total", "HTTP payload records dropped because the payload ring buffer was full."),
            not_http: counter_vec("observer_not_http_connections_total", "Connections found not to be HTTP/1.x (TLS, binary protocols), never parsed: by the kernel from their first bytes, or by the daemon when those were too few to tell.", &["detected_by"]),
            trace_lost: counter("observer_trace_records_lost_total", "Trace records dropped because the trace ring buffer was full."),
            frame_insert_failures: counter("observer_http_kernel_frame_insert_failures_total", "Connections whose kernel HTTP framing state the HTTP_FRAMES map refused (should stay 0: the map is LRU)."),
            kernel_framing_lost: counter_vec("observer_http_fallback_total", "Times the kernel's HTTP framer lost its place in a connection direction and handed it to the daemon's framer, by reason (gap, head_too_long, bad_length, pipeline_too_deep, unknown_coding, bad_chunk, bad_head, unpaired, budget; not_http: nobody frames it).", &["reason"]),
            seq_contention: counter("observer_seq_contention_total", "Segments whose per-direction sequence bookkeeping lost every compare-and-exchange attempt to another CPU (their bytes were counted as new). Should stay 0."),
            ring_backlog: reg(&r, IntGaugeVec::new(Opts::new("observer_ringbuf_backlog_bytes", "Bytes waiting in a ring buffer when a kernel program last wrote to it (fill; compare with observer_ringbuf_size_bytes)."), &["ring"]).expect("valid")),
            ring_size: reg(&r, IntGaugeVec::new(Opts::new("observer_ringbuf_size_bytes", "Size of each ring buffer."), &["ring"]).expect("valid")),
            program_runs: counter_vec("observer_program_runs_total", "Runs of each kernel program (counted while sysctl kernel.bpf_stats_enabled=1).", &["program"]),
            program_run_seconds: reg(&r, CounterVec::new(Opts::new("observer_program_run_seconds_total", "Time spent in each kernel program (counted while sysctl kernel.bpf_stats_enabled=1)."), &["program"]).expect("valid")),
            program_verified: reg(&r, IntGaugeVec::new(Opts::new("observer_program_verified_instructions", "Instructions the verifier processed to accept each kernel program."), &["program"]).expect("valid")),
            top_error_ratio: reg(&r, GaugeVec::new(Opts::new("observer_connection_error_ratio", "Per connection, only the top K by error ratio over the last 10 s (--top-k): failed / completed exchanges."), &["local", "remote"]).expect("valid")),
            top_requests: reg(&r, IntGaugeVec::new(Opts::new("observer_connection_requests_10s", "Per connection, top K only: requests over the last 10 s."), &["local", "remote"]).expect("valid")),
            top_failed: reg(&r, IntGaugeVec::new(Opts::new("observer_connection_failed_10s", "Per connection, top K only: 5xx responses and unanswered requests over the last 10 s."), &["local", "remote"]).expect("valid")),
            top_labels: Mutex::new(HashSet::new()),
            ports: Mutex::new(HashSet::new()),
            ephemeral: ephemeral_range(),
            http_series: Mutex::new(HashMap::new()),
            kernel_http_seen: Mutex::new(HashMap::new()),
            http_agg_full: counter("observer_http_kernel_aggregates_full_total", "Messages the kernel framer counted that its full HTTP_AGG map could not add to the aggregates: /metrics misses them (should stay 0)."),
            attempts: counter("observer_inbound_attempts_total", "Inbound connection attempts (a peer's SYN on a four-tuple without a connection), held apart from the connection map until the handshake completes: spoofed SYNs never evict a connection."),
            attempts_completed: counter("observer_inbound_attempts_completed_total", "Inbound attempts whose handshake completed (moved to the connection map); the rest were refused, abandoned, or a SYN flood."),
            bad_checksum: counter("observer_bad_checksum_segments_total", "Segments received with a checksum (TCP, or IPv4 header) the host's stack rejects: dropped there, so counted nowhere else (no packets, bytes, connection or HTTP message)."),
            bounds: counter_vec("observer_bounds_reached_total", "Times the daemon reached one of its bounds and let something go instead of growing: http_table (a connection's HTTP state evicted, the least recently active), http_pending (requests waiting beyond 16384 on one connection, kept as a count only), http_retired (HTTP state of a reused four-tuple dropped before its close), history (a closed connection dropped before --closed-retention, beyond --closed-max).", &["bound"]),
            api_refused: counter("observer_api_connections_refused_total", "API and /metrics connections closed at once because 256 were already open (each has 10 s to send a request head)."),
            trace_refused: counter("observer_trace_refused_total", "Live traces refused because 64 were already following connections."),
            upstreams: crate::upstream::Upstreams::new(&r, upstreams),
            registry: r,
        }
    }

    /// The `port` label of a connection: its service port, or `other` past the bound.
    fn port_label(&self, key: &ConnKey, role: Role) -> String {
        port_name(self.service_port(key, role))
    }

    /// The connection's service port as labelled: `None` for `other`.
    fn service_port(&self, key: &ConnKey, role: Role) -> Option<u16> {
        self.service_port_of(service_port(key, role, self.ephemeral))
    }

    /// `port` as labelled: `None` for `other` (past [`MAX_PORT_LABELS`] distinct ports).
    fn service_port_of(&self, port: u16) -> Option<u16> {
        let mut ports = self.ports.lock().expect("ports lock");
        (ports.contains(&port) || (ports.len() < MAX_PORT_LABELS && ports.insert(port))).then_some(port)
    }

    pub fn connection_opened(&self, key: &ConnKey, stats: &ConnStats) {
        let role = Role::from_u8(stats.role);
        self.opened.with_label_values(&[role.name(), &self.port_label(key, role)]).inc();
        self.upstreams.connection_opened(key, stats);
        if stats.handshake_rtt_ns != 0 {
            self.handshake_rtt.with_label_values(&[role.name()]).observe(stats.handshake_rtt_ns as f64 / 1e9);
        }
    }

    /// The series of (role, service port, status; 0 for the per-port ones), looked up once.
    /// Bounded: roles × MAX_PORT_LABELS + 1 ports × (three-digit statuses + 1).
    fn series(&self, series: &mut HashMap<SeriesKey, HttpSeries>, role: Role, port: Option<u16>, status: u16) -> HttpSeries {
        if let Some(s) = series.get(&(role as u8, port, status)) {
            return s.clone();
        }
        let name = port_name(port);
        let s = if status == 0 {
            HttpSeries::Port { requests: self.http_requests.with_label_values(&[role.name(), &name]), unanswered: self.http_unanswered.with_label_values(&[role.name(), &name]) }
        } else {
            let class = format!("{}xx", status / 100);
            HttpSeries::Status {
                responses: self.http_responses.with_label_values(&[role.name(), &name, &class, &status.to_string()]),
                latency: self.http_latency.with_label_values(&[role.name(), &name, &class]),
            }
        };
        series.insert((role as u8, port, status), s.clone());
        s
    }

    /// Counts what HTTP framing found on one connection. `kernel_counted`: the requests and
    /// responses are messages the kernel framer counted, which [`Self::kernel_http`] adds from the
    /// kernel's own aggregates; only their latency is observed here.
    pub fn http(&self, key: &ConnKey, role: Role, outcomes: &[crate::http::Outcome], kernel_counted: bool) {
        use crate::http::Outcome;
        if outcomes.is_empty() {
            return;
        }
        let port = self.service_port(key, role);
        let mut series = self.http_series.lock().expect("http series lock");
        for o in outcomes {
            match o {
                Outcome::Request { .. } if kernel_counted => {}
                Outcome::Request { .. } => {
                    if let HttpSeries::Port { requests, .. } = self.series(&mut series, role, port, 0) {
                        requests.inc();
                    }
                }
                // Statuses are three digits: never the per-port key 0.
                Outcome::Response { status, latency_ns } => {
                    if let HttpSeries::Status { responses, latency } = self.series(&mut series, role, port, (*status).max(1)) {
                        if !kernel_counted {
                            responses.inc();
                        }
                        if let Some(l) = latency_ns {
                            latency.observe(*l as f64 / 1e9);
                        }
                    }
                }
                Outcome::NoResponse(n) => {
                    if let HttpSeries::Port { unanswered, .. } = self.series(&mut series, role, port, 0) {
                        unanswered.inc_by(*n);
                    }
                }
                Outcome::FramingLost => self.http_framing_lost.inc(),
                Outcome::NotHttp => self.not_http.with_label_values(&["daemon"]).inc(),
            }
        }
    }

    /// Adds what the kernel framer counted since the last call (its aggregates: totals by role,
    /// service port and status, 0 for requests) to the request and response counters. Exact
    /// whatever the rings dropped: the message records only feed the views and the latency.
    pub fn kernel_http(&self, totals: &[(AggKey, u64)]) {
        let mut seen = self.kernel_http_seen.lock().expect("kernel http lock");
        let mut series = self.http_series.lock().expect("http series lock");
        for (k, total) in totals {
            let last = seen.entry(*k).or_insert(0);
            let delta = total.saturating_sub(*last);
            *last = (*last).max(*total);
            if delta == 0 {
                continue;
            }
            let role = Role::from_u8(k.role);
            let port = self.service_port_of(k.port);
            match self.series(&mut series, role, port, k.status) {
                HttpSeries::Port { requests, .. } => requests.inc_by(delta),
                HttpSeries::Status { responses, .. } => responses.inc_by(delta),
            }
        }
    }

    pub fn connection_closed(&self, key: &ConnKey, stats: &ConnStats) {
        let role = Role::from_u8(stats.role);
        let reason = observer_common::conn::CloseReason::of(stats).name();
        let protocol = observer_common::proto::protocol_name(stats.protocol);
        self.closed.with_label_values(&[role.name(), &self.port_label(key, role), reason, protocol]).inc();
        self.upstreams.connection_closed(key, stats);
    }

    /// Replaces the per-connection series with `top`: connections that left it lose theirs, so
    /// the number of series stays at most K.
    pub fn set_top(&self, top: &[TopConnection]) {
        let mut labels = self.top_labels.lock().expect("top labels lock");
        let now: HashSet<(String, String)> = top.iter().map(|c| (c.local.clone(), c.remote.clone())).collect();
        for (l, r) in labels.difference(&now) {
            let _ = self.top_error_ratio.remove_label_values(&[l, r]);
            let _ = self.top_requests.remove_label_values(&[l, r]);
            let _ = self.top_failed.remove_label_values(&[l, r]);
        }
        for c in top {
            let l = [c.local.as_str(), c.remote.as_str()];
            self.top_error_ratio.with_label_values(&l).set(c.error_ratio);
            self.top_requests.with_label_values(&l).set(c.requests as i64);
            self.top_failed.with_label_values(&l).set(c.failed as i64);
        }
        *labels = now;
    }

    pub fn set_programs(&self, programs: &[crate::bpf::ProgramStats]) {
        for p in programs {
            let runs = self.program_runs.with_label_values(&[p.program]);
            runs.inc_by(p.run_count.saturating_sub(runs.get()));
            let secs = self.program_run_seconds.with_label_values(&[p.program]);
            let total = p.run_time_ns as f64 / 1e9;
            if total > secs.get() {
                secs.inc_by(total - secs.get());
            }
            if let Some(v) = p.verified_instructions {
                self.program_verified.with_label_values(&[p.program]).set(i64::from(v));
            }
        }
    }

    /// Brings the counters up to the kernel's values and renders the text exposition format.
    /// `with_connections`: include the per-connection (top K) series, whose labels are
    /// four-tuples; without, aggregates only (`--metrics-listen`).
    pub fn render(&self, k: &KernelCounters, framing_lost: &[(&'static str, u64)], t: &TableGauges, with_connections: bool) -> String {
        let KernelCounters {
            packets_seen,
            not_tcp,
            parse_failures,
            conn_insert_failures,
            conn_inserts,
            events_lost,
            resets_sent,
            resets_received,
            retransmits,
            payload_lost,
            payload_skipped: _,
            payload_sent: _,
            not_http,
            trace_lost,
            payload_backlog,
            events_backlog,
            seq_contention,
            frame_insert_failures,
            http_agg_full,
            half_opened,
            half_open_promoted,
            bad_checksum,
        } = *k;
        for (reason, v) in framing_lost {
            let c = self.kernel_framing_lost.with_label_values(&[reason]);
            c.inc_by(v.saturating_sub(c.get()));
        }
        self.ring_backlog.with_label_values(&["payload"]).set(payload_backlog as i64);
        self.ring_backlog.with_label_values(&["events"]).set(events_backlog as i64);
        let evictions = conn_inserts.saturating_sub(t.kernel_entries);
        for (c, v) in [
            (&self.packets_seen, packets_seen),
            (&self.packets_not_tcp, not_tcp),
            (&self.packets_parse_failures, parse_failures),
            (&self.conn_insert_failures, conn_insert_failures),
            (&self.evictions, evictions),
            (&self.events_lost, events_lost),
            (&self.retransmits, retransmits),
            (&self.payload_lost, payload_lost),
            (&self.not_http.with_label_values(&["kernel"]), not_http),
            (&self.trace_lost, trace_lost),
            (&self.seq_contention, seq_contention),
            (&self.frame_insert_failures, frame_insert_failures),
            (&self.http_agg_full, http_agg_full),
            (&self.attempts, half_opened),
            (&self.attempts_completed, half_open_promoted),
            (&self.bad_checksum, bad_checksum),
            (&self.resets.with_label_values(&["sent"]), resets_sent),
            (&self.resets.with_label_values(&["received"]), resets_received),
        ] {
            // Kernel counters only grow; a scrape brings ours up to theirs.
            c.inc_by(v.saturating_sub(c.get()));
        }
        for (bound, v) in t.bounds {
            let c = self.bounds.with_label_values(&[bound]);
            c.inc_by(v.saturating_sub(c.get()));
        }
        self.connections_tracked.set(t.kernel_entries as i64);
        self.connections_active.with_label_values(&["inbound"]).set(t.open_inbound as i64);
        self.connections_active.with_label_values(&["outbound"]).set(t.open_outbound as i64);
        self.connections_active.with_label_values(&["unknown"]).set(t.open_unknown as i64);
        self.connections_closed_kept.set(t.closed_kept as i64);
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        if !with_connections {
            families.retain(|f| !f.get_metric().iter().any(|m| m.get_label().iter().any(|l| l.name() == "remote")));
        }
        TextEncoder::new().encode(&families, &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

/// The port that names a connection's service: the local one for inbound connections, the
/// remote one for outbound ones; when the role is unknown (the connection was open before the
/// daemon started, no SYN seen, and HTTP framing has not told yet), the end that is not in the
/// ephemeral range `(lo, hi)`, else the lower one: never a client's ephemeral port, which would
/// spend the bounded port labels on one-off values.
pub fn service_port(key: &ConnKey, role: Role, (lo, hi): (u16, u16)) -> u16 {
    match role {
        Role::Outbound => key.remote_port,
        Role::Inbound => key.local_port,
        Role::Unknown => {
            let ephemeral = |p: u16| (lo..=hi).contains(&p);
            match (ephemeral(key.local_port), ephemeral(key.remote_port)) {
                (true, false) => key.remote_port,
                (false, true) => key.local_port,
                _ => key.local_port.min(key.remote_port),
            }
        }
    }
}

/// `net.ipv4.ip_local_port_range` of the daemon's network namespace (Linux's default when it
/// cannot be read).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn an_unknown_role_never_names_an_ephemeral_port() {
        let key = |local, remote| ConnKey { local_port: local, remote_port: remote, ..ConnKey::zeroed() };
        let range = (32768, 60999);
        assert_eq!(service_port(&key(80, 51234), Role::Unknown, range), 80, "a client of ours, open before the start");
        assert_eq!(service_port(&key(45678, 8080), Role::Unknown, range), 8080, "our own connection to an upstream");
        assert_eq!(service_port(&key(443, 8443), Role::Unknown, range), 443, "neither ephemeral: the lower");
        assert_eq!(service_port(&key(45678, 51234), Role::Unknown, range), 45678, "both ephemeral: the lower");
        assert_eq!(service_port(&key(45678, 8080), Role::Outbound, range), 8080);
        assert_eq!(service_port(&key(80, 51234), Role::Inbound, range), 80);
    }
}
