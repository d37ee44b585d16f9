//! HTTP framing of one connection ([`ConnFrame`]): both directions, the pairing of responses
//! with waiting requests, and the calls a BPF program (or the host) makes per segment.

use super::*;

/// HTTP framing of one connection: both directions, the requests waiting for responses, and the
/// counts. 264 bytes, plain integers: a BPF map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnFrame {
    /// By wire direction, [`crate::http::DIR_IN`] / `DIR_OUT`.
    pub dirs: [DirFrame; 2],
    pub pending: Pending,
    pub counts: FrameCounts,
    /// The client's initial sequence number, from the SYN that started this state (0: not seen):
    /// tells which connection on a reused four-tuple the state belongs to.
    pub client_isn: u32,
    pub _pad: u32,
}

impl ConnFrame {
    pub const fn zeroed() -> Self {
        Self { dirs: [DirFrame::zeroed(), DirFrame::zeroed()], pending: Pending::zeroed(), counts: FrameCounts::zeroed(), client_isn: 0, _pad: 0 }
    }

    /// The direction carrying requests, once known (from a client's SYN or the first message),
    /// as its wire value ([`Self::request_direction`], typed).
    pub const fn request_dir(&self) -> Option<u8> {
        match self.request_direction() {
            Some(d) => Some(d.as_u8()),
            None => None,
        }
    }

    /// The direction carrying requests, once known (from a client's SYN or the first message).
    pub const fn request_direction(&self) -> Option<Direction> {
        if self.pending.request_dir == 0 {
            None
        } else {
            Some(Direction::from_bit(self.pending.request_dir - 1))
        }
    }

    /// Says which direction carries requests (e.g. from the client's SYN).
    #[inline(always)]
    pub fn set_request_dir(&mut self, dir: u8) {
        self.pending.request_dir = Direction::from_bit(dir).as_u8() + 1;
    }

    /// The framing state of `dir`.
    #[inline(always)]
    pub const fn dir(&self, dir: Direction) -> &DirFrame {
        &self.dirs[dir.index()]
    }

    /// The framing state of `dir`, to change.
    #[inline(always)]
    pub fn dir_mut(&mut self, dir: Direction) -> &mut DirFrame {
        &mut self.dirs[dir.index()]
    }

    /// A SYN in `dir` with initial sequence number `isn`: framing of `dir` starts at `isn + 1`.
    /// A SYN without ACK comes from the client: `dir` then carries requests.
    #[inline(always)]
    pub fn on_syn(&mut self, dir: u8, isn: u32, ack: bool) {
        if !ack {
            self.set_request_dir(dir);
        } else if self.pending.request_dir == 0 {
            self.set_request_dir(Direction::from_bit(dir).opposite().as_u8());
        }
        self.sync(dir, isn.wrapping_add(1));
    }

    /// A message starts at `seq` in `dir` (its stream's first byte, or a boundary user space
    /// found): framing starts (again) there.
    #[inline(always)]
    pub fn sync(&mut self, dir: u8, seq: u32) {
        self.dir_mut(Direction::from_bit(dir)).sync(seq);
    }

    /// Forgets `dir`'s position: framing starts again at a segment that begins with a message.
    #[inline(always)]
    pub fn unsync(&mut self, dir: u8) {
        let d = self.dir_mut(Direction::from_bit(dir));
        d.phase = P_UNSYNCED;
        d.lost = 0;
    }

    pub const fn phase(&self, dir: u8) -> Phase {
        self.dir(Direction::from_bit(dir)).phase()
    }

    pub const fn lost(&self, dir: u8) -> Option<LostReason> {
        self.dir(Direction::from_bit(dir)).lost_reason()
    }

    /// Requests waiting for a final response.
    pub const fn in_flight(&self) -> u16 {
        self.pending.in_flight()
    }

