//! Socket tracepoints: the TCP stack's own view of a connection's life (state changes, resets,
//! retransmissions), merged into the same `CONNS` entry as the tc view.
//!
//! Record layouts differ between kernels, so every field is read at an offset the daemon found
//! in tracefs (`maps::LAYOUT_*`). These tracepoints fire for every network namespace; only
//! sockets of the daemon's own namespace are counted (`maps::NETNS_FILTER`).
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use observer_common::{
    conn::{tcp_state, Closer, ConnEventKind, ConnKey, Role, FAMILY_IPV4, FAMILY_IPV6, RESET_RECEIVED, RESET_SENT},
    global::Counter,
    packet::IPPROTO_TCP,
    tracepoint::{TpLayout, ABSENT},
};

use crate::{
    conn,
    maps::{
        LAYOUT_RECEIVE_RESET, LAYOUT_RETRANSMIT, LAYOUT_RETRANSMIT_SYNACK, LAYOUT_SEND_RESET, LAYOUT_SET_STATE, NETNS_FILTER, RETRANSMIT_SEGS, SOCK_LAYOUT,
    },
    util::{add, count},
};

#[tracepoint]
pub fn observer_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = set_state(&ctx);
    0
}

/// The same state changes through the BTF-typed tracepoint: the kernel hands over the socket
/// itself, and its fields are plain loads at offsets from the kernel's BTF, the namespace first.
/// The classic tracepoint above reads every field of its record with a probe-read helper call;
/// the daemon attaches this one where the kernel allows it, and that one otherwise.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn observer_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = set_state_btf(&ctx);
    0
}

#[tracepoint]
pub fn observer_tcp_retransmit(ctx: TracePointContext) -> u32 {
    let _ = retransmit(&ctx, &LAYOUT_RETRANSMIT.load(), true);
    0
}

/// SYN-ACKs a listener sends again: the connection's socket starts with them in total_retrans.
#[tracepoint]
pub fn observer_tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    let _ = retransmit(&ctx, &LAYOUT_RETRANSMIT_SYNACK.load(), false);
    0
}

#[tracepoint]
pub fn observer_tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = reset(&ctx, &LAYOUT_SEND_RESET.load(), true);
    0
}

