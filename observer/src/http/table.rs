//! Every connection's HTTP state ([`HttpTable`]), fed by the kernel's payload records: the state
//! of a four-tuple found or made (a reused four-tuple's old state retired until its close), a
//! full table's least recently active connection evicted, each record handed to its connection
//! (payload, a kernel message record, a hand-off), long bodies skipped in the kernel by hints,
//! and the close of the right incarnation.
use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt};

use observer_common::{
    conn::{ConnKey, Role},
    direction::Direction,
    http::{
        HttpHints, MsgInfo, DIR_OUT, HINT_NOT_HTTP, HINT_SKIP_IN, HINT_SKIP_OUT, MSG_FIRST, MSG_INFO, MSG_REQUEST, MSG_RESPONSE, MSG_TAIL, SEG_ACK,
        SEG_BOUNDARY, SEG_FIN, SEG_HANDOFF, SEG_MSG, SEG_SYN, START_LEN,
    },
};

use super::{
    bounds,
    conn::HttpConn,
    framing::{BodyMode, Head},
    pairing::Outcome,
    text::request_line,
};
#[cfg(test)]
use super::{framing, pairing::RECENT, stream, window::SECONDS_KEPT};

#[cfg(test)]
mod tests;

/// Bodies at least this long are skipped in the kernel (no copy) instead of forwarded.
pub const SKIP_MIN: u64 = 16 * 1024;
/// The most one skip hint covers (see `HttpTable::on_record`).
const MAX_SKIP: u64 = 1 << 30;

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
            assert!(c.recent.len() <= RECENT && c.seconds.len() <= SECONDS_KEPT);
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
        let dir = Direction::from_bit(dir);
        let conn = self.conn(key, info.kind == MSG_REQUEST && info.flags & MSG_FIRST != 0, ts_ns);
        conn.kernel_framed[dir.index()] = true;
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
        let dir = Direction::from_bit(dir);
        let conn = self.conn(key, false, ts_ns);
        conn.handed_off[dir.index()] = true;
        let d = &mut conn.dirs[dir.index()];
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
        let dir = Direction::from_bit(dir);
        if flags & SEG_SYN != 0 {
            // The SYN's sender is the client: it sends the requests.
            if flags & SEG_ACK == 0 {
                conn.role = if dir == Direction::In { Role::Inbound } else { Role::Outbound };
                conn.request_dir = Some(dir);
            } else {
                conn.request_dir.get_or_insert(dir.opposite());
            }
            let d = &mut conn.dirs[dir.index()];
            d.stream.sync(seq.wrapping_add(1));
            d.framer.reset();
            d.fin_at = None;
            update.role = conn.role;
            return update;
        }
        let before = conn.hints;
        let mut out = Vec::new();
        if flags & SEG_FIN != 0 {
            conn.dirs[dir.index()].fin_at = Some(seq.wrapping_add(data.len() as u32));
        }
        conn.feed(dir, seq, data, ts_ns, records_lost, &mut out);
        // Ask the kernel to skip long bodies: no copy of what framing does not need.
        for d in Direction::BOTH {
            let dd = &mut conn.dirs[d.index()];
            let n = dd.framer.skippable();
            if n >= SKIP_MIN {
                // Sequence numbers compare within 2^31 (the kernel's `seq_before`, `Stream`): a
                // longer body is skipped a GiB at a time, a new hint at the next record.
                let n = n.min(MAX_SKIP);
                if let Some(next) = dd.stream.next() {
                    let to = next.wrapping_add(n as u32);
                    dd.stream.skip_to(to);
                    dd.framer.skipped(n);
                    if d == Direction::In {
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
