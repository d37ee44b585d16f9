//! Where a direction's framing is ([`Phase`]), and why it was lost ([`LostReason`]): the two
//! enums stored as `u8` in [`super::DirFrame`], with the `P_*` codes the scanner compares.

/// Where a direction is, in [`DirFrame::phase`](super::DirFrame::phase).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Position unknown (the zeroed state): framing starts at a segment whose first bytes are a
    /// message start, or at [`ConnFrame::sync`](super::ConnFrame::sync) (after a SYN).
    Unsynced = 0,
    /// At a message boundary: the next byte starts a message (empty lines before it are skipped).
    Idle = 1,
    /// Collecting the first [`START_LEN`](crate::http::START_LEN) bytes of a start line, to classify it.
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
    /// A response delimited by the connection's close: nothing more to frame (see [`ConnFrame::fin`](super::ConnFrame::fin)).
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

pub(super) const P_UNSYNCED: u8 = Phase::Unsynced as u8;
pub(super) const P_IDLE: u8 = Phase::Idle as u8;
pub(super) const P_START: u8 = Phase::Start as u8;
pub(super) const P_HEAD: u8 = Phase::Head as u8;
pub(super) const P_BODY: u8 = Phase::Body as u8;
pub(super) const P_CHUNK_SIZE: u8 = Phase::ChunkSize as u8;
pub(super) const P_CHUNK_DATA: u8 = Phase::ChunkData as u8;
pub(super) const P_CHUNK_CRLF: u8 = Phase::ChunkCrlf as u8;
pub(super) const P_TRAILERS: u8 = Phase::Trailers as u8;
pub(super) const P_UNTIL_CLOSE: u8 = Phase::UntilClose as u8;
pub(super) const P_TUNNEL: u8 = Phase::Tunnel as u8;
pub(super) const P_HELD: u8 = Phase::Held as u8;
pub(super) const P_LOST: u8 = Phase::Lost as u8;
pub(super) const P_CLOSED: u8 = Phase::Closed as u8;

/// Why a direction's framing was lost (for `observer_http_fallback_total{reason}`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// At a message boundary, the bytes are not a request line or status line (or a request where
    /// a response was expected, or the reverse): not HTTP/1.x, or out of step.
    NotHttp = 1,
    /// A head (or trailer section) longer than [`MAX_HEAD`](super::MAX_HEAD).
    HeadTooLong = 2,
    /// Content-Length not only digits (surrounding whitespace allowed), beyond u64, or two
    /// different values.
    BadLength = 3,
    /// A request while [`PENDING_DEPTH`](super::PENDING_DEPTH) requests wait for their responses.
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

/// A stored `lost` value that is no [`LostReason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownLostReason(pub u8);

impl TryFrom<u8> for LostReason {
    type Error = UnknownLostReason;

    #[inline(always)]
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        LostReason::from_u8(v).ok_or(UnknownLostReason(v))
    }
}
