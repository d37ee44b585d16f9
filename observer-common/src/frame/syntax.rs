//! The byte scanner's vocabulary: the codes of [`super::DirFrame`]'s small state fields (where in a
//! line, which header, which value scanner, what the head and the message said), the header names
//! framing reads, and the byte classes it tells apart. Private to the framer.

use super::{LostReason, BLOCK};
use crate::http::Method;

// `DirFrame::line`: where in a line of the head (or trailer section) the scanner is.
pub(super) const L_START_LINE: u8 = 0;
pub(super) const L_LINE_START: u8 = 1;
/// A CR at the start of a line (the empty line's CR, probably).
pub(super) const L_CR: u8 = 2;
pub(super) const L_NAME: u8 = 3;
pub(super) const L_VALUE: u8 = 4;

// `DirFrame::hdr` while in a name: bits of the names still matching.
pub(super) const CAND_CL: u8 = 1;
pub(super) const CAND_TE: u8 = 2;
pub(super) const CAND_UPGRADE: u8 = 4;
pub(super) const CAND_ALL: u8 = CAND_CL | CAND_TE | CAND_UPGRADE;
// `DirFrame::hdr` while in a value: which header it belongs to.
pub(super) const HDR_OTHER: u8 = 0;
pub(super) const HDR_CL: u8 = 1;
pub(super) const HDR_TE: u8 = 2;
pub(super) const HDR_UPGRADE: u8 = 3;

// `DirFrame::val` in a Content-Length value.
pub(super) const V_LEAD: u8 = 0;
pub(super) const V_DIGITS: u8 = 1;
pub(super) const V_TRAIL: u8 = 2;
// `DirFrame::val` in a chunk-size line.
pub(super) const C_LEAD: u8 = 0;
pub(super) const C_HEX: u8 = 1;
pub(super) const C_AFTER: u8 = 2;
pub(super) const C_EXT: u8 = 3;

// `DirFrame::te`: the low three bits count the letters of "chunked" matched in the current coding.
pub(super) const TE_BAD: u8 = 0x10;
pub(super) const TE_ENDED: u8 = 0x20;

// `DirFrame::hflags`: what the head's fields said.
pub(super) const H_CL: u8 = 1;
pub(super) const H_TE: u8 = 2;
pub(super) const H_CHUNKED: u8 = 4;
pub(super) const H_UPGRADE: u8 = 8;

// `DirFrame::mflags`: what the message is.
/// A request with method HEAD.
pub(super) const M_HEAD: u8 = 1;
/// A request with method CONNECT.
pub(super) const M_CONNECT: u8 = 2;
/// A request after which framing holds (CONNECT, `Upgrade`).
pub(super) const M_HOLD: u8 = 4;
/// A response.
pub(super) const M_RESPONSE: u8 = 8;
/// A response without a body (1xx, 204, 304, to HEAD).
pub(super) const M_NOBODY: u8 = 16;
/// A response after which the connection is a tunnel (101, 2xx to CONNECT).
pub(super) const M_TUNNEL: u8 = 32;

pub(super) const ROLE_UNKNOWN: u8 = 0;
pub(super) const ROLE_REQUEST: u8 = 1;
pub(super) const ROLE_RESPONSE: u8 = 2;

/// `DirFrame::line` once lost: the loss came between messages; the daemon was told.
pub(super) const LOST_IDLE: u8 = 0x40;
pub(super) const HANDED_OFF: u8 = 0x80;

/// [`DirFrame::skippable`]: no skip; the rest of a line (up to LF); the rest of a header name.
pub(super) const SKIP_NONE: u8 = 0;
pub(super) const SKIP_TO_LF: u8 = 1;
pub(super) const SKIP_NAME: u8 = 2;
/// The first bytes of a start line, kept as they are (not the one that completes them).
pub(super) const SKIP_START: u8 = 3;
/// A name that may still be one framing reads: matched in one turn, up to its `:` or the byte
/// that rules every such name out.
pub(super) const SKIP_MATCH: u8 = 4;

/// Bytes of a block of `len` loaded (at most [`BLOCK`]) from offset `off` on, at most `BLOCK`. The
/// skip loops count up to it rather than compare `off + k` with `len`: the verifier of 6.1
/// cannot decide that comparison and walked 8192 impossible branches.
#[inline(always)]
pub(super) const fn avail_in_block(off: u32, len: u32) -> u32 {
    let n = len.saturating_sub(off);
    if n > BLOCK as u32 {
        BLOCK as u32
    } else {
        n
    }
}

/// Is `b` one of the bytes a skip of `kind` takes?
#[inline(always)]
pub(super) const fn skips(kind: u8, b: u8) -> bool {
    // SKIP_NAME and SKIP_MATCH: the bytes of a name.
    if kind == SKIP_TO_LF || kind == SKIP_START {
        b != LF
    } else {
        b != b':' && b != b' ' && b != b'\t' && b != CR && b != LF
    }
}

pub(super) const CR: u8 = b'\r';
pub(super) const LF: u8 = b'\n';
pub(super) const NAME_MAX: usize = 32;
pub(super) const MAX_DIV10: u64 = u64::MAX / 10;
pub(super) const MAX_MOD10: u64 = u64::MAX % 10;

pub(super) const fn pad(s: &[u8]) -> [u8; NAME_MAX] {
    let mut a = [0u8; NAME_MAX];
    let mut i = 0;
    while i < s.len() {
        a[i] = s[i];
        i += 1;
    }
    a
}

pub(super) const CONTENT_LENGTH: [u8; NAME_MAX] = pad(b"content-length");
pub(super) const TRANSFER_ENCODING: [u8; NAME_MAX] = pad(b"transfer-encoding");
pub(super) const UPGRADE: [u8; NAME_MAX] = pad(b"upgrade");
pub(super) const CHUNKED: [u8; 8] = *b"chunked\0";

#[inline(always)]
pub(super) const fn lower(b: u8) -> u8 {
    if b >= b'A' && b <= b'Z' {
        b | 0x20
    } else {
        b
    }
}

#[inline(always)]
pub(super) const fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// 0..=15 for a hex digit, 0xff otherwise.
#[inline(always)]
pub(super) const fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0xff,
    }
}

/// What the byte scanner stopped for.
#[derive(Clone, Copy)]
pub(super) enum Stop {
    Request(Method),
    Response(u16),
    Lost(LostReason),
}