#[tracepoint]
pub fn observer_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = reset(&ctx, &LAYOUT_RECEIVE_RESET.load(), false);
    0
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u16) -> Option<T> {
    if offset == ABSENT {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel of the tracepoint record; a bad offset only fails the read.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// Is the record's socket in the daemon's network namespace? Records without a socket cannot
/// tell, and are left to the tc view.
#[inline(always)]
fn ours(ctx: &TracePointContext, l: &TpLayout) -> bool {
    let Some(sk) = field::<u64>(ctx, l.skaddr) else { return false };
    if sk == 0 {
        return false;
    }
    let f = NETNS_FILTER.load();
    if f.enabled == 0 {
        return true;
    }
    // SAFETY: reads of kernel memory through the probe helper; failures are handled.
    let Ok(net) = (unsafe { bpf_probe_read_kernel((sk + f.sock_net as u64) as *const u64) }) else { return false };
    let Ok(inum) = (unsafe { bpf_probe_read_kernel((net + f.net_inum as u64) as *const u32) }) else { return false };
    inum == f.inum
}

/// The record's four-tuple as a canonical key: in all four records the source is this host.
#[inline(always)]
fn key(ctx: &TracePointContext, l: &TpLayout) -> Option<ConnKey> {
    let mut k = ConnKey::zeroed();
    if l.sockaddr_form == 1 {
        // struct sockaddr_in / sockaddr_in6: family (host order), port (network order), address.
        let family: u16 = field(ctx, l.saddr)?;
        k.local_port = u16::from_be(field(ctx, l.saddr + 2)?);
        k.remote_port = u16::from_be(field(ctx, l.daddr + 2)?);
        if family == FAMILY_IPV4 {
            let s: [u8; 4] = field(ctx, l.saddr + 4)?;
            let d: [u8; 4] = field(ctx, l.daddr + 4)?;
            k.local_addr[..4].copy_from_slice(&s);
            k.remote_addr[..4].copy_from_slice(&d);
        } else if family == FAMILY_IPV6 {
            k.local_addr = field(ctx, l.saddr + 8)?;
            k.remote_addr = field(ctx, l.daddr + 8)?;
        } else {
            return None;
        }
        k.family = family;
    } else {
        let family: u16 = field(ctx, l.family)?;
        k.local_port = field(ctx, l.sport)?;
        k.remote_port = field(ctx, l.dport)?;
        if family == FAMILY_IPV4 {
            let s: [u8; 4] = field(ctx, l.saddr)?;
            let d: [u8; 4] = field(ctx, l.daddr)?;
            k.local_addr[..4].copy_from_slice(&s);
            k.remote_addr[..4].copy_from_slice(&d);
        } else if family == FAMILY_IPV6 {
            k.local_addr = field(ctx, l.saddr_v6)?;
            k.remote_addr = field(ctx, l.daddr_v6)?;
        } else {
            return None;
        }
        k.family = family;
    }
    k.fold_v4_mapped();
    Some(k)
}

#[inline(always)]
fn set_state(ctx: &TracePointContext) -> Option<()> {
    let l = LAYOUT_SET_STATE.load();
    if l.present == 0 || !ours(ctx, &l) {
        return None;
    }
    let protocol: u16 = field(ctx, l.protocol)?;
    if protocol != IPPROTO_TCP as u16 {
        return None;
    }
    let old = field::<i32>(ctx, l.oldstate)? as u8;
    let new = field::<i32>(ctx, l.newstate)? as u8;
    // Listening sockets have no peer: not a connection.
    if old == tcp_state::LISTEN || new == tcp_state::LISTEN {
        return None;
    }
    transition(&key(ctx, &l)?, old, new)
}

/// A load of a `T` at `off` bytes into a kernel object the BTF-typed tracepoint handed over.
/// The verifier checks the access against the kernel's type (the offset is a known constant:
/// read-only data) and the JIT makes a faulting load read 0.
///
/// # Safety
/// `base` is a BTF-typed pointer of the program's context (or one loaded from it), `off` an
/// offset of a `T`-sized member in its type.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

#[inline(always)]
fn set_state_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let l = SOCK_LAYOUT.load();
    let sk: *const u8 = ctx.arg(0);
    if l.present == 0 || sk.is_null() {
        return None;
    }
    // SAFETY (every `load` below): `sk` is the tracepoint's `struct sock *`, `net` the
    // `struct net *` in it; offsets from the kernel's BTF.
    let f = NETNS_FILTER.load();
    if f.enabled != 0 {
        let net: *const u8 = unsafe { load(sk, f.sock_net) };
        if net.is_null() || unsafe { load::<u32>(net, f.net_inum) } != f.inum {
            return None;
        }
    }
    if unsafe { load::<u16>(sk, l.protocol as u32) } != IPPROTO_TCP as u16 {
        return None;
    }
    let old = ctx.arg::<i32>(1) as u8;
    let new = ctx.arg::<i32>(2) as u8;
    if old == tcp_state::LISTEN || new == tcp_state::LISTEN {
        return None;
    }
    let mut k = ConnKey::zeroed();
    let family: u16 = unsafe { load(sk, l.family as u32) };
    // SAFETY: a probe read (beyond `struct sock`, where the verifier allows no plain load).
    k.local_port = u16::from_be(unsafe { bpf_probe_read_kernel(sk.add(l.sport as usize) as *const u16) }.ok()?);
    k.remote_port = u16::from_be(unsafe { load(sk, l.dport as u32) });
    if family == FAMILY_IPV4 {
        k.local_addr[..4].copy_from_slice(&unsafe { load::<u32>(sk, l.rcv_saddr as u32) }.to_ne_bytes());
        k.remote_addr[..4].copy_from_slice(&unsafe { load::<u32>(sk, l.daddr as u32) }.to_ne_bytes());
    } else if family == FAMILY_IPV6 {
        for i in 0..4u32 {
            let at = i as usize * 4;
            k.local_addr[at..at + 4].copy_from_slice(&unsafe { load::<u32>(sk, l.v6_rcv_saddr as u32 + i * 4) }.to_ne_bytes());
            k.remote_addr[at..at + 4].copy_from_slice(&unsafe { load::<u32>(sk, l.v6_daddr as u32 + i * 4) }.to_ne_bytes());
        }
    } else {
        return None;
    }
    k.family = family;
    k.fold_v4_mapped();
    transition(&k, old, new)
}

/// A TCP state change `old` → `new` of connection `k`, from either lifecycle hook.
#[inline(always)]
fn transition(k: &ConnKey, old: u8, new: u8) -> Option<()> {
    // connect() enters SYN_SENT before it picks the source port: that record has port 0 and
    // names no connection yet (the SYN on the wire, and ESTABLISHED, come with the real one).
    if k.local_port == 0 || k.remote_port == 0 {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let opening = new == tcp_state::SYN_SENT || new == tcp_state::SYN_RECV;
    let p = if opening { conn::open(k, now)? } else { conn::get_or_create(k, now)? };
    // SAFETY: non-null map value pointer; plain stores, one writer per socket (the socket lock).
    unsafe {
        let s = &mut *p;
        s.state = new;
        match new {
            tcp_state::SYN_SENT => s.role = Role::Outbound as u8,
            tcp_state::SYN_RECV => s.role = Role::Inbound as u8,
            tcp_state::ESTABLISHED => {
                s.opened_ns = now;
                if old == tcp_state::SYN_SENT {
                    s.role = Role::Outbound as u8;
                } else if old == tcp_state::SYN_RECV {
                    s.role = Role::Inbound as u8;
                }
            }
            // Who sent the first FIN: we did (FIN_WAIT1) or the peer did (CLOSE_WAIT).
            tcp_state::FIN_WAIT1 if s.closer == Closer::Unknown as u8 => s.closer = Closer::Local as u8,
            tcp_state::CLOSE_WAIT if s.closer == Closer::Unknown as u8 => s.closer = Closer::Remote as u8,
            tcp_state::CLOSE => {
                s.closed_ns = now;
                s.state_before_close = old;
            }
            _ => {}
        }
    }
    match new {
        tcp_state::ESTABLISHED => conn::emit(ConnEventKind::Opened, 0, k, p, now, false),
        tcp_state::CLOSE => conn::emit(ConnEventKind::Closed, old as u32, k, p, now, true),
        _ => {}
    }
    Some(())
}

#[inline(always)]
/// `own_socket`: the record's socket is the connection's (not a listener's, as for SYN-ACKs).
fn retransmit(ctx: &TracePointContext, l: &TpLayout, own_socket: bool) -> Option<()> {
    if l.present == 0 || !ours(ctx, l) {
        return None;
    }
    let k = key(ctx, l)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // A SYN-ACK sent again belongs to an attempt (`HALF_OPEN`) until the handshake completes.
    let p = if own_socket { conn::get_or_create(&k, now)? } else { conn::for_request(&k, now)? };
    let g = RETRANSMIT_SEGS.load();
    // The socket's own count, read after the kernel updated it (the record fires at the end of
    // the attempt): the connection's count is set to it, the global counter grows by the
    // difference. Retransmissions of one socket run under its lock, one at a time.
    if own_socket && g.total_enabled == 1 {
        if let Some(sk) = field::<u64>(ctx, l.skaddr) {
            // SAFETY: a probe read of kernel memory; a failure falls back to the record.
            if let Ok(total) = unsafe { bpf_probe_read_kernel((sk + g.total_retrans as u64) as *const u32) } {
                // SAFETY: non-null map value pointer.
                let old = unsafe { (*p).retransmits };
                let total = total as u64;
                if total > old {
                    unsafe { (*p).retransmits = total };
                    if let Some(c) = crate::maps::GLOBAL.get_ptr_mut(Counter::Retransmits as u32) {
                        // SAFETY: per-CPU slot.
                        unsafe { *c += total - old };
                    }
                }
                return Some(());
            }
        }
    }
    // Before 6.13 the record fires only for a retransmission that was sent (and counted).
    // Since 6.13 it carries the result: a negative one mostly failed before the kernel counted
    // it, a positive one (NET_XMIT_DROP/CN: the queue dropped it) was counted.
    if l.err != ABSENT && field::<i32>(ctx, l.err)? < 0 {
        return None;
    }
    // A GSO skb retransmits several segments at once: count them as the kernel's total_retrans.
    let mut segs = 1u64;
    if g.enabled == 1 {
        if let Some(skb) = field::<u64>(ctx, l.skbaddr) {
            // SAFETY: a probe read of kernel memory; failure keeps the count at 1.
            if let Ok(n) = unsafe { bpf_probe_read_kernel((skb + g.offset as u64) as *const u16) } {
                if n > 1 {
                    segs = n as u64;
                }
            }
        }
    }
    // SAFETY: non-null map value pointer.
    unsafe { add(&mut (*p).retransmits, segs) };
    if let Some(c) = crate::maps::GLOBAL.get_ptr_mut(Counter::Retransmits as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += segs };
    }
    Some(())
}

#[inline(always)]
fn reset(ctx: &TracePointContext, l: &TpLayout, sent: bool) -> Option<()> {
    if l.present == 0 || !ours(ctx, l) {
        return None;
    }
    let k = key(ctx, l)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // A reset answering a SYN (a port nobody listens on) belongs to that attempt.
    let p = conn::for_request(&k, now)?;
    // SAFETY: non-null map value pointer.
    unsafe {
        let s = &mut *p;
        if sent {
            add(&mut s.resets_sent, 1);
        } else {
            add(&mut s.resets_received, 1);
        }
        if s.closer == Closer::Unknown as u8 {
            s.closer = if sent { Closer::Local as u8 } else { Closer::Remote as u8 };
        }
    }
    count(if sent { Counter::ResetsSent } else { Counter::ResetsReceived });
    conn::emit(ConnEventKind::Reset, if sent { RESET_SENT } else { RESET_RECEIVED }, &k, p, now, false);
    Some(())
}
