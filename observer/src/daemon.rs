//! `observer run`: load, attach, pump events, keep the table, serve, and detach on SIGINT/SIGTERM.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use observer_common::{
    conn::{ConnEvent, ConnEventKind, ConnKey, ConnStats, Role},
    frame::{ConnFrame, LostReason},
    global::Counter,
    http::AggKey,
};

use crate::{
    api,
    bpf::{self, Attachment, MapSizes, Maps, Rings},
    http::{HttpTable, Outcome, StreamEnds},
    trace::{self, Hub},
    metrics::{KernelCounters, Metrics, TableGauges, TopConnection},
    sys::{self, monotonic_ns},
    table::{self, Connection, History, Incarnation},
};

/// A connection without a socket here (refused SYN) counts as closed after this much quiet.
const QUIET_NS: u64 = 1_000_000_000;
/// A closed connection is archived this long after its CLOSE, so that the resets and final ACKs
/// the stack sends right after the state change are in its counters.
const CLOSE_GRACE: Duration = Duration::from_millis(300);
/// How long after its close the sweep finalises a connection that had a socket here (its close
/// event, drained every 10 ms, normally did it 300 ms after the close; this is for lost events).
const SWEEP_SOCKET_GRACE: Duration = Duration::from_secs(3);
/// How often the payload and event ring buffers are drained when the kernel has not woken us:
/// the bound on how stale the daemon's view can be.
const PAYLOAD_POLL: Duration = Duration::from_millis(10);
/// How often the whole kernel map is swept for connections no event reported closed (lost
/// events; FIN-only closes without a socket here). Each sweep reads every entry: not too often.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Everything `observer run` is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Empty: every interface that is up and not loopback.
    pub interfaces: Vec<String>,
    pub listen: SocketAddr,
    pub map_sizes: MapSizes,
    pub closed_retention: Duration,
    pub closed_max: usize,
    /// Per-connection Prometheus series for this many connections (worst 10 s error ratio).
    pub top_k: usize,
    /// Ports whose connections are parsed as HTTP; empty: every port, detected by content.
    pub http_ports: Vec<u16>,
    /// HTTP framed in the kernel (`--http-framing kernel`), else by the daemon from payload.
    pub kernel_http: bool,
    pub lifecycle_hook: crate::bpf::LifecycleHook,
    /// A second listener for Prometheus: `/metrics` without per-connection series, `/healthz`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where maps and links are pinned (`None`: nothing outlives the daemon).
    pub state_dir: Option<std::path::PathBuf>,
    /// The API also on this Unix socket (mode 0600), for the CLI.
    pub unix_socket: Option<std::path::PathBuf>,
    /// `/readyz` fails when a ring buffer has had records waiting unread longer than this.
    pub ready_max_lag: Duration,
    /// How outbound connections get their bounded `upstream` label.
    pub upstreams: crate::upstream::Policy,
}

/// What the API handlers and the pump share.
/// A request to a ring-buffer pump: drain now, then answer.
type DrainRequest = tokio::sync::oneshot::Sender<()>;

pub struct App {
    /// Ask the event and payload pumps to drain before an answer, so that what the API says is
    /// consistent with the kernel's maps at that moment (a connection shown closed has its HTTP
    /// records framed).
    drain: [tokio::sync::mpsc::Sender<DrainRequest>; 2],
    maps: Mutex<Maps>,
    history: Mutex<History>,
    /// Final counts of closed connections whose kernel entry a new connection on the same
    /// four-tuple took over before they were archived (`Superseded` events), by (key, first seen).
    superseded: Mutex<std::collections::HashMap<Incarnation, (ConnStats, Option<ConnFrame>)>>,
    http: Mutex<HttpTable>,
    pub attachments: Vec<Attachment>,
    pub tracepoints: Vec<(String, bool)>,
    pub netns_filter: bool,
    /// What follows state changes (`tp_btf`, `tracepoint`, `none`).
    pub lifecycle_hook: &'static str,
    /// The capabilities kept once everything was loaded and attached.
    pub capabilities: Vec<&'static str>,
    /// Why HTTP is framed by the daemon although the kernel was asked to.
    pub kernel_http_refused: Option<String>,
    pub programs: bpf::Programs,
    pub metrics: Metrics,
    pub trace: Arc<Hub>,
    pub started: Instant,
    /// Sweeps of the kernel map completed (`/api/v1/status`: lets a test wait for one).
    pub sweeps: std::sync::atomic::AtomicU64,
    /// How far behind each ring pump is (`/readyz`, `/api/v1/status`).
    pub ring_lag: crate::ring_lag::RingLags,
    pub config: Config,
}

