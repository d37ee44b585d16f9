//! HTTP/1.x counted in the kernel (`observer_common::frame`): the tc programs frame each
//! direction of a connection at its message boundaries and count requests and responses into the
//! connection's `HTTP_FRAMES` entry, without copying a byte of a body.
//!
//! Shadow mode for now: the daemon's framer (payload forwarded by `http.rs`) still makes the HTTP
//! view; the kernel's counts sit beside it (`http_kernel` in the API), and the end-to-end tests
//! require both to agree.
use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, BPF_NOEXIST},
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
};
use observer_common::{
    conn::ConnKey,
    frame::{ConnFrame, Event, Scan, Turn, BLOCK, MAX_STEPS},
    global::Counter,
};

use crate::{
    maps::{FRAME_ARGS, FRAME_LOST, FRAME_SCAN, FRAME_SCRATCH, HTTP_FRAMES},
    util::count,
};

/// What the classifier hands the framer (through `FRAME_ARGS`: a global function takes scalars
/// and the context only).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FrameArgs {
    pub key: ConnKey,
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

/// The `bpf_loop` callback's context, on the global function's stack.
#[repr(C)]
struct Turns {
    skb: *mut __sk_buff,
    conn: *mut ConnFrame,
    scan: *mut Scan,
    off: u32,
    _pad: u32,
}

/// Counts a loss by its reason.
#[inline(always)]
fn counted(e: &Event) {
    if let Event::Lost(r) = e {
        if let Some(p) = FRAME_LOST.get_ptr_mut(*r as u32) {
            // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
            unsafe { *p += 1 };
        }
    }
}

/// Frames one segment. A global BPF function: the verifier checks it once, on its own, and the
/// per-byte work runs in `bpf_loop` turns (kernel 5.17+), each checked once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn observer_http_frame(skb: *mut __sk_buff) -> u32 {
    if skb.is_null() {
        return 0;
    }
    let Some(a) = FRAME_ARGS.get_ptr(0) else { return 0 };
    // SAFETY: this CPU's slot, written by the classifier just before the call. Read in place:
    // a copy would cost 64 bytes of a stack the classifier mostly uses.
    let a = unsafe { &*a };
    // A client's SYN starts a connection afresh (also on a four-tuple used before).
    let fresh_start = a.syn != 0 && a.ack == 0;
    let existing = if fresh_start { None } else { HTTP_FRAMES.get_ptr_mut(&a.key) };
    let conn = match existing {
        Some(p) => p,
        None => {
            // Framed from the first byte only: a connection seen from its SYN.
            if a.syn == 0 {
                return 0;
            }
            let Some(zeroed) = FRAME_SCRATCH.get_ptr(0) else { return 0 };
            // The scratch value is never written: it stays zeroed (a zeroed struct assigned at
            // run time would compile to a memset the verifier refuses).
            // SAFETY: a map value pointer.
            let flags = if fresh_start { BPF_ANY } else { BPF_NOEXIST };
            if HTTP_FRAMES.insert(&a.key, unsafe { &*zeroed }, flags as u64).is_err() && fresh_start {
                count(Counter::FrameInsertFailures);
                return 0;
            }
            match HTTP_FRAMES.get_ptr_mut(&a.key) {
                Some(p) => p,
                None => return 0,
            }
        }
    };
    // SAFETY: non-null map value; each direction's fields have one writer (that direction: see
    // `observer_common::frame`, "Concurrency").
    let c = unsafe { &mut *conn };
    if a.syn != 0 {
        if fresh_start {
            c.client_isn = a.seq;
        }
        c.on_syn(a.dir, a.seq, a.ack != 0);
        return 0;
    }
    if a.len > 0 {
        let Some(scan) = FRAME_SCAN.get_ptr_mut(0) else { return 0 };
        // SAFETY: this CPU's scratch slot.
        let first = c.begin_segment(unsafe { &mut *scan }, a.dir, a.seq, a.len, a.ts_ns);
        counted(&first.event);
        if first.more {
            let mut t = Turns { skb, conn, scan, off: a.off, _pad: 0 };
            // SAFETY: `turn` has the callback signature; `t` outlives the call.
            unsafe { bpf_loop(MAX_STEPS as u32, turn as *mut c_void, &mut t as *mut Turns as *mut c_void, 0) };
        }
        // SAFETY: as above.
        let last = c.finish_segment(unsafe { &*scan });
        counted(&last.event);
    }
    if a.fin != 0 {
        c.fin(a.dir);
    }
    0
}

/// One turn: one byte outside bodies, or one jump over body bytes. 1 ends the loop.
extern "C" fn turn(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Turns` the global function passed to bpf_loop; its pointers are map
    // values it checked.
    let t = unsafe { &mut *(ctx as *mut Turns) };
    let (skb, base) = (t.skb, t.off);
    let (conn, scan) = unsafe { (&mut *t.conn, &mut *t.scan) };
    match conn.step(scan, |off, block, n| {
        // 1..=BLOCK in a form the verifier follows.
        let n = ((n as u32).wrapping_sub(1) & (BLOCK as u32 - 1)) + 1;
        // SAFETY: `block` holds BLOCK bytes.
        unsafe { bpf_skb_load_bytes(skb as *const _, base.wrapping_add(off), block.as_mut_ptr() as *mut _, n) == 0 }
    }) {
        Turn::Continue => 0,
        Turn::Event(e) => {
            counted(&e);
            0
        }
        Turn::Done => 1,
    }
}
