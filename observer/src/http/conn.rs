//! The HTTP state of one connection ([`HttpConn`]): its two directions, each rebuilt in order
//! (`stream`) and framed into messages (`framing`); the requests waiting for their responses and
//! the counts (`pairing`, `window`); what it does when a gap never fills or the connection ends;
//! its view for the API and the record history keeps.
use std::collections::VecDeque;

use observer_common::{
    conn::Role,
    direction::Direction,
    http::{classify, HttpHints, Start, START_LEN},
};

use super::{
    framing::{response_body, BodyMode, Found, Framer, Head},
    pairing::{Outcome, Pending},
    stream::Stream,
    table::StreamEnds,
    view::{make_view, Counts, Exchange, HttpRecord, HttpView},
    window, Text,
};

/// One direction of a connection: its bytes put in order, and framed.
pub(super) struct Flow {
    pub(super) stream: Stream,
    pub(super) framer: Framer,
    /// Where the stream ends (after its last byte), once its FIN was seen. A response delimited
    /// by the close ends there once every byte before it was framed: the FIN's record may be
    /// handled before records of earlier bytes (sent from another CPU).
    pub(super) fin_at: Option<u32>,
}

/// HTTP state of one connection.
pub struct HttpConn {
    pub(super) role: Role,
    /// Which direction carries requests (`DIR_IN` or `DIR_OUT`), once known.
    pub(super) request_dir: Option<Direction>,
    pub(super) dirs: [Flow; 2],
    pub(super) pending: VecDeque<Pending>,
    /// Requests waiting behind `pending` once it is full ([`super::pairing::MAX_PENDING`]):
    /// counted, not kept.
    pub(super) overflow: u64,
    pub(super) lifetime: Counts,
    /// Per-second buckets (monotonic second, counts), the last 60 seconds (`window`).
    pub(super) seconds: VecDeque<(u64, Counts)>,
    pub(super) last_status: Option<u16>,
    pub(super) framing_lost: u64,
    pub(super) recent: VecDeque<Exchange>,
    pub(super) messages: u64,
    pub(super) not_http: bool,
    /// Bytes of this connection never reached framing (found at close).
    pub(super) lost_at_close: bool,
    /// Switched protocols (101, CONNECT): no longer framed, no longer forwarded by the kernel.
    pub(super) tunneled: bool,
    pub(super) counted_not_http: bool,
    pub(super) hints: HttpHints,
    /// Per direction: the kernel framed it (message records) and the daemon's framer was never
    /// handed its bytes.
    pub(super) kernel_framed: [bool; 2],
    /// Per direction: the kernel handed it to the daemon's framer (`SEG_HANDOFF`).
    pub(super) handed_off: [bool; 2],
    /// The time of its latest record: what a full table evicts by (kept in `HttpTable::by_activity`).
    pub(super) last_activity_ns: u64,
    /// When this connection's HTTP state began (its first record): which incarnation of a
    /// four-tuple it belongs to.
    pub first_ns: u64,
}

fn new_direction() -> Flow {
    Flow { stream: Stream::default(), framer: Framer::new(false), fin_at: None }
}

