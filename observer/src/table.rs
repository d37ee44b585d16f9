//! The daemon's table of connections: open ones straight from the kernel's `CONNS` map, closed
//! ones kept (bounded, for a retention time) after the kernel may have forgotten them.
#![forbid(unsafe_code)]
use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use observer_common::{
    conn::{CloseReason, Closer, ConnKey, ConnStats, Role, FAMILY_IPV4},
    frame::ConnFrame,
};

pub use crate::model::Connection;
use crate::{
    http::{HttpRecord, HttpView},
    kernel_http::KernelHttp,
    model::{ConnStatus, Family, LifecycleEvent, Protocol, TcpState},
    sys::{ktime_to_unix_seconds, monotonic_ns},
};

/// A connection's identity over time: the four-tuple may be reused, the first-seen time tells
/// incarnations apart.
pub type Incarnation = (ConnKey, u64);

/// Is this kernel entry a connection that has ended? Socket events say so directly; a connection
/// that never had a socket here (a SYN answered with a reset by a port nobody listens on) is over
/// once it has been quiet for `quiet_ns`.
pub fn is_closed(s: &ConnStats, now_ns: u64, quiet_ns: u64) -> bool {
    if s.closed_ns != 0 {
        return true;
    }
    let idle = now_ns.saturating_sub(s.last_seen_ns) >= quiet_ns;
    let no_socket = s.state == 0;
    no_socket && idle && (s.rst_in + s.rst_out > 0 || (s.fin_in > 0 && s.fin_out > 0))
}

impl Connection {
    /// The kernel's exact counts into the `http` view (`kernel_http::reconcile`); `closed`:
    /// archived, every record has arrived.
    fn reconcile_http(&mut self, closed: bool) {
        if let (Some(h), Some(k)) = (self.http.as_mut(), self.http_kernel.as_ref()) {
            crate::kernel_http::reconcile(h, k, closed);
        }
    }

    pub fn new(key: &ConnKey, stats: &ConnStats, closed: bool, now_ns: u64) -> Self {
        let ConnStats {
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            syn_in,
            syn_out,
            fin_in,
            fin_out,
            rst_in,
            rst_out,
            first_seen_ns,
            last_seen_ns,
            resets_sent,
            resets_received,
            retransmits,
            opened_ns,
            closed_ns,
            syn_ns: _,
            handshake_rtt_ns,
            state,
            state_before_close: _,
            role,
            closer,
            isn_in: _,
            isn_out: _,
            syn_seen: _,
            protocol,
            _pad2: _,
            seq_in: _,
            seq_out: _,
            retransmitted_segments_in,
            retransmitted_segments_out,
            retransmitted_bytes_in,
            retransmitted_bytes_out,
            payload_records_lost,
        } = *stats;
        let end_ns = if closed {
            if closed_ns != 0 {
                closed_ns
            } else {
                last_seen_ns
            }
        } else {
            now_ns
        };
        let mut closer = Closer::from_u8(closer);
        if closer == Closer::Unknown {
            // No socket event said who closed first; the wire may (only one side sent FIN/RST).
            let local = fin_out + rst_out > 0;
            let remote = fin_in + rst_in > 0;
            closer = match (local, remote) {
                (true, false) => Closer::Local,
                (false, true) => Closer::Remote,
                _ => Closer::Unknown,
            };
        }
        Self {
            connection: key.to_string(),
            local: key.local().to_string(),
            remote: key.remote().to_string(),
            family: if key.family == FAMILY_IPV4 { Family::Ipv4 } else { Family::Ipv6 },
            role: Role::from_u8(role),
            status: if closed { ConnStatus::Closed } else { ConnStatus::Open },
            state: if closed && state == 0 { TcpState::Closed } else { TcpState::of(state) },
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            syn_in,
            syn_out,
            fin_in,
            fin_out,
            rst_in,
            rst_out,
            resets_sent,
            resets_received,
            retransmits,
            retransmitted_segments_in,
            retransmitted_segments_out,
            retransmitted_bytes_in,
            retransmitted_bytes_out,
            payload_records_lost,
            protocol: Protocol::from_u8(protocol),
            sni: None,
            handshake_rtt_ms: (handshake_rtt_ns != 0).then(|| handshake_rtt_ns as f64 / 1e6),
            closer,
            close_reason: closed.then(|| CloseReason::of(stats)),
            first_seen: ktime_to_unix_seconds(first_seen_ns),
            last_seen: ktime_to_unix_seconds(last_seen_ns),
            opened: (opened_ns != 0).then(|| ktime_to_unix_seconds(opened_ns)),
            closed: closed.then(|| ktime_to_unix_seconds(end_ns)),
            duration_seconds: end_ns.saturating_sub(first_seen_ns) as f64 / 1e9,
            idle_seconds: now_ns.saturating_sub(last_seen_ns) as f64 / 1e9,
            lifecycle: {
                let event = |event: &str, ns: u64, detail: Option<&str>| LifecycleEvent {
                    event: event.to_owned(),
                    time: ktime_to_unix_seconds(ns),
                    detail: detail.map(str::to_owned),
                };
                let mut l = vec![event("first_seen", first_seen_ns, Some(Role::from_u8(role).name()))];
                if opened_ns != 0 {
                    l.push(event("opened", opened_ns, None));
                }
                if closed {
                    l.push(event("closed", end_ns, Some(CloseReason::of(stats).name())));
                }
                l
            },
            http: None,
            http_kernel: None,
            incarnation: (*key, first_seen_ns),
        }
    }
}

