//! What a connection carries, from its first bytes: HTTP/1.x, TLS (and the server name its
//! client asked for), HTTP/2 with prior knowledge, or something else. Most of an edge's client
//! side is TLS: counted as "not HTTP" alone, an operator could not tell it from a broken peer.
//!
//! Pure functions over fixed-size arrays, every index masked to the array: the tc programs run
//! them on a copy of a connection's first segment.

use crate::http::{classify, Start, START_LEN};

/// What a connection carries: `ConnStats::protocol`, as u8.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum Protocol {
    /// Not known yet (no payload seen from the stream's first byte).
    #[default]
    Unknown = 0,
    Http1 = 1,
    Tls = 2,
    /// HTTP/2 with prior knowledge (the connection preface in clear).
    H2 = 3,
    Other = 4,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [Protocol::Unknown, Protocol::Http1, Protocol::Tls, Protocol::H2, Protocol::Other];

    /// The protocol stored as `v`; [`Protocol::Unknown`] for a value no program writes.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Protocol::Http1,
            2 => Protocol::Tls,
            3 => Protocol::H2,
            4 => Protocol::Other,
            _ => Protocol::Unknown,
        }
    }

    /// The written form (metric label, API).
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Unknown => "unknown",
            Protocol::Http1 => "http1",
            Protocol::Tls => "tls",
            Protocol::H2 => "h2",
            Protocol::Other => "other",
        }
    }
}

// `ConnStats::protocol` values, one name each: see [`Protocol`].
pub const PROTO_UNKNOWN: u8 = Protocol::Unknown as u8;
pub const PROTO_HTTP1: u8 = Protocol::Http1 as u8;
pub const PROTO_TLS: u8 = Protocol::Tls as u8;
pub const PROTO_H2: u8 = Protocol::H2 as u8;
pub const PROTO_OTHER: u8 = Protocol::Other as u8;

/// The written form of a `ConnStats::protocol` value ([`Protocol::name`]).
pub const fn protocol_name(p: u8) -> &'static str {
    Protocol::from_u8(p).name()
}

/// Bytes of a first segment examined for a ClientHello's server name (a power of two). A
/// ClientHello longer than the segment (large post-quantum key shares) may put the name beyond:
/// then it is not found, the connection is still TLS.
pub const HELLO_LEN: usize = 2048;
/// Bytes of a server name kept (longer names are cut; DNS names are at most 253).
pub const SNI_MAX: usize = 64;
/// Extensions looked through for the server name.
const MAX_EXTENSIONS: usize = 40;

/// A TLS connection's server name, in the `TLS_NAMES` map by four-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ServerName {
    /// The incarnation of the four-tuple it belongs to (the low bits of its entry's
    /// `first_seen_ns`, as `HttpHints::conn`).
    pub conn: u32,
    pub len: u32,
    pub name: [u8; SNI_MAX],
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and bytes only, no padding.
unsafe impl aya::Pod for ServerName {}

/// The HTTP/2 connection preface's start (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 16] = b"PRI * HTTP/2.0\r\n";

/// The protocol of a connection from the first `len` bytes (≤ [`START_LEN`]) its first sender
/// wrote.
#[inline(always)]
pub fn protocol_of(b: &[u8; START_LEN], len: usize) -> u8 {
    if len == 0 {
        return PROTO_UNKNOWN;
    }
    // A TLS handshake record: content type 22, version 3.x (SSL 3.0 to TLS 1.3 all say 3.0-3.4).
    if len >= 3 && b[0] == 0x16 && b[1] == 3 && b[2] <= 4 {
        return PROTO_TLS;
    }
    if len >= 16 && b == H2_PREFACE {
        return PROTO_H2;
    }
    match classify(b, len) {
        Start::Request(_) | Start::Response(_) => PROTO_HTTP1,
        Start::Neither => PROTO_OTHER,
    }
}

/// The byte at `i` of `b`, the index masked into it. Read opaquely first: the compiler, which
/// can prove the index in bounds from the checks before, would drop the mask, and older
/// verifiers (6.1), which cannot follow that proof, refuse the access.
#[inline(always)]
fn at(b: &[u8; HELLO_LEN], i: usize) -> usize {
    b[(crate::frame::opaque(&(i as u32)) as usize) & (HELLO_LEN - 1)] as usize
}

/// A big-endian u16 at `i` of `b`.
#[inline(always)]
fn be16(b: &[u8; HELLO_LEN], i: usize) -> usize {
    (at(b, i) << 8) | at(b, i + 1)
}

