//! HTTP/1.x: what the kernel forwards to the daemon for framing, and the daemon's hints back.
//!
//! The tc programs do not frame HTTP themselves: they forward the payload of data segments
//! (with its TCP sequence number) through the `PAYLOAD` ring buffer, and skip what the daemon
//! has said lies inside a message body (`HttpHints`), so a large body costs one extra map lookup
//! per segment and no copy. The daemon reassembles each direction by sequence number, so
//! retransmitted and reordered segments are framed exactly once, in order.

use crate::direction::{Direction, UnknownDirection};
pub use crate::flags::{HintFlags, MsgFlags, SegFlags};

/// Payload bytes per `PAYLOAD` record; a longer segment is sent as several records.
pub const PAYLOAD_WINDOW: usize = 4096;
/// The most records one segment (a GSO/GRO super-packet up to 64 KiB) produces.
pub const PAYLOAD_MAX_WINDOWS: usize = 16;

/// [`Direction::In`] as stored in a record's `dir` field (an alias kept for the daemon).
pub const DIR_IN: u8 = Direction::In as u8;
/// [`Direction::Out`] as stored in a record's `dir` field.
pub const DIR_OUT: u8 = Direction::Out as u8;

// `PayloadHeader::flags`, one name per bit: see [`SegFlags`], which says what each means.
pub const SEG_SYN: u8 = SegFlags::SYN.bits();
pub const SEG_FIN: u8 = SegFlags::FIN.bits();
pub const SEG_RST: u8 = SegFlags::RST.bits();
pub const SEG_ACK: u8 = SegFlags::ACK.bits();
pub const SEG_MSG: u8 = SegFlags::MSG.bits();
pub const SEG_HANDOFF: u8 = SegFlags::HANDOFF.bits();
pub const SEG_BOUNDARY: u8 = SegFlags::BOUNDARY.bits();
/// Bytes of [`MsgInfo`] at the start of a message record's data.
pub const MSG_INFO: usize = 8;
/// At most this many bytes of a request line after its first [`START_LEN`] travel with its record.
pub const MSG_TAIL: usize = 64;
/// [`MsgInfo::kind`]: [`MsgKind`] as u8.
pub const MSG_REQUEST: u8 = MsgKind::Request as u8;
pub const MSG_RESPONSE: u8 = MsgKind::Response as u8;
/// [`MsgInfo::flags`]: [`MsgFlags::FIRST`].
pub const MSG_FIRST: u8 = MsgFlags::FIRST.bits();

/// What a message record (`SegFlags::MSG`) counted: [`MsgInfo::kind`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgKind {
    Request = 1,
    Response = 2,
}

/// A [`MsgInfo::kind`] that is no [`MsgKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownMsgKind(pub u8);

impl TryFrom<u8> for MsgKind {
    type Error = UnknownMsgKind;

    #[inline(always)]
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            1 => Ok(MsgKind::Request),
            2 => Ok(MsgKind::Response),
            _ => Err(UnknownMsgKind(v)),
        }
    }
}

/// What a message record says about its message, in the record's first bytes: kind, method,
/// flags, start_len, status (little-endian u16), two unused bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgInfo {
    pub kind: u8,
    /// [`Method`] as u8 for a request (0: another method).
    pub method: u8,
    pub flags: u8,
    /// A request: how many of the [`START_LEN`] bytes after the info are its line's.
    pub start_len: u8,
    /// A response's status code.
    pub status: u16,
}

impl MsgInfo {
    pub const fn decode(b: &[u8; MSG_INFO]) -> Self {
        Self { kind: b[0], method: b[1], flags: b[2], start_len: b[3], status: b[4] as u16 | (b[5] as u16) << 8 }
    }

    /// `kind`, typed.
    pub fn msg_kind(&self) -> Result<MsgKind, UnknownMsgKind> {
        MsgKind::try_from(self.kind)
    }

    /// `flags`, typed.
    pub const fn msg_flags(&self) -> MsgFlags {
        MsgFlags(self.flags)
    }

    /// `method`, typed (`None`: another method, or a response).
    pub const fn method(&self) -> Option<Method> {
        Method::from_u8(self.method)
    }
}

/// Header of one `PAYLOAD` record; `len` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PayloadHeader {
    pub key: crate::conn::ConnKey,
    pub ts_ns: u64,
    /// Sequence number of the first byte in this record (of the SYN, with `SEG_SYN`).
    pub seq: u32,
    pub len: u16,
    /// [`Direction`] as u8: [`DIR_IN`] (received by this host) or [`DIR_OUT`].
    pub dir: u8,
    /// [`SegFlags`] as u8.
    pub flags: u8,
    /// Which incarnation of the four-tuple the bytes belong to (the low bits of its entry's
    /// `first_seen_ns`), on payload records: a hint the daemon derives from them carries it
    /// ([`HttpHints::conn`]).
    pub conn: u32,
    pub _pad: u32,
}