impl App {
    /// The kernel's HTTP framing state of every connection (or of `only`); none at all when the
    /// kernel framer is off.
    fn kernel_frames(&self, only: Option<&ConnKey>) -> std::collections::HashMap<ConnKey, ConnFrame> {
        if !self.config.kernel_http {
            return std::collections::HashMap::new();
        }
        match only {
            Some(k) => self.kernel_frame(k).map(|f| (*k, f)).into_iter().collect(),
            None => self.maps.lock().expect("maps lock poisoned").http_frames.iter().filter_map(Result::ok).collect(),
        }
    }

    /// The kernel's HTTP framing state of one four-tuple.
    fn kernel_frame(&self, key: &ConnKey) -> Option<ConnFrame> {
        self.maps.lock().expect("maps lock poisoned").http_frames.get(key, 0).ok()
    }

    /// Every entry of the kernel map.
    pub fn kernel_entries(&self) -> Vec<(ConnKey, ConnStats)> {
        let maps = self.maps.lock().expect("maps lock poisoned");
        maps.conns.iter().filter_map(Result::ok).collect()
    }

    /// Drains both ring buffers (events first: a close is then seen with its last records).
    /// Bounded: a stuck pump costs an answer 100 ms of freshness, never the answer.
    pub async fn sync(&self) {
        for tx in &self.drain {
            let (done, wait) = tokio::sync::oneshot::channel();
            if tx.send(done).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_millis(100), wait).await;
            }
        }
    }

    /// The daemon's own API connections (the CLI, scrapers): not what an operator looks for.
    fn is_own(&self, key: &ConnKey) -> bool {
        std::iter::once(self.config.listen).chain(self.config.metrics_listen).any(|listen| {
            (key.local_port == listen.port() && (listen.ip().is_unspecified() || key.local().ip() == listen.ip()))
                || (key.remote_port == listen.port() && key.remote().ip() == listen.ip())
        })
    }

    /// Every connection: open ones and recently closed ones.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections_of(&self.kernel_entries(), None)
    }

    /// The connections of `kernel` (one read of the map) and of history; with `only`, just the
    /// incarnations of that four-tuple (no view is built for the others).
    fn connections_of(&self, kernel: &[(ConnKey, ConnStats)], only: Option<&ConnKey>) -> Vec<Connection> {
        let history = self.history.lock().expect("history lock poisoned");
        let now = monotonic_ns();
        let live = |k: &ConnKey| self.http.lock().expect("http lock poisoned").get(k).map(|h| h.view(now, &sys::ktime_to_unix_seconds));
        let frames = self.kernel_frames(only);
        let mut all = table::merge(kernel, &history, QUIET_NS, &live, &frames, only);
        all.retain(|c| !self.is_own(&c.incarnation.0));
        self.add_server_names(&mut all, only);
        all
    }

    /// The TLS server names the kernel found, onto their connections (the incarnation must
    /// match: a four-tuple reused since names another connection).
    fn add_server_names(&self, conns: &mut [Connection], only: Option<&ConnKey>) {
        let maps = self.maps.lock().expect("maps lock poisoned");
        let names: std::collections::HashMap<ConnKey, observer_common::proto::ServerName> = match only {
            Some(k) => maps.tls_names.get(k, 0).ok().map(|n| (*k, n)).into_iter().collect(),
            None if conns.iter().any(|c| c.protocol == "tls") => maps.tls_names.iter().filter_map(Result::ok).collect(),
            None => return,
        };
        for c in conns.iter_mut().filter(|c| c.protocol == "tls") {
            let (key, first_seen_ns) = c.incarnation;
            if let Some(n) = names.get(&key).filter(|n| n.conn == first_seen_ns as u32) {
                let len = (n.len as usize).min(n.name.len());
                c.sni = Some(String::from_utf8_lossy(&n.name[..len]).into_owned());
            }
        }
    }

    /// One connection by its four-tuple: the newest incarnation.
    pub fn connection(&self, key: &ConnKey) -> Option<Connection> {
        let kernel = self.maps.lock().expect("maps lock poisoned").conns.get(key, 0).ok().map(|s| (*key, s));
        self.connections_of(kernel.as_slice(), Some(key)).into_iter().max_by_key(|c| c.incarnation.1)
    }

    /// Times the kernel framer lost its place, by reason, summed over CPUs.
    pub fn kernel_framing_lost(&self) -> Vec<(&'static str, u64)> {
        let maps = self.maps.lock().expect("maps lock poisoned");
        LostReason::ALL.iter().map(|r| (r.name(), maps.frame_lost.get(&(*r as u32), 0).map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0))).collect()
    }

    /// What the kernel framer counted, by role, service port and status (0: requests), summed
    /// over CPUs.
    pub fn kernel_http_aggregates(&self) -> Vec<(AggKey, u64)> {
        let maps = self.maps.lock().expect("maps lock poisoned");
        maps.http_agg.iter().filter_map(Result::ok).map(|(k, per_cpu)| (k, per_cpu.iter().sum::<u64>())).collect()
    }

    /// One of the kernel's global counters, summed over CPUs.
    pub fn kernel_counter(&self, c: Counter) -> u64 {
        Self::summed(&self.maps.lock().expect("maps lock poisoned"), c)
    }

    fn summed(maps: &Maps, c: Counter) -> u64 {
        maps.global.get(&(c as u32), 0).map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0)
    }

    /// The kernel's global counters, summed over CPUs.
    pub fn kernel_counters(&self) -> KernelCounters {
        let maps = self.maps.lock().expect("maps lock poisoned");
        let sum = |c: Counter| Self::summed(&maps, c);
        let max = |c: Counter| maps.global.get(&(c as u32), 0).map(|per_cpu| per_cpu.iter().copied().max().unwrap_or(0)).unwrap_or(0);
        KernelCounters {
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

    /// Renders /metrics: kernel counters, table gauges, program run times, the top K series.
    pub fn render_metrics(&self, with_connections: bool) -> String {
        // One read of the kernel map serves the top K and the table gauges.
        let kernel = self.kernel_entries();
        let all = self.connections_of(&kernel, None);
        self.metrics.upstreams.scrape(&all);
        let mut conns: Vec<Connection> = all
            .into_iter()
            .filter(|c| c.http.as_ref().is_some_and(|h| h.last_10s.counts.requests + h.last_10s.failed > 0))
            .collect();
        let ratio = |c: &Connection| c.http.as_ref().map_or((0.0, 0), |h| (h.last_10s.error_ratio, h.last_10s.failed));
        conns.sort_by(|a, b| ratio(b).partial_cmp(&ratio(a)).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.connection.cmp(&b.connection)));
        conns.truncate(self.config.top_k);
        let top: Vec<TopConnection> = conns
            .iter()
            .filter_map(|c| {
                let h = c.http.as_ref()?;
                Some(TopConnection { local: c.local.clone(), remote: c.remote.clone(), error_ratio: h.last_10s.error_ratio, requests: h.last_10s.counts.requests, failed: h.last_10s.failed })
            })
            .collect();
        self.metrics.set_top(&top);
        self.metrics.set_programs(&self.programs.stats());
        self.metrics.kernel_http(&self.kernel_http_aggregates());
        self.metrics.render(&self.kernel_counters(), &self.kernel_framing_lost(), &self.table_gauges(&kernel), with_connections)
    }

    pub fn table_gauges(&self, kernel: &[(ConnKey, ConnStats)]) -> TableGauges {
        let now = monotonic_ns();
        let mut g = TableGauges { kernel_entries: kernel.len() as u64, ..Default::default() };
        for (_, s) in kernel.iter().filter(|(k, s)| !self.is_own(k) && !table::is_closed(s, now, QUIET_NS)) {
            match Role::from_u8(s.role) {
                Role::Inbound => g.open_inbound += 1,
                Role::Outbound => g.open_outbound += 1,
                Role::Unknown => g.open_unknown += 1,
            }
        }
        let (kept, dropped) = {
            let history = self.history.lock().expect("history lock poisoned");
            (history.len() as u64, history.dropped())
        };
        g.closed_kept = kept;
        use crate::http::bounds;
        g.bounds = [
            ("http_table", self.http.lock().expect("http lock poisoned").evictions()),
            ("http_pending", bounds::get(&bounds::PENDING_OVERFLOW)),
            ("http_retired", bounds::get(&bounds::RETIRED_DROPPED)),
            ("history", dropped),
        ];
        g
    }

    /// Archives a closed connection once, and counts it.
    /// `frame`: the kernel's HTTP framing state taken at the close (from the close event); `None`
    /// reads the map (the sweep, for connections no event reported closed).
    fn finalize(&self, key: ConnKey, at_close: ConnStats, frame: Option<ConnFrame>) {
        if self.is_own(&key) {
            return;
        }
        // The kernel entry has the final counters, unless a new connection reused the four-tuple.
        let current = self.maps.lock().expect("maps lock poisoned").conns.get(&key, 0).ok();
        // If it did, the kernel said what the entry held last (a FIN after the close included).
        let last = self.superseded.lock().expect("superseded lock poisoned").remove(&(key, at_close.first_seen_ns));
        let (stats, frame) = match (current, last) {
            (Some(s), _) if s.first_seen_ns == at_close.first_seen_ns => (s, frame),
            (_, Some((s, f))) => (s, f.or(frame)),
            _ => (at_close, frame),
        };
        // One lock over check and archive: the close event's task and the sweep may both get
        // here for the same connection, and only one may count it.
        let mut history = self.history.lock().expect("history lock poisoned");
        if history.contains(&(key, stats.first_seen_ns)) {
            return;
        }
        // Where each direction's data ended, by the kernel's count (the FIN takes one number).
        let ends = StreamEnds {
            seq: [observer_common::seq::data_end(stats.seq_in, stats.fin_in > 0), observer_common::seq::data_end(stats.seq_out, stats.fin_out > 0)],
            carried: [stats.bytes_in > 0, stats.bytes_out > 0],
            records_lost: stats.payload_records_lost > 0,
        };
        // Requests still unanswered when the connection ended are failures.
        let http = self.http.lock().expect("http lock poisoned").close(&key, stats.first_seen_ns, stats.closed_ns.max(stats.last_seen_ns), &ends);
        let http = http.map(|(conn, outcomes)| {
            self.metrics.http(&key, conn.role(), &outcomes, false);
            conn.into_record()
        });
        // From the map only if it is still this connection's (the four-tuple may be reused).
        let frame = frame.or_else(|| self.kernel_frame(&key).filter(|f| crate::kernel_http::belongs(f, &stats)));
        if history.archive(key, stats, http, frame, monotonic_ns()) {
            self.metrics.connection_closed(&key, &stats);
            if let Some(archived) = history.get(&(key, stats.first_seen_ns)) {
                self.metrics.upstreams.finished(&table::closed_connection(archived, monotonic_ns()));
            }
        }
    }

    /// Finds connections that ended without a close event (no socket here, or a lost event).
    fn sweep(&self) {
        let now = monotonic_ns();
        let closed: Vec<(ConnKey, ConnStats)> = self
            .kernel_entries()
            .into_iter()
            .filter(|(_, s)| {
                // A connection with a socket here gets a close event, which carries its final
                // HTTP framing state: the sweep takes it only once that event is overdue.
                let grace = if s.state != 0 { SWEEP_SOCKET_GRACE } else { CLOSE_GRACE };
                table::is_closed(s, now, QUIET_NS) && now.saturating_sub(s.closed_ns.max(s.last_seen_ns)) >= grace.as_nanos() as u64
            })
            .collect();
        for (k, s) in closed {
            self.finalize(k, s, None);
        }
        self.history.lock().expect("history lock poisoned").expire(now);
        self.sweeps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn handle(self: &Arc<Self>, ev: ConnEvent) {
        let delay = monotonic_ns().saturating_sub(ev.ts_ns);
        self.metrics.event_delay.observe(delay as f64 / 1e9);
        // A superseded entry is bookkeeping, not a moment of the connection's timeline.
        if ev.kind != ConnEventKind::Superseded as u32 {
            self.trace.publish(&ev.key, || {
                let time = sys::ktime_to_unix_seconds(ev.ts_ns);
                let c = ev.key.to_string();
                match ev.kind {
                    k if k == ConnEventKind::Opened as u32 => serde_json::json!({"type": "opened", "time": time, "connection": c, "role": Role::from_u8(ev.stats.role).name()}),
                    k if k == ConnEventKind::Closed as u32 => serde_json::json!({"type": "closed", "time": time, "connection": c, "state_before": observer_common::conn::tcp_state::name(ev.detail as u8)}),
                    _ => serde_json::json!({"type": "reset", "time": time, "connection": c, "direction": if ev.detail == 1 { "sent" } else { "received" }}),
                }
            });
        }
        match ev.kind {
            _ if self.is_own(&ev.key) => {}
            k if k == ConnEventKind::Opened as u32 => self.metrics.connection_opened(&ev.key, &ev.stats),
            k if k == ConnEventKind::Superseded as u32 => {
                if self.history.lock().expect("history lock poisoned").contains(&(ev.key, ev.stats.first_seen_ns)) {
                    return; // archived already, with the entry's final counts
                }
                let mut superseded = self.superseded.lock().expect("superseded lock poisoned");
                // Bounded; an entry is taken when its connection is archived (within a second).
                if superseded.len() < 4096 {
                    superseded.insert((ev.key, ev.stats.first_seen_ns), (ev.stats, (ev.frame_valid == 1).then_some(ev.frame)));
                }
            }
            k if k == ConnEventKind::Closed as u32 => {
                let app = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(CLOSE_GRACE).await;
                    app.finalize(ev.key, ev.stats, (ev.frame_valid == 1).then_some(ev.frame));
                });
            }
            _ => {}
        }
    }
}