    /// The role of the direction at index `i` ([`Direction::index`]). `role` and `resolve` take
    /// the index, computed once per turn, not the `Direction`: given the enum, the compiler keeps
    /// a narrower copy of it alive through the turn, and the verifier then walked 136k more
    /// instructions in each tc program (measured on 6.18).
    #[inline(always)]
    fn role(&self, i: usize) -> u8 {
        let r = self.pending.request_dir;
        if r == 0 {
            ROLE_UNKNOWN
        } else if Direction::from_bit(r - 1).index() == i {
            ROLE_REQUEST
        } else {
            ROLE_RESPONSE
        }
    }

    /// The request direction learns what the responses decided: a switch makes it a tunnel; a
    /// held request that was answered (without a switch) lets framing go on.
    #[inline(always)]
    fn resolve(&mut self, i: usize, role: u8) {
        if role != ROLE_REQUEST {
            return;
        }
        let switched = self.pending.switched != 0;
        let answered = self.pending.head == self.pending.tail;
        let d = &mut self.dirs[i];
        if d.phase == P_UNSYNCED || d.phase == P_LOST || d.phase == P_TUNNEL || d.phase == P_CLOSED {
            return;
        }
        if switched {
            d.phase = P_TUNNEL;
        } else if d.phase == P_HELD && answered {
            d.phase = P_IDLE;
        }
    }

    /// Marks `dir` lost (e.g. the caller could not load bytes framing needed).
    #[inline(always)]
    pub fn lose(&mut self, dir: u8, why: LostReason) -> Step {
        let d = self.dir_mut(Direction::from_bit(dir));
        d.lose(why);
        d.step(Event::Lost(why), 0)
    }

    /// The segment `[seq, seq + len)` of `dir` passes: consumes what of it lies inside a body or
    /// chunk data (or after a switch or an until-close response) without loading a byte, and skips
    /// what was framed already (a retransmission). Then, if `step.more` and `step.next_seq` is
    /// inside the segment, framing needs bytes of it ([`Self::begin_segment`], which starts
    /// with this). For an unsynced direction it asks for the segment's first block (`next_seq == seq`).
    #[inline(always)]
    pub fn skip(&mut self, dir: u8, seq: u32, len: u32) -> Step {
        let i = Direction::from_bit(dir).index();
        let role = self.role(i);
        self.resolve(i, role);
        let d = &mut self.dirs[i];
        if d.phase == P_UNSYNCED {
            return Step { event: Event::None, completed: 0, next_seq: seq, need_seq: seq, more: len > 0 };
        }
        let was_lost = d.phase == P_LOST;
        let mut completed = 0u8;
        let Some(off) = d.align(seq, len, &mut completed) else {
            let event = if !was_lost && d.phase == P_LOST { Event::Lost(LostReason::Gap) } else { Event::None };
            return d.step(event, completed);
        };
        d.next_seq = seq.wrapping_add(off);
        let p = d.phase;
        if p == P_BODY || p == P_CHUNK_DATA {
            let avail = len.wrapping_sub(off) as u64;
            let take = if d.remaining < avail { d.remaining } else { avail };
            d.next_seq = d.next_seq.wrapping_add(take as u32);
            d.remaining = d.remaining.wrapping_sub(take);
            if d.remaining == 0 {
                d.body_done(&mut completed);
            }
        } else if p == P_UNTIL_CLOSE || p == P_TUNNEL {
            d.next_seq = seq.wrapping_add(len);
        }
        d.step(Event::None, completed)
    }

    /// Starts framing the segment `[seq, seq + len)` of `dir` seen at `ts_ns`: [`Self::skip`]
    /// (retransmitted bytes, a body covering the segment, a gap), and `scan` set up for
    /// [`Self::step`]. The returned step may already report `Lost(Gap)`.
    #[inline(always)]
    pub fn begin_segment(&mut self, scan: &mut Scan, dir: u8, seq: u32, len: u32, ts_ns: u64) -> Step {
        scan.ts_ns = ts_ns;
        scan.seq = seq;
        scan.len = len;
        scan.blk_seq = seq;
        scan.blk_len = 0;
        scan.dir = Direction::from_bit(dir).as_u8();
        scan.tried = 0;
        let step = self.skip(dir, seq, len);
        scan.completed = step.completed;
        step
    }