impl PayloadHeader {
    /// `dir`, typed; an error for a value no program writes.
    #[inline(always)]
    pub fn direction(&self) -> Result<Direction, UnknownDirection> {
        Direction::try_from(self.dir)
    }

    /// `flags`, typed.
    #[inline(always)]
    pub const fn seg_flags(&self) -> SegFlags {
        SegFlags(self.flags)
    }
}

/// A record as the kernel assembles it in its per-CPU scratch space.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadEvent {
    pub header: PayloadHeader,
    pub data: [u8; PAYLOAD_WINDOW],
}

// `HttpHints::flags`, one name per bit: see [`HintFlags`].
pub const HINT_NOT_HTTP: u32 = HintFlags::NOT_HTTP.bits();
pub const HINT_SKIP_IN: u32 = HintFlags::SKIP_IN.bits();
pub const HINT_SKIP_OUT: u32 = HintFlags::SKIP_OUT.bits();

/// Written by the daemon, read by the tc programs: per connection, where the bytes the daemon
/// still needs begin, per direction, and whether it is HTTP at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpHints {
    /// [`HintFlags`] as u32.
    pub flags: u32,
    /// With `HINT_SKIP_IN`: bytes before this sequence number (received) are not needed.
    pub skip_in: u32,
    /// With `HINT_SKIP_OUT`: the same for bytes this host sent.
    pub skip_out: u32,
    /// The incarnation of the four-tuple the hint is about ([`PayloadHeader::conn`]): a
    /// connection that reuses the four-tuple ignores (and replaces) a hint left by the one
    /// before, also one the daemon wrote after the new one began.
    pub conn: u32,
}

impl HttpHints {
    /// `flags`, typed.
    #[inline(always)]
    pub const fn hint_flags(&self) -> HintFlags {
        HintFlags(self.flags)
    }

    /// Whether `dir`'s skip position is valid, and the position: bytes of `dir` before it are
    /// not needed.
    #[inline(always)]
    pub const fn skip(&self, dir: Direction) -> (bool, u32) {
        match dir {
            Direction::In => (self.flags & HINT_SKIP_IN != 0, self.skip_in),
            Direction::Out => (self.flags & HINT_SKIP_OUT != 0, self.skip_out),
        }
    }
}

/// `a` is before `b` in sequence space (RFC 1982 serial-number arithmetic).
#[inline(always)]
pub const fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Bytes the start-of-message classifier looks at.
pub const START_LEN: usize = 16;

/// What the first bytes of a message are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A request line with this method (RFC 9110 section 9, and PATCH from RFC 5789).
    Request(Method),
    /// A status line `HTTP/1.x NNN` with this code.
    Response(u16),
    /// Neither: not the start of an HTTP/1.x message.
    Neither,
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get = 1,
    Head = 2,
    Post = 3,
    Put = 4,
    Delete = 5,
    Connect = 6,
    Options = 7,
    Trace = 8,
    Patch = 9,
}

impl Method {
    pub const fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Method::Get,
            2 => Method::Head,
            3 => Method::Post,
            4 => Method::Put,
            5 => Method::Delete,
            6 => Method::Connect,
            7 => Method::Options,
            8 => Method::Trace,
            9 => Method::Patch,
            _ => return None,
        })
    }
}

#[inline(always)]
const fn is_digit(b: u8) -> bool {
    b >= b'0' && b <= b'9'
}

