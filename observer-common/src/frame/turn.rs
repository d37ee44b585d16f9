//! What the framer reports: per call ([`Step`], with its [`Event`]), per turn ([`Turn`]), at the
//! close ([`Closed`]); and the per-CPU scratch a segment's turns work in ([`Scan`]).

use super::{LostReason, BLOCK};
use crate::http::Method;

/// What happened in the bytes of one call, reported at most once per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bytes consumed, nothing to report.
    None,
    /// A request line (its start, classified): counted and queued for its response.
    /// `method == Method::Head` / `Method::Connect` are the flags that matter to its response.
    Request { method: Method },
    /// A status line: counted. `latency_ns`: from its request's start, for a final (or 101)
    /// response that answered a waiting request; `None` for interim (1xx) and unmatched ones.
    Response { status: u16, latency_ns: Option<u64> },
    /// The direction lost its place (see [`DirFrame::next_seq`](super::DirFrame::next_seq) for where).
    Lost(LostReason),
}

/// The result of one call: what happened, and where framing wants to continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub event: Event,
    /// Messages that ended in the bytes this call consumed.
    pub completed: u8,
    /// Sequence number of the next byte to frame (all before it consumed).
    pub next_seq: u32,
    /// The next byte framing needs to see. Bytes in `[next_seq, need_seq)` lie inside a body:
    /// pass them to [`ConnFrame::skip`](super::ConnFrame::skip), which consumes them without a load.
    pub need_seq: u32,
    /// Framing wants the bytes at `next_seq` (when this segment has them). `false`: lost,
    /// switched, held, until close, unsynced: stop feeding this direction's segment.
    pub more: bool,
}

/// The segment being framed and the block of it loaded last: per-CPU scratch in a BPF program
/// (a map value). 96 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The bytes of the segment from `blk_seq` on (`blk_len` of them valid; stale bytes past them).
    pub block: [u8; BLOCK],
    /// When the segment was seen.
    pub ts_ns: u64,
    /// The segment: `[seq, seq + len)`.
    pub seq: u32,
    pub len: u32,
    /// Sequence number of `block[0]`, and how many bytes of `block` are loaded (0: none yet).
    pub blk_seq: u32,
    pub blk_len: u32,
    /// The direction ([`crate::http::DIR_IN`] / `DIR_OUT`).
    pub dir: u8,
    /// Messages that ended in this segment so far.
    pub completed: u8,
    /// An unsynced direction tried this segment's start already.
    pub tried: u8,
    pub _pad: [u8; 5],
}

impl Scan {
    pub const fn zeroed() -> Self {
        Self { block: [0; BLOCK], ts_ns: 0, seq: 0, len: 0, blk_seq: 0, blk_len: 0, dir: 0, completed: 0, tried: 0, _pad: [0; 5] }
    }
}

/// The result of one [`ConnFrame::step`](super::ConnFrame::step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Go on (a `bpf_loop` callback returns 0).
    Continue,
    /// A request or status line (counted, paired) or a loss: report it, then go on.
    Event(Event),
    /// Nothing more in this segment for framing (a `bpf_loop` callback returns 1).
    Done,
}

/// The connection ended: what became of the requests still waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Requests never answered (counted in [`FrameCounts::unanswered`](super::FrameCounts::unanswered) unless `lost`).
    pub unanswered: u16,
    /// A direction had lost its framing: whether the waiting requests were answered is not
    /// known here (nothing was counted; the fallback decides).
    pub lost: bool,
}
