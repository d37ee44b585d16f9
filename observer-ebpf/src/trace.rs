//! Live trace: packets of connections someone follows (`observer trace`) go to the `TRACE` ring
//! buffer with their flags, sequence numbers and first payload bytes. Filtered here, in the
//! kernel: with nobody tracing, a packet costs one array lookup.
use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use observer_common::{
    conn::ConnKey,
    global::Counter,
    trace::{filter_key, TraceRecord, SHAPES, TRACE_LINE},
    Direction,
};

use crate::{
    maps::{TRACE, TRACE_FILTERS, TRACE_SHAPES},
    util::count,
};

/// What the tc program knows of the packet.
pub struct Packet {
    pub dir: Direction,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub retransmit: bool,
    pub payload_off: usize,
    pub payload_len: usize,
}

#[inline(always)]
fn traced(key: &ConnKey) -> bool {
    let Some(shapes) = TRACE_SHAPES.get(0) else { return false };
    let shapes = *shapes;
    if shapes == 0 {
        return false;
    }
    for shape in SHAPES {
        if shapes & shape != 0 && TRACE_FILTERS.get_ptr(&filter_key(shape, key)).is_some() {
            return true;
        }
    }
    false
}

#[inline(always)]
pub fn record(ctx: &TcContext, key: &ConnKey, p: &Packet, now: u64) {
    if !traced(key) {
        return;
    }
    let Some(mut entry) = TRACE.reserve::<TraceRecord>(0) else {
        count(Counter::TraceLost);
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: the reserved record is ours until submitted.
    unsafe {
        (*r).key = *key;
        (*r).ts_ns = now;
        (*r).seq = p.seq;
        (*r).ack = p.ack;
        (*r).payload_len = p.payload_len as u32;
        (*r).window = p.window;
        (*r).dir = p.dir.as_u8();
        (*r).tcp_flags = p.tcp_flags;
        (*r).retransmit = p.retransmit as u8;
        (*r)._pad = [0; 6];
        let mut got = 0u8;
        if p.payload_len > 0 {
            let n = if p.payload_len > TRACE_LINE { TRACE_LINE } else { p.payload_len };
            // Spelled out for the verifier, which must see 1 <= n <= TRACE_LINE (a power of two).
            let n = ((n - 1) & (TRACE_LINE - 1)) + 1;
            if bpf_skb_load_bytes(ctx.skb.skb as *const _, p.payload_off as u32, (*r).line.as_mut_ptr() as *mut _, n as u32) == 0 {
                got = n as u8;
            }
        }
        (*r).line_len = got;
    }
    entry.submit(0);
}
