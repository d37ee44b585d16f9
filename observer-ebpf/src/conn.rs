//! The `CONNS` entry of a connection, shared by the tc and socket programs, and its events.
use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP};
use observer_common::{
    conn::{ConnEvent, ConnEventKind, ConnKey, ConnStats},
    global::Counter,
    packet::{TCP_ACK, TCP_RST, TCP_SYN},
};

use crate::{
    maps::{CONNS, CONN_SCRATCH, EVENTS, HALF_OPEN, HTTP_FRAMES},
    util::{count, gauge},
};

/// Bytes waiting in the events ring buffer beyond which the daemon is woken at once.
pub const WAKE_BACKLOG: u64 = 64 * 1024;

/// The entry for `key`, created (zeroed, first seen `now`) if there is none.
#[inline(always)]
pub fn get_or_create(key: &ConnKey, now: u64) -> Option<*mut ConnStats> {
    if let Some(p) = CONNS.get_ptr_mut(key) {
        return Some(p);
    }
    let fresh = fresh(now)?;
    // NOEXIST: if the other direction created it on another CPU meanwhile, keep theirs.
    if CONNS.insert(key, fresh, BPF_NOEXIST as u64).is_ok() {
        count(Counter::ConnInserts);
    }
    let p = CONNS.get_ptr_mut(key);
    if p.is_none() {
        count(Counter::ConnInsertFailures);
    }
    p
}

/// Like [`get_or_create`], but a new connection on a four-tuple whose last one has closed starts
/// from zero (a client reusing a port after TIME_WAIT is a new connection).
#[inline(always)]
pub fn open(key: &ConnKey, now: u64) -> Option<*mut ConnStats> {
    let p = get_or_create(key, now)?;
    // SAFETY: non-null map value pointer.
    if unsafe { (*p).closed_ns } != 0 {
        observer_superseded(key, p);
        let fresh = fresh(now)?;
        // Replaces an existing entry: the number of entries does not change, so no insert counted.
        let _ = CONNS.insert(key, fresh, BPF_ANY as u64);
        return CONNS.get_ptr_mut(key);
    }
    Some(p)
}

/// What [`for_packet`] found: a connection in `CONNS`, an attempt in `HALF_OPEN`, or an attempt
/// this packet completed (now in `CONNS`).
pub const LIVE: u8 = 0;
pub const ATTEMPT: u8 = 1;
pub const PROMOTED: u8 = 2;

/// The entry for a packet of `key` with TCP `flags` seen by tc (`ingress`: from the peer).
///
/// A peer's connection attempt (its SYN) on a four-tuple without a live connection goes to
/// `HALF_OPEN`, not `CONNS`, so spoofed SYNs evict only other attempts. It stays there through
/// the handshake (our SYN-ACK, its SYN again) and when it ends without one (a reset either way:
/// a refused or aborted attempt, reported by its close event), and moves to `CONNS`, with
/// everything counted so far, on the peer's first packet past the handshake (its ACK, data, a
/// FIN). Our own connections (an outgoing SYN) start in `CONNS`.
///
/// Returns the entry and which kind it is ([`LIVE`], [`ATTEMPT`]: in `HALF_OPEN`, or
/// [`PROMOTED`]: moved to `CONNS` by this packet).
#[inline(always)]
pub fn for_packet(key: &ConnKey, now: u64, flags: u8, ingress: bool) -> Option<(*mut ConnStats, u8)> {
    let syn = flags & TCP_SYN != 0;
    let syn_only = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let live = CONNS.get_ptr_mut(key);
    if let Some(p) = live {
        // SAFETY: non-null map value pointer.
        if unsafe { (*p).closed_ns } == 0 {
            return Some((p, LIVE));
        }
    }
    if let Some(h) = HALF_OPEN.get_ptr_mut(key) {
        // SAFETY: non-null map value pointer.
        let ended = unsafe { (*h).closed_ns } != 0;
        if syn_only && ingress && ended {
            // A new attempt on the four-tuple of one that was refused.
            return new_attempt(key, now, BPF_ANY).map(|h| (h, ATTEMPT));
        }
        if syn || ended || flags & TCP_RST != 0 {
            return Some((h, ATTEMPT));
        }
        if let Some(old) = live {
            // The closed connection this one replaces: its final counts, before they go.
            observer_superseded(key, old);
        }
        // SAFETY: `h` is a non-null map value; inserting from it copies the value.
        let moved = CONNS.insert(key, unsafe { &*h }, BPF_ANY as u64).is_ok();
        let _ = HALF_OPEN.remove(key);
        if moved {
            count(Counter::ConnInserts);
            count(Counter::HalfOpenPromoted);
        }
        return CONNS.get_ptr_mut(key).map(|p| (p, PROMOTED));
    }
    if syn_only && ingress {
        return new_attempt(key, now, BPF_NOEXIST).map(|h| (h, ATTEMPT));
    }
    let p = match live {
        // A closed connection: our new SYN reopens the four-tuple; anything else is a late
        // packet of the connection that closed.
        Some(_) if syn_only => open(key, now)?,
        Some(p) => p,
        None => get_or_create(key, now)?,
    };
    Some((p, LIVE))
}

