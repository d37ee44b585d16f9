//! HTTP/1.x per connection: each direction's stream rebuilt in order (`stream`), framed into
//! messages (`framing`), requests paired with their responses, counted exactly, with latency and
//! per-second error windows.
#![forbid(unsafe_code)]
#[cfg(test)]
mod differential;
pub mod framing;
#[cfg(test)]
mod properties;
pub mod stream;
#[cfg(test)]
mod testgen;

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{Arc, OnceLock},
};

use foldhash::{HashMap, HashMapExt};

use observer_common::{
    conn::{ConnKey, Role},
    http::{classify, HttpHints, Method, MsgInfo, Start, DIR_IN, DIR_OUT, HINT_NOT_HTTP, HINT_SKIP_IN, HINT_SKIP_OUT, MSG_FIRST, MSG_INFO, MSG_REQUEST, MSG_TAIL, MSG_RESPONSE, SEG_ACK, SEG_BOUNDARY, SEG_FIN, SEG_HANDOFF, SEG_MSG, SEG_SYN, START_LEN},
};
use serde::Serialize;

use framing::{response_body, BodyMode, Found, Framer, Head};
use stream::Stream;

/// Bodies at least this long are skipped in the kernel (no copy) instead of forwarded.
pub const SKIP_MIN: u64 = 16 * 1024;
/// The most one skip hint covers (see `HttpTable::on_record`).
const MAX_SKIP: u64 = 1 << 30;
/// Responses remembered per connection for `GET /api/v1/connections/{c}` and `observer trace`.
pub const RECENT: usize = 32;
/// Requests waiting for their responses whose method, target and time a connection keeps; beyond,
/// a request is only counted as waiting (in order: later ones wait behind it), its response has
/// no latency, and the overflow is counted ([`bounds::PENDING_OVERFLOW`]).
pub const MAX_PENDING: usize = 16_384;

/// Times the daemon's HTTP state reached one of its bounds, since it started (all connections):
/// `/metrics` says so (`observer_bounds_reached_total`) instead of growing.
pub mod bounds {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Requests waiting beyond [`super::MAX_PENDING`] on one connection (kept as a count only).
    pub static PENDING_OVERFLOW: AtomicU64 = AtomicU64::new(0);
    /// Retired states dropped: more than 128 for one four-tuple, or as many four-tuples waiting as
    /// the table holds connections.
    pub static RETIRED_DROPPED: AtomicU64 = AtomicU64::new(0);

    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Text a request carries (method, target): shared, so that the request waiting for its response,
/// what framing reports and the history entry hold one copy.
pub type Text = Arc<str>;

/// The methods the classifier knows ([`Method`], in the order of their numbers), as [`Text`]
/// allocated once for the daemon's life.
fn known_methods() -> &'static [Text] {
    static KNOWN: OnceLock<Vec<Text>> = OnceLock::new();
    KNOWN.get_or_init(|| (1..=u8::MAX).map_while(Method::from_u8).map(|m| Text::from(m.name())).collect())
}

/// Whether request targets keep their query strings (`observer run --show-query`). Off by
/// default: tokens in URLs stay out of the API and traces.
static KEEP_QUERY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_keep_query(keep: bool) {
    KEEP_QUERY.store(keep, std::sync::atomic::Ordering::Relaxed);
}

/// A request target as shown: its path, and `?…` where a query string was cut off (unless the
/// operator asked to keep queries).
fn shown_target(target: Text) -> Text {
    if KEEP_QUERY.load(std::sync::atomic::Ordering::Relaxed) {
        return target;
    }
    match target.find('?') {
        Some(i) => Text::from(format!("{}?…", &target[..i])),
        None => target,
    }
}

/// The shared text of a known method.
fn known_method(m: Method) -> Text {
    known_methods()[(m as usize) - 1].clone()
}

/// A method as [`Text`]: a known one shared, any other allocated.
pub fn method_text(m: &str) -> Text {
    known_methods().iter().find(|k| ***k == *m).cloned().unwrap_or_else(|| Text::from(m))
}

/// One response as history remembers it.
#[derive(Clone, Debug, Serialize)]
pub struct Exchange {
    /// Unix time of the status line, seconds.
    pub time: f64,
    #[serde(skip)]
    pub ts_ns: u64,
    pub status: u16,
    pub method: Option<Text>,
    pub target: Option<Text>,
    /// From the request's first byte to the response's status line.
    pub latency_ms: Option<f64>,
}

/// What framing produced, for the aggregate metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Request { method: Text, target: Text },
    Response { status: u16, latency_ns: Option<u64> },
    NoResponse(u64),
    /// Framing lost its place in a stream and starts again at the next message.
    FramingLost,
    /// The daemon found the connection is not HTTP/1.x (the kernel's first look could not tell).
    NotHttp,
}

/// Counts over a window or a lifetime.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub responses_1xx: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    /// Requests the connection ended without answering (reset or close).
    pub no_response: u64,
}

impl Counts {
    fn add_status(&mut self, status: u16) {
        match status / 100 {
            1 => self.responses_1xx += 1,
            2 => self.responses_2xx += 1,
            3 => self.responses_3xx += 1,
            4 => self.responses_4xx += 1,
            _ => self.responses_5xx += 1,
        }
    }

    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.responses_1xx += o.responses_1xx;
        self.responses_2xx += o.responses_2xx;
        self.responses_3xx += o.responses_3xx;
        self.responses_4xx += o.responses_4xx;
        self.responses_5xx += o.responses_5xx;
        self.no_response += o.no_response;
    }

    /// Failed exchanges: 5xx responses and requests that got none.
    pub fn failed(&self) -> u64 {
        self.responses_5xx + self.no_response
    }

    /// Failed over completed exchanges (final responses plus unanswered requests); 0 without any.
    pub fn error_ratio(&self) -> f64 {
        let exchanges = self.responses_2xx + self.responses_3xx + self.responses_4xx + self.responses_5xx + self.no_response;
        if exchanges == 0 { 0.0 } else { self.failed() as f64 / exchanges as f64 }
    }
}

/// The counts and ratios of one window, as the API shows them.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct WindowView {
    #[serde(flatten)]
    pub counts: Counts,
    pub failed: u64,
    pub error_ratio: f64,
}

impl From<Counts> for WindowView {
    fn from(counts: Counts) -> Self {
        Self { failed: counts.failed(), error_ratio: counts.error_ratio(), counts }
    }
}

/// A connection's HTTP summary for the API.
#[derive(Clone, Debug, Serialize)]
pub struct HttpView {
    pub lifetime: WindowView,
    pub last_10s: WindowView,
    pub last_60s: WindowView,
    pub last_status: Option<u16>,
    /// Requests sent and not answered yet.
    pub in_flight: usize,
    /// Times framing lost its place (bytes the daemon never got) and started again.
    pub framing_lost: u64,
    /// Whether framing currently knows where messages start in both directions.
    pub in_sync: bool,
    pub recent: Vec<Exchange>,
}

struct Pending {
    method: Text,
    target: Text,
    ts_ns: u64,
}

struct Direction {
    stream: Stream,
    framer: Framer,
    /// Where the stream ends (after its last byte), once its FIN was seen. A response delimited
    /// by the close ends there once every byte before it was framed: the FIN's record may be
    /// handled before records of earlier bytes (sent from another CPU).
    fin_at: Option<u32>,
}

fn window<'a>(seconds: impl Iterator<Item = &'a (u64, Counts)>, now_ns: u64, secs: u64) -> Counts {
    let now = now_ns / 1_000_000_000;
    let mut c = Counts::default();
    for (s, counts) in seconds {
        if s + secs > now {
            c.add(counts);
        }
    }
    c
}

