//! HTTP/1.x counted in the kernel (`observer_common::frame`): the tc programs frame each
//! direction of a connection at its message boundaries and count requests and responses into the
//! connection's `HTTP_FRAMES` entry, without copying a byte of a body.
//!
//! Each request and response it counts goes to the daemon as one small message record (status,
//! method, the start of a request line), instead of the payload: the payload of a direction the
//! kernel frames is not forwarded at all. A direction it loses its place in is handed to the
//! daemon's framer (`http.rs` forwards its payload from the point of loss on).
use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, BPF_NOEXIST},
    cty::c_void,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
};
use observer_common::{
    conn::ConnKey,
    flags::SynSeen,
    frame::{ConnFrame, Event, LostReason, Phase, Scan, Turn, BLOCK, MAX_STEPS},
    global::Counter,
    http::{AggKey, MsgFlags, MsgKind, PayloadHeader, SegFlags, MSG_INFO, MSG_TAIL, START_LEN},
    Direction,
};

use crate::{
    maps::{CONNS, FRAME_ARGS, FRAME_LOST, FRAME_SCAN, FRAME_SCRATCH, HTTP_AGG, HTTP_FRAMES, PAYLOAD, SCRATCH},
    util::{add, count},
};

/// `observer_http_frame` returns: the kernel frames this segment's direction, nothing to forward.
pub const HANDLED: u32 = 1;
/// It lost its place in this direction (or never had it): forward the payload from
/// `FrameArgs::from_seq` on (what comes before it was counted here).
pub const FORWARD_FROM: u32 = 2;
/// No framing state for this connection (joined midway, or the map refused it): forward all.
pub const FORWARD_ALL: u32 = 0;

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
    /// 1: this segment completed a handshake the classifier kept from the framer (an attempt in
    /// `HALF_OPEN`): start the connection as its SYNs would have (`isn_in`, and `isn_out` if
    /// `syn_seen` has [`SynSeen::SENT`]).
    pub handshake: u8,
    /// The connection's `ConnStats::syn_seen` ([`SynSeen`] as u8).
    pub syn_seen: u8,
    pub _pad2: u16,
    pub isn_in: u32,
    pub isn_out: u32,
    /// Out: with [`FORWARD_FROM`], the first byte the daemon's framer needs.
    pub from_seq: u32,
    pub _pad: u32,
    /// [`aggregate`]'s key and the value it inserts, here rather than on a stack that has no
    /// bytes to spare.
    pub agg: AggKey,
    pub one: u64,
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
    if a.handshake != 0 {
        if crate::http::port_wanted(&a.key) {
            let Some(zeroed) = FRAME_SCRATCH.get_ptr(0) else { return 0 };
            // SAFETY: a map value pointer (see below).
            if HTTP_FRAMES.insert(&a.key, unsafe { &*zeroed }, BPF_ANY as u64).is_err() {
                count(Counter::FrameInsertFailures);
                return 0;
            }
            let Some(p) = HTTP_FRAMES.get_ptr_mut(&a.key) else { return 0 };
            // SAFETY: non-null map value, new: no other writer yet.
            let c = unsafe { &mut *p };
            c.client_isn = a.isn_in;
            c.on_syn(Direction::In.as_u8(), a.isn_in, false);
            if SynSeen(a.syn_seen).intersects(SynSeen::SENT) {
                c.on_syn(Direction::Out.as_u8(), a.isn_out, true);
            }
        }
        if a.len == 0 && a.fin == 0 {
            return HANDLED;
        }
    }
    // A client's SYN starts a connection afresh (also on a four-tuple used before).
    let fresh_start = a.syn != 0 && a.ack == 0;
    let existing = if fresh_start { None } else { HTTP_FRAMES.get_ptr_mut(&a.key) };
    let conn = match existing {
        Some(p) => p,
        None => {
            // Framed from the first byte only: a connection seen from its SYN (on a port HTTP
            // is looked for on).
            if a.syn == 0 || !crate::http::port_wanted(&a.key) {
                return FORWARD_ALL;
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
        return HANDLED;
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
    // Who frames what comes next of this direction. Not HTTP after all (this direction, or the
    // other one, whose answers then are no HTTP responses): nobody.
    let dir = Direction::from_bit(a.dir);
    let o_not_http = c.dir(dir.opposite()).lost_not_http();
    let d = c.dir_mut(dir);
    let phase = d.phase;
    let not_http = d.lost_not_http() || o_not_http;
    if phase == Phase::Lost as u8 && !not_http || phase == Phase::Unsynced as u8 {
        let from = d.next_seq;
        if let Some(out) = FRAME_ARGS.get_ptr_mut(0) {
            // SAFETY: this CPU's slot.
            unsafe { (*out).from_seq = from };
        }
        if d.hand_off_pending() {
            // Lost in this segment: tell the daemon's framer where it takes over.
            send_handoff(from, a.dir as u32, d.lost_at_boundary() as u32);
            d.set_handed_off();
        }
        return if phase == Phase::Lost as u8 { FORWARD_FROM } else { FORWARD_ALL };
    }
    HANDLED
}

const HEADER_LEN: usize = core::mem::size_of::<PayloadHeader>();

/// The hand-off record (`SegFlags::HANDOFF`, header only), once per lost direction. Out of line, to
/// keep its stack off the framer's.
#[inline(never)]
fn send_handoff(seq: u32, dir: u32, boundary: u32) {
    let Some(a) = FRAME_ARGS.get_ptr(0) else { return };
    let Some(ev) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slots: the classifier's arguments, and the scratch record, ours while
    // this program runs.
    let (a, ev) = unsafe { (&*a, &mut *ev) };
    ev.header.key = a.key;
    ev.header.ts_ns = a.ts_ns;
    ev.header.seq = seq;
    ev.header.len = 0;
    ev.header.dir = Direction::from_bit(dir as u8).as_u8();
    ev.header.flags = SegFlags::HANDOFF.with(SegFlags::BOUNDARY, boundary != 0).bits();
    sent(PAYLOAD.output::<PayloadHeader>(&ev.header, 0).is_ok(), &a.key);
}

/// Adds a counted message to the host-wide aggregates (`HTTP_AGG`): a request (`status` 0) or a
/// response, seen in wire direction `dir`. Inline, and with its key in map memory: the call chain
/// down to a `bpf_loop` turn has no stack to spare for another frame (512 bytes in all).
#[inline(always)]
fn aggregate(dir: u32, status: u32) {
    let Some(a) = FRAME_ARGS.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot, written by the classifier before the framer ran; key and value
    // are map memory, which the map helpers take as well as stack memory.
    let a = unsafe { &mut *a };
    a.agg = AggKey::of(&a.key, dir as u8, status as u16);
    a.one = 1;
    if let Some(v) = HTTP_AGG.get_ptr_mut(&a.agg) {
        // SAFETY: this CPU's value; nothing else on this CPU runs while this program does.
        unsafe { *v += 1 };
        return;
    }
    if HTTP_AGG.insert(&a.agg, &a.one, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU created the key meanwhile (this CPU's slot is then 0), or the map is full.
    match HTTP_AGG.get_ptr_mut(&a.agg) {
        // SAFETY: as above.
        Some(v) => unsafe { *v += 1 },
        None => count(Counter::HttpAggFull),
    }
}

/// Counts a record sent, or refused by the full ring: globally, and on the connection (whose
/// view then says it lost records).
#[inline(always)]
fn sent(ok: bool, key: &ConnKey) {
    if ok {
        count(Counter::PayloadSent);
        return;
    }
    count(Counter::PayloadLost);
    if let Some(s) = CONNS.get_ptr_mut(key) {
        // SAFETY: the connection's map value.
        unsafe { add(&mut (*s).payload_records_lost, 1) };
    }
}

/// Sends one counted message to the daemon (a `SegFlags::MSG` record in the payload ring). A record
/// the full ring refuses is counted, globally and on the connection (whose view then says it
/// lost records: its kernel counts stay exact).
#[inline(always)]
fn send_msg(t: &Turns, conn: &ConnFrame, scan: &Scan, e: &Event) {
    let Some(a) = FRAME_ARGS.get_ptr(0) else { return };
    let Some(ev) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU slots; the classifier wrote the args, the scratch record is ours while
    // this program runs.
    let (a, ev) = unsafe { (&*a, &mut *ev) };
    let dir = Direction::from_bit(scan.dir);
    let d = conn.dir(dir);
    let start = d.next_seq.wrapping_sub(d.head_len as u32);
    let mut extra = 0u32;
    // The record's `MsgInfo`, byte by byte (see `MsgInfo::decode`).
    ev.data[2] = 0;
    ev.data[3] = 0;
    match e {
        Event::Request { method } => {
            ev.data[0] = MsgKind::Request as u8;
            ev.data[1] = *method as u8;
            if conn.counts.requests == 1 && !conn.counts.has_responses() {
                ev.data[2] = MsgFlags::FIRST.bits();
            }
            // The line's first bytes (kept by the framer, whichever segments they came in),
            // then what follows them in this segment.
            ev.data[3] = d.start_len;
            ev.data[MSG_INFO..MSG_INFO + START_LEN].copy_from_slice(&d.start);
            extra = START_LEN as u32;
            let at = d.next_seq.wrapping_sub(scan.seq);
            if at < scan.len {
                let avail = scan.len - at;
                let want = if avail < MSG_TAIL as u32 { avail } else { MSG_TAIL as u32 };
                let want = ((want.wrapping_sub(1)) & (MSG_TAIL as u32 - 1)) + 1;
                // SAFETY: `data` holds PAYLOAD_WINDOW >= MSG_INFO + START_LEN + MSG_TAIL bytes.
                let rc =
                    unsafe { bpf_skb_load_bytes(t.skb as *const _, t.off.wrapping_add(at), ev.data.as_mut_ptr().add(MSG_INFO + START_LEN) as *mut _, want) };
                if rc == 0 {
                    extra += want;
                }
            }
        }
        Event::Response { status, .. } => {
            ev.data[0] = MsgKind::Response as u8;
            ev.data[1] = 0;
            ev.data[4] = *status as u8;
            ev.data[5] = (*status >> 8) as u8;
        }
        _ => return,
    }
    ev.header.key = a.key;
    ev.header.ts_ns = scan.ts_ns;
    ev.header.seq = start;
    ev.header.len = (MSG_INFO as u32 + extra) as u16;
    ev.header.dir = dir.as_u8();
    ev.header.flags = SegFlags::MSG.bits();
    let len = HEADER_LEN + MSG_INFO + extra as usize;
    if len > HEADER_LEN + MSG_INFO + START_LEN + MSG_TAIL {
        return;
    }
    // SAFETY: the scratch record is at least `len` bytes long.
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const _ as *const u8, len) };
    sent(PAYLOAD.output::<[u8]>(bytes, crate::http::wake(false)).is_ok(), &a.key);
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
            if let Event::Lost(LostReason::NotHttp) = e {
                // Counted once per connection: at its first message, unless the other
                // direction said so already.
                let c = &conn.counts;
                if c.requests == 0 && !c.has_responses() && !conn.dir(Direction::from_bit(scan.dir).opposite()).lost_not_http() {
                    count(Counter::NotHttp);
                }
            } else {
                match e {
                    Event::Request { .. } => aggregate(scan.dir as u32, 0),
                    Event::Response { status, .. } => aggregate(scan.dir as u32, status as u32),
                    _ => {}
                }
                send_msg(t, conn, scan, &e);
            }
            0
        }
        Turn::Done => 1,
    }
}