/// Closed connections, kept after the kernel entry may be gone (evicted, or reused by a new
/// connection on the same four-tuple).
pub struct History {
    retention: Duration,
    max: usize,
    /// Oldest first, with the monotonic time each was archived.
    order: VecDeque<(u64, Incarnation)>,
    by_id: HashMap<Incarnation, Closed>,
    dropped: u64,
}

/// A closed connection as history keeps it.
pub struct Closed {
    pub key: ConnKey,
    pub stats: ConnStats,
    pub http: Option<HttpRecord>,
    /// The kernel's HTTP framing state at the close.
    pub frame: Option<ConnFrame>,
}

impl History {
    pub fn new(retention: Duration, max: usize) -> Self {
        Self { retention, max, order: VecDeque::new(), by_id: HashMap::new(), dropped: 0 }
    }

    pub fn contains(&self, id: &Incarnation) -> bool {
        self.by_id.contains_key(id)
    }

    /// Keeps a closed connection; `false` (and nothing changed) when it is kept already.
    pub fn archive(&mut self, key: ConnKey, stats: ConnStats, http: Option<HttpRecord>, frame: Option<ConnFrame>, now_ns: u64) -> bool {
        let id = (key, stats.first_seen_ns);
        if self.by_id.contains_key(&id) {
            return false;
        }
        self.by_id.insert(id, Closed { key, stats, http, frame });
        self.order.push_back((now_ns, id));
        self.expire(now_ns);
        true
    }