#[expect(clippy::too_many_arguments, reason = "one view from the parts of a live or an archived connection")]
fn make_view<'a>(
    lifetime: &Counts,
    seconds: impl Iterator<Item = &'a (u64, Counts)> + Clone,
    last_status: Option<u16>,
    in_flight: usize,
    framing_lost: u64,
    in_sync: bool,
    recent: impl Iterator<Item = &'a Exchange>,
    now_ns: u64,
    to_unix: &dyn Fn(u64) -> f64,
) -> HttpView {
    HttpView {
        lifetime: (*lifetime).into(),
        last_10s: window(seconds.clone(), now_ns, 10).into(),
        last_60s: window(seconds, now_ns, 60).into(),
        last_status,
        in_flight,
        framing_lost,
        in_sync,
        recent: recent.map(|e| Exchange { time: to_unix(e.ts_ns), ..e.clone() }).collect(),
    }
}

/// A closed connection's HTTP summary, as history keeps it (compact: no buffers).
pub struct HttpRecord {
    in_sync: bool,
    lifetime: Counts,
    seconds: Vec<(u64, Counts)>,
    last_status: Option<u16>,
    framing_lost: u64,
    recent: Vec<Exchange>,
}

impl HttpRecord {
    pub fn view(&self, now_ns: u64, to_unix: &dyn Fn(u64) -> f64) -> HttpView {
        make_view(&self.lifetime, self.seconds.iter(), self.last_status, 0, self.framing_lost, self.in_sync, self.recent.iter(), now_ns, to_unix)
    }
}

/// HTTP state of one connection.
pub struct HttpConn {
    role: Role,
    /// Which direction carries requests (`DIR_IN` or `DIR_OUT`), once known.
    request_dir: Option<u8>,
    dirs: [Direction; 2],
    pending: VecDeque<Pending>,
    /// Requests waiting behind `pending` once it is full ([`MAX_PENDING`]): counted, not kept.
    overflow: u64,
    lifetime: Counts,
    /// Per-second buckets (monotonic second, counts), the last 60 seconds.
    seconds: VecDeque<(u64, Counts)>,
    last_status: Option<u16>,
    framing_lost: u64,
    recent: VecDeque<Exchange>,
    messages: u64,
    not_http: bool,
    /// Bytes of this connection never reached framing (found at close).
    lost_at_close: bool,
    /// Switched protocols (101, CONNECT): no longer framed, no longer forwarded by the kernel.
    tunneled: bool,
    counted_not_http: bool,
    hints: HttpHints,
    /// Per direction: the kernel framed it (message records) and the daemon's framer was never
    /// handed its bytes.
    kernel_framed: [bool; 2],
    /// Per direction: the kernel handed it to the daemon's framer (`SEG_HANDOFF`).
    handed_off: [bool; 2],
    /// The time of its latest record: what a full table evicts by (kept in `HttpTable::by_activity`).
    last_activity_ns: u64,
    /// When this connection's HTTP state began (its first record): which incarnation of a
    /// four-tuple it belongs to.
    pub first_ns: u64,
}

fn new_direction() -> Direction {
    Direction { stream: Stream::default(), framer: Framer::new(false), fin_at: None }
}

