//! The daemon's state: what it learned from the kernel (through [`crate::bpf::Maps`]), the HTTP
//! framing of each connection, closed connections' history, and the metrics. The pumps feed it
//! (`events`: lifecycle events and closes; `payload`: HTTP records), the API reads it.
#![forbid(unsafe_code)]
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use observer_common::{
    conn::{ConnKey, ConnStats, Role},
    frame::ConnFrame,
    global::Counter,
};

use crate::{
    bpf::{self, Attachment, DrainRequest, Loaded, Maps},
    config::Config,
    http::HttpTable,
    metrics::{KernelCounters, Metrics, TableGauges, TopConnection},
    sys::{self, monotonic_ns},
    table::{self, Connection, History, Incarnation},
    trace::Hub,
};

mod events;
mod payload;

/// A connection without a socket here (refused SYN) counts as closed after this much quiet.
pub const QUIET_NS: u64 = 1_000_000_000;

/// What the kernel reported about how the programs run, fixed once loaded.
pub struct Loading {
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
}

impl Loading {
    pub fn of(loaded: &Loaded, capabilities: Vec<&'static str>) -> Self {
        Self {
            attachments: loaded.attachments.clone(),
            tracepoints: loaded.tracepoints.clone(),
            netns_filter: loaded.netns_filter,
            lifecycle_hook: loaded.lifecycle_hook,
            capabilities,
            kernel_http_refused: loaded.kernel_http_refused.clone(),
            programs: loaded.programs.clone(),
        }
    }
}

pub struct State {
    /// Ask the event and payload pumps to drain before an answer, so that what the API says is
    /// consistent with the kernel's maps at that moment (a connection shown closed has its HTTP
    /// records framed).
    drain: [tokio::sync::mpsc::Sender<DrainRequest>; 2],
    maps: Arc<Mutex<Maps>>,
    history: Mutex<History>,
    /// Final counts of closed connections whose kernel entry a new connection on the same
    /// four-tuple took over before they were archived (`Superseded` events), by (key, first seen).
    superseded: Mutex<std::collections::HashMap<Incarnation, (ConnStats, Option<ConnFrame>)>>,
    http: Mutex<HttpTable>,
    pub loading: Loading,
    pub metrics: Metrics,
    pub trace: Arc<Hub>,
    pub started: Instant,
    /// Sweeps of the kernel map completed (`/api/v1/status`: lets a test wait for one).
    pub sweeps: std::sync::atomic::AtomicU64,
    /// How far behind each ring pump is (`/readyz`, `/api/v1/status`).
    pub ring_lag: crate::ring_lag::RingLags,
    pub config: Config,
}

impl State {
    /// `drain`: the event pump's and the payload pump's request channels, in that order.
    pub fn new(config: Config, maps: Maps, loading: Loading, trace: Hub, drain: [tokio::sync::mpsc::Sender<DrainRequest>; 2], poll: Duration) -> Self {
        let maps = Arc::new(Mutex::new(maps));
        Self {
            drain,
            metrics: Metrics::new(maps.clone(), &loading.attachments, &loading.tracepoints, config.upstreams.clone()),
            maps,
            history: Mutex::new(History::new(config.closed_retention, config.closed_max)),
            superseded: Mutex::new(std::collections::HashMap::new()),
            http: Mutex::new(HttpTable::new(config.map_sizes.connections as usize)),
            trace: Arc::new(trace),
            loading,
            started: Instant::now(),
            sweeps: std::sync::atomic::AtomicU64::new(0),
            ring_lag: crate::ring_lag::RingLags::new(poll),
            config,
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().expect("maps lock poisoned")
    }

    /// The kernel's HTTP framing state of every connection (or of `only`); none at all when the
    /// kernel framer is off.
    fn kernel_frames(&self, only: Option<&ConnKey>) -> std::collections::HashMap<ConnKey, ConnFrame> {
        if !self.config.kernel_http {
            return std::collections::HashMap::new();
        }
        match only {
            Some(k) => self.maps().frame(k).map(|f| (*k, f)).into_iter().collect(),
            None => self.maps().frames(),
        }
    }

    /// Every entry of the kernel map.
    pub fn kernel_entries(&self) -> Vec<(ConnKey, ConnStats)> {
        self.maps().conns()
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
        let names = match only {
            Some(k) => self.maps().tls_name(k).map(|n| (*k, n)).into_iter().collect(),
            None if conns.iter().any(|c| c.protocol == crate::model::Protocol::Tls) => self.maps().tls_names(),
            None => return,
        };
        for c in conns.iter_mut().filter(|c| c.protocol == crate::model::Protocol::Tls) {
            let (key, first_seen_ns) = c.incarnation;
            if let Some(n) = names.get(&key).filter(|n| n.conn == first_seen_ns as u32) {
                let len = (n.len as usize).min(n.name.len());
                c.sni = Some(String::from_utf8_lossy(&n.name[..len]).into_owned());
            }
        }
    }

    /// One connection by its four-tuple: the newest incarnation.
    pub fn connection(&self, key: &ConnKey) -> Option<Connection> {
        let kernel = self.maps().conn(key).map(|s| (*key, s));
        self.connections_of(kernel.as_slice(), Some(key)).into_iter().max_by_key(|c| c.incarnation.1)
    }

    /// One of the kernel's global counters, summed over CPUs.
    pub fn kernel_counter(&self, c: Counter) -> u64 {
        self.maps().counter(c)
    }

    /// The kernel's global counters, summed over CPUs.
    pub fn kernel_counters(&self) -> KernelCounters {
        KernelCounters::read(&self.maps())
    }

    /// Renders /metrics: kernel counters, table gauges, program run times, the top K series.
    pub fn render_metrics(&self, with_connections: bool) -> String {
        // One read of the kernel map serves the top K and the table gauges.
        let kernel = self.kernel_entries();
        let all = self.connections_of(&kernel, None);
        self.metrics.upstreams.scrape(&all);
        let mut conns: Vec<Connection> =
            all.into_iter().filter(|c| c.http.as_ref().is_some_and(|h| h.last_10s.counts.requests + h.last_10s.failed > 0)).collect();
        let ratio = |c: &Connection| c.http.as_ref().map_or((0.0, 0), |h| (h.last_10s.error_ratio, h.last_10s.failed));
        conns.sort_by(|a, b| ratio(b).partial_cmp(&ratio(a)).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.connection.cmp(&b.connection)));
        conns.truncate(self.config.top_k);
        let top: Vec<TopConnection> = conns
            .iter()
            .filter_map(|c| {
                let h = c.http.as_ref()?;
                Some(TopConnection {
                    local: c.local.clone(),
                    remote: c.remote.clone(),
                    error_ratio: h.last_10s.error_ratio,
                    requests: h.last_10s.counts.requests,
                    failed: h.last_10s.failed,
                })
            })
            .collect();
        self.metrics.set_top(&top);
        self.metrics.set_programs(&self.loading.programs.stats());
        let aggregates = self.maps().http_aggregates();
        self.metrics.kernel_http(&aggregates);
        self.metrics.render(self.kernel_counter(Counter::ConnInserts), &self.table_gauges(&kernel), with_connections)
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
}