impl HttpConn {
    pub(super) fn new() -> Self {
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
    pub(super) fn settle_role(&mut self) -> Role {
        if self.role == Role::Unknown {
            if let Some(r) = self.request_dir {
                self.role = if r == Direction::In { Role::Inbound } else { Role::Outbound };
            }
        }
        self.role
    }

    pub fn view(&self, now_ns: u64, to_unix: &dyn Fn(u64) -> f64) -> HttpView {
        // A direction the daemon's framer was never handed is the kernel's (`--kernel-http`).
        let kernel = self.kernel_framed.iter().any(|&k| k);
        let in_sync = self
            .dirs
            .iter()
            .zip(self.handed_off)
            .all(|(d, handed)| (kernel && !handed && d.stream.next().is_none()) || (d.stream.is_synced() && !d.framer.is_broken()));
        make_view(
            &self.lifetime,
            self.seconds.iter(),
            self.last_status,
            self.pending.len() + self.overflow as usize,
            self.framing_lost,
            in_sync,
            self.recent.iter(),
            now_ns,
            to_unix,
        )
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
    pub(super) fn close(&mut self, ts_ns: u64, end: &StreamEnds, out: &mut Vec<Outcome>) {
        // Evidence only: records lost inside a body framing skipped anyway changed nothing.
        let mut lost = false;
        let ends = end.seq;
        for dir in Direction::BOTH {
            // Bytes behind a gap that never filled. If the kernel handed over every record of
            // this connection, the hole is on the wire (a segment that never reached this host,
            // or bytes ahead of anything the peer sent): TCP delivers in order, so the
            // application never got what lies behind it, and neither is it counted.
            let mut unfilled = false;
            if self.dirs[dir.index()].stream.has_gap() {
                if end.records_lost {
                    lost = true;
                    self.resync_after_gap(dir, true, out);
                } else {
                    unfilled = true;
                    self.dirs[dir.index()].stream.take_pending();
                }
            }
            let d = &mut self.dirs[dir.index()];
            d.framer.closed();
            // Bytes the kernel saw and framing never got. (Past the end is fine: a body cut
            // short by an abort was skipped up to where it should have ended.)
            if let (Some(next), Some(end), false) = (d.stream.next(), ends[dir.index()], unfilled) {
                if observer_common::http::seq_before(next, end) && !self.tunneled && !self.not_http {
                    lost = true;
                }
            }
            // Never in step with a direction that carried data, and the kernel lost records of
            // this connection: its very first records (the SYN's, the first message) are gone.
            if end.records_lost && end.carried[dir.index()] && d.stream.next().is_none() && !self.tunneled && !self.not_http && self.framing_lost == 0 {
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
        window::bucket(&mut self.seconds, ts_ns).no_response += n;
        out.push(Outcome::NoResponse(n));
    }

    /// A gap older than the timeout in either direction while the kernel has lost records
    /// (`records_lost`): its bytes were lost to us (the ring was full). Counted, and framing
    /// starts again at what waited. (Without lost records a gap is on the wire: it waits for the
    /// retransmission, or for the close.)
    pub(super) fn expire_gaps(&mut self, now_ns: u64, records_lost: bool, out: &mut Vec<Outcome>) {
        for dir in Direction::BOTH {
            self.expire_gap(dir, now_ns, records_lost, out);
        }
    }

    fn expire_gap(&mut self, dir: Direction, now_ns: u64, records_lost: bool, out: &mut Vec<Outcome>) {
        if self.dirs[dir.index()].stream.gap_expired(now_ns, records_lost) {
            self.framing_lost += 1;
            out.push(Outcome::FramingLost);
            self.resync_after_gap(dir, records_lost, out);
        }
    }

    /// Bytes behind a gap that will never fill: frame them from the next message start on.
    fn resync_after_gap(&mut self, dir: Direction, records_lost: bool, out: &mut Vec<Outcome>) {
        let waiting = self.dirs[dir.index()].stream.take_pending();
        self.dirs[dir.index()].framer.reset();
        for c in waiting {
            self.feed(dir, c.seq, &c.data, c.ts_ns, records_lost, out);
        }
    }

    /// A payload record's bytes of direction `dir` at `seq`: put in order, then framed. An
    /// unsynchronised direction starts (again) only where a message starts.
    pub(super) fn feed(&mut self, dir: Direction, seq: u32, data: &[u8], ts_ns: u64, records_lost: bool, out: &mut Vec<Outcome>) {
        if !self.dirs[dir.index()].stream.is_synced() {
            // Start (again) only where a message starts: a request line or a status line.
            let mut b = [0u8; START_LEN];
            let n = data.len().min(START_LEN);
            b[..n].copy_from_slice(&data[..n]);
            let other = dir.opposite();
            let starts = match classify(&b, n) {
                Start::Request(_) => *self.request_dir.get_or_insert(dir) == dir,
                Start::Response(_) => *self.request_dir.get_or_insert(other) == other,
                Start::Neither => false,
            };
            if !starts {
                return;
            }
            let d = &mut self.dirs[dir.index()];
            d.stream.sync(seq);
            d.framer.reset();
        }
        let chunks = self.dirs[dir.index()].stream.push(seq, data, ts_ns);
        for c in chunks {
            self.frame(dir, &c.data, c.ts_ns, out);
            if !self.dirs[dir.index()].stream.is_synced() {
                break;
            }
        }
        // A gap that never filled while records were lost: those bytes were lost to us. Start
        // again at what waited.
        self.expire_gap(dir, ts_ns, records_lost, out);
        let d = &mut self.dirs[dir.index()];
        if let (Some(end), Some(next)) = (d.fin_at, d.stream.next()) {
            if !observer_common::http::seq_before(next, end) {
                d.framer.closed();
            }
        }
    }

    /// Feeds in-order bytes of direction `dir`.
    fn frame(&mut self, dir: Direction, data: &[u8], ts_ns: u64, out: &mut Vec<Outcome>) {
        let is_response = self.request_dir.map(|r| r != dir);
        let d = &mut self.dirs[dir.index()];
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
            let d = &mut self.dirs[dir.index()];
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
                    let d = &mut self.dirs[dir.index()];
                    d.stream.unsync();
                    d.framer.reset();
                }
            }
        }
    }
}
