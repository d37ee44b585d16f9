//! HTTP fast path in the tc programs: forward the payload the daemon needs for framing, skip
//! what it has said lies inside a message body. No parsing here: the daemon frames each stream
//! exactly, in sequence order (see `observer_common::http`).
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_skb_load_bytes,
    programs::TcContext,
};
use observer_common::{
    conn::{ConnKey, ConnStats},
    global::Counter,
    http::{classify, seq_before, HintFlags, HttpHints, PayloadHeader, SegFlags, Start, PAYLOAD_MAX_WINDOWS, PAYLOAD_WINDOW, START_LEN},
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    Direction,
};

use crate::{
    maps::{HTTP_HINTS, HTTP_PORTS, HTTP_PORTS_ONLY, PAYLOAD, SCRATCH},
    util::{count, gauge},
};

const HEADER_LEN: usize = core::mem::size_of::<PayloadHeader>();
/// Bytes waiting in the payload ring buffer beyond which the daemon is woken at once.
const WAKE_BACKLOG: u64 = crate::conn::WAKE_BACKLOG;

/// One TCP segment, as far as HTTP framing cares.
pub struct Seg {
    pub dir: Direction,
    /// This segment starts with the first byte of its direction's stream (its SYN was seen).
    pub first_byte: bool,
    pub seq: u32,
    pub flags: u8,
    /// Offset of the payload in the packet, and its length.
    pub off: usize,
    pub len: usize,
}

/// `--http-port`: HTTP is looked for on the listed ports only.
#[inline(always)]
pub fn port_wanted(key: &ConnKey) -> bool {
    HTTP_PORTS_ONLY.load() != 1 || HTTP_PORTS.get_ptr(&key.local_port).is_some() || HTTP_PORTS.get_ptr(&key.remote_port).is_some()
}