/// Frames HTTP from the payload records the kernel forwards, as they come.
#[expect(deprecated, reason = "the RingBuf owns its fd for as long as AsyncFd holds it, which is the soundness condition")]
async fn payload_pump(app: Arc<App>, payload: aya::maps::RingBuf<aya::maps::MapData>, mut drain: tokio::sync::mpsc::Receiver<DrainRequest>) -> Result<()> {
    let mut fd = tokio::io::unix::AsyncFd::with_interest(payload, tokio::io::Interest::READABLE).context("watching the payload ring buffer")?;
    // The kernel wakes us only for a backlog (waking per record costs more than the record), so
    // the ring is also drained on a short timer: freshness stays within PAYLOAD_POLL.
    let mut tick = tokio::time::interval(PAYLOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            g = fd.readable_mut() => {
                let mut g = g.context("waiting for payload")?;
                drain_payload(&app, g.get_inner_mut());
                g.clear_ready();
            }
            _ = tick.tick() => {
                drain_payload(&app, fd.get_mut());
                ticks += 1;
                if ticks.is_multiple_of(100) {
                    // About once a second: gaps followed by silence (bytes lost to us only if the
                    // kernel refused records).
                    let records_lost = app.kernel_counter(Counter::PayloadLost) > 0;
                    let changed = {
                        let mut http = app.http.lock().expect("http lock poisoned");
                        http.set_records_lost(records_lost);
                        http.expire_gaps(monotonic_ns())
                    };
                    for (key, role, outcomes) in changed {
                        app.metrics.http(&key, role, &outcomes, false);
                    }
                }
            }
            Some(done) = drain.recv() => {
                drain_payload(&app, fd.get_mut());
                let _ = done.send(());
            }
        }
    }
}