    /// One turn of framing the segment set up by [`Self::begin_segment`]: one byte of a head,
    /// chunk-size line, CRLF or trailer (loading the block it is in first, when needed:
    /// `load(offset in segment, block, n)` copies `n` bytes, 1..=[`BLOCK`], into `block`; keep
    /// `n` in a shape the verifier can bound, e.g. `((n - 1) & (BLOCK - 1)) + 1`), or a
    /// jump over body bytes without a load. Message starts are counted and paired here, and
    /// reported with losses as [`Turn::Event`]; [`Turn::Done`] when the segment has nothing
    /// more for framing.
    ///
    /// Everything it keeps between turns is in `self` and `scan`: in a BPF program both are map
    /// values, so a `bpf_loop` callback made of this one call is verified once, whatever the
    /// number of turns. (A bounded `for` loop over it is verified turn by turn: the kernel
    /// refuses that beyond a few dozen bytes.)
    #[inline(always)]
    pub fn step<L>(&mut self, scan: &mut Scan, mut load: L) -> Turn
    where
        L: FnMut(u32, &mut [u8; BLOCK], usize) -> bool,
    {
        let dir = Direction::from_bit(scan.dir);
        let i = dir.index();
        let role = self.role(i);
        // A request that asked to leave HTTP may be answered before its head (or body) ends:
        // the next turn learns it, as the next segment would, so that where the segments are
        // cut changes nothing.
        self.resolve(i, role);
        let other_lost = self.dirs[dir.opposite().index()].phase == P_LOST;
        let end = scan.seq.wrapping_add(scan.len);
        let ConnFrame { dirs, pending, counts, .. } = self;
        let d = &mut dirs[i];
        if d.phase == P_UNSYNCED {
            // Only a segment that begins with a message start (where it belongs) syncs.
            if scan.tried != 0 || scan.len == 0 {
                return Turn::Done;
            }
            scan.tried = 1;
            let n = block_len(scan.len as usize);
            if !load(0, &mut scan.block, n) {
                return Turn::Done;
            }
            scan.blk_seq = scan.seq;
            scan.blk_len = n as u32;
            if !starts_message(&scan.block, n, role) {
                return Turn::Done;
            }
            d.sync(scan.seq);
            return Turn::Continue;
        }
        if !d.active() || !seq_before(d.next_seq, end) {
            return Turn::Done;
        }
        let p = d.phase;
        if p == P_BODY || p == P_CHUNK_DATA {
            let avail = end.wrapping_sub(d.next_seq) as u64;
            let take = if d.remaining < avail { d.remaining } else { avail };
            d.next_seq = d.next_seq.wrapping_add(take as u32);
            d.remaining = d.remaining.wrapping_sub(take);
            if d.remaining == 0 {
                d.body_done(&mut scan.completed);
            }
            return Turn::Continue;
        }
        let mut off = d.next_seq.wrapping_sub(scan.blk_seq);
        if off >= scan.blk_len {
            let seg_off = d.next_seq.wrapping_sub(scan.seq);
            let n = block_len(scan.len.wrapping_sub(seg_off) as usize);
            if !load(seg_off, &mut scan.block, n) {
                d.lose(LostReason::Gap);
                return Turn::Event(Event::Lost(LostReason::Gap));
            }
            scan.blk_seq = d.next_seq;
            scan.blk_len = n as u32;
            off = 0;
        }
        let b = scan.block[(off as usize) & (BLOCK - 1)];
        // Bytes of a head that framing only counts (see `DirFrame::skippable`): one turn takes
        // all of them up to the block's end or the byte that matters.
        let skip = d.skippable(b);
        if skip != SKIP_NONE {
            // The start of a start line is kept (for `classify`), up to its last byte, which
            // classifies it (the byte-by-byte path).
            let k = if skip == SKIP_MATCH { d.match_name(&scan.block, off, scan.blk_len) } else { d.skip_bytes(&scan.block, off, scan.blk_len, skip) };
            // The head's bound applies byte for byte: stop on the byte that crosses it.
            let room = (MAX_HEAD - if d.head_len < MAX_HEAD { d.head_len } else { MAX_HEAD }) as u32;
            if k > room {
                d.next_seq = d.next_seq.wrapping_add(room + 1);
                d.head_len = MAX_HEAD + 1;
                d.lose(LostReason::HeadTooLong);
                return Turn::Event(Event::Lost(LostReason::HeadTooLong));
            }
            d.next_seq = d.next_seq.wrapping_add(k);
            d.head_len = d.head_len.wrapping_add(k as u16);
            return Turn::Continue;
        }
        d.next_seq = d.next_seq.wrapping_add(1);
        match d.byte(role, b, &mut scan.completed) {
            None => Turn::Continue,
            Some(stop) => Turn::Event(on_stop(d, pending, counts, dir, role, other_lost, stop, scan.ts_ns)),
        }
    }