/// The server name (SNI, RFC 6066 section 3) of the ClientHello that starts `b` (its first `len`
/// bytes are real), copied into `out`: its length (at most [`SNI_MAX`]), 0 when there is none
/// or it lies beyond `len`.
#[inline(always)]
pub fn client_hello_sni(b: &[u8; HELLO_LEN], len: usize, out: &mut [u8; SNI_MAX]) -> usize {
    let len = if len > HELLO_LEN { HELLO_LEN } else { len };
    // Record header (5 bytes), handshake type 1 (ClientHello), its length (3), version (2),
    // random (32): the session id's length is at 43.
    if len < 44 || b[0] != 0x16 || b[5] != 1 {
        return 0;
    }
    let mut p = 43;
    p += 1 + at(b, p);
    if p + 2 > len {
        return 0;
    }
    p += 2 + be16(b, p);
    if p + 1 > len {
        return 0;
    }
    p += 1 + at(b, p);
    if p + 2 > len {
        return 0;
    }
    let end = p + 2 + be16(b, p);
    let end = if end > len { len } else { end };
    p += 2;
    for _ in 0..MAX_EXTENSIONS {
        if p + 4 > end {
            return 0;
        }
        let kind = be16(b, p);
        let ext_len = be16(b, p + 2);
        p += 4;
        if kind == 0 {
            // server_name: list length (2), name type (1, 0 = host_name), name length (2), name.
            if p + 5 > end || at(b, p + 2) != 0 {
                return 0;
            }
            let n = be16(b, p + 3);
            let start = p + 5;
            if n == 0 || start + n > end {
                return 0;
            }
            let n = if n > SNI_MAX { SNI_MAX } else { n };
            for (i, o) in out.iter_mut().enumerate() {
                if i >= n {
                    break;
                }
                *o = at(b, start + i) as u8;
            }
            return n;
        }
        p += ext_len;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with `extensions` (type, body) after the fixed fields, in one record.
    fn hello(session_id: usize, ciphers: usize, extensions: &[(u16, Vec<u8>)]) -> [u8; HELLO_LEN] {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(session_id as u8);
        body.extend(vec![1u8; session_id]);
        body.extend((ciphers as u16).to_be_bytes());
        body.extend(vec![0x13u8; ciphers]);
        body.extend([1, 0]);
        let mut ext = Vec::new();
        for (t, e) in extensions {
            ext.extend(t.to_be_bytes());
            ext.extend((e.len() as u16).to_be_bytes());
            ext.extend(e);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend(body);
        let mut rec = vec![0x16, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend(hs);
        let mut out = [0u8; HELLO_LEN];
        out[..rec.len()].copy_from_slice(&rec);
        out
    }

    fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let mut e = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        e.push(0);
        e.extend((name.len() as u16).to_be_bytes());
        e.extend(name.as_bytes());
        (0, e)
    }

    fn sni_of(b: &[u8; HELLO_LEN], len: usize) -> Option<std::string::String> {
        let mut out = [0u8; SNI_MAX];
        let n = client_hello_sni(b, len, &mut out);
        (n > 0).then(|| std::string::String::from_utf8_lossy(&out[..n]).into_owned())
    }

    extern crate std;
    use std::{vec, vec::Vec};

    #[test]
    fn protocols_keep_their_stored_values_and_names() {
        assert_eq!(Protocol::ALL.map(|p| p as u8), [0, 1, 2, 3, 4]);
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_u8(p as u8), p);
            assert_eq!(protocol_name(p as u8), p.name());
        }
        assert_eq!(Protocol::ALL.map(Protocol::name), ["unknown", "http1", "tls", "h2", "other"]);
        assert_eq!(Protocol::from_u8(200), Protocol::Unknown);
    }

    #[test]
    fn first_bytes_name_the_protocol() {
        let p = |s: &[u8]| {
            let mut b = [0u8; START_LEN];
            let n = s.len().min(START_LEN);
            b[..n].copy_from_slice(&s[..n]);
            protocol_of(&b, n)
        };
        assert_eq!(p(b"GET / HTTP/1.1\r\n"), PROTO_HTTP1);
        assert_eq!(p(b"HTTP/1.1 200 OK\r\n"), PROTO_HTTP1);
        assert_eq!(p(&[0x16, 3, 1, 2, 0, 1]), PROTO_TLS);
        assert_eq!(p(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), PROTO_H2);
        assert_eq!(p(b"SSH-2.0-OpenSSH_9.2"), PROTO_OTHER);
        assert_eq!(p(&[0x17, 3, 3, 0, 5]), PROTO_OTHER, "application data is no start");
        assert_eq!(p(b""), PROTO_UNKNOWN);
    }

    #[test]
    fn the_server_name_is_found_among_other_extensions() {
        let grease = (0x0a0a, vec![]);
        let key_share = (51, vec![9u8; 1200]);
        let b = hello(32, 34, &[grease.clone(), (10, vec![0, 2, 0, 29]), sni_ext("edge.example.com"), key_share.clone()]);
        assert_eq!(sni_of(&b, HELLO_LEN).as_deref(), Some("edge.example.com"));
        // After a large key share: still within the first segment.
        let b = hello(0, 2, &[key_share, grease, sni_ext("late.example")]);
        assert_eq!(sni_of(&b, 1400).as_deref(), Some("late.example"));
        // Beyond what was seen: not found (not a wrong name).
        assert_eq!(sni_of(&b, 1100), None);
        // No name at all, a long one cut to SNI_MAX, not a ClientHello.
        assert_eq!(sni_of(&hello(0, 2, &[(10, vec![0, 2, 0, 29])]), HELLO_LEN), None);
        let long = "a".repeat(100);
        assert_eq!(sni_of(&hello(0, 2, &[sni_ext(&long)]), HELLO_LEN).map(|s| s.len()), Some(SNI_MAX));
        let mut not_hello = hello(0, 2, &[sni_ext("x.example")]);
        not_hello[5] = 2;
        assert_eq!(sni_of(&not_hello, HELLO_LEN), None);
    }

    #[test]
    fn noise_never_reads_out_of_bounds() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut b = hello(0, 2, &[sni_ext("n.example")]);
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b[(x as usize) % 120] = (x >> 32) as u8;
            }
            let mut out = [0u8; SNI_MAX];
            let n = client_hello_sni(&b, (x as usize >> 8) % (HELLO_LEN + 10), &mut out);
            assert!(n <= SNI_MAX);
        }
    }
}
