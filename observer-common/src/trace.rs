//! Live trace of chosen connections: the daemon's filters, and the per-packet records the tc
//! programs send through the `TRACE` ring buffer for packets that match one.
use crate::{
    conn::ConnKey,
    direction::{Direction, UnknownDirection},
};

/// Filter shapes, as bits of the `TRACE_SHAPES` mask (the programs only look up the shapes in use).
pub const SHAPE_CONNECTION: u32 = 1 << 0;
pub const SHAPE_REMOTE_ADDR: u32 = 1 << 1;
pub const SHAPE_REMOTE_ENDPOINT: u32 = 1 << 2;
pub const SHAPE_LOCAL_PORT: u32 = 1 << 3;
pub const SHAPES: [u32; 4] = [SHAPE_CONNECTION, SHAPE_REMOTE_ADDR, SHAPE_REMOTE_ENDPOINT, SHAPE_LOCAL_PORT];

/// A filter in `TRACE_FILTERS`: a [`ConnKey`] with only the fields of its shape set (the rest
/// zero), and the shape in `_pad`. Built the same way by the programs from each packet's key.
#[inline(always)]
pub fn filter_key(shape: u32, k: &ConnKey) -> ConnKey {
    let mut f = ConnKey::zeroed();
    f._pad = shape as u16;
    f.family = k.family;
    if shape == SHAPE_CONNECTION {
        f.local_port = k.local_port;
        f.local_addr = k.local_addr;
        f.remote_port = k.remote_port;
        f.remote_addr = k.remote_addr;
    } else if shape == SHAPE_REMOTE_ADDR {
        f.remote_addr = k.remote_addr;
    } else if shape == SHAPE_REMOTE_ENDPOINT {
        f.remote_addr = k.remote_addr;
        f.remote_port = k.remote_port;
    } else if shape == SHAPE_LOCAL_PORT {
        f.family = 0;
        f.local_port = k.local_port;
    }
    f
}

/// Payload bytes a trace record carries (enough for a request or status line).
pub const TRACE_LINE: usize = 128;

/// One traced packet.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceRecord {
    pub key: ConnKey,
    pub ts_ns: u64,
    pub seq: u32,
    pub ack: u32,
    pub payload_len: u32,
    pub window: u16,
    /// [`Direction`] as u8 (`crate::http::DIR_IN` or `DIR_OUT`).
    pub dir: u8,
    /// TCP flags as on the wire.
    pub tcp_flags: u8,
    /// The segment starts before data already seen in its direction: a retransmission (or,
    /// received, a reordering).
    pub retransmit: u8,
    /// How many bytes of `line` are payload (the segment's first bytes).
    pub line_len: u8,
    pub _pad: [u8; 6],
    pub line: [u8; TRACE_LINE],
}

impl TraceRecord {
    /// `dir`, typed; an error for a value no program writes.
    pub fn direction(&self) -> Result<Direction, UnknownDirection> {
        Direction::try_from(self.dir)
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: #[repr(C)], integers and byte arrays, explicit padding.
    unsafe impl aya::Pod for TraceRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_filters_keep_only_their_fields() {
        let mut k = ConnKey::zeroed();
        k.family = crate::conn::FAMILY_IPV4;
        k.local_port = 80;
        k.remote_port = 51234;
        k.local_addr[0] = 198;
        k.remote_addr[0] = 203;
        let f = filter_key(SHAPE_REMOTE_ADDR, &k);
        assert_eq!((f.local_port, f.remote_port, f.local_addr[0], f.remote_addr[0]), (0, 0, 0, 203));
        let f = filter_key(SHAPE_LOCAL_PORT, &k);
        assert_eq!((f.family, f.local_port, f.remote_addr[0]), (0, 80, 0));
        assert_ne!(filter_key(SHAPE_CONNECTION, &k), filter_key(SHAPE_REMOTE_ENDPOINT, &k), "shapes never collide");
    }
}
