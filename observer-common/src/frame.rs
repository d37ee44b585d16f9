//! HTTP/1.x message framing that runs inside the kernel programs (RFC 9112 sections 2, 6, 7):
//! per connection direction, where each message starts, counted at that boundary, and where the
//! next one starts, computed from the head (Content-Length, chunked transfer coding, no-body rules,
//! until close, tunnels). Body bytes are never copied: a body (or chunk data) that covers a segment
//! is skipped by arithmetic on sequence numbers, without loading a byte of it.
//!
//! The user-space framer (`observer::http::framing`, built on `httparse`) is the reference; a
//! differential test in the `observer` crate requires both to agree on every request and response.
//!
//! # Shape, for the BPF verifier
//! Only `core`, no allocation, no panicking paths (runtime indices are masked into fixed arrays),
//! no calls once compiled (no `memset`/`memcpy` either: see below), every helper
//! `#[inline(always)]`. The kernel copies packet bytes only into a fixed buffer, so the framer
//! loads [`BLOCK`]-sized blocks at the sequence number it needs, and none inside bodies.
//!
//! The work is cut into *turns* ([`ConnFrame::step`]): one byte outside bodies, or one jump over
//! body bytes. Between turns everything lives in the connection's [`ConnFrame`] and a per-CPU
//! [`Scan`], both map values, so a BPF program runs the turns with `bpf_loop` and the verifier
//! checks one turn, not every byte. (Measured on this project's kernel, 6.18: a bounded `for`
//! loop over the bytes of a single 64-byte block already exceeds the verifier's 1M instruction
//! limit, because it unrolls the loop and the scanner's paths multiply.)
//!
//! ```text
//! // conn: &mut ConnFrame (CONNS value), scan: &mut Scan (per-CPU array value)
//! let first = conn.begin_segment(scan, dir, seq, len, now);   // no load: retransmitted, body, gap
//! bpf_loop(MAX_STEPS, |_, ctx| match ctx.conn.step(ctx.scan, |off, block, n| load n bytes at payload + off) {
//!     Turn::Continue => 0,
//!     Turn::Event(e) => { emit e (request / status and latency / loss); 0 }
//!     Turn::Done => 1,
//! });
//! let last = conn.finish_segment(scan);                        // Lost(Budget) if turns ran out
//! ```
//! [`ConnFrame::feed_segment`] is the same with a bounded loop, for the host and the tests.
//! [`ConnFrame::skip`] alone (no load at all) tells whether a segment needs any of this.
//!
//! LLVM turns runs of zero stores (a zeroed array, a whole `zeroed()` struct assigned at run
//! time) into `memset` calls, which the BPF verifier rejects on the stack: create map values
//! from [`ConnFrame::zeroed`] in user space or by inserting from a scratch value.
//!
//! # Concurrency
//! The two directions of a connection may run on two CPUs at once (tc ingress and egress). Each
//! field has one writer: a direction's [`DirFrame`] is written by that direction only; in
//! [`Pending`], `tail` and the entries by the request direction, `head` and `switched` by the
//! response direction; in [`FrameCounts`], `requests` by the request direction, the rest by the
//! response direction (and [`ConnFrame::close`]). The request direction reads `head`/`switched`,
//! the response direction reads the entries and the other direction's phase. Whoever needs a
//! stronger guarantee than that (a spin lock) takes it around the calls.
//!
//! # Lost
//! Whatever the framer cannot follow exactly (not HTTP, a gap in the bytes, a head longer than
//! [`MAX_HEAD`], a bad length, a pipeline deeper than [`PENDING_DEPTH`], ...) makes the direction
//! [`Phase::Lost`] with a [`LostReason`]; it then consumes nothing until [`ConnFrame::sync`] or
//! [`ConnFrame::unsync`]: the caller hands the direction to the user-space framer.

use crate::http::{classify, seq_before, Method, Start, START_LEN};

#[cfg(test)]
mod tests;

/// Bytes per block the caller loads (a power of two: indices into a block are masked with `BLOCK - 1`).
pub const BLOCK: usize = 64;
/// A suggested bound on turns ([`ConnFrame::step`]) per segment, e.g. `bpf_loop`'s `nr_loops`.
/// A turn is one byte outside bodies, or one jump over body bytes: a segment needs about
/// `bytes outside bodies + bodies` turns.
pub const MAX_STEPS: usize = 8192;
/// A message head (start line and header fields), or a trailer section, longer than this makes the
/// direction lost ([`LostReason::HeadTooLong`]).
pub const MAX_HEAD: u16 = 16 * 1024;
/// A chunk-size line (with its extensions) longer than this makes the direction lost ([`LostReason::BadChunk`]).
pub const MAX_CHUNK_LINE: u16 = 4096;
/// Requests a connection may have waiting for their responses (a power of two).
pub const PENDING_DEPTH: usize = 8;

const _: () = assert!(BLOCK.is_power_of_two() && START_LEN.is_power_of_two() && PENDING_DEPTH.is_power_of_two());
const _: () = assert!(START_LEN <= BLOCK);