/// Frames every payload record waiting in the ring.
fn drain_payload(app: &App, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
    use observer_common::http::PayloadHeader;
    const HDR: usize = std::mem::size_of::<PayloadHeader>();
    let _reading = app.ring_lag.payload.reading();
    let mut http = app.http.lock().expect("http lock poisoned");
    while let Some(item) = ring.next() {
        if item.len() < HDR {
            continue;
        }
        // SAFETY: the kernel wrote a PayloadHeader there; read_unaligned copes with alignment.
        let h = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<PayloadHeader>()) };
        let data = &item[HDR..(HDR + h.len as usize).min(item.len())];
        let update = http.on_record(h.key, h.dir, h.seq, h.flags, data, h.ts_ns);
        app.metrics.http(&h.key, update.role, &update.outcomes, update.kernel_counted);
        for o in &update.outcomes {
            app.trace.publish(&h.key, || outcome_line(&h.key, o, h.ts_ns));
        }
        if let Some(hints) = update.hints {
            // For the incarnation of the four-tuple these bytes came from, not a later one.
            let hints = observer_common::http::HttpHints { conn: h.conn, ..hints };
            if let Err(e) = app.maps.lock().expect("maps lock poisoned").http_hints.insert(h.key, hints, 0) {
                log::debug!("HTTP hint for {}: {e}", h.key);
            }
        }
    }
}