impl HttpConn {
    fn new() -> Self {
        Self {
            role: Role::Unknown,
            request_dir: None,
            dirs: [new_direction(), new_direction()],
            pending: VecDeque::new(),
            overflow: 0,
            lifetime: Counts::default(),
            seconds: VecDeque::new(),
            last_status: None,
            framing_lost: 0,
            recent: VecDeque::new(),
            messages: 0,
            not_http: false,
            lost_at_close: false,
            tunneled: false,
            counted_not_http: false,
            hints: HttpHints::default(),
            kernel_framed: [false; 2],
            handed_off: [false; 2],
            last_activity_ns: 0,
            first_ns: 0,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The role, once the direction carrying requests says it.
    fn settle_role(&mut self) -> Role {
        if self.role == Role::Unknown {
            if let Some(r) = self.request_dir {
                self.role = if r == DIR_IN { Role::Inbound } else { Role::Outbound };
            }
        }
        self.role
    }

    fn bucket(&mut self, ts_ns: u64) -> &mut Counts {
        let sec = ts_ns / 1_000_000_000;
        if self.seconds.back().is_none_or(|(s, _)| *s < sec) {
            self.seconds.push_back((sec, Counts::default()));
            while self.seconds.len() > 61 {
                self.seconds.pop_front();
            }
        }
        // An event older than the newest bucket (reordered across CPUs) goes into its own second if kept.
        let idx = self.seconds.iter().rposition(|(s, _)| *s <= sec).unwrap_or(self.seconds.len() - 1);
        &mut self.seconds[idx].1
    }

    pub fn view(&self, now_ns: u64, to_unix: &dyn Fn(u64) -> f64) -> HttpView {
        // A direction the daemon's framer was never handed is the kernel's (`--kernel-http`).
        let kernel = self.kernel_framed.iter().any(|&k| k);
        let in_sync = self.dirs.iter().zip(self.handed_off).all(|(d, handed)| (kernel && !handed && d.stream.next().is_none()) || (d.stream.is_synced() && !d.framer.is_broken()));
        make_view(&self.lifetime, self.seconds.iter(), self.last_status, self.pending.len() + self.overflow as usize, self.framing_lost, in_sync, self.recent.iter(), now_ns, to_unix)
    }

    /// What history keeps of the connection once it has closed: counts and recent exchanges,
    /// without the framing state and buffers.
    pub fn into_record(self) -> HttpRecord {
        HttpRecord {
            in_sync: !self.lost_at_close && self.dirs.iter().all(|d| !d.framer.is_broken()),
            lifetime: self.lifetime,
            seconds: self.seconds.into_iter().collect(),
            last_status: self.last_status,
            framing_lost: self.framing_lost,
            recent: self.recent.into_iter().collect(),
        }
    }

    #[cfg(test)]
    pub fn lifetime(&self) -> Counts {
        self.lifetime
    }

    /// The connection ended: requests still waiting never get a response.
    /// The connection ended. `ends`: where each direction's stream ended by the kernel's count
    /// (sequence number after the last data byte), when known. Requests still waiting are
    /// failures, unless bytes of this connection never reached framing (the payload ring was
    /// full): then nobody can say whether they were answered, and the connection says it lost
    /// its framing instead of inventing failures.
    fn close(&mut self, ts_ns: u64, end: &StreamEnds, out: &mut Vec<Outcome>) {
        // Evidence only: records lost inside a body framing skipped anyway changed nothing.
        let mut lost = false;
        let ends = end.seq;
        for dir in [DIR_IN, DIR_OUT] {
            // Bytes behind a gap that never filled. If the kernel handed over every record of
            // this connection, the hole is on the wire (a segment that never reached this host,
            // or bytes ahead of anything the peer sent): TCP delivers in order, so the
            // application never got what lies behind it, and neither is it counted.
            let mut unfilled = false;
            if self.dirs[dir as usize].stream.has_gap() {
                if end.records_lost {
                    lost = true;
                    self.resync_after_gap(dir, true, out);
                } else {
                    unfilled = true;
                    self.dirs[dir as usize].stream.take_pending();
                }
            }
            let d = &mut self.dirs[dir as usize];
            d.framer.closed();
            // Bytes the kernel saw and framing never got. (Past the end is fine: a body cut
            // short by an abort was skipped up to where it should have ended.)
            if let (Some(next), Some(end), false) = (d.stream.next(), ends[dir as usize], unfilled) {
                if observer_common::http::seq_before(next, end) && !self.tunneled && !self.not_http {
                    lost = true;
                }
            }
            // Never in step with a direction that carried data, and the kernel lost records of
            // this connection: its very first records (the SYN's, the first message) are gone.
            if end.records_lost && end.carried[dir as usize] && d.stream.next().is_none() && !self.tunneled && !self.not_http && self.framing_lost == 0 {
                lost = true;
            }
        }
        if lost {
            self.framing_lost += 1;
            self.lost_at_close = true;
            out.push(Outcome::FramingLost);
            self.pending.clear();
            self.overflow = 0;
            return;
        }
        let n = self.pending.len() as u64 + self.overflow;
        self.pending.clear();
        self.overflow = 0;
        if n == 0 {
            return;
        }
        self.lifetime.no_response += n;
        self.bucket(ts_ns).no_response += n;
        out.push(Outcome::NoResponse(n));
    }

    /// A gap older than the timeout in either direction while the kernel has lost records
    /// (`records_lost`): its bytes were lost to us (the ring was full). Counted, and framing
    /// starts again at what waited. (Without lost records a gap is on the wire: it waits for the
    /// retransmission, or for the close.)
    fn expire_gaps(&mut self, now_ns: u64, records_lost: bool, out: &mut Vec<Outcome>) {
        for dir in [DIR_IN, DIR_OUT] {
            self.expire_gap(dir, now_ns, records_lost, out);
        }
    }

    fn expire_gap(&mut self, dir: u8, now_ns: u64, records_lost: bool, out: &mut Vec<Outcome>) {
        if self.dirs[dir as usize].stream.gap_expired(now_ns, records_lost) {
            self.framing_lost += 1;
            out.push(Outcome::FramingLost);
            self.resync_after_gap(dir, records_lost, out);
        }
    }

    /// Bytes behind a gap that will never fill: frame them from the next message start on.
    fn resync_after_gap(&mut self, dir: u8, records_lost: bool, out: &mut Vec<Outcome>) {
        let waiting = self.dirs[dir as usize].stream.take_pending();
        self.dirs[dir as usize].framer.reset();
        for c in waiting {
            HttpTable::feed(self, dir, c.seq, &c.data, c.ts_ns, records_lost, out);
        }
    }

    fn on_head(&mut self, dir: u8, head: Head, ts_ns: u64, out: &mut Vec<Outcome>) {
        self.messages += 1;
        match head {
            Head::Request { method, target, .. } => {
                let target = shown_target(target);
                self.request_dir.get_or_insert(dir);
                self.lifetime.requests += 1;
                self.bucket(ts_ns).requests += 1;
                out.push(Outcome::Request { method: method.clone(), target: target.clone() });
                if self.overflow > 0 || self.pending.len() >= MAX_PENDING {
                    self.overflow += 1;
                    bounds::add(&bounds::PENDING_OVERFLOW);
                } else {
                    self.pending.push_back(Pending { method, target, ts_ns });
                }
            }
            Head::Response { status, .. } => {
                self.request_dir.get_or_insert(if dir == DIR_IN { DIR_OUT } else { DIR_IN });
                self.lifetime.add_status(status);
                self.bucket(ts_ns).add_status(status);
                self.last_status = Some(status);
                // An interim (1xx) response does not answer the request; 101 does (and ends HTTP).
                let answered = if status >= 200 || status == 101 {
                    // Waiting requests beyond the queue are answered once the queue is.
                    let a = self.pending.pop_front();
                    if a.is_none() && self.overflow > 0 {
                        self.overflow -= 1;
                    }
                    a
                } else {
                    None
                };
                let request_dir = if dir == DIR_IN { DIR_OUT } else { DIR_IN };
                let switched = status == 101 || ((200..300).contains(&status) && answered.as_ref().is_some_and(|p| &*p.method == "CONNECT"));
                if switched {
                    // Both directions now carry another protocol.
                    self.tunneled = true;
                    self.dirs[request_dir as usize].framer.tunnel();
                } else if status >= 200 {
                    self.dirs[request_dir as usize].framer.resume();
                }
                let latency_ns = answered.as_ref().map(|p| ts_ns.saturating_sub(p.ts_ns));
                let front = answered.as_ref().or(self.pending.front());
                self.recent.push_back(Exchange {
                    time: 0.0,
                    ts_ns,
                    status,
                    method: front.map(|p| p.method.clone()),
                    target: front.map(|p| p.target.clone()),
                    latency_ms: latency_ns.map(|l| l as f64 / 1e6),
                });
                if self.recent.len() > RECENT {
                    self.recent.pop_front();
                }
                out.push(Outcome::Response { status, latency_ns });
            }
        }
    }

    /// Feeds in-order bytes of direction `dir`.
    fn frame(&mut self, dir: u8, data: &[u8], ts_ns: u64, out: &mut Vec<Outcome>) {
        let is_response = self.request_dir.map(|r| r != dir);
        let d = &mut self.dirs[dir as usize];
        if d.framer.is_idle() || d.framer.is_fresh() {
            if let Some(r) = is_response {
                if d.framer.is_response() != r {
                    d.framer = Framer::new(r);
                }
            }
        }
        // Responses framed in this call answer the waiting requests in order.
        let methods: Vec<Text> = self.pending.iter().map(|p| p.method.clone()).collect();
        let mut answered = 0;
        let found = {
            let d = &mut self.dirs[dir as usize];
            d.framer.feed(data, ts_ns, &mut |h| match h {
                // What follows an upgrade request waits for its response (its body, if any, is
                // not framed: upgrade requests with bodies are too rare to frame exactly).
                Head::Request { upgrade: true, .. } => BodyMode::Hold,
                Head::Request { body, .. } => *body,
                Head::Response { status, body } => {
                    let method = methods.get(answered).map(|m| &**m);
                    if *status >= 200 || *status == 101 {
                        answered += 1;
                    }
                    response_body(*status, *body, method)
                }
            })
        };
        for f in found {
            match f {
                Found::Head(head, ts) => self.on_head(dir, head, ts, out),
                Found::Broken(why) => {
                    if self.messages == 0 {
                        self.not_http = true;
                        log::debug!("not HTTP/1.x (direction {dir}, {} bytes: {:?}): {why}", data.len(), &data[..data.len().min(8)]);
                    } else {
                        self.framing_lost += 1;
                        out.push(Outcome::FramingLost);
                        log::debug!("HTTP framing lost ({why}); resynchronising");
                    }
                    let d = &mut self.dirs[dir as usize];
                    d.stream.unsync();
                    d.framer.reset();
                }
            }
        }
    }
}

/// Method and target from the first bytes of a request line (as many as the kernel's message
/// record carries: a target cut short ends in `…`).
fn request_line(bytes: &[u8], method: u8) -> (Text, Text) {
    let known = Method::from_u8(method);
    let mut parts = bytes.splitn(3, |&b| b == b' ');
    let (m, t, rest) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
    let method = match known {
        Some(k) => known_method(k),
        None if !m.is_empty() && t.is_some() => method_text(&String::from_utf8_lossy(m)),
        None => method_text("?"),
    };
    let target = match (t, rest) {
        (Some(t), Some(_)) => Text::from(String::from_utf8_lossy(t)),
        (Some(t), None) if !t.is_empty() => Text::from(format!("{}…", String::from_utf8_lossy(t))),
        _ => Text::from("?"),
    };
    (method, target)
}

/// Closed-but-unprocessed HTTP states kept per four-tuple: a port reused every few milliseconds
/// gives dozens within the close grace (300 ms).
const RETIRED_PER_KEY: usize = 128;

/// Every connection's HTTP state, fed by the kernel's payload records.
pub struct HttpTable {
    conns: HashMap<ConnKey, HttpConn>,
    /// `conns` by their last activity, least recent first: a full table evicts one connection in
    /// O(log n) instead of scanning every one for the oldest (a table of a million connections
    /// would otherwise scan it for each new one once full).
    by_activity: BTreeSet<(u64, ConnKey)>,
    /// Connections whose four-tuple was reused before their close was processed.
    retired: HashMap<ConnKey, Vec<HttpConn>>,
    max: usize,
    /// Connections evicted to make room (the table was full).
    evictions: u64,
    /// The kernel has refused payload records since the daemon started (the ring was full):
    /// only then can a gap be bytes lost to the daemon rather than on the wire.
    records_lost: bool,
}

/// What the kernel counted of a closed connection's two streams, to check framing saw it all.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamEnds {
    /// Sequence number after each direction's last data byte, when known.
    pub seq: [Option<u32>; 2],
    /// Each direction carried payload.
    pub carried: [bool; 2],
    /// The kernel could not hand over some of this connection's payload records.
    pub records_lost: bool,
}

/// What one payload record changed.
#[derive(Default)]
pub struct Update {
    pub outcomes: Vec<Outcome>,
    /// The outcomes are messages the kernel framer counted (a `SEG_MSG` record): they are in the
    /// kernel's aggregates (`HTTP_AGG`) already, and `/metrics` must not count them twice.
    pub kernel_counted: bool,
    /// New hints for the kernel, when they changed.
    pub hints: Option<HttpHints>,
    pub role: Role,
}

impl HttpTable {
    pub fn new(max: usize) -> Self {
        Self { conns: HashMap::new(), by_activity: BTreeSet::new(), retired: HashMap::new(), max, evictions: 0, records_lost: false }
    }

