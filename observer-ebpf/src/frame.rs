//! HTTP/1.x counted in the kernel (`observer_common::frame`): per connection, the tc programs
//! frame each direction at its message boundaries and count requests and responses into the
//! connection's `HTTP_FRAMES` entry, without copying a byte of a body.
//!
//! Shadow mode for now: the daemon's framer (payload forwarded in `http.rs`) still produces the
//! HTTP view; the kernel's counts sit beside it (`http.kernel` in the API) and a differential
//! check in the end-to-end tests requires both to agree.
use aya_ebpf::{
    bindings::__sk_buff,
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
};
use observer_common::{
    frame::{ConnFrame, Event, LostReason, Step, BLOCK, MAX_BLOCKS},
    global::Counter,
    http::seq_before,
};

use crate::{
    maps::{FRAME_ARGS, FRAME_SCRATCH, HTTP_FRAMES},
    util::count,
};

/// What the classifier hands the framer (through `FRAME_ARGS`: a global function takes scalars
/// and the context only).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FrameArgs {
    pub key: observer_common::conn::ConnKey,
    pub ts_ns: u64,
    pub seq: u32,
    pub len: u32,
    /// Offset of the payload in the packet.
    pub off: u32,
    pub dir: u8,
    pub syn: u8,
    pub ack: u8,
    pub fin: u8,
}

/// Frames one segment. A global BPF function: the verifier checks it once, on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn observer_http_frame(skb: *mut __sk_buff) -> u32 {
    if skb.is_null() {
        return 0;
    }
    let Some(a) = FRAME_ARGS.get_ptr(0) else { return 0 };
    // SAFETY: this CPU's slot, written by the classifier just before the call.
    let a = unsafe { *a };
    let conn = match HTTP_FRAMES.get_ptr_mut(&a.key) {
        Some(p) => p,
        None => {
            // Only a connection seen from its SYN is framed from its first byte.
            if a.syn == 0 {
                return 0;
            }
            let Some(fresh) = FRAME_SCRATCH.get_ptr_mut(0) else { return 0 };
            // SAFETY: this CPU's scratch slot.
            unsafe { *fresh = ConnFrame::zeroed() };
            // SAFETY: as above.
            if HTTP_FRAMES.insert(&a.key, unsafe { &*fresh }, 0).is_err() {
                count(Counter::FrameInsertFailures);
                return 0;
            }
            match HTTP_FRAMES.get_ptr_mut(&a.key) {
                Some(p) => p,
                None => return 0,
            }
        }
    };
    // SAFETY: non-null map value; each direction's fields are written by that direction only
    // (see `observer_common::frame`, "Concurrency").
    let conn = unsafe { &mut *conn };
    if a.syn != 0 {
        conn.on_syn(a.dir, a.seq, a.ack != 0);
        return 0;
    }
    if a.len > 0 {
        let first = conn.skip(a.dir, a.seq, a.len);
        lost_if(&first);
        let mut t = Turns {
            skb,
            conn: conn as *mut ConnFrame,
            seq: a.seq,
            len: a.len,
            off: a.off,
            ts_ns: a.ts_ns,
            dir: a.dir as u32,
            next_seq: first.next_seq,
            need_seq: first.need_seq,
            more: first.more as u32,
        };
        // bpf_loop (5.17+): the verifier checks one turn, not MAX_BLOCKS unrolled copies of it.
        // SAFETY: `turn` has the callback signature; `t` outlives the call.
        unsafe { bpf_loop(MAX_BLOCKS as u32, turn as *mut _, &mut t as *mut Turns as *mut _, 0) };
        if t.more != 0 && seq_before(t.next_seq, a.seq.wrapping_add(a.len)) {
            let s = conn.lose(a.dir, LostReason::Budget);
            lost_if(&s);
        }
    }
    if a.fin != 0 {
        conn.fin(a.dir);
    }
    0
}

/// One `bpf_loop` turn's state, on the global function's stack.
#[repr(C)]
struct Turns {
    skb: *mut __sk_buff,
    conn: *mut ConnFrame,
    seq: u32,
    len: u32,
    off: u32,
    dir: u32,
    ts_ns: u64,
    next_seq: u32,
    need_seq: u32,
    more: u32,
}

#[inline(always)]
fn lost_if(s: &Step) {
    if let Event::Lost(_) = s.event {
        count(Counter::FrameLost);
    }
}

/// One turn: jump over body bytes (no load), then load one block and frame it. 1 stops the loop.
extern "C" fn turn(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Turns` the global function passed to bpf_loop.
    let t = unsafe { &mut *(ctx as *mut Turns) };
    // SAFETY: a map value pointer the caller checked.
    let conn = unsafe { &mut *t.conn };
    let dir = t.dir as u8;
    let end = t.seq.wrapping_add(t.len);
    if t.more == 0 || !seq_before(t.next_seq, end) {
        return 1;
    }
    if t.need_seq != t.next_seq {
        let off = t.next_seq.wrapping_sub(t.seq);
        let s = conn.skip(dir, t.next_seq, t.len.wrapping_sub(off));
        lost_if(&s);
        t.next_seq = s.next_seq;
        t.need_seq = s.need_seq;
        t.more = s.more as u32;
        if !s.more || !seq_before(s.next_seq, end) {
            return 1;
        }
    }
    let off = t.next_seq.wrapping_sub(t.seq);
    let rest = t.len.wrapping_sub(off) as usize;
    let n = if rest < BLOCK { rest } else { BLOCK };
    let mut block = [0u8; BLOCK];
    if n == 0 || n > BLOCK {
        return 1;
    }
    // SAFETY: `block` holds BLOCK bytes, n is within that.
    let rc = unsafe { bpf_skb_load_bytes(t.skb as *const _, t.off.wrapping_add(off), block.as_mut_ptr() as *mut _, n as u32) };
    let s = if rc != 0 { conn.lose(dir, LostReason::Gap) } else { conn.feed_block(dir, t.next_seq, &block, n, t.ts_ns) };
    lost_if(&s);
    t.next_seq = s.next_seq;
    t.need_seq = s.need_seq;
    t.more = s.more as u32;
    0
}