/// Classifies the first [`START_LEN`] bytes of a message (shorter input is zero-padded by the
/// caller; `len` says how many are real). Constant indices only: the tc programs run this too.
#[inline(always)]
pub fn classify(b: &[u8; START_LEN], len: usize) -> Start {
    // "HTTP/1.x NNN" then SP, CR, or the end of what we have (the reason phrase may be empty).
    if len >= 12
        && b[0] == b'H'
        && b[1] == b'T'
        && b[2] == b'T'
        && b[3] == b'P'
        && b[4] == b'/'
        && b[5] == b'1'
        && b[6] == b'.'
        && is_digit(b[7])
        && b[8] == b' '
    {
        if is_digit(b[9]) && is_digit(b[10]) && is_digit(b[11]) && (len == 12 || b[12] == b' ' || b[12] == b'\r') && b[9] >= b'1' && b[9] <= b'5' {
            let code = (b[9] - b'0') as u16 * 100 + (b[10] - b'0') as u16 * 10 + (b[11] - b'0') as u16;
            return Start::Response(code);
        }
        return Start::Neither;
    }
    // "METHOD SP" then a request target: origin form '/', absolute form (a letter), '*' (OPTIONS),
    // or authority form (CONNECT host:port).
    let (method, n) = match (b[0], b[1], b[2], b[3]) {
        (b'G', b'E', b'T', b' ') => (Method::Get, 4),
        (b'P', b'U', b'T', b' ') => (Method::Put, 4),
        (b'H', b'E', b'A', b'D') if b[4] == b' ' => (Method::Head, 5),
        (b'P', b'O', b'S', b'T') if b[4] == b' ' => (Method::Post, 5),
        (b'P', b'A', b'T', b'C') if b[4] == b'H' && b[5] == b' ' => (Method::Patch, 6),
        (b'T', b'R', b'A', b'C') if b[4] == b'E' && b[5] == b' ' => (Method::Trace, 6),
        (b'D', b'E', b'L', b'E') if b[4] == b'T' && b[5] == b'E' && b[6] == b' ' => (Method::Delete, 7),
        (b'C', b'O', b'N', b'N') if b[4] == b'E' && b[5] == b'C' && b[6] == b'T' && b[7] == b' ' => (Method::Connect, 8),
        (b'O', b'P', b'T', b'I') if b[4] == b'O' && b[5] == b'N' && b[6] == b'S' && b[7] == b' ' => (Method::Options, 8),
        _ => return Start::Neither,
    };
    if len <= n {
        return Start::Neither;
    }
    let t = b[n & (START_LEN - 1)];
    let target_ok = t == b'/' || t == b'*' || t.is_ascii_alphanumeric() || t == b'[';
    if target_ok {
        Start::Request(method)
    } else {
        Start::Neither
    }
}

/// A key of the kernel's HTTP aggregates (`HTTP_AGG`, a per-CPU hash map whose values count):
/// what the kernel framer counted, by role, service port and status (0: requests). The daemon
/// reads them at scrape for `/metrics`, so the aggregates stay exact whatever a ring drops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    /// [`crate::conn::Role`] as `u8`.
    pub role: u8,
    pub _pad: u8,
    /// The service port: local for inbound connections, remote for outbound ones.
    pub port: u16,
    /// A response's status code; 0 for requests.
    pub status: u16,
    pub _pad2: u16,
}

impl AggKey {
    /// The key of a message counted in wire direction `dir` (`DIR_IN`: received) on the connection
    /// `key`: requests travel toward the server, so a request received (or a response sent) is
    /// inbound. `status` 0: a request.
    #[inline(always)]
    pub fn of(key: &crate::conn::ConnKey, dir: u8, status: u16) -> Self {
        let inbound = (Direction::from_bit(dir) == Direction::In) == (status == 0);
        let (role, port) = if inbound { (crate::conn::Role::Inbound as u8, key.local_port) } else { (crate::conn::Role::Outbound as u8, key.remote_port) };
        Self { role, _pad: 0, port, status, _pad2: 0 }
    }
}

