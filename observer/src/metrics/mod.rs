//! Prometheus metrics. Aggregates only: never a four-tuple label. Every label set is bounded:
//! `port` (the service port: local for inbound connections, remote for outbound) takes at most
//! [`MAX_PORT_LABELS`] distinct values, then `other`.
#![forbid(unsafe_code)]
use std::sync::{Arc, Mutex};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use observer_common::{
    conn::{ConnKey, ConnStats, Role},
    http::AggKey,
};
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::bpf::Attachment;

mod kernel;
mod ports;
pub mod upstream;

pub use kernel::{KernelCollector, KernelCounters};
use ports::{ephemeral_range, service_port};

pub const MAX_PORT_LABELS: usize = 64;

fn port_name(port: Option<u16>) -> String {
    port.map_or_else(|| "other".to_owned(), |p| p.to_string())
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
    /// The kernel's counters, read at each scrape.
    kernel: Arc<KernelCollector>,
    evictions: IntCounter,
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
    program_runs: IntCounterVec,
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
    bounds: IntCounterVec,
    /// Live traces refused: as many were following as the daemon keeps at once.
    pub trace_refused: IntCounter,
    /// API connections closed at once: as many were open as the daemon serves at once.
    pub api_refused: IntCounter,
    /// The `observer_upstream_*` series of outbound connections.
    pub upstreams: upstream::Upstreams,
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
    pub fn new(maps: Arc<Mutex<crate::bpf::Maps>>, attachments: &[Attachment], tracepoints: &[(String, bool)], upstreams: upstream::Policy) -> Self {
        let r = Registry::new();
        let kernel = Arc::new(KernelCollector::new(maps));
        r.register(Box::new(SharedCollector(kernel.clone()))).expect("the kernel counters register once");
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: the
        // names every Prometheus client library exports, so standard dashboards find the daemon.
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("process metrics register once");
        let info = reg(
            &r,
            IntGaugeVec::new(Opts::new("observer_build_info", "Version of the running observer and the kernel it runs on (always 1)."), &["version", "kernel"])
                .expect("valid"),
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), &crate::sys::kernel_release()]).set(1);
        let attached = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("observer_tc_attached", "tc programs attached, by interface, direction and mode (tcx or clsact); 1 while attached."),
                &["interface", "direction", "mode"],
            )
            .expect("valid"),
        );
        for a in attachments {
            attached.with_label_values(&[&a.interface, a.direction, a.mode]).set(1);
        }
        let tp = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("observer_tracepoint_attached", "Socket tracepoints: 1 attached, 0 missing on this kernel (the rest keeps working)."),
                &["tracepoint"],
            )
            .expect("valid"),
        );
        for (name, ok) in tracepoints {
            tp.with_label_values(&[name]).set(i64::from(*ok));
        }
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid"));
        let counter_vec = |name: &str, help: &str, labels: &[&str]| reg(&r, IntCounterVec::new(Opts::new(name, help), labels).expect("valid"));
        Self {
            evictions: counter("observer_connection_evictions_total", "Connections the full kernel map evicted (least recently active first) to make room."),
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
            bounds: counter_vec("observer_bounds_reached_total", "Times the daemon reached one of its bounds and let something go instead of growing: http_table (a connection's HTTP state evicted, the least recently active), http_pending (requests waiting beyond 16384 on one connection, kept as a count only), http_retired (HTTP state of a reused four-tuple dropped before its close), history (a closed connection dropped before --closed-retention, beyond --closed-max).", &["bound"]),
            api_refused: counter("observer_api_connections_refused_total", "API and /metrics connections closed at once because 256 were already open (each has 10 s to send a request head)."),
            trace_refused: counter("observer_trace_refused_total", "Live traces refused because 64 were already following connections."),
            upstreams: upstream::Upstreams::new(&r, upstreams),
            kernel,
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
            HttpSeries::Port {
                requests: self.http_requests.with_label_values(&[role.name(), &name]),
                unanswered: self.http_unanswered.with_label_values(&[role.name(), &name]),
            }
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
                Outcome::NotHttp => {
                    self.kernel.not_http_daemon.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
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
    pub fn render(&self, conn_inserts: u64, t: &TableGauges, with_connections: bool) -> String {
        // Derived: every connection the kernel inserted and no longer holds was evicted.
        self.evictions.inc_by(conn_inserts.saturating_sub(t.kernel_entries).saturating_sub(self.evictions.get()));
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

/// The kernel collector, shared with the registry.
struct SharedCollector(Arc<KernelCollector>);

impl prometheus::core::Collector for SharedCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}