/// Where a direction is, in [`DirFrame::phase`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Position unknown (the zeroed state): framing starts at a segment whose first bytes are a
    /// message start, or at [`ConnFrame::sync`] (after a SYN).
    Unsynced = 0,
    /// At a message boundary: the next byte starts a message (empty lines before it are skipped).
    Idle = 1,
    /// Collecting the first [`START_LEN`] bytes of a start line, to classify it.
    Start = 2,
    /// In the head, after the start was classified: header fields until the empty line.
    Head = 3,
    /// In a Content-Length body: `remaining` bytes to come.
    Body = 4,
    /// In a chunk-size line (size in hex, extensions).
    ChunkSize = 5,
    /// In chunk data: `remaining` bytes to come.
    ChunkData = 6,
    /// The CRLF after chunk data.
    ChunkCrlf = 7,
    /// In the trailer section of a chunked message, until its empty line.
    Trailers = 8,
    /// A response delimited by the connection's close: nothing more to frame (see [`ConnFrame::fin`]).
    UntilClose = 9,
    /// The connection switched protocols (101, 2xx to CONNECT): nothing more to frame.
    Tunnel = 10,
    /// After a request that asked to leave HTTP (CONNECT, `Upgrade`): framing waits for the response
    /// (tunnel, or go on) and consumes nothing meanwhile.
    Held = 11,
    /// Framing lost its place; the reason is in `DirFrame::lost`.
    Lost = 12,
    /// The direction's stream ended (FIN): nothing more to frame, retransmissions included.
    Closed = 13,
}

impl Phase {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Phase::Idle,
            2 => Phase::Start,
            3 => Phase::Head,
            4 => Phase::Body,
            5 => Phase::ChunkSize,
            6 => Phase::ChunkData,
            7 => Phase::ChunkCrlf,
            8 => Phase::Trailers,
            9 => Phase::UntilClose,
            10 => Phase::Tunnel,
            11 => Phase::Held,
            12 => Phase::Lost,
            13 => Phase::Closed,
            _ => Phase::Unsynced,
        }
    }
}

const P_UNSYNCED: u8 = Phase::Unsynced as u8;
const P_IDLE: u8 = Phase::Idle as u8;
const P_START: u8 = Phase::Start as u8;
const P_HEAD: u8 = Phase::Head as u8;
const P_BODY: u8 = Phase::Body as u8;
const P_CHUNK_SIZE: u8 = Phase::ChunkSize as u8;
const P_CHUNK_DATA: u8 = Phase::ChunkData as u8;
const P_CHUNK_CRLF: u8 = Phase::ChunkCrlf as u8;
const P_TRAILERS: u8 = Phase::Trailers as u8;
const P_UNTIL_CLOSE: u8 = Phase::UntilClose as u8;
const P_TUNNEL: u8 = Phase::Tunnel as u8;
const P_HELD: u8 = Phase::Held as u8;
const P_LOST: u8 = Phase::Lost as u8;
const P_CLOSED: u8 = Phase::Closed as u8;

/// Why a direction's framing was lost (for `observer_http_fallback_total{reason}`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// At a message boundary, the bytes are not a request line or status line (or a request where
    /// a response was expected, or the reverse): not HTTP/1.x, or out of step.
    NotHttp = 1,
    /// A head (or trailer section) longer than [`MAX_HEAD`].
    HeadTooLong = 2,
    /// Content-Length not only digits (surrounding whitespace allowed), beyond u64, or two
    /// different values.
    BadLength = 3,
    /// A request while [`PENDING_DEPTH`] requests wait for their responses.
    PipelineTooDeep = 4,
    /// A request whose final transfer coding is not chunked (its length cannot be known).
    UnknownCoding = 5,
    /// Bytes framing needed never came through (a segment after a hole: lost or reordered).
    Gap = 6,
    /// A chunk-size line that is not hexadecimal (or too long, or beyond u64), or chunk data not
    /// followed by CRLF.
    BadChunk = 7,
    /// A header line that is not `name: value` (whitespace or CR/LF in a name, an empty name, a
    /// bare CR, obsolete line folding).
    BadHead = 8,
    /// A final response with no request waiting while the request direction is lost: which
    /// request it answers (HEAD? CONNECT?) is unknown.
    Unpaired = 9,
    /// The caller's bound on turns per segment (e.g. `bpf_loop` count) ran out with bytes left to frame.
    Budget = 10,
}

impl LostReason {
    pub const ALL: [LostReason; 10] = [
        LostReason::NotHttp,
        LostReason::HeadTooLong,
        LostReason::BadLength,
        LostReason::PipelineTooDeep,
        LostReason::UnknownCoding,
        LostReason::Gap,
        LostReason::BadChunk,
        LostReason::BadHead,
        LostReason::Unpaired,
        LostReason::Budget,
    ];

    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => LostReason::NotHttp,
            2 => LostReason::HeadTooLong,
            3 => LostReason::BadLength,
            4 => LostReason::PipelineTooDeep,
            5 => LostReason::UnknownCoding,
            6 => LostReason::Gap,
            7 => LostReason::BadChunk,
            8 => LostReason::BadHead,
            9 => LostReason::Unpaired,
            10 => LostReason::Budget,
            _ => return None,
        })
    }

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            LostReason::NotHttp => "not_http",
            LostReason::HeadTooLong => "head_too_long",
            LostReason::BadLength => "bad_length",
            LostReason::PipelineTooDeep => "pipeline_too_deep",
            LostReason::UnknownCoding => "unknown_coding",
            LostReason::Gap => "gap",
            LostReason::BadChunk => "bad_chunk",
            LostReason::BadHead => "bad_head",
            LostReason::Unpaired => "unpaired",
            LostReason::Budget => "budget",
        }
    }
}