impl AggKey {
    /// `role`, typed.
    pub const fn role(&self) -> crate::conn::Role {
        crate::conn::Role::from_u8(self.role)
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: #[repr(C)], integers and byte arrays only.
    unsafe impl aya::Pod for HttpHints {}
    // SAFETY: #[repr(C)], integers only, no padding the compiler adds.
    unsafe impl aya::Pod for AggKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_keys_take_role_and_service_port_from_the_direction() {
        let key = crate::conn::ConnKey { local_port: 80, remote_port: 51234, ..crate::conn::ConnKey::zeroed() };
        let inbound = crate::conn::Role::Inbound as u8;
        let outbound = crate::conn::Role::Outbound as u8;
        // A gateway's listener: requests come in, responses go out.
        assert_eq!((AggKey::of(&key, DIR_IN, 0).role, AggKey::of(&key, DIR_IN, 0).port), (inbound, 80));
        assert_eq!((AggKey::of(&key, DIR_OUT, 503).role, AggKey::of(&key, DIR_OUT, 503).port), (inbound, 80));
        // Its upstream connection: requests go out, responses come in; the port is the remote one.
        let up = crate::conn::ConnKey { local_port: 40000, remote_port: 8080, ..crate::conn::ConnKey::zeroed() };
        assert_eq!((AggKey::of(&up, DIR_OUT, 0).role, AggKey::of(&up, DIR_OUT, 0).port), (outbound, 8080));
        assert_eq!((AggKey::of(&up, DIR_IN, 200).role, AggKey::of(&up, DIR_IN, 200).status), (outbound, 200));
        assert_eq!(core::mem::size_of::<AggKey>(), 8);
    }

    fn start(s: &[u8]) -> Start {
        let mut b = [0u8; START_LEN];
        let n = s.len().min(START_LEN);
        b[..n].copy_from_slice(&s[..n]);
        classify(&b, n)
    }

    #[test]
    fn status_lines() {
        assert_eq!(start(b"HTTP/1.1 200 OK\r\n"), Start::Response(200));
        assert_eq!(start(b"HTTP/1.0 502 Bad Gateway"), Start::Response(502));
        assert_eq!(start(b"HTTP/1.1 204\r\n"), Start::Response(204), "empty reason phrase");
        assert_eq!(start(b"HTTP/1.1 100 Continue"), Start::Response(100));
        assert_eq!(start(b"HTTP/1.1 20"), Start::Neither, "cut short");
        assert_eq!(start(b"HTTP/1.1 2000 OK"), Start::Neither);
        assert_eq!(start(b"HTTP/1.1 600 Nope"), Start::Neither);
        assert_eq!(start(b"HTTP/2 200"), Start::Neither);
        assert_eq!(start(b"http/1.1 200 OK"), Start::Neither, "the version is case-sensitive");
    }

    #[test]
    fn request_lines_for_every_method() {
        for (line, m) in [
            (&b"GET / HTTP/1.1"[..], Method::Get),
            (b"HEAD /x HTTP/1.1", Method::Head),
            (b"POST /api HTTP/1.1", Method::Post),
            (b"PUT /a HTTP/1.1", Method::Put),
            (b"DELETE /a HTTP/1.1", Method::Delete),
            (b"CONNECT example:443 HTTP/1.1", Method::Connect),
            (b"OPTIONS * HTTP/1.1", Method::Options),
            (b"TRACE / HTTP/1.1", Method::Trace),
            (b"PATCH /a HTTP/1.1", Method::Patch),
            (b"GET http://h/ HTTP/1.1", Method::Get),
        ] {
            assert_eq!(start(line), Start::Request(m), "{}", core::str::from_utf8(line).unwrap());
        }
        assert_eq!(start(b"GETX / HTTP/1.1"), Start::Neither);
        assert_eq!(start(b"GET  / HTTP/1.1"), Start::Neither);
        assert_eq!(start(b"GET "), Start::Neither, "no target yet");
        assert_eq!(start(b"\x16\x03\x01\x02\x00\x01\x00\x01"), Start::Neither, "TLS ClientHello");
        assert_eq!(start(b""), Start::Neither);
    }

    #[test]
    fn records_and_hints_read_typed() {
        let info = MsgInfo::decode(&[MSG_REQUEST, Method::Head as u8, MSG_FIRST, 9, 0, 0, 0, 0]);
        assert_eq!((info.msg_kind(), info.method(), info.msg_flags()), (Ok(MsgKind::Request), Some(Method::Head), MsgFlags::FIRST));
        let info = MsgInfo::decode(&[MSG_RESPONSE, 0, 0, 0, 0xf6, 0x01, 0, 0]);
        assert_eq!((info.msg_kind(), info.method(), info.status), (Ok(MsgKind::Response), None, 502));
        assert_eq!(MsgInfo::decode(&[3, 0, 0, 0, 0, 0, 0, 0]).msg_kind(), Err(UnknownMsgKind(3)));

        let h = PayloadHeader { key: crate::conn::ConnKey::zeroed(), ts_ns: 0, seq: 0, len: 0, dir: DIR_OUT, flags: SEG_SYN | SEG_ACK, conn: 0, _pad: 0 };
        assert_eq!((h.direction(), h.seg_flags()), (Ok(Direction::Out), SegFlags::SYN | SegFlags::ACK));
        assert_eq!(PayloadHeader { dir: 2, ..h }.direction(), Err(UnknownDirection(2)));

        let hints = HttpHints { flags: HINT_SKIP_OUT, skip_in: 10, skip_out: 20, conn: 0 };
        assert_eq!((hints.skip(Direction::In), hints.skip(Direction::Out)), ((false, 10), (true, 20)));
        assert!(!hints.hint_flags().contains(HintFlags::NOT_HTTP));
    }

    #[test]
    fn sequence_numbers_wrap() {
        assert!(seq_before(1, 2));
        assert!(!seq_before(2, 2));
        assert!(seq_before(u32::MAX - 5, 10), "10 comes after a wrap");
        assert!(!seq_before(10, u32::MAX - 5));
    }
}