/// The entry of `key` in `CONNS`, else in `HALF_OPEN`, else a new one in `HALF_OPEN`: for socket
/// events that may be about an attempt (a SYN-ACK sent again, a reset answering a SYN), which must
/// not fill `CONNS` either.
#[inline(always)]
pub fn for_request(key: &ConnKey, now: u64) -> Option<*mut ConnStats> {
    if let Some(p) = CONNS.get_ptr_mut(key) {
        return Some(p);
    }
    if let Some(h) = HALF_OPEN.get_ptr_mut(key) {
        return Some(h);
    }
    new_attempt(key, now, BPF_NOEXIST)
}

/// A fresh `HALF_OPEN` entry for `key` (`flags`: `BPF_NOEXIST`, or `BPF_ANY` to replace an
/// attempt that ended), counted when inserted.
#[inline(always)]
fn new_attempt(key: &ConnKey, now: u64, flags: u32) -> Option<*mut ConnStats> {
    if HALF_OPEN.insert(key, fresh(now)?, flags as u64).is_ok() {
        count(Counter::HalfOpened);
    }
    HALF_OPEN.get_ptr_mut(key)
}

/// A zeroed entry first seen `now`, in this CPU's scratch slot (not on the stack).
#[inline(always)]
fn fresh(now: u64) -> Option<&'static ConnStats> {
    let p = CONN_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used only while this program runs on it.
    unsafe {
        *p = ConnStats::zeroed();
        (*p).first_seen_ns = now;
        Some(&*p)
    }
}

/// Reports a closed connection's last counts as a new connection takes over its entry
/// (`ConnEventKind::Superseded`). A global function: checked once, not on every path that reuses
/// an entry.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn observer_superseded(key: *const ConnKey, stats: *const ConnStats) -> u32 {
    if key.is_null() || stats.is_null() {
        return 0;
    }
    // The key in this CPU's slot of a map: before 6.2 a map lookup takes no key from an
    // argument's memory (Debian 12's 6.1 refuses it), and the stack has no room to spare.
    let Some(slot) = crate::maps::KEY_SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: non-null pointers to a key and a map value, from the caller; this CPU's slot.
    unsafe {
        *slot = *key;
        emit(ConnEventKind::Superseded, 0, &*slot, stats, aya_ebpf::helpers::bpf_ktime_get_ns(), true);
        // Its HTTP hint goes with it (a later one would ignore it anyway: `HttpHints::conn`).
        let _ = crate::maps::HTTP_HINTS.remove(&*slot);
    }
    0
}

/// Sends a lifecycle event; when the ring buffer is full the loss is counted (the map stays exact).
#[inline(always)]
/// `with_frame`: a close of a connection that had a socket here, whose HTTP framing state travels
/// with the event.
pub fn emit(kind: ConnEventKind, detail: u32, key: &ConnKey, stats: *const ConnStats, now: u64, with_frame: bool) {
    match EVENTS.reserve::<ConnEvent>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` is the reserved, exclusively owned record; `stats` a non-null map value.
            unsafe {
                (*ev).kind = kind as u32;
                (*ev).detail = detail;
                (*ev).ts_ns = now;
                (*ev).key = *key;
                (*ev).stats = *stats;
                (*ev).frame_valid = 0;
                if with_frame {
                    if let Some(f) = HTTP_FRAMES.get_ptr(key) {
                        (*ev).frame = *f;
                        (*ev).frame_valid = 1;
                    }
                }
            }
            // As for payload: the daemon drains on a short timer; wake it only for a backlog.
            let backlog = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
            gauge(Counter::EventsBacklog, backlog);
            let wake = if backlog > WAKE_BACKLOG { 0 } else { BPF_RB_NO_WAKEUP as u64 };
            entry.submit(wake);
        }
        None => count(Counter::EventsLost),
    }
}
