//! One direction's framing state ([`DirFrame`]): where it is, how it lines a segment up with
//! that position, and the start of a message. The head, chunk and skip scanners are in `head`,
//! `chunked` and `skip`.

use super::*;

/// Framing state of one direction of a connection: 48 bytes, plain integers (a BPF map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirFrame {
    /// Sequence number of the next byte to frame: every byte before it has been framed (or
    /// skipped inside a body). Meaningless while [`Phase::Unsynced`]. When lost at a message
    /// start (`NotHttp`, `PipelineTooDeep`, `Unpaired`) it is that message's first byte (nothing
    /// of the message was counted); otherwise it is just past where framing stopped.
    pub next_seq: u32,
    /// Bytes of the current head scanned so far (start line included, empty lines before it not);
    /// in a chunk-size line: that line's bytes; in trailers: the trailer section's bytes.
    pub head_len: u16,
    /// [`Phase`] as u8.
    pub phase: u8,
    /// [`LostReason`] as u8 while [`Phase::Lost`], else 0.
    pub lost: u8,
    /// [`Phase::Body`] / [`Phase::ChunkData`]: bytes still to come. In a Content-Length value or
    /// a chunk-size line: the number accumulated so far.
    pub remaining: u64,
    /// The Content-Length of the current head, once one was read (`H_CL` in `hflags`).
    pub length: u64,
    /// The first bytes of the current start line, for [`classify`] (zero-padded).
    pub start: [u8; START_LEN],
    /// How many bytes of `start` are filled.
    pub start_len: u8,
    /// Line scanner: where in a line of the head or trailers (`L_*`).
    pub line: u8,
    /// Bytes of the current header name matched so far (at most 31).
    pub name_idx: u8,
    /// In a header name: the names still matching (`CAND_*` bits); in its value: which header
    /// it is (`HDR_*`).
    pub hdr: u8,
    /// Value scanner: Content-Length (`V_*`) or chunk-size line (`C_*`) state; in the CRLF after
    /// chunk data: 1 once the CR was seen.
    pub val: u8,
    /// What the head said (`H_*`: Content-Length seen, Transfer-Encoding seen, chunked final, Upgrade).
    pub hflags: u8,
    /// Transfer-Encoding scanner: letters of "chunked" matched in the current coding (low bits),
    /// `TE_BAD` (the coding is something else), `TE_ENDED` (whitespace after it).
    pub te: u8,
    /// What the message is (`M_*`: HEAD, CONNECT, hold, response, no body, tunnel).
    pub mflags: u8,
}

impl DirFrame {
    pub const fn zeroed() -> Self {
        Self {
            next_seq: 0,
            head_len: 0,
            phase: P_UNSYNCED,
            lost: 0,
            remaining: 0,
            length: 0,
            start: [0; START_LEN],
            start_len: 0,
            line: 0,
            name_idx: 0,
            hdr: 0,
            val: 0,
            hflags: 0,
            te: 0,
            mflags: 0,
        }
    }

    pub const fn phase(&self) -> Phase {
        Phase::from_u8(self.phase)
    }

    pub const fn lost_reason(&self) -> Option<LostReason> {
        if self.phase == P_LOST {
            LostReason::from_u8(self.lost)
        } else {
            None
        }
    }

    /// The next byte framing needs to see: past the rest of a body or of chunk data, else
    /// `next_seq`. (Capped at 1 GiB ahead, to stay comparable in sequence space.)
    #[inline(always)]
    pub fn need_seq(&self) -> u32 {
        if self.phase == P_BODY || self.phase == P_CHUNK_DATA {
            let ahead = if self.remaining < (1 << 30) { self.remaining } else { 1 << 30 };
            self.next_seq.wrapping_add(ahead as u32)
        } else {
            self.next_seq
        }
    }

    /// The direction wants bytes at `next_seq` (it is framing, not waiting, switched or lost).
    #[inline(always)]
    pub fn active(&self) -> bool {
        self.phase >= P_IDLE && self.phase <= P_TRAILERS
    }

    #[inline(always)]
    pub(super) fn step(&self, event: Event, completed: u8) -> Step {
        Step { event, completed, next_seq: self.next_seq, need_seq: self.need_seq(), more: self.active() }
    }

    /// Field by field (no whole-struct assignment, which compiles to a `memset` call the BPF
    /// verifier rejects); the head fields are reset when the next message begins.
    #[inline(always)]
    pub(super) fn sync(&mut self, seq: u32) {
        self.phase = P_IDLE;
        self.lost = 0;
        self.mflags = 0;
        self.next_seq = seq;
    }

    #[inline(always)]
    pub(super) fn lose(&mut self, why: LostReason) -> Option<Stop> {
        // `line` means nothing once lost: it keeps whether the loss came between messages.
        self.line = if self.phase == P_IDLE { LOST_IDLE } else { 0 };
        self.phase = P_LOST;
        self.lost = why as u8;
        Some(Stop::Lost(why))
    }

    /// Lost, and a message starts at `next_seq`: the loss came between messages (a gap found
    /// there), or at a message framing could not count (`PipelineTooDeep`, `Unpaired`).
    #[inline(always)]
    pub fn lost_at_boundary(&self) -> bool {
        self.phase == P_LOST && (self.line & LOST_IDLE != 0 || self.lost == LostReason::PipelineTooDeep as u8 || self.lost == LostReason::Unpaired as u8)
    }