    pub fn get(&self, key: &ConnKey) -> Option<&HttpConn> {
        self.conns.get(key)
    }

    /// Connections evicted so far because the table was full (the least recently active first).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Takes `key`'s connection out of the table (and out of the eviction order).
    fn remove(&mut self, key: &ConnKey) -> Option<HttpConn> {
        let conn = self.conns.remove(key)?;
        self.by_activity.remove(&(conn.last_activity_ns, *key));
        Some(conn)
    }

    /// The connection of `key`, made if new. `fresh`: a new connection starts on this
    /// four-tuple (its SYN, its first request): one used before is kept apart for its close.
    fn conn(&mut self, key: ConnKey, fresh: bool, ts_ns: u64) -> &mut HttpConn {
        if fresh && self.conns.get(&key).is_some_and(|c| c.messages > 0 || !c.pending.is_empty() || c.overflow > 0) {
            if let Some(old) = self.remove(&key) {
                // Bounded: as many four-tuples waiting as the table holds connections (one goes,
                // any: their closes are overdue) ...
                if self.retired.len() >= self.max && !self.retired.contains_key(&key) {
                    if let Some(k) = self.retired.keys().next().copied() {
                        self.retired.remove(&k);
                        bounds::add(&bounds::RETIRED_DROPPED);
                    }
                }
                let waiting = self.retired.entry(key).or_default();
                // ... and a four-tuple reused faster than closes are processed keeps the newest.
                if waiting.len() >= RETIRED_PER_KEY {
                    waiting.remove(0);
                    bounds::add(&bounds::RETIRED_DROPPED);
                }
                waiting.push(old);
            }
        }
        if self.conns.len() >= self.max && !self.conns.contains_key(&key) {
            // Bounded: the least recently active connection gives way.
            if let Some((_, oldest)) = self.by_activity.pop_first() {
                self.conns.remove(&oldest);
                self.evictions += 1;
            }
        }
        let new = !self.conns.contains_key(&key);
        let conn = self.conns.entry(key).or_insert_with(|| HttpConn { first_ns: ts_ns, ..HttpConn::new() });
        if new || conn.last_activity_ns != ts_ns {
            if !new {
                self.by_activity.remove(&(conn.last_activity_ns, key));
            }
            conn.last_activity_ns = ts_ns;
            self.by_activity.insert((ts_ns, key));
        }
        conn
    }

    /// What the table holds stays within its bounds: connections, retired states per four-tuple,
    /// and per connection its history, reassembly buffers and head buffers; the eviction order
    /// lists every connection once, at its last activity.
    #[cfg(test)]
    pub fn check_bounds(&self) {
        assert!(self.conns.len() <= self.max.max(1), "{} connections in a table of {}", self.conns.len(), self.max);
        assert_eq!(self.by_activity.len(), self.conns.len(), "the eviction order lists every connection once");
        for (ts, key) in &self.by_activity {
            assert_eq!(self.conns.get(key).map(|c| c.last_activity_ns), Some(*ts), "{key:?} in the eviction order");
        }
        let retired = self.retired.values().inspect(|w| assert!(w.len() <= RETIRED_PER_KEY)).flatten();
        for c in self.conns.values().chain(retired) {
            assert!(c.recent.len() <= RECENT && c.seconds.len() <= 61);
            for d in &c.dirs {
                assert!(d.stream.pending_bytes() <= stream::MAX_PENDING_BYTES);
                assert!(d.framer.buffered() <= framing::MAX_HEAD + 4, "{} bytes of a head buffered", d.framer.buffered());
            }
        }
    }

    /// One message the kernel framed and counted (`--kernel-http`): a `SEG_MSG` record.
    fn on_message(&mut self, key: ConnKey, dir: u8, data: &[u8], ts_ns: u64) -> Update {
        let mut update = Update::default();
        let Some(info) = data.get(..MSG_INFO).and_then(|b| <&[u8; MSG_INFO]>::try_from(b).ok()).map(MsgInfo::decode) else { return update };
        // The kernel counts statuses in 100..=599 only; a record that says otherwise is not one.
        if dir > DIR_OUT || (info.kind != MSG_REQUEST && info.kind != MSG_RESPONSE) || (info.kind == MSG_RESPONSE && !(100..=599).contains(&info.status)) {
            return update;
        }
        let conn = self.conn(key, info.kind == MSG_REQUEST && info.flags & MSG_FIRST != 0, ts_ns);
        conn.kernel_framed[dir as usize] = true;
        let head = if info.kind == MSG_REQUEST {
            // The line's kept first bytes, then what followed them, on the stack.
            let rest = &data[MSG_INFO..];
            let start = rest.get(..START_LEN).unwrap_or(rest);
            let start = &start[..start.len().min(info.start_len.into())];
            let tail = rest.get(START_LEN..).unwrap_or_default();
            let tail = &tail[..tail.len().min(MSG_TAIL)];
            let mut line = [0u8; START_LEN + MSG_TAIL];
            line[..start.len()].copy_from_slice(start);
            line[start.len()..start.len() + tail.len()].copy_from_slice(tail);
            let (method, target) = request_line(&line[..start.len() + tail.len()], info.method);
            Head::Request { method, target, body: BodyMode::None, upgrade: false }
        } else {
            Head::Response { status: info.status, body: BodyMode::None }
        };
        conn.on_head(dir, head, ts_ns, &mut update.outcomes);
        update.kernel_counted = true;
        update.role = conn.settle_role();
        update
    }

    /// The kernel lost its place in `dir` and hands it over from `seq`. At a message boundary
    /// the daemon's framer starts exactly there (bytes reordered around the loss wait for the
    /// gap to fill); elsewhere it starts at the next record that begins a message, as when it
    /// joins a connection midway (the kernel's view says why it stopped).
    fn on_handoff(&mut self, key: ConnKey, dir: u8, seq: u32, boundary: bool, ts_ns: u64) -> Update {
        let mut update = Update::default();
        if dir > DIR_OUT {
            return update;
        }
        let conn = self.conn(key, false, ts_ns);
        conn.handed_off[dir as usize] = true;
        let d = &mut conn.dirs[dir as usize];
        d.framer.reset();
        if boundary {
            d.stream.sync(seq);
        } else {
            // As when it joins a connection midway: no bytes were lost to it, it waits for a
            // record that starts a message (`in_sync` false until then).
            d.stream.unsync();
        }
        update.role = conn.role;
        update
    }