// `DirFrame::line`: where in a line of the head (or trailer section) the scanner is.
const L_START_LINE: u8 = 0;
const L_LINE_START: u8 = 1;
/// A CR at the start of a line (the empty line's CR, probably).
const L_CR: u8 = 2;
const L_NAME: u8 = 3;
const L_VALUE: u8 = 4;

// `DirFrame::hdr` while in a name: bits of the names still matching.
const CAND_CL: u8 = 1;
const CAND_TE: u8 = 2;
const CAND_UPGRADE: u8 = 4;
const CAND_ALL: u8 = CAND_CL | CAND_TE | CAND_UPGRADE;
// `DirFrame::hdr` while in a value: which header it belongs to.
const HDR_OTHER: u8 = 0;
const HDR_CL: u8 = 1;
const HDR_TE: u8 = 2;
const HDR_UPGRADE: u8 = 3;

// `DirFrame::val` in a Content-Length value.
const V_LEAD: u8 = 0;
const V_DIGITS: u8 = 1;
const V_TRAIL: u8 = 2;
// `DirFrame::val` in a chunk-size line.
const C_LEAD: u8 = 0;
const C_HEX: u8 = 1;
const C_AFTER: u8 = 2;
const C_EXT: u8 = 3;

// `DirFrame::te`: the low three bits count the letters of "chunked" matched in the current coding.
const TE_BAD: u8 = 0x10;
const TE_ENDED: u8 = 0x20;

// `DirFrame::hflags`: what the head's fields said.
const H_CL: u8 = 1;
const H_TE: u8 = 2;
const H_CHUNKED: u8 = 4;
const H_UPGRADE: u8 = 8;

// `DirFrame::mflags`: what the message is.
/// A request with method HEAD.
const M_HEAD: u8 = 1;
/// A request with method CONNECT.
const M_CONNECT: u8 = 2;
/// A request after which framing holds (CONNECT, `Upgrade`).
const M_HOLD: u8 = 4;
/// A response.
const M_RESPONSE: u8 = 8;
/// A response without a body (1xx, 204, 304, to HEAD).
const M_NOBODY: u8 = 16;
/// A response after which the connection is a tunnel (101, 2xx to CONNECT).
const M_TUNNEL: u8 = 32;

// `Pending::flags`
/// The request's method is HEAD.
pub const REQ_HEAD: u8 = 1;
/// The request's method is CONNECT.
pub const REQ_CONNECT: u8 = 2;

const ROLE_UNKNOWN: u8 = 0;
const ROLE_REQUEST: u8 = 1;
const ROLE_RESPONSE: u8 = 2;

/// `DirFrame::line` once lost: the loss came between messages; the daemon was told.
const LOST_IDLE: u8 = 0x40;
const HANDED_OFF: u8 = 0x80;

/// [`DirFrame::skippable`]: no skip; the rest of a line (up to LF); the rest of a header name.
const SKIP_NONE: u8 = 0;
const SKIP_TO_LF: u8 = 1;
const SKIP_NAME: u8 = 2;
/// The first bytes of a start line, kept as they are (not the one that completes them).
const SKIP_START: u8 = 3;
/// A name that may still be one framing reads: matched in one turn, up to its `:` or the byte
/// that rules every such name out.
const SKIP_MATCH: u8 = 4;

/// Bytes of a block of `len` loaded (at most [`BLOCK`]) from offset `off` on, at most `BLOCK`. The
/// skip loops count up to it rather than compare `off + k` with `len`: the verifier of 6.1
/// cannot decide that comparison and walked 8192 impossible branches.
#[inline(always)]
const fn avail_in_block(off: u32, len: u32) -> u32 {
    let n = len.saturating_sub(off);
    if n > BLOCK as u32 { BLOCK as u32 } else { n }
}

/// `*v`, read so that the compiler knows nothing of it: it cannot fold a bound the verifier must
/// see into another test, or drop a mask it knows to be a no-op. The skip loops exit on a
/// constant bound the verifier checks, and separately on this data-dependent one: folded into one
/// test (`k != min(avail, 32)`), the verifiers of older kernels (6.1) cannot tell the loop ends
/// and give up after 8192 branches. (The tc programs use it for a length they mask too.)
#[inline(always)]
pub fn opaque(v: &u32) -> u32 {
    // SAFETY: a valid, aligned reference.
    unsafe { core::ptr::read_volatile(v) }
}

/// Is `b` one of the bytes a skip of `kind` takes?
#[inline(always)]
const fn skips(kind: u8, b: u8) -> bool {
    // SKIP_NAME and SKIP_MATCH: the bytes of a name.
    if kind == SKIP_TO_LF || kind == SKIP_START { b != LF } else { b != b':' && b != b' ' && b != b'\t' && b != CR && b != LF }
}

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NAME_MAX: usize = 32;
const MAX_DIV10: u64 = u64::MAX / 10;
const MAX_MOD10: u64 = u64::MAX % 10;

const fn pad(s: &[u8]) -> [u8; NAME_MAX] {
    let mut a = [0u8; NAME_MAX];
    let mut i = 0;
    while i < s.len() {
        a[i] = s[i];
        i += 1;
    }
    a
}