    /// Lost because what came was not HTTP/1.x.
    #[inline(always)]
    pub fn lost_not_http(&self) -> bool {
        self.phase == P_LOST && self.lost == LostReason::NotHttp as u8
    }

    /// Lost, and the daemon was not told yet ([`Self::set_handed_off`]).
    #[inline(always)]
    pub fn hand_off_pending(&self) -> bool {
        self.phase == P_LOST && self.line & HANDED_OFF == 0
    }

    #[inline(always)]
    pub fn set_handed_off(&mut self) {
        self.line |= HANDED_OFF;
    }

    /// A message is complete: the next byte starts another (or, after a request that asked to
    /// leave HTTP, framing holds until its response).
    #[inline(always)]
    pub(super) fn complete(&mut self, completed: &mut u8) {
        *completed = completed.wrapping_add(1);
        self.phase = if self.mflags & M_HOLD != 0 { P_HELD } else { P_IDLE };
    }

    /// `remaining` reached 0 in a body or chunk data.
    #[inline(always)]
    pub(super) fn body_done(&mut self, completed: &mut u8) {
        if self.phase == P_BODY {
            self.complete(completed);
        } else {
            self.phase = P_CHUNK_CRLF;
            self.val = 0;
        }
    }

    #[inline(always)]
    pub(super) fn chunk_line(&mut self) {
        self.phase = P_CHUNK_SIZE;
        self.val = C_LEAD;
        self.remaining = 0;
        self.head_len = 0;
    }

    /// Lines up a segment `[seq, seq + len)` with the framing position: the offset in it of the
    /// next byte to frame, or `None` when nothing in it is for framing (all framed already, or the
    /// direction is lost, held, or loses its place here because of a gap).
    #[inline(always)]
    pub(super) fn align(&mut self, seq: u32, len: u32, completed: &mut u8) -> Option<u32> {
        let ahead = seq.wrapping_sub(self.next_seq);
        if ahead == 0 {
            return Some(0);
        }
        if (ahead as i32) < 0 {
            // Starts before the position (a retransmission, or overlapping one).
            let back = self.next_seq.wrapping_sub(seq);
            return if back < len { Some(back) } else { None };
        }
        // A hole [next_seq, seq): fine inside a body that covers it, fatal where bytes matter.
        let p = self.phase;
        if (p == P_BODY || p == P_CHUNK_DATA) && (ahead as u64) <= self.remaining {
            self.remaining = self.remaining.wrapping_sub(ahead as u64);
            self.next_seq = seq;
            if self.remaining == 0 {
                self.body_done(completed);
            }
            return Some(0);
        }
        if p == P_UNTIL_CLOSE || p == P_TUNNEL {
            self.next_seq = seq;
            return Some(0);
        }
        if p == P_LOST || p == P_HELD || p == P_CLOSED {
            return None;
        }
        self.lose(LostReason::Gap);
        None
    }

    #[inline(always)]
    pub(super) fn byte(&mut self, role: u8, b: u8, completed: &mut u8) -> Option<Stop> {
        match self.phase {
            P_IDLE => {
                // RFC 9112 section 2.2: empty lines before a request line are ignored (httparse
                // ignores them before a status line too).
                if b == CR || b == LF {
                    return None;
                }
                self.begin();
                self.start_byte(role, b)
            }
            P_START => self.start_byte(role, b),
            P_HEAD => self.head_byte(completed, b),
            P_CHUNK_SIZE => self.chunk_size_byte(b),
            P_CHUNK_CRLF => self.chunk_crlf_byte(b),
            _ => self.trailer_byte(completed, b),
        }
    }

    /// A message begins: resets what is read before it is written. (`remaining`, `length`,
    /// `name_idx`, `hdr`, `val` and `te` are always set before use; `start` keeps stale bytes
    /// past `start_len`, which [`classify`] never matches on.) Few stores on purpose: LLVM merges
    /// runs of zero stores into a `memset` call, which BPF programs cannot afford.
    #[inline(always)]
    pub(super) fn begin(&mut self) {
        self.phase = P_START;
        self.head_len = 0;
        self.start_len = 0;
        self.line = L_START_LINE;
        self.hflags = 0;
        self.mflags = 0;
    }

    #[inline(always)]
    pub(super) fn start_byte(&mut self, role: u8, b: u8) -> Option<Stop> {
        self.head_len = self.head_len.wrapping_add(1);
        // A bare LF ends the line as CRLF does (classify knows only CR after a status code).
        self.start[(self.start_len as usize) & (START_LEN - 1)] = if b == LF { CR } else { b };
        self.start_len = self.start_len.wrapping_add(1);
        if (self.start_len as usize) < START_LEN && b != LF {
            return None;
        }
        self.phase = P_HEAD;
        self.line = if b == LF { L_LINE_START } else { L_START_LINE };
        match classify(&self.start, self.start_len as usize) {
            Start::Request(m) if role != ROLE_RESPONSE => {
                self.mflags = match m {
                    Method::Head => M_HEAD,
                    Method::Connect => M_CONNECT | M_HOLD,
                    _ => 0,
                };
                Some(Stop::Request(m))
            }
            Start::Response(status) if role != ROLE_REQUEST => {
                self.mflags = M_RESPONSE;
                Some(Stop::Response(status))
            }
            _ => self.lose(LostReason::NotHttp),
        }
    }
}