/// A trace timeline line for what HTTP framing found.
fn outcome_line(key: &ConnKey, o: &Outcome, ts_ns: u64) -> serde_json::Value {
    let time = sys::ktime_to_unix_seconds(ts_ns);
    let c = key.to_string();
    match o {
        Outcome::Request { method, target } => serde_json::json!({"type": "request", "time": time, "connection": c, "method": method, "target": target}),
        Outcome::Response { status, latency_ns } => serde_json::json!({"type": "response", "time": time, "connection": c, "status": status, "latency_ms": latency_ns.map(|l| l as f64 / 1e6)}),
        Outcome::NoResponse(n) => serde_json::json!({"type": "no_response", "time": time, "connection": c, "requests": n}),
        Outcome::FramingLost => serde_json::json!({"type": "framing_lost", "time": time, "connection": c}),
        Outcome::NotHttp => serde_json::json!({"type": "not_http", "time": time, "connection": c}),
    }
}

/// Sends traced packets to their subscribers.
#[expect(deprecated, reason = "the RingBuf owns its fd for as long as AsyncFd holds it, which is the soundness condition")]
async fn trace_pump(app: Arc<App>, ring: aya::maps::RingBuf<aya::maps::MapData>) -> Result<()> {
    use observer_common::trace::TraceRecord;
    let mut fd = tokio::io::unix::AsyncFd::with_interest(ring, tokio::io::Interest::READABLE).context("watching the trace ring buffer")?;
    loop {
        let mut guard = fd.readable_mut().await.context("waiting for trace records")?;
        let ring = guard.get_inner_mut();
        let _reading = app.ring_lag.trace.reading();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<TraceRecord>() {
                // SAFETY: the kernel wrote a TraceRecord there; read_unaligned copes with alignment.
                let r = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceRecord>()) };
                app.trace.publish(&r.key, || trace::packet_line(&r));
            }
        }
        guard.clear_ready();
    }
}