const CONTENT_LENGTH: [u8; NAME_MAX] = pad(b"content-length");
const TRANSFER_ENCODING: [u8; NAME_MAX] = pad(b"transfer-encoding");
const UPGRADE: [u8; NAME_MAX] = pad(b"upgrade");
const CHUNKED: [u8; 8] = *b"chunked\0";

#[inline(always)]
const fn lower(b: u8) -> u8 {
    if b >= b'A' && b <= b'Z' { b | 0x20 } else { b }
}

#[inline(always)]
const fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// 0..=15 for a hex digit, 0xff otherwise.
#[inline(always)]
const fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0xff,
    }
}

/// What the byte scanner stopped for.
#[derive(Clone, Copy)]
enum Stop {
    Request(Method),
    Response(u16),
    Lost(LostReason),
}

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
        if self.phase == P_LOST { LostReason::from_u8(self.lost) } else { None }
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

    /// Can the head byte `b` at `next_seq`, and those like it after it, be taken without a
    /// look: in a start line, its bytes before the one that completes [`START_LEN`] are only
    /// kept; in the rest of the start line once classified, and in the value of a header framing
    /// does not read, only the LF ending the line matters; in a name that matches none of the
    /// names framing reads, only what ends it (`:`) or breaks it (whitespace, CR, LF). Taking such
    /// bytes one by one changes nothing but `next_seq` and `head_len` (`name_idx` only matters
    /// while a name still matches).
    #[inline(always)]
    pub fn skippable(&self, b: u8) -> u8 {
        if self.phase == P_START {
            return if (self.start_len as usize) < START_LEN - 1 && b != LF { SKIP_START } else { SKIP_NONE };
        }
        if self.phase != P_HEAD {
            return SKIP_NONE;
        }
        let kind = if self.line == L_START_LINE || (self.line == L_VALUE && self.hdr != HDR_CL && self.hdr != HDR_TE) {
            SKIP_TO_LF
        } else if self.line == L_NAME && self.hdr == 0 {
            SKIP_NAME
        } else if self.line == L_NAME {
            SKIP_MATCH
        } else if self.line == L_LINE_START {
            // A name that starts like none of the names framing reads, or may be one (ws, `:`,
            // CR and LF, which end the head or break it, are not skipped: see `skips`).
            if matches!(lower(b), b'c' | b't' | b'u') { SKIP_MATCH } else { SKIP_NAME }
        } else {
            SKIP_NONE
        };
        if kind != SKIP_NONE && skips(kind, b) { kind } else { SKIP_NONE }
    }

    /// A name that may be one framing reads, from the byte at `off` of `block` (`len` loaded):
    /// each byte matched as `head_byte` would, up to the `:` (taken, as `begin_value`), the byte
    /// that rules out every name framing reads, or a byte that is no name byte (left to
    /// `head_byte`). Returns the bytes taken.
    #[inline(always)]
    fn match_name(&mut self, block: &[u8; BLOCK], off: u32, len: u32) -> u32 {
        if self.line == L_LINE_START {
            self.line = L_NAME;
            self.name_idx = 0;
            self.hdr = CAND_ALL;
        }
        let avail = avail_in_block(off, len);
        let mut k = 0u32;
        while k < NAME_MAX as u32 {
            if k >= opaque(&avail) {
                break;
            }
            let c = block[((off + k) as usize) & (BLOCK - 1)];
            if c == b':' {
                self.begin_value();
                k += 1;
                break;
            }
            if !skips(SKIP_MATCH, c) {
                break;
            }
            self.name_byte(c);
            k += 1;
            if self.hdr == 0 {
                break;
            }
        }
        k
    }

    /// Bytes of a head that framing only counts (see [`Self::skippable`]), of kind `skip`, from
    /// the byte at `off` of `block` (`len` loaded). Returns the bytes taken.
    #[inline(always)]
    fn skip_bytes(&mut self, block: &[u8; BLOCK], off: u32, len: u32, skip: u8) -> u32 {
        // The start of a start line is kept (for `classify`), up to its last byte, which
        // classifies it (the byte-by-byte path).
        let limit = if skip == SKIP_START { (START_LEN as u32 - 1).wrapping_sub(self.start_len as u32) } else { BLOCK as u32 };
        if skip == SKIP_NAME && self.line == L_LINE_START {
            // A new field line whose name matches nothing (what `head_byte` does with its
            // first byte, apart from matching).
            self.line = L_NAME;
            self.hdr = 0;
        }
        // A field line framing does not read goes in one turn: the rest of its name, the
        // `:` (a value not read, as `begin_value` says for a name that matched nothing), the
        // value, and the LF that ends it (`end_value` of such a value, or the end of the
        // start line, only starts the next line).
        let mut kind = skip;
        let avail = avail_in_block(off, len);
        let bound = if limit < avail { limit } else { avail };
        let mut k = 0u32;
        while k < BLOCK as u32 {
            if k >= opaque(&bound) {
                break;
            }
            let c = block[((off + k) as usize) & (BLOCK - 1)];
            if kind == SKIP_NAME && c == b':' {
                self.hdr = HDR_OTHER;
                self.line = L_VALUE;
                self.val = V_LEAD;
                self.te = 0;
                kind = SKIP_TO_LF;
            } else if kind == SKIP_TO_LF && c == LF {
                self.line = L_LINE_START;
                k += 1;
                break;
            } else if !skips(kind, c) {
                break;
            }
            if kind == SKIP_START {
                self.start[((self.start_len as u32 + k) as usize) & (START_LEN - 1)] = c;
            }
            k += 1;
        }
        if skip == SKIP_START {
            self.start_len = self.start_len.wrapping_add(k as u8);
        }
        k
    }

    /// The direction wants bytes at `next_seq` (it is framing, not waiting, switched or lost).
    #[inline(always)]
    pub fn active(&self) -> bool {
        self.phase >= P_IDLE && self.phase <= P_TRAILERS
    }

    #[inline(always)]
    fn step(&self, event: Event, completed: u8) -> Step {
        Step { event, completed, next_seq: self.next_seq, need_seq: self.need_seq(), more: self.active() }
    }

    /// Field by field (no whole-struct assignment, which compiles to a `memset` call the BPF
    /// verifier rejects); the head fields are reset when the next message begins.
    #[inline(always)]
    fn sync(&mut self, seq: u32) {
        self.phase = P_IDLE;
        self.lost = 0;
        self.mflags = 0;
        self.next_seq = seq;
    }

    #[inline(always)]
    fn lose(&mut self, why: LostReason) -> Option<Stop> {
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
    fn complete(&mut self, completed: &mut u8) {
        *completed = completed.wrapping_add(1);
        self.phase = if self.mflags & M_HOLD != 0 { P_HELD } else { P_IDLE };
    }

    /// `remaining` reached 0 in a body or chunk data.
    #[inline(always)]
    fn body_done(&mut self, completed: &mut u8) {
        if self.phase == P_BODY {
            self.complete(completed);
        } else {
            self.phase = P_CHUNK_CRLF;
            self.val = 0;
        }
    }

    #[inline(always)]
    fn chunk_line(&mut self) {
        self.phase = P_CHUNK_SIZE;
        self.val = C_LEAD;
        self.remaining = 0;
        self.head_len = 0;
    }

    /// Lines up a segment `[seq, seq + len)` with the framing position: the offset in it of the
    /// next byte to frame, or `None` when nothing in it is for framing (all framed already, or the
    /// direction is lost, held, or loses its place here because of a gap).
    #[inline(always)]
    fn align(&mut self, seq: u32, len: u32, completed: &mut u8) -> Option<u32> {
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
    fn byte(&mut self, role: u8, b: u8, completed: &mut u8) -> Option<Stop> {
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
    fn begin(&mut self) {
        self.phase = P_START;
        self.head_len = 0;
        self.start_len = 0;
        self.line = L_START_LINE;
        self.hflags = 0;
        self.mflags = 0;
    }

    #[inline(always)]
    fn start_byte(&mut self, role: u8, b: u8) -> Option<Stop> {
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

    #[inline(always)]
    fn head_byte(&mut self, completed: &mut u8, b: u8) -> Option<Stop> {
        self.head_len = self.head_len.wrapping_add(1);
        if self.head_len > MAX_HEAD {
            return self.lose(LostReason::HeadTooLong);
        }
        match self.line {
            L_START_LINE => {
                if b == LF {
                    self.line = L_LINE_START;
                }
                None
            }
            L_LINE_START => {
                if b == LF {
                    return self.end_head(completed);
                }
                if b == CR {
                    self.line = L_CR;
                    return None;
                }
                // Obsolete line folding, or an empty name.
                if is_ws(b) || b == b':' {
                    return self.lose(LostReason::BadHead);
                }
                self.line = L_NAME;
                self.name_idx = 0;
                self.hdr = CAND_ALL;
                self.name_byte(b);
                None
            }
            L_CR => {
                if b == LF {
                    self.end_head(completed)
                } else {
                    self.lose(LostReason::BadHead)
                }
            }
            L_NAME => {
                if b == b':' {
                    self.begin_value();
                    None
                } else if is_ws(b) || b == CR || b == LF {
                    self.lose(LostReason::BadHead)
                } else {
                    self.name_byte(b);
                    None
                }
            }
            _ => {
                if b == LF {
                    self.end_value()
                } else {
                    // RFC 9112 section 2.2: a bare CR in a field value is read as SP (the CR
                    // before the LF is then trailing whitespace): `5\r5` is no length.
                    self.value_byte(if b == CR { b' ' } else { b })
                }
            }
        }
    }

    /// Case-insensitive matching of the three names framing cares about, one byte at a time.
    #[inline(always)]
    fn name_byte(&mut self, b: u8) {
        let c = lower(b);
        let k = (self.name_idx as usize) & (NAME_MAX - 1);
        let mut cand = self.hdr;
        if CONTENT_LENGTH[k] != c {
            cand &= !CAND_CL;
        }
        if TRANSFER_ENCODING[k] != c {
            cand &= !CAND_TE;
        }
        if UPGRADE[k] != c {
            cand &= !CAND_UPGRADE;
        }
        if (self.name_idx as usize) < NAME_MAX - 1 {
            self.name_idx += 1;
        } else {
            cand = 0;
        }
        self.hdr = cand;
    }

    #[inline(always)]
    fn begin_value(&mut self) {
        let n = self.name_idx;
        let c = self.hdr;
        self.hdr = if c & CAND_CL != 0 && n == 14 {
            HDR_CL
        } else if c & CAND_TE != 0 && n == 17 {
            HDR_TE
        } else if c & CAND_UPGRADE != 0 && n == 7 {
            self.hflags |= H_UPGRADE;
            HDR_UPGRADE
        } else {
            HDR_OTHER
        };
        self.line = L_VALUE;
        self.val = V_LEAD;
        self.te = 0;
        if self.hdr == HDR_CL {
            self.remaining = 0;
        }
    }

    #[inline(always)]
    fn value_byte(&mut self, b: u8) -> Option<Stop> {
        if self.hdr == HDR_CL {
            return self.length_byte(b);
        }
        if self.hdr == HDR_TE {
            self.coding_byte(b);
        }
        None
    }

    /// Content-Length = 1*DIGIT, with optional whitespace around it.
    #[inline(always)]
    fn length_byte(&mut self, b: u8) -> Option<Stop> {
        let d = b.wrapping_sub(b'0');
        if d <= 9 {
            let d = d as u64;
            if self.val == V_TRAIL || self.remaining > MAX_DIV10 || (self.remaining == MAX_DIV10 && d > MAX_MOD10) {
                return self.lose(LostReason::BadLength);
            }
            self.remaining = self.remaining.wrapping_mul(10).wrapping_add(d);
            self.val = V_DIGITS;
            None
        } else if is_ws(b) {
            if self.val == V_DIGITS {
                self.val = V_TRAIL;
            }
            None
        } else {
            self.lose(LostReason::BadLength)
        }
    }

    /// Is the last coding of a Transfer-Encoding list "chunked" (case-insensitive)?
    #[inline(always)]
    fn coding_byte(&mut self, b: u8) {
        if b == b',' {
            self.te = 0;
        } else if is_ws(b) {
            if self.te != 0 {
                self.te |= TE_ENDED;
            }
        } else if self.te & (TE_BAD | TE_ENDED) != 0 {
            self.te |= TE_BAD;
        } else {
            let k = (self.te & 7) as usize;
            if k < 7 && lower(b) == CHUNKED[k & 7] {
                self.te += 1;
            } else {
                self.te |= TE_BAD;
            }
        }
    }

    #[inline(always)]
    fn end_value(&mut self) -> Option<Stop> {
        self.line = L_LINE_START;
        if self.hdr == HDR_CL {
            if self.val == V_LEAD || (self.hflags & H_CL != 0 && self.length != self.remaining) {
                return self.lose(LostReason::BadLength);
            }
            self.length = self.remaining;
            self.hflags |= H_CL;
        } else if self.hdr == HDR_TE {
            // Each field line decides anew: the final coding is the last one of the last line.
            self.hflags |= H_TE;
            if self.te & 7 == 7 && self.te & TE_BAD == 0 {
                self.hflags |= H_CHUNKED;
            } else {
                self.hflags &= !H_CHUNKED;
            }
        }
        None
    }

    /// The empty line: how the body is delimited (RFC 9112 section 6.3).
    #[inline(always)]
    fn end_head(&mut self, completed: &mut u8) -> Option<Stop> {
        let h = self.hflags;
        let m = self.mflags;
        self.remaining = 0;
        if m & M_RESPONSE != 0 {
            if m & M_TUNNEL != 0 {
                *completed = completed.wrapping_add(1);
                self.phase = P_TUNNEL;
            } else if m & M_NOBODY != 0 {
                self.complete(completed);
            } else if h & H_TE != 0 {
                if h & H_CHUNKED != 0 {
                    self.chunk_line();
                } else {
                    self.phase = P_UNTIL_CLOSE;
                }
            } else if h & H_CL != 0 {
                if self.length == 0 {
                    self.complete(completed);
                } else {
                    self.phase = P_BODY;
                    self.remaining = self.length;
                }
            } else {
                self.phase = P_UNTIL_CLOSE;
            }
            return None;
        }
        if h & H_UPGRADE != 0 {
            self.mflags |= M_HOLD;
        }
        if h & H_TE != 0 {
            if h & H_CHUNKED == 0 {
                return self.lose(LostReason::UnknownCoding);
            }
            self.chunk_line();
        } else if h & H_CL != 0 && self.length != 0 {
            self.phase = P_BODY;
            self.remaining = self.length;
        } else {
            self.complete(completed);
        }
        None
    }

    /// chunk-size [ chunk-ext ] CRLF (RFC 9112 section 7.1); whitespace around the size tolerated.
    #[inline(always)]
    fn chunk_size_byte(&mut self, b: u8) -> Option<Stop> {
        self.head_len = self.head_len.wrapping_add(1);
        if self.head_len > MAX_CHUNK_LINE {
            return self.lose(LostReason::BadChunk);
        }
        if b == LF {
            if self.val == C_LEAD {
                return self.lose(LostReason::BadChunk);
            }
            if self.remaining == 0 {
                self.phase = P_TRAILERS;
                self.line = L_LINE_START;
                self.head_len = 0;
            } else {
                self.phase = P_CHUNK_DATA;
            }
            return None;
        }
        if self.val == C_EXT {
            return None;
        }
        let d = hex_value(b);
        if d < 16 {
            if self.val == C_AFTER || self.remaining >> 60 != 0 {
                return self.lose(LostReason::BadChunk);
            }
            self.remaining = (self.remaining << 4) | d as u64;
            self.val = C_HEX;
            None
        } else if b == b';' {
            if self.val == C_LEAD {
                return self.lose(LostReason::BadChunk);
            }
            self.val = C_EXT;
            None
        } else if is_ws(b) || b == CR {
            if self.val == C_HEX {
                self.val = C_AFTER;
            }
            None
        } else {
            self.lose(LostReason::BadChunk)
        }
    }

    #[inline(always)]
    fn chunk_crlf_byte(&mut self, b: u8) -> Option<Stop> {
        if self.val == 0 {
            if b != CR {
                return self.lose(LostReason::BadChunk);
            }
            self.val = 1;
        } else {
            if b != LF {
                return self.lose(LostReason::BadChunk);
            }
            self.chunk_line();
        }
        None
    }

    /// Trailer fields until the empty line; their content does not matter.
    #[inline(always)]
    fn trailer_byte(&mut self, completed: &mut u8, b: u8) -> Option<Stop> {
        self.head_len = self.head_len.wrapping_add(1);
        if self.head_len > MAX_HEAD {
            return self.lose(LostReason::HeadTooLong);
        }
        if self.line == L_LINE_START || self.line == L_CR {
            if b == LF {
                self.complete(completed);
            } else if b == CR && self.line == L_LINE_START {
                self.line = L_CR;
            } else {
                self.line = L_VALUE;
            }
        } else if b == LF {
            self.line = L_LINE_START;
        }
        None
    }
}

/// Requests waiting for their responses, oldest first: a ring of [`PENDING_DEPTH`] entries.
/// 80 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Per entry (index `& (PENDING_DEPTH - 1)`): the time of the block that completed the
    /// request's start (its first [`START_LEN`] bytes, or its whole start line if shorter).
    pub ts_ns: [u64; PENDING_DEPTH],
    /// Per entry: [`REQ_HEAD`], [`REQ_CONNECT`].
    pub flags: [u8; PENDING_DEPTH],
    /// Requests answered so far (the oldest waiting one's index). Written by the response direction.
    pub head: u16,
    /// Requests queued so far. Written by the request direction.
    pub tail: u16,
    /// 1 + the direction that carries requests ([`crate::http::DIR_IN`] or `DIR_OUT`); 0 while unknown.
    pub request_dir: u8,
    /// 1 once a response switched the connection to another protocol (101, 2xx to CONNECT).
    /// Written by the response direction (before `head`).
    pub switched: u8,
    pub _pad: [u8; 2],
}

impl Pending {
    pub const fn zeroed() -> Self {
        Self { ts_ns: [0; PENDING_DEPTH], flags: [0; PENDING_DEPTH], head: 0, tail: 0, request_dir: 0, switched: 0, _pad: [0; 2] }
    }

    /// Requests waiting for a (final) response.
    #[inline(always)]
    pub const fn in_flight(&self) -> u16 {
        self.tail.wrapping_sub(self.head)
    }
}

/// What framing counted on a connection. 80 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounts {
    /// Requests (counted at their start line).
    pub requests: u64,
    /// Responses by status class (counted at their status line; 1xx interim ones included).
    pub responses_1xx: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    /// Sum of request start → response start over answered requests (final or 101 responses
    /// paired with a waiting request), and how many those are.
    pub latency_sum_ns: u64,
    pub latency_count: u64,
    /// Final responses with no request waiting (framing joined midway, or missed the request).
    pub unmatched_responses: u64,
    /// Requests the connection ended without answering ([`ConnFrame::close`]).
    pub unanswered: u64,
}

impl FrameCounts {
    pub const fn zeroed() -> Self {
        Self {
            requests: 0,
            responses_1xx: 0,
            responses_2xx: 0,
            responses_3xx: 0,
            responses_4xx: 0,
            responses_5xx: 0,
            latency_sum_ns: 0,
            latency_count: 0,
            unmatched_responses: 0,
            unanswered: 0,
        }
    }

    /// Any status line counted (interim ones included).
    #[inline(always)]
    pub const fn has_responses(&self) -> bool {
        self.responses_1xx | self.responses_2xx | self.responses_3xx | self.responses_4xx | self.responses_5xx != 0
    }

    #[inline(always)]
    fn add_status(&mut self, status: u16) {
        if status < 200 {
            self.responses_1xx = self.responses_1xx.wrapping_add(1);
        } else if status < 300 {
            self.responses_2xx = self.responses_2xx.wrapping_add(1);
        } else if status < 400 {
            self.responses_3xx = self.responses_3xx.wrapping_add(1);
        } else if status < 500 {
            self.responses_4xx = self.responses_4xx.wrapping_add(1);
        } else {
            self.responses_5xx = self.responses_5xx.wrapping_add(1);
        }
    }
}

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
    /// The direction lost its place (see [`DirFrame::next_seq`] for where).
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
    /// pass them to [`ConnFrame::skip`], which consumes them without a load.
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

/// The result of one [`ConnFrame::step`].
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
    /// Requests never answered (counted in [`FrameCounts::unanswered`] unless `lost`).
    pub unanswered: u16,
    /// A direction had lost its framing: whether the waiting requests were answered is not
    /// known here (nothing was counted; the fallback decides).
    pub lost: bool,
}

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

    /// The direction carrying requests, once known (from a client's SYN or the first message).
    pub const fn request_dir(&self) -> Option<u8> {
        if self.pending.request_dir == 0 { None } else { Some((self.pending.request_dir - 1) & 1) }
    }

    /// Says which direction carries requests (e.g. from the client's SYN).
    #[inline(always)]
    pub fn set_request_dir(&mut self, dir: u8) {
        self.pending.request_dir = (dir & 1) + 1;
    }

    /// A SYN in `dir` with initial sequence number `isn`: framing of `dir` starts at `isn + 1`.
    /// A SYN without ACK comes from the client: `dir` then carries requests.
    #[inline(always)]
    pub fn on_syn(&mut self, dir: u8, isn: u32, ack: bool) {
        if !ack {
            self.set_request_dir(dir);
        } else if self.pending.request_dir == 0 {
            self.set_request_dir(dir ^ 1);
        }
        self.sync(dir, isn.wrapping_add(1));
    }

    /// A message starts at `seq` in `dir` (its stream's first byte, or a boundary user space
    /// found): framing starts (again) there.
    #[inline(always)]
    pub fn sync(&mut self, dir: u8, seq: u32) {
        self.dirs[(dir & 1) as usize].sync(seq);
    }

    /// Forgets `dir`'s position: framing starts again at a segment that begins with a message.
    #[inline(always)]
    pub fn unsync(&mut self, dir: u8) {
        let d = &mut self.dirs[(dir & 1) as usize];
        d.phase = P_UNSYNCED;
        d.lost = 0;
    }

    pub const fn phase(&self, dir: u8) -> Phase {
        self.dirs[(dir & 1) as usize].phase()
    }

    pub const fn lost(&self, dir: u8) -> Option<LostReason> {
        self.dirs[(dir & 1) as usize].lost_reason()
    }

    /// Requests waiting for a final response.
    pub const fn in_flight(&self) -> u16 {
        self.pending.in_flight()
    }

    #[inline(always)]
    fn role(&self, i: usize) -> u8 {
        let r = self.pending.request_dir;
        if r == 0 {
            ROLE_UNKNOWN
        } else if ((r - 1) & 1) as usize == i {
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
        let d = &mut self.dirs[i & 1];
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
        let d = &mut self.dirs[(dir & 1) as usize];
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
        let i = (dir & 1) as usize;
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
        scan.dir = dir & 1;
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
        let i = (scan.dir & 1) as usize;
        let role = self.role(i);
        // A request that asked to leave HTTP may be answered before its head (or body) ends:
        // the next turn learns it, as the next segment would, so that where the segments are
        // cut changes nothing.
        self.resolve(i, role);
        let other_lost = self.dirs[i ^ 1].phase == P_LOST;
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
            Some(stop) => Turn::Event(on_stop(d, pending, counts, i, role, other_lost, stop, scan.ts_ns)),
        }
    }

    /// After the turns of a segment: where framing is. If the turns ran out with bytes of the
    /// segment left to frame, the direction is lost ([`LostReason::Budget`]).
    #[inline(always)]
    pub fn finish_segment(&mut self, scan: &Scan) -> Step {
        let d = &mut self.dirs[(scan.dir & 1) as usize];
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
        let d = &mut self.dirs[(dir & 1) as usize];
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
fn on_stop(d: &mut DirFrame, pending: &mut Pending, counts: &mut FrameCounts, i: usize, role: u8, other_lost: bool, stop: Stop, ts_ns: u64) -> Event {
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
                pending.request_dir = (i as u8) + 1;
            }
            if pending.in_flight() as usize >= PENDING_DEPTH {
                d.lose(LostReason::PipelineTooDeep);
                d.next_seq = d.next_seq.wrapping_sub(d.head_len as u32);
                return Event::Lost(LostReason::PipelineTooDeep);
            }
            let k = (pending.tail as usize) & (PENDING_DEPTH - 1);
            pending.ts_ns[k] = ts_ns;
            pending.flags[k] = match method {
                Method::Head => REQ_HEAD,
                Method::Connect => REQ_CONNECT,
                _ => 0,
            };
            pending.tail = pending.tail.wrapping_add(1);
            counts.requests = counts.requests.wrapping_add(1);
            Event::Request { method }
        }
        Stop::Response(status) => {
            if role == ROLE_UNKNOWN {
                pending.request_dir = ((i ^ 1) as u8) + 1;
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
            let mut req = 0u8;
            let mut latency_ns = None;
            if is_final && waiting {
                let k = (pending.head as usize) & (PENDING_DEPTH - 1);
                req = pending.flags[k];
                let l = ts_ns.saturating_sub(pending.ts_ns[k]);
                counts.latency_sum_ns = counts.latency_sum_ns.wrapping_add(l);
                counts.latency_count = counts.latency_count.wrapping_add(1);
                latency_ns = Some(l);
            } else if is_final {
                counts.unmatched_responses = counts.unmatched_responses.wrapping_add(1);
            }
            // RFC 9110 section 6.4.1 and RFC 9112 section 6.3: which responses have no body.
            let mut m = M_RESPONSE;
            if status == 101 || ((200..300).contains(&status) && req & REQ_CONNECT != 0) {
                m |= M_TUNNEL;
                pending.switched = 1;
            } else if status < 200 || status == 204 || status == 304 || req & REQ_HEAD != 0 {
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

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: #[repr(C)], integers and byte arrays only, no implicit padding (sizes are asserted
    // in the tests: 48, 80, 80, 264, 96).
    unsafe impl aya::Pod for DirFrame {}
    unsafe impl aya::Pod for Pending {}
    unsafe impl aya::Pod for FrameCounts {}
    unsafe impl aya::Pod for ConnFrame {}
    unsafe impl aya::Pod for Scan {}
}