    /// After the turns of a segment: where framing is. If the turns ran out with bytes of the
    /// segment left to frame, the direction is lost ([`LostReason::Budget`]).
    #[inline(always)]
    pub fn finish_segment(&mut self, scan: &Scan) -> Step {
        let d = self.dir_mut(Direction::from_bit(scan.dir));
        let end = scan.seq.wrapping_add(scan.len);
        if d.active() && seq_before(d.next_seq, end) {
            d.lose(LostReason::Budget);
            return d.step(Event::Lost(LostReason::Budget), scan.completed);
        }
        d.step(Event::None, scan.completed)
    }

    /// The whole segment `[seq, seq + len)` of `dir`: [`Self::begin_segment`], at most `MAX`
    /// turns of [`Self::step`] in a bounded loop, [`Self::finish_segment`]. `on_event` sees every
    /// event; the step returned carries the segment's last one. For host code and tests; a BPF program makes the turns with `bpf_loop` (see the
    /// module documentation), with the same functions.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn feed_segment<const MAX: usize, L, E>(&mut self, scan: &mut Scan, dir: u8, seq: u32, len: u32, ts_ns: u64, mut load: L, mut on_event: E) -> Step
    where
        L: FnMut(u32, &mut [u8; BLOCK], usize) -> bool,
        E: FnMut(&Event),
    {
        let first = self.begin_segment(scan, dir, seq, len, ts_ns);
        let mut event = first.event;
        if event != Event::None {
            on_event(&event);
        }
        let mut done = false;
        for _ in 0..MAX {
            match self.step(scan, &mut load) {
                Turn::Continue => {}
                Turn::Event(e) => {
                    on_event(&e);
                    event = e;
                }
                Turn::Done => {
                    done = true;
                    break;
                }
            }
        }
        let mut last = self.finish_segment(scan);
        if done || last.event == Event::None {
            last.event = event;
        } else {
            on_event(&last.event);
        }
        last
    }

    /// A FIN in `dir` (after the FIN segment's own bytes were fed): the direction's stream
    /// ended, nothing more is framed in it ([`Phase::Closed`]; a lost direction stays lost).
    /// Returns true if that completed a response delimited by the close.
    #[inline(always)]
    pub fn fin(&mut self, dir: u8) -> bool {
        let d = self.dir_mut(Direction::from_bit(dir));
        let until_close = d.phase == P_UNTIL_CLOSE;
        if d.phase != P_LOST {
            d.phase = P_CLOSED;
        }
        until_close
    }

    /// The connection ended: requests still waiting were never answered.
    #[inline(always)]
    pub fn close(&mut self) -> Closed {
        let lost = self.dirs[0].phase == P_LOST || self.dirs[1].phase == P_LOST;
        let n = self.pending.in_flight();
        self.pending.head = self.pending.tail;
        if !lost {
            self.counts.unanswered = self.counts.unanswered.wrapping_add(n as u64);
        }
        Closed { unanswered: n, lost }
    }
}