    /// One payload record from the kernel.
    pub fn on_record(&mut self, key: ConnKey, dir: u8, seq: u32, flags: u8, data: &[u8], ts_ns: u64) -> Update {
        let records_lost = self.records_lost;
        if flags & SEG_MSG != 0 {
            return self.on_message(key, dir, data, ts_ns);
        }
        if flags & SEG_HANDOFF != 0 {
            return self.on_handoff(key, dir, seq, flags & SEG_BOUNDARY != 0, ts_ns);
        }
        let conn = self.conn(key, flags & SEG_SYN != 0 && flags & SEG_ACK == 0, ts_ns);
        log::trace!("{key}: record dir {dir} seq {seq} flags {flags:#x} len {}", data.len());
        let mut update = Update::default();
        if conn.not_http || conn.tunneled || dir > DIR_OUT {
            return update;
        }
        if flags & SEG_SYN != 0 {
            // The SYN's sender is the client: it sends the requests.
            if flags & SEG_ACK == 0 {
                conn.role = if dir == DIR_IN { Role::Inbound } else { Role::Outbound };
                conn.request_dir = Some(dir);
            } else {
                conn.request_dir.get_or_insert(if dir == DIR_IN { DIR_OUT } else { DIR_IN });
            }
            let d = &mut conn.dirs[dir as usize];
            d.stream.sync(seq.wrapping_add(1));
            d.framer.reset();
            d.fin_at = None;
            update.role = conn.role;
            return update;
        }
        let before = conn.hints;
        let mut out = Vec::new();
        if flags & SEG_FIN != 0 {
            conn.dirs[dir as usize].fin_at = Some(seq.wrapping_add(data.len() as u32));
        }
        Self::feed(conn, dir, seq, data, ts_ns, records_lost, &mut out);
        // Ask the kernel to skip long bodies: no copy of what framing does not need.
        for d in [DIR_IN, DIR_OUT] {
            let dd = &mut conn.dirs[d as usize];
            let n = dd.framer.skippable();
            if n >= SKIP_MIN {
                // Sequence numbers compare within 2^31 (the kernel's `seq_before`, `Stream`): a
                // longer body is skipped a GiB at a time, a new hint at the next record.
                let n = n.min(MAX_SKIP);
                if let Some(next) = dd.stream.next() {
                    let to = next.wrapping_add(n as u32);
                    dd.stream.skip_to(to);
                    dd.framer.skipped(n);
                    if d == DIR_IN {
                        conn.hints.flags |= HINT_SKIP_IN;
                        conn.hints.skip_in = to;
                    } else {
                        conn.hints.flags |= HINT_SKIP_OUT;
                        conn.hints.skip_out = to;
                    }
                }
            }
        }
        if conn.not_http || conn.tunneled {
            conn.hints.flags = HINT_NOT_HTTP;
        }
        if conn.not_http && !conn.counted_not_http {
            conn.counted_not_http = true;
            out.push(Outcome::NotHttp);
        }
        update.role = conn.settle_role();
        update.outcomes = out;
        if conn.hints != before {
            update.hints = Some(conn.hints);
        }
        update
    }

    fn feed(conn: &mut HttpConn, dir: u8, seq: u32, data: &[u8], ts_ns: u64, records_lost: bool, out: &mut Vec<Outcome>) {
        if !conn.dirs[dir as usize].stream.is_synced() {
            // Start (again) only where a message starts: a request line or a status line.
            let mut b = [0u8; START_LEN];
            let n = data.len().min(START_LEN);
            b[..n].copy_from_slice(&data[..n]);
            let other = if dir == DIR_IN { DIR_OUT } else { DIR_IN };
            let starts = match classify(&b, n) {
                Start::Request(_) => *conn.request_dir.get_or_insert(dir) == dir,
                Start::Response(_) => *conn.request_dir.get_or_insert(other) == other,
                Start::Neither => false,
            };
            if !starts {
                return;
            }
            let d = &mut conn.dirs[dir as usize];
            d.stream.sync(seq);
            d.framer.reset();
        }
        let chunks = conn.dirs[dir as usize].stream.push(seq, data, ts_ns);
        for c in chunks {
            conn.frame(dir, &c.data, c.ts_ns, out);
            if !conn.dirs[dir as usize].stream.is_synced() {
                break;
            }
        }
        // A gap that never filled while records were lost: those bytes were lost to us. Start
        // again at what waited.
        conn.expire_gap(dir, ts_ns, records_lost, out);
        let d = &mut conn.dirs[dir as usize];
        if let (Some(end), Some(next)) = (d.fin_at, d.stream.next()) {
            if !observer_common::http::seq_before(next, end) {
                d.framer.closed();
            }
        }
    }

    /// The connection ended: its unanswered requests count as failures. Returns its state.
    /// Ends the HTTP state of the incarnation of `key` that began at `since_ns` (its kernel entry's
    /// first-seen time) and ended by `ts_ns`: of the states kept for the four-tuple (retired by a
    /// reuse, or current), the earliest that began within that span.
    pub fn close(&mut self, key: &ConnKey, since_ns: u64, ts_ns: u64, ends: &StreamEnds) -> Option<(HttpConn, Vec<Outcome>)> {
        // Began by the end (a later incarnation began after it); preferably not before its start
        // (an entry the kernel made again midway began after its HTTP state did).
        let by_end = |c: &HttpConn| c.first_ns <= ts_ns;
        let within = |c: &HttpConn| by_end(c) && c.first_ns >= since_ns;
        let take_retired = |t: &mut Self, ok: &dyn Fn(&HttpConn) -> bool| {
            let w = t.retired.get_mut(key)?;
            let i = w.iter().enumerate().filter(|(_, c)| ok(c)).min_by_key(|(_, c)| c.first_ns).map(|(i, _)| i)?;
            let c = w.remove(i);
            if w.is_empty() {
                t.retired.remove(key);
            }
            Some(c)
        };
        let mut conn = if let Some(c) = take_retired(self, &within) {
            c
        } else if self.conns.get(key).is_some_and(within) {
            self.remove(key)?
        } else if let Some(c) = take_retired(self, &by_end) {
            c
        } else if self.conns.get(key).is_some_and(by_end) {
            self.remove(key)?
        } else {
            return None;
        };
        let mut out = Vec::new();
        conn.close(ts_ns, ends, &mut out);
        Some((conn, out))
    }

    /// Says whether the kernel has refused payload records (its `PayloadLost` counter moved).
    pub fn set_records_lost(&mut self, lost: bool) {
        self.records_lost = lost;
    }