    /// Drops what is older than the retention time, and the oldest beyond the size bound.
    pub fn expire(&mut self, now_ns: u64) {
        let retention_ns = self.retention.as_nanos() as u64;
        while let Some(&(at, id)) = self.order.front() {
            let full = self.order.len() > self.max;
            if full || now_ns.saturating_sub(at) > retention_ns {
                self.dropped += (full && now_ns.saturating_sub(at) <= retention_ns) as u64;
                self.order.pop_front();
                self.by_id.remove(&id);
            } else {
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Closed connections dropped before their retention time because the history was full
    /// (`--closed-max`).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn get(&self, id: &Incarnation) -> Option<&Closed> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Closed> {
        self.by_id.values()
    }
}

/// Every connection: the kernel's entries (`kernel`), and the archived closed ones the kernel no
/// longer holds. HTTP views come from `live_http` for connections still open, from history for
/// closed ones.
/// With `only`, history contributes just that four-tuple's incarnations.
pub fn merge(
    kernel: &[(ConnKey, ConnStats)],
    history: &History,
    quiet_ns: u64,
    live_http: &dyn Fn(&ConnKey) -> Option<HttpView>,
    frames: &HashMap<ConnKey, ConnFrame>,
    only: Option<&ConnKey>,
) -> Vec<Connection> {
    let now = monotonic_ns();
    let closed_view = |c: &Closed| c.http.as_ref().map(|h| h.view(now, &ktime_to_unix_seconds));
    let mut out: Vec<Connection> = kernel
        .iter()
        .map(|(k, s)| {
            let closed = is_closed(s, now, quiet_ns);
            let mut c = Connection::new(k, s, closed, now);
            let archived = history.get(&(*k, s.first_seen_ns));
            c.http_kernel = match archived {
                Some(a) => a.frame.as_ref().and_then(|f| KernelHttp::of(f, true)),
                None => frames.get(k).filter(|f| crate::kernel_http::belongs(f, s)).and_then(|f| KernelHttp::of(f, closed)),
            };
            c.http = match archived {
                Some(archived) => closed_view(archived),
                None => {
                    if closed {
                        // Ended, but its final counts (resets sent after the close, the last
                        // HTTP records, unanswered requests) are still being gathered.
                        c.status = ConnStatus::Closing;
                    }
                    live_http(k)
                }
            };
            c.reconcile_http(archived.is_some());
            c
        })
        .collect();
    let in_kernel: std::collections::HashSet<Incarnation> = out.iter().map(|c| c.incarnation).collect();
    out.extend(
        history.iter().filter(|c| only.is_none_or(|k| *k == c.key) && !in_kernel.contains(&(c.key, c.stats.first_seen_ns))).map(|c| closed_connection(c, now)),
    );
    out
}

/// An archived connection as the API shows it: final counts, with the kernel's where exact.
pub fn closed_connection(c: &Closed, now_ns: u64) -> Connection {
    let mut conn = Connection::new(&c.key, &c.stats, true, now_ns);
    conn.http = c.http.as_ref().map(|h| h.view(now_ns, &ktime_to_unix_seconds));
    conn.http_kernel = c.frame.as_ref().and_then(|f| KernelHttp::of(f, true));
    conn.reconcile_http(true);
    conn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConnKey {
        let mut k = ConnKey::zeroed();
        k.family = FAMILY_IPV4;
        k.local_port = 80;
        k.remote_port = port;
        k
    }

    #[test]
    fn history_is_bounded_by_count_and_age() {
        let mut h = History::new(Duration::from_secs(10), 3);
        for i in 0..5u16 {
            let mut s = ConnStats::zeroed();
            s.first_seen_ns = i as u64;
            h.archive(key(1000 + i), s, None, None, 1_000);
        }
        assert_eq!(h.len(), 3, "the oldest beyond the bound go first");
        assert!(!h.contains(&(key(1000), 0)));
        assert!(h.contains(&(key(1004), 4)));
        h.expire(1_000 + 11_000_000_000);
        assert_eq!(h.len(), 0, "all older than the retention");
    }

    #[test]
    fn refused_connection_without_socket_closes_when_quiet() {
        let mut s = ConnStats::zeroed();
        s.syn_in = 1;
        s.rst_out = 1;
        s.last_seen_ns = 100;
        assert!(!is_closed(&s, 150, 100));
        assert!(is_closed(&s, 200, 100));
        s.state = observer_common::conn::tcp_state::ESTABLISHED;
        assert!(!is_closed(&s, 10_000, 100), "a socket exists: only its CLOSE event ends it");
    }

    #[test]
    fn merge_keeps_archived_connections_the_kernel_forgot() {
        let mut h = History::new(Duration::from_secs(60), 10);
        let mut gone = ConnStats::zeroed();
        gone.first_seen_ns = 5;
        gone.closed_ns = 6;
        h.archive(key(1), gone, None, None, 10);
        let mut live = ConnStats::zeroed();
        live.first_seen_ns = 7;
        live.state = observer_common::conn::tcp_state::ESTABLISHED;
        let all = merge(&[(key(2), live), (key(1), gone)], &h, 1, &|_| None, &HashMap::new(), None);
        assert_eq!(all.len(), 2, "the archived one that is still in the kernel is shown once");
        let all = merge(&[(key(2), live)], &h, 1, &|_| None, &HashMap::new(), None);
        assert_eq!(all.len(), 2);
        let one = merge(&[], &h, 1, &|_| None, &HashMap::new(), Some(&key(1)));
        assert_eq!(one.len(), 1, "only the asked four-tuple's history");
        assert!(merge(&[], &h, 1, &|_| None, &HashMap::new(), Some(&key(3))).is_empty());
        assert_eq!(all.iter().filter(|c| c.status == ConnStatus::Closed).count(), 1);
    }
}