/// Counts and pairs a message start (or points a loss at its message) found by the byte scanner.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn on_stop(d: &mut DirFrame, pending: &mut Pending, counts: &mut FrameCounts, dir: Direction, role: u8, other_lost: bool, stop: Stop, ts_ns: u64) -> Event {
    match stop {
        Stop::Lost(why) => {
            if why == LostReason::NotHttp {
                // At a message start: point at it.
                d.next_seq = d.next_seq.wrapping_sub(d.head_len as u32);
            }
            Event::Lost(why)
        }
        Stop::Request(method) => {
            if role == ROLE_UNKNOWN {
                pending.request_dir = dir.as_u8() + 1;
            }
            if pending.in_flight() as usize >= PENDING_DEPTH {
                d.lose(LostReason::PipelineTooDeep);
                d.next_seq = d.next_seq.wrapping_sub(d.head_len as u32);
                return Event::Lost(LostReason::PipelineTooDeep);
            }
            let k = (pending.tail as usize) & (PENDING_DEPTH - 1);
            pending.ts_ns[k] = ts_ns;
            pending.flags[k] = match method {
                Method::Head => ReqFlags::HEAD.bits(),
                Method::Connect => ReqFlags::CONNECT.bits(),
                _ => ReqFlags::EMPTY.bits(),
            };
            pending.tail = pending.tail.wrapping_add(1);
            counts.requests = counts.requests.wrapping_add(1);
            Event::Request { method }
        }
        Stop::Response(status) => {
            if role == ROLE_UNKNOWN {
                pending.request_dir = dir.opposite().as_u8() + 1;
            }
            // An interim (1xx) response does not answer the request; 101 does (and ends HTTP).
            let is_final = status >= 200 || status == 101;
            let waiting = pending.in_flight() != 0;
            if is_final && !waiting && other_lost {
                d.lose(LostReason::Unpaired);
                d.next_seq = d.next_seq.wrapping_sub(d.head_len as u32);
                return Event::Lost(LostReason::Unpaired);
            }
            counts.add_status(status);
            let mut req = ReqFlags::EMPTY;
            let mut latency_ns = None;
            if is_final && waiting {
                let k = (pending.head as usize) & (PENDING_DEPTH - 1);
                req = ReqFlags(pending.flags[k]);
                let l = ts_ns.saturating_sub(pending.ts_ns[k]);
                counts.latency_sum_ns = counts.latency_sum_ns.wrapping_add(l);
                counts.latency_count = counts.latency_count.wrapping_add(1);
                latency_ns = Some(l);
            } else if is_final {
                counts.unmatched_responses = counts.unmatched_responses.wrapping_add(1);
            }
            // RFC 9110 section 6.4.1 and RFC 9112 section 6.3: which responses have no body.
            let mut m = M_RESPONSE;
            if status == 101 || ((200..300).contains(&status) && req.intersects(ReqFlags::CONNECT)) {
                m |= M_TUNNEL;
                pending.switched = 1;
            } else if status < 200 || status == 204 || status == 304 || req.intersects(ReqFlags::HEAD) {
                m |= M_NOBODY;
            }
            d.mflags = m;
            if is_final && waiting {
                // After `switched`: the request direction reads them in this order.
                pending.head = pending.head.wrapping_add(1);
            }
            Event::Response { status, latency_ns }
        }
    }
}

/// `min(rest, BLOCK)` for `rest >= 1`, in a form whose range the verifier sees as 1..=BLOCK
/// (a load helper refuses a length that might be 0).
#[inline(always)]
fn block_len(rest: usize) -> usize {
    let n = if rest < BLOCK { rest } else { BLOCK };
    (n.wrapping_sub(1) & (BLOCK - 1)) + 1
}

/// Does the block begin with a message start that fits the direction's role?
#[inline(always)]
fn starts_message(block: &[u8; BLOCK], len: usize, role: u8) -> bool {
    let Some((first, _)) = block.split_first_chunk::<START_LEN>() else { return false };
    let n = if len < START_LEN { len } else { START_LEN };
    match classify(first, n) {
        Start::Request(_) => role != ROLE_RESPONSE,
        Start::Response(_) => role != ROLE_REQUEST,
        Start::Neither => false,
    }
}