    /// Expires gaps that waited too long on every connection (a connection whose lost bytes are
    /// followed by silence would otherwise never notice). Returns what that changed, by connection.
    pub fn expire_gaps(&mut self, now_ns: u64) -> Vec<(ConnKey, Role, Vec<Outcome>)> {
        let mut changed = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let mut out = Vec::new();
            conn.expire_gaps(now_ns, self.records_lost, &mut out);
            if !out.is_empty() {
                changed.push((*key, conn.role, out));
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u8 = DIR_IN; // client → gateway (inbound requests)
    const S: u8 = DIR_OUT;

    struct Conn {
        t: HttpTable,
        key: ConnKey,
        seq: [u32; 2],
        ts: u64,
        outcomes: Vec<Outcome>,
    }

    impl Conn {
        fn new() -> Self {
            let mut t = HttpTable::new(16);
            let key = ConnKey::zeroed();
            t.on_record(key, C, 1000, SEG_SYN, b"", 1);
            t.on_record(key, S, 5000, SEG_SYN | SEG_ACK, b"", 2);
            Self { t, key, seq: [1001, 5001], ts: 10, outcomes: Vec::new() }
        }

        fn send(&mut self, dir: u8, data: &[u8]) -> Update {
            let seq = self.seq[dir as usize];
            self.seq[dir as usize] = seq.wrapping_add(data.len() as u32);
            self.at(dir, seq, data)
        }

        fn at(&mut self, dir: u8, seq: u32, data: &[u8]) -> Update {
            self.ts += 1_000_000;
            let u = self.t.on_record(self.key, dir, seq, 0, data, self.ts);
            self.outcomes.extend(u.outcomes.clone());
            u
        }

        fn counts(&self) -> Counts {
            self.t.get(&self.key).unwrap().lifetime()
        }

        fn statuses(&self) -> Vec<u16> {
            self.outcomes.iter().filter_map(|o| if let Outcome::Response { status, .. } = o { Some(*status) } else { None }).collect()
        }
    }

    /// A kernel message record's data for a request line (as `observer_ebpf::frame` builds it:
    /// info, the first START_LEN bytes, then up to MSG_TAIL more), or a response.
    fn msg_request(line: &[u8], first: bool) -> Vec<u8> {
        let start_len = line.len().min(START_LEN);
        let method = if line.starts_with(b"GET ") { Method::Get as u8 } else { 0 };
        let mut d = vec![MSG_REQUEST, method, if first { MSG_FIRST } else { 0 }, start_len as u8, 0, 0, 0, 0];
        let mut start = [0u8; START_LEN];
        start[..start_len].copy_from_slice(&line[..start_len]);
        d.extend_from_slice(&start);
        d.extend_from_slice(&line[start_len..line.len().min(START_LEN + observer_common::http::MSG_TAIL)]);
        d
    }

    fn msg_response(status: u16) -> Vec<u8> {
        vec![MSG_RESPONSE, 0, 0, 0, status as u8, (status >> 8) as u8, 0, 0]
    }

    #[test]
    fn targets_lose_their_query_strings_unless_asked() {
        assert_eq!(&*shown_target("/login?token=s3cret".into()), "/login?…");
        assert_eq!(&*shown_target("/plain".into()), "/plain");
    }

    #[test]
    fn request_lines_from_message_records() {
        assert_eq!(request_line(b"GET /api/orders?id=1 HTTP/1.1\r\nHost: x", Method::Get as u8), ("GET".into(), "/api/orders?id=1".into()));
        // Cut short: the target says so.
        assert_eq!(request_line(b"GET /a/very/long/pa", Method::Get as u8), ("GET".into(), "/a/very/long/pa…".into()));
        // A method the kernel does not know by name comes from the bytes.
        assert_eq!(request_line(b"PROPFIND /dav HTTP/1.1", 0), ("PROPFIND".into(), "/dav".into()));
        assert_eq!(request_line(b"", 0), ("?".into(), "?".into()));
        // Known methods are shared text, by number.
        for m in (1..=u8::MAX).map_while(Method::from_u8) {
            assert_eq!(&*known_method(m), m.name());
        }
        assert_eq!(known_methods().len(), 9);
    }

    /// Kernel framing: requests and responses arrive as message records; the view is the same as
    /// if the daemon had framed the payload. Then the response direction is handed over (the
    /// kernel lost its place at a status line): the daemon's framer starts there and pairs its
    /// responses with the requests the kernel's records queued.
    #[test]
    fn message_records_then_a_hand_off_pair_in_order() {
        let mut t = HttpTable::new(16);
        let key = ConnKey::zeroed();
        let mut outcomes = Vec::new();
        let mut feed = |t: &mut HttpTable, dir: u8, seq: u32, flags: u8, data: &[u8], ts: u64| outcomes.extend(t.on_record(key, dir, seq, flags, data, ts).outcomes);
        feed(&mut t, C, 1001, SEG_MSG, &msg_request(b"GET /one HTTP/1.1\r\nHost: x\r\n", true), 10);
        feed(&mut t, S, 5001, SEG_MSG, &msg_response(200), 20);
        feed(&mut t, C, 1100, SEG_MSG, &msg_request(b"GET /two HTTP/1.1\r\n", false), 30);
        feed(&mut t, C, 1200, SEG_MSG, &msg_request(b"GET /three HTTP/1.1\r\n", false), 40);
        // The kernel handed the responses over from the first byte of the next one.
        feed(&mut t, S, 6000, 0, &resp(503, "busy"), 50);
        feed(&mut t, S, 6000 + resp(503, "busy").len() as u32, 0, &resp(404, ""), 60);
        let c = t.get(&key).unwrap();
        assert_eq!(c.role(), Role::Inbound);
        assert_eq!(c.lifetime(), Counts { requests: 3, responses_2xx: 1, responses_4xx: 1, responses_5xx: 1, ..Counts::default() });
        let recent: Vec<(u16, Option<Text>)> = c.recent.iter().map(|e| (e.status, e.target.clone())).collect();
        assert_eq!(recent, vec![(200, Some("/one".into())), (503, Some("/two".into())), (404, Some("/three".into()))]);
        let v = c.view(100, &|_| 0.0);
        assert!(v.in_sync && v.framing_lost == 0, "{v:?}");
        // A new connection on the same four-tuple starts afresh; the old one waits for its close.
        feed(&mut t, C, 9001, SEG_MSG, &msg_request(b"GET /again HTTP/1.1\r\n", true), 70);
        assert_eq!(t.get(&key).unwrap().lifetime(), Counts { requests: 1, ..Counts::default() });
        let (old, _) = t.close(&key, 0, 80, &StreamEnds::default()).unwrap();
        assert_eq!(old.lifetime().requests, 3);
        let latencies: Vec<Option<u64>> = outcomes.iter().filter_map(|o| if let Outcome::Response { latency_ns, .. } = o { Some(*latency_ns) } else { None }).collect();
        assert_eq!(latencies, vec![Some(10), Some(20), Some(20)]);
    }

    /// The kernel lost the request direction at a boundary (a gap between messages) and hands
    /// it over: the daemon's framer starts exactly there, so the segment after the gap waits for
    /// the retransmission, and both requests count once, in order. A hand-off elsewhere is a
    /// loss of place, counted.
    #[test]
    fn a_hand_off_at_a_boundary_waits_for_the_gap() {
        let mut t = HttpTable::new(16);
        let key = ConnKey::zeroed();
        let outcomes = std::cell::RefCell::new(Vec::new());
        let feed = |t: &mut HttpTable, dir: u8, seq: u32, flags: u8, data: &[u8], ts: u64| outcomes.borrow_mut().extend(t.on_record(key, dir, seq, flags, data, ts).outcomes);
        let (a, b) = (b"GET /b HTTP/1.1\r\n\r\n".to_vec(), b"GET /c HTTP/1.1\r\n\r\n".to_vec());
        feed(&mut t, C, 1001, SEG_MSG, &msg_request(b"GET /a HTTP/1.1\r\n\r\n", true), 10);
        feed(&mut t, S, 5001, SEG_MSG, &msg_response(200), 20);
        feed(&mut t, C, 1020, SEG_HANDOFF | SEG_BOUNDARY, b"", 30);
        // The segment after the gap first, then the retransmission.
        feed(&mut t, C, 1020 + a.len() as u32, 0, &b, 40);
        assert_eq!(t.get(&key).unwrap().lifetime().requests, 1, "waits for the gap");
        feed(&mut t, C, 1020, 0, &a, 50);
        feed(&mut t, S, 6000, SEG_HANDOFF | SEG_BOUNDARY, b"", 60);
        feed(&mut t, S, 6000, 0, &[resp(404, ""), resp(503, "x")].concat(), 70);
        let c = t.get(&key).unwrap();
        assert_eq!(c.lifetime(), Counts { requests: 3, responses_2xx: 1, responses_4xx: 1, responses_5xx: 1, ..Counts::default() });
        let targets: Vec<_> = c.recent.iter().map(|e| e.target.as_deref().unwrap_or_default()).collect();
        assert_eq!(targets, vec!["/a", "/b", "/c"]);
        let v = c.view(100, &|_| 0.0);
        assert!(v.in_sync && v.framing_lost == 0, "{v:?}");
        assert!(!outcomes.borrow().contains(&Outcome::FramingLost));

        // Elsewhere (inside a message): not in sync until a record starts a message.
        feed(&mut t, C, 2000, SEG_HANDOFF, b"", 80);
        assert!(!t.get(&key).unwrap().view(100, &|_| 0.0).in_sync);
        feed(&mut t, C, 2010, 0, b"ader: x\r\n\r\n", 90);
        assert!(!t.get(&key).unwrap().view(100, &|_| 0.0).in_sync);
        feed(&mut t, C, 2030, 0, &get_req("/d"), 100);
        let c = t.get(&key).unwrap();
        assert_eq!(c.lifetime().requests, 4);
        let v = c.view(100, &|_| 0.0);
        assert!(v.in_sync && v.framing_lost == 0, "{v:?}");
    }

    fn get_req(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    fn resp(status: u16, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    #[test]
    fn keepalive_exchanges_pair_in_order_with_latency() {
        let mut c = Conn::new();
        for status in [200, 404, 500, 502] {
            c.send(C, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
            c.send(S, &resp(status, "body"));
        }
        assert_eq!(c.statuses(), vec![200, 404, 500, 502]);
        let n = c.counts();
        assert_eq!((n.requests, n.responses_2xx, n.responses_4xx, n.responses_5xx, n.no_response), (4, 1, 1, 2, 0));
        assert_eq!(n.error_ratio(), 0.5);
        assert!(c.outcomes.iter().all(|o| !matches!(o, Outcome::Response { latency_ns: None, .. })));
        assert_eq!(c.t.get(&c.key).unwrap().role(), Role::Inbound);
    }

    #[test]
    fn pipelined_requests_and_coalesced_responses() {
        let mut c = Conn::new();
        c.send(C, b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
        // The HEAD response announces a length but has no body.
        let mut all = resp(200, "one");
        all.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\n");
        all.extend(resp(503, ""));
        c.send(S, &all);
        assert_eq!(c.statuses(), vec![200, 200, 503]);
        assert_eq!(c.counts().requests, 3);
        assert_eq!(c.t.get(&c.key).unwrap().pending.len(), 0);
    }

    #[test]
    fn continue_is_interim_and_unanswered_requests_fail_at_close() {
        let mut c = Conn::new();
        c.send(C, b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
        c.send(S, b"HTTP/1.1 100 Continue\r\n\r\n");
        c.send(C, b"hello");
        c.send(S, &resp(201, ""));
        c.send(C, b"GET /never HTTP/1.1\r\nHost: h\r\n\r\n");
        let (_, out) = c.t.close(&c.key, 0, 99, &StreamEnds::default()).unwrap();
        assert_eq!(out, vec![Outcome::NoResponse(1)]);
        assert_eq!(c.statuses(), vec![100, 201]);
    }

    #[test]
    fn retransmitted_and_reordered_segments_count_once() {
        let mut c = Conn::new();
        let req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        c.send(C, req);
        c.at(C, 1001, req); // retransmission
        let r = resp(200, "0123456789");
        let (a, b) = r.split_at(20);
        c.at(S, 5001 + 20, b); // the second half first
        assert!(c.statuses().is_empty());
        c.at(S, 5001, a);
        c.at(S, 5001, a); // and again
        assert_eq!(c.statuses(), vec![200]);
        assert_eq!(c.counts().requests, 1);
    }

    #[test]
    fn a_request_line_split_across_segments() {
        let mut c = Conn::new();
        c.send(C, b"GE");
        c.send(C, b"T /split HTTP/1");
        c.send(C, b".1\r\nHost: h\r\n\r\n");
        c.send(S, &resp(200, ""));
        assert_eq!(c.counts().requests, 1);
        assert_eq!(c.statuses(), vec![200]);
    }

    #[test]
    fn long_bodies_are_skipped_in_the_kernel() {
        let mut c = Conn::new();
        c.send(C, b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        let u = c.send(S, head);
        let hints = u.hints.expect("a hint for the body");
        assert_eq!(hints.flags & HINT_SKIP_OUT, HINT_SKIP_OUT);
        assert_eq!(hints.skip_out, 5001 + head.len() as u32 + 1_000_000);
        // The kernel may still send some body before it sees the hint: ignored.
        c.at(S, 5001 + head.len() as u32, b"HTTP/1.1 500 inside the body\r\n\r\n");
        c.seq[S as usize] = hints.skip_out;
        c.send(C, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
        c.send(S, &resp(404, ""));
        assert_eq!(c.statuses(), vec![200, 404]);
    }

    #[test]
    fn short_garbage_first_segments_are_not_http_once() {
        for pieces in [vec![&b"\x16\x03\x01\x00\xc8"[..], b"\x01\x00\x00\xc4\x03\x03 and more bytes"], vec![&b"GE"[..], b"\x00\x01\x02 binary \xff"]] {
            let mut c = Conn::new();
            let mut found = 0;
            for p in pieces {
                for dir in [C, S] {
                    found += c.send(dir, p).outcomes.iter().filter(|o| **o == Outcome::NotHttp).count();
                }
            }
            assert_eq!(found, 1);
        }
    }

    #[test]
    fn bytes_lost_before_the_close_are_framing_lost_not_failures() {
        let mut c = Conn::new();
        c.send(C, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
        // The response's record never arrives (the ring was full): the kernel counted the bytes.
        let r = resp(200, "lost");
        let end = 5001 + r.len() as u32;
        let (_, out) = c.t.close(&c.key, 0, 99, &StreamEnds { seq: [Some(c.seq[C as usize]), Some(end)], ..Default::default() }).unwrap();
        assert_eq!(out, vec![Outcome::FramingLost], "no invented failure");

        // Lost in the middle (the kernel says it lost records of the connection): what follows
        // the gap is framed at close, and the loss reported.
        let lost_in_the_middle = |records_lost: bool| {
            let mut c = Conn::new();
            c.send(C, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n");
            let first = resp(200, "one");
            let second = resp(503, "");
            c.at(S, 5001 + first.len() as u32, &second);
            let end = 5001 + (first.len() + second.len()) as u32;
            c.t.close(&c.key, 0, 99, &StreamEnds { seq: [Some(c.seq[C as usize]), Some(end)], records_lost, ..Default::default() }).unwrap()
        };
        let (conn, out) = lost_in_the_middle(true);
        assert!(out.contains(&Outcome::FramingLost), "{out:?}");
        assert!(out.iter().any(|o| matches!(o, Outcome::Response { status: 503, .. })), "{out:?}");
        assert!(!conn.into_record().in_sync);
        // Every record arrived: the hole is on the wire, and TCP never delivered what lies behind
        // it. The requests were not answered; nothing was lost to framing.
        let (conn, out) = lost_in_the_middle(false);
        assert_eq!(out, vec![Outcome::NoResponse(2)]);
        let r = conn.into_record();
        assert_eq!((r.in_sync, r.lifetime.requests, r.lifetime.no_response), (true, 2, 2));
    }

    #[test]
    fn silence_after_a_gap_still_expires_it() {
        let mut c = Conn::new();
        c.send(C, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n");
        let first = resp(200, "one");
        c.at(S, 5001 + first.len() as u32, &resp(404, ""));
        assert!(c.t.expire_gaps(c.ts + 1).is_empty(), "young gaps wait");
        assert!(c.t.expire_gaps(c.ts + 60 * stream::GAP_TIMEOUT_NS).is_empty(), "no record was lost: the gap is on the wire, it waits");
        c.t.set_records_lost(true);
        let changed = c.t.expire_gaps(c.ts + 2 * stream::GAP_TIMEOUT_NS);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].2.contains(&Outcome::FramingLost));
        assert!(changed[0].2.iter().any(|o| matches!(o, Outcome::Response { status: 404, .. })));
    }

    #[test]
    fn an_upgrade_switches_both_directions_off() {
        let mut c = Conn::new();
        c.send(C, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        let u = c.send(S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(u.hints.map(|h| h.flags), Some(HINT_NOT_HTTP), "the kernel stops forwarding");
        c.send(C, b"\x81\x85 frames, not requests");
        c.send(S, b"HTTP/1.1 200 looks like a status line");
        assert_eq!(c.statuses(), vec![101]);
        let (_, out) = c.t.close(&c.key, 0, 99, &StreamEnds::default()).unwrap();
        assert!(out.is_empty(), "nothing unanswered: {out:?}");
    }

    #[test]
    fn a_refused_upgrade_goes_on_as_http() {
        let mut c = Conn::new();
        c.send(C, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n");
        c.send(S, &resp(400, "no"));
        c.send(C, b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
        c.send(S, &resp(200, ""));
        assert_eq!(c.statuses(), vec![400, 200]);
        assert_eq!(c.counts().requests, 2);
    }

    #[test]
    fn not_http_is_left_alone() {
        let mut c = Conn::new();
        let u = c.send(C, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 tls client hello");
        assert_eq!(u.hints.map(|h| h.flags), Some(HINT_NOT_HTTP));
        c.send(S, &resp(200, ""));
        assert_eq!(c.counts(), Counts::default());
    }

    /// A full table gives way to a new connection by evicting the least recently active one
    /// (from an ordered index, not a scan), and counts it.
    #[test]
    fn a_full_table_evicts_the_least_recently_active() {
        let mut t = HttpTable::new(3);
        let key = |port: u16| ConnKey { local_port: port, ..ConnKey::zeroed() };
        let req = b"GET / HTTP/1.1\r\n\r\n";
        for (port, ts) in [(1, 10), (2, 20), (3, 30)] {
            t.on_record(key(port), C, 100, 0, req, ts);
        }
        // Port 1 is active again: port 2 is now the oldest.
        t.on_record(key(1), C, 100 + req.len() as u32, 0, req, 40);
        t.on_record(key(4), C, 100, 0, req, 50);
        assert!(t.get(&key(2)).is_none() && [1, 3, 4].iter().all(|p| t.get(&key(*p)).is_some()));
        assert_eq!(t.evictions(), 1);
        // A close takes a connection out of the order too: the next new one evicts no one.
        t.close(&key(3), 0, 60, &StreamEnds::default()).unwrap();
        t.on_record(key(5), C, 100, 0, req, 70);
        assert_eq!(t.evictions(), 1);
        t.on_record(key(6), C, 100, 0, req, 80);
        assert_eq!(t.evictions(), 2);
        assert!(t.get(&key(1)).is_none(), "port 1 (last active at 40) gave way");
        t.check_bounds();
    }

    /// The FIN's record may be handled before records of the bytes before it (sent from another
    /// CPU): a response delimited by the close ends where the stream does, not where its FIN
    /// record came.
    #[test]
    fn a_fin_before_the_last_bytes_of_an_until_close_response_waits_for_them() {
        let mut c = Conn::new();
        c.send(C, b"GET / HTTP/1.1\r\n\r\n");
        let body = b"HTTP/1.0 200 OK\r\n\r\nsome body, then Content-Length: 5\r\n and more";
        let (a, b) = body.split_at(30);
        c.at(S, 5001, a);
        let u = c.t.on_record(c.key, S, 5001 + 40, SEG_FIN, &b[10..], 50);
        assert!(u.outcomes.is_empty());
        c.at(S, 5001 + 30, &b[..10]);
        assert_eq!(c.statuses(), vec![200]);
        assert!(!c.outcomes.contains(&Outcome::FramingLost), "{:?}", c.outcomes);
        let v = c.t.get(&c.key).unwrap().view(100, &|_| 0.0);
        assert!(v.in_sync && v.framing_lost == 0, "{v:?}");
    }

    #[test]
    fn joining_a_connection_midway_starts_at_a_message() {
        let mut t = HttpTable::new(4);
        let key = ConnKey::zeroed();
        // No SYN seen: body bytes first, then a response, then requests.
        assert!(t.on_record(key, S, 10, 0, b"tail of an old body", 1).outcomes.is_empty());
        let r = t.on_record(key, C, 50, 0, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 2);
        assert_eq!(r.outcomes, vec![Outcome::Request { method: "GET".into(), target: "/".into() }]);
        let r = t.on_record(key, S, 29, 0, &resp(200, ""), 3);
        assert!(matches!(r.outcomes.as_slice(), [Outcome::Response { status: 200, latency_ns: Some(1) }]));
        assert_eq!(r.role, Role::Inbound);
    }

    use proptest::prelude::*;

    fn exchange(status: u16, body_len: usize, chunked: bool, head: bool) -> (Vec<u8>, Vec<u8>) {
        let method = if head { "HEAD" } else { "GET" };
        let req = format!("{method} /x HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes();
        // The body is made of text that looks like a status line, to prove it is not one.
        let body: Vec<u8> = b"HTTP/1.1 500 X\r\n".iter().copied().cycle().take(body_len).collect();
        let no_body = status == 204 || status == 304 || head;
        let mut resp;
        if chunked {
            resp = format!("HTTP/1.1 {status} S\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
            if !no_body {
                for piece in body.chunks(7) {
                    resp.extend(format!("{:x}\r\n", piece.len()).into_bytes());
                    resp.extend_from_slice(piece);
                    resp.extend_from_slice(b"\r\n");
                }
                resp.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            resp = format!("HTTP/1.1 {status} S\r\nContent-Length: {body_len}\r\n\r\n").into_bytes();
            if !no_body {
                resp.extend_from_slice(&body);
            }
        }
        (req, resp)
    }

    proptest! {
        /// However the bytes are cut into segments, duplicated and reordered (within what TCP
        /// would deliver), every response is counted once, in order.
        #[test]
        fn any_segmentation_counts_exactly(
            script in proptest::collection::vec((prop::sample::select(vec![200u16, 204, 301, 304, 404, 429, 500, 502, 503]), 0usize..300, any::<bool>(), any::<bool>()), 1..12),
            cuts in proptest::collection::vec(1usize..97, 1..40),
            swap in any::<bool>(),
            dup in any::<bool>(),
        ) {
            let mut c = Conn::new();
            let (mut reqs, mut resps, mut expected) = (Vec::new(), Vec::new(), Vec::new());
            for &(status, len, chunked, head) in &script {
                let (q, r) = exchange(status, len, chunked, head);
                reqs.extend(q);
                resps.extend(r);
                expected.push(status);
            }
            // All requests pipelined in one write, then the responses cut into segments.
            c.send(C, &reqs);
            let mut segs = Vec::new();
            let (mut at, mut i) = (0usize, 0usize);
            while at < resps.len() {
                let n = cuts[i % cuts.len()].min(resps.len() - at);
                segs.push((5001u32.wrapping_add(at as u32), resps[at..at + n].to_vec()));
                at += n;
                i += 1;
            }
            if swap && segs.len() > 2 {
                segs.swap(1, 2);
            }
            for (seq, data) in &segs {
                c.at(S, *seq, data);
                if dup {
                    c.at(S, *seq, data);
                }
            }
            prop_assert_eq!(c.statuses(), expected);
            prop_assert_eq!(c.counts().requests, script.len() as u64);
        }
    }
}