/// Reads lifecycle events from the kernel: woken for a backlog, otherwise on a short timer.
#[expect(deprecated, reason = "the RingBuf owns its fd for as long as AsyncFd holds it, which is the soundness condition")]
async fn pump(app: Arc<App>, events: aya::maps::RingBuf<aya::maps::MapData>, mut drain: tokio::sync::mpsc::Receiver<DrainRequest>) -> Result<()> {
    let mut fd = tokio::io::unix::AsyncFd::with_interest(events, tokio::io::Interest::READABLE).context("watching the event ring buffer")?;
    let mut tick = tokio::time::interval(PAYLOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            g = fd.readable_mut() => {
                let mut g = g.context("waiting for events")?;
                drain_events(&app, g.get_inner_mut());
                g.clear_ready();
            }
            _ = tick.tick() => drain_events(&app, fd.get_mut()),
            Some(done) = drain.recv() => {
                drain_events(&app, fd.get_mut());
                let _ = done.send(());
            }
        }
    }
}

fn drain_events(app: &Arc<App>, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
    let _reading = app.ring_lag.events.reading();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<ConnEvent>() {
            // SAFETY: the kernel wrote a ConnEvent there; read_unaligned copes with alignment.
            let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnEvent>()) };
            app.handle(ev);
        }
    }
}