#[inline(always)]
pub fn forward(ctx: &TcContext, key: &ConnKey, stats: *mut ConnStats, seg: &Seg, now: u64) {
    let syn = seg.flags & TCP_SYN != 0;
    let end = seg.flags & (TCP_FIN | TCP_RST) != 0;
    // Pure ACKs carry nothing for framing: the common case leaves after these compares.
    if seg.len == 0 && !syn && !end {
        return;
    }
    if !port_wanted(key) {
        return;
    }
    let mut start = seg.seq;
    let mut off = seg.off;
    let mut remaining = seg.len;
    // SAFETY: `stats` is the connection's non-null map value.
    let conn = unsafe { (*stats).first_seen_ns } as u32;
    // A hint about an earlier connection on this four-tuple does not apply (`HttpHints::conn`).
    let hints = HTTP_HINTS.get_ptr(key).filter(|h| unsafe { (**h).conn } == conn);
    if hints.is_none() && seg.first_byte && remaining >= START_LEN {
        // The first bytes of a new connection tell HTTP from everything else (TLS, binary
        // protocols): anything else is marked and never forwarded again. HTTP needs no entry
        // (only the first segment is classified), which spares an insert per connection.
        let Ok(b) = ctx.load::<[u8; START_LEN]>(off) else { return };
        if classify(&b, START_LEN) == Start::Neither {
            let h = HttpHints { flags: HintFlags::NOT_HTTP.bits(), conn, ..HttpHints::default() };
            let _ = HTTP_HINTS.insert(key, &h, BPF_ANY as u64);
            count(Counter::NotHttp);
            return;
        }
    }
    if let Some(h) = hints {
        // SAFETY: non-null map value; written by the daemon only, read whole.
        let h = unsafe { *h };
        if h.hint_flags().contains(HintFlags::NOT_HTTP) {
            return;
        }
        let (valid, skip) = h.skip(seg.dir);
        if valid && remaining > 0 {
            let seg_end = seg.seq.wrapping_add(remaining as u32);
            if !seq_before(skip, seg_end) {
                // Entirely inside a body the daemon does not need: no copy.
                count(Counter::PayloadSkipped);
                if !end {
                    return;
                }
                remaining = 0;
            } else if seq_before(seg.seq, skip) {
                let cut = skip.wrapping_sub(seg.seq) as usize;
                off += cut;
                remaining -= cut;
                start = skip;
            }
        }
    }
    let Some(ev) = SCRATCH.get_ptr_mut(0) else { return };
    let flags = SegFlags::EMPTY
        .with(SegFlags::SYN, syn)
        .with(SegFlags::ACK, syn && seg.flags & TCP_ACK != 0)
        .with(SegFlags::FIN, seg.flags & TCP_FIN != 0)
        .with(SegFlags::RST, seg.flags & TCP_RST != 0);
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it while it runs.
    let ev = unsafe { &mut *ev };
    ev.header.key = *key;
    ev.header.ts_ns = now;
    ev.header.dir = seg.dir.as_u8();
    ev.header.conn = conn;
    if remaining == 0 {
        // SYN, or FIN/RST without payload: a header-only record.
        ev.header.seq = start;
        ev.header.len = 0;
        ev.header.flags = flags.bits();
        send(ev as *const _ as *const u8, HEADER_LEN, stats, false);
        return;
    }
    // A segment that starts a message and carries more than one record (a large body follows)
    // wakes the daemon at once: the sooner it has read the head, the sooner it tells us to skip
    // the body, instead of the body filling the ring. Small exchanges never wake it (a wake-up
    // costs more than the record). Checked once per segment, outside the loop (the verifier
    // walks the loop body once per iteration).
    let mut urgent = false;
    if remaining > PAYLOAD_WINDOW {
        if let Ok(b) = ctx.load::<[u8; START_LEN]>(off) {
            urgent = classify(&b, START_LEN) != Start::Neither;
        }
    }
    for _ in 0..PAYLOAD_MAX_WINDOWS {
        let n = if remaining > PAYLOAD_WINDOW { PAYLOAD_WINDOW } else { remaining };
        // Both bounds spelled out for the verifier: 1 ..= PAYLOAD_WINDOW bytes into `data`.
        if n == 0 || n > PAYLOAD_WINDOW {
            break;
        }
        // 1 ..= PAYLOAD_WINDOW again, in a form older verifiers (6.1) also follow.
        let len = crate::util::len_within(n as u32, PAYLOAD_WINDOW as u32);
        // SAFETY: `data` holds PAYLOAD_WINDOW bytes and len is within that.
        let rc = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, off as u32, ev.data.as_mut_ptr() as *mut _, len) };
        if rc != 0 {
            break;
        }
        ev.header.seq = start;
        ev.header.len = n as u16;
        // FIN/RST travel with the last record of the segment.
        ev.header.flags = if n == remaining { flags } else { flags.intersection(SegFlags::SYN.union(SegFlags::ACK)) }.bits();
        send(ev as *const _ as *const u8, HEADER_LEN + n, stats, urgent);
        urgent = false;
        off += n;
        remaining -= n;
        start = start.wrapping_add(n as u32);
        if remaining == 0 {
            break;
        }
    }
}

/// The wake-up flag for a `PAYLOAD` record. Waking the daemon for every record costs more than
/// the record: it drains the ring on a short timer, and is woken only when a backlog builds up
/// (or, `urgent`, at once).
#[inline(always)]
pub fn wake(urgent: bool) -> u64 {
    let backlog = PAYLOAD.query(BPF_RB_AVAIL_DATA as u64);
    gauge(Counter::PayloadBacklog, backlog);
    if urgent {
        BPF_RB_FORCE_WAKEUP as u64
    } else if backlog > WAKE_BACKLOG {
        0
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
/// Sends one record; a record the full ring refuses is counted globally and on its connection
/// (whose framing then says it is not in sync).
fn send(record: *const u8, len: usize, stats: *mut ConnStats, urgent: bool) {
    if len > HEADER_LEN + PAYLOAD_WINDOW {
        return;
    }
    // SAFETY: `record` points at the per-CPU scratch record, at least `len` bytes long.
    let bytes = unsafe { core::slice::from_raw_parts(record, len) };
    match PAYLOAD.output::<[u8]>(bytes, wake(urgent)) {
        Ok(()) => count(Counter::PayloadSent),
        Err(_) => {
            count(Counter::PayloadLost);
            // SAFETY: `stats` is the connection's non-null map value.
            unsafe { crate::util::add(&mut (*stats).payload_records_lost, 1) };
        }
    }
}