pub async fn run(config: Config) -> Result<()> {
    // Signals first: a SIGTERM while the programs load must still detach cleanly.
    let shutdown = shutdown_signal()?;
    sys::require_capabilities()?;
    sys::raise_memlock();
    // A BPF filesystem only for pinning: `--ephemeral` runs without one (and without the
    // CAP_SYS_ADMIN to mount it).
    if config.state_dir.is_some() {
        sys::ensure_mounted("bpf", "/sys/fs/bpf")?;
    }
    if let Err(e) = sys::ensure_mounted("tracefs", crate::tracefs::TRACEFS) {
        log::warn!("{e:#}: socket tracepoints cannot be attached");
    }
    let interfaces = if config.interfaces.is_empty() { sys::default_interfaces()? } else { config.interfaces.clone() };
    if interfaces.is_empty() {
        anyhow::bail!("no interface is up (other than loopback): name one with --interface");
    }
    // Bind first: a busy port is reported before anything is attached.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another observer running? choose another address with --listen", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for /metrics: choose another address with --metrics-listen"))?,
        ),
        None => None,
    };
    // Removed when `run` returns, also through an error.
    let unix_socket = match &config.unix_socket {
        Some(path) => {
            let (listener, file) = crate::unix_socket::bind(path)?;
            listener.set_nonblocking(true).context("the API's Unix socket")?;
            Some((tokio::net::UnixListener::from_std(listener).context("the API's Unix socket")?, file))
        }
        None => None,
    };
    let state = config.state_dir.as_deref().map(bpf::pin::State::open).transpose()?;
    let (loaded, maps, Rings { events, payload, trace: trace_ring }, trace_maps) =
        bpf::load_and_attach(&interfaces, config.map_sizes, &config.http_ports, config.kernel_http, config.lifecycle_hook, state.as_ref())?;
    // The kernel may have refused its framer: what runs is what counts.
    let config = Config { kernel_http: loaded.kernel_http, ..config };
    // Everything is loaded and attached: keep only what reading maps needs (CAP_BPF; CAP_SYS_ADMIN
    // on kernels before 5.8, which have no CAP_BPF), and CAP_NET_ADMIN where the exit detaches
    // netlink tc filters (clsact, nothing pinned).
    let mut keep = vec![if sys::kernel_before(5, 8) { sys::CAP_SYS_ADMIN } else { sys::CAP_BPF }];
    if state.is_none() && loaded.attachments.iter().any(|a| a.mode == "clsact") {
        keep.push(sys::CAP_NET_ADMIN);
    }
    let capabilities = sys::drop_capabilities(&keep)?;
    log::info!("loaded and attached; capabilities kept from here on: {}", if capabilities.is_empty() { "none".to_owned() } else { capabilities.join(", ") });
    let (events_drain, events_drain_rx) = tokio::sync::mpsc::channel(64);
    let (payload_drain, payload_drain_rx) = tokio::sync::mpsc::channel(64);
    let app = Arc::new(App {
        drain: [events_drain, payload_drain],
        maps: Mutex::new(maps),
        history: Mutex::new(History::new(config.closed_retention, config.closed_max)),
        superseded: Mutex::new(std::collections::HashMap::new()),
        http: Mutex::new(HttpTable::new(config.map_sizes.connections as usize)),
        metrics: Metrics::new(&loaded.attachments, &loaded.tracepoints, config.upstreams.clone()),
        trace: Arc::new(Hub::new(Box::new(trace_maps))),
        attachments: loaded.attachments.clone(),
        tracepoints: loaded.tracepoints.clone(),
        netns_filter: loaded.netns_filter,
        lifecycle_hook: loaded.lifecycle_hook,
        capabilities,
        kernel_http_refused: loaded.kernel_http_refused.clone(),
        programs: loaded.programs.clone(),
        started: Instant::now(),
        sweeps: std::sync::atomic::AtomicU64::new(0),
        ring_lag: crate::ring_lag::RingLags::new(PAYLOAD_POLL),
        config: config.clone(),
    });
    app.metrics.ring_size.with_label_values(&["events"]).set(i64::from(config.map_sizes.events_bytes));
    app.metrics.ring_size.with_label_values(&["payload"]).set(i64::from(config.map_sizes.payload_bytes));
    let mut pump_task = tokio::spawn(pump(app.clone(), events, events_drain_rx));
    let mut payload_task = tokio::spawn(payload_pump(app.clone(), payload, payload_drain_rx));
    let mut trace_task = tokio::spawn(trace_pump(app.clone(), trace_ring));
    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                app.sweep();
            }
        })
    };
    let metrics_task = metrics_listener.map(|l| {
        log::info!("/metrics without per-connection series on http://{}", config.metrics_listen.expect("bound above"));
        let router = api::metrics_router(app.clone());
        let refused = app.metrics.api_refused.clone();
        tokio::spawn(api::serve(l, router, refused, std::future::pending()))
    });
    let (unix_listener, socket_file) = unix_socket.unzip();
    let unix_task = unix_listener.map(|l| {
        log::info!("the API also on the Unix socket {} (mode 0600)", config.unix_socket.as_ref().expect("bound above").display());
        tokio::spawn(api::serve(l, api::router(app.clone()), app.metrics.api_refused.clone(), std::future::pending()))
    });
    log::info!("observing {} on http://{}", interfaces.join(", "), config.listen);
    // A ring pump that stops (it never returns while the daemon is well) ends the daemon with its
    // reason and a failing status: a supervisor restarts it, and the pinned state carries over.
    let pump_ended = async {
        let (name, ended) = tokio::select! {
            r = &mut pump_task => ("the lifecycle event pump", r),
            r = &mut payload_task => ("the HTTP record pump", r),
            r = &mut trace_task => ("the trace pump", r),
        };
        match ended {
            Ok(Ok(())) => anyhow::anyhow!("{name} stopped"),
            Ok(Err(e)) => e.context(format!("{name} failed")),
            Err(e) => anyhow::anyhow!("{name} panicked or was cancelled: {e}"),
        }
    };
    let failure = tokio::select! {
        _ = api::serve(listener, api::router(app.clone()), app.metrics.api_refused.clone(), shutdown) => None,
        e = pump_ended => Some(e),
    };
    for t in metrics_task.into_iter().chain(unix_task) {
        t.abort();
    }
    drop(socket_file);
    pump_task.abort();
    payload_task.abort();
    trace_task.abort();
    sweeper.abort();
    drop(app);
    drop(loaded);
    match &state {
        Some(state) => log::info!(
            "the programs stay attached to {} and keep counting into {} for the next daemon; `observer detach --state-dir {}` removes them; bye",
            interfaces.join(", "),
            state.dir.display(),
            state.root.display()
        ),
        None => log::info!("detached from {}; bye", interfaces.join(", ")),
    }
    failure.map_or(Ok(()), Err)
}

/// `observer detach`: removes the pinned state (its links detach their programs) and, on kernels
/// without tcx, the tc filters a daemon left (netlink filters are not pinned).
pub fn detach(state_dir: &std::path::Path) -> Result<()> {
    sys::require_root()?;
    sys::ensure_mounted("bpf", "/sys/fs/bpf")?;
    let pins = bpf::pin::remove_all(state_dir)?;
    let filters = bpf::remove_tc_filters(&sys::all_interfaces()?);
    println!("removed {pins} pinned maps and links from {} and {filters} tc filters", state_dir.display());
    Ok(())
}


/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => log::info!("SIGINT: detaching"),
            _ = term.recv() => log::info!("SIGTERM: detaching"),
        }
    })
}
