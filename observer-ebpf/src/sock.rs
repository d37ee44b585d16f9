//! Socket tracepoints: the TCP stack's own view of a connection's life (state changes, resets,
//! retransmissions), merged into the same `CONNS` entry as the tc view.
//!
//! Record layouts differ between kernels, so every field is read at an offset the daemon found
//! in tracefs (`maps::LAYOUT_*`). These tracepoints fire for every network namespace; only
//! sockets of the daemon's own namespace are counted (`maps::NETNS_FILTER`).
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use observer_common::{
    conn::{tcp_state, Closer, ConnEventKind, ConnKey, Role, FAMILY_IPV4, FAMILY_IPV6},
    global::Counter,
    packet::IPPROTO_TCP,
    tracepoint::{TpLayout, ABSENT},
};

use crate::{
    conn,
    maps::{LAYOUT_RECEIVE_RESET, LAYOUT_RETRANSMIT, LAYOUT_RETRANSMIT_SYNACK, LAYOUT_SEND_RESET, LAYOUT_SET_STATE, NETNS_FILTER, RETRANSMIT_SEGS},
    util::{add, count},
};

#[tracepoint]
pub fn observer_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = set_state(&ctx);
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
    if l.present == 0 {
        return None;
    }
    let protocol: u16 = field(ctx, l.protocol)?;
    if protocol != IPPROTO_TCP as u16 {
        return None;
    }
    let old = field::<i32>(ctx, l.oldstate)? as u8;
    let new = field::<i32>(ctx, l.newstate)? as u8;
    // Listening sockets have no peer: not a connection.
    if old == tcp_state::LISTEN || new == tcp_state::LISTEN || !ours(ctx, &l) {
        return None;
    }
    let k = key(ctx, &l)?;
    // connect() enters SYN_SENT before it picks the source port: that record has port 0 and
    // names no connection yet (the SYN on the wire, and ESTABLISHED, come with the real one).
    if k.local_port == 0 || k.remote_port == 0 {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let opening = new == tcp_state::SYN_SENT || new == tcp_state::SYN_RECV;
    let p = if opening { conn::open(&k, now)? } else { conn::get_or_create(&k, now)? };
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
        tcp_state::ESTABLISHED => conn::emit(ConnEventKind::Opened, 0, &k, p, now, false),
        tcp_state::CLOSE => conn::emit(ConnEventKind::Closed, old as u32, &k, p, now, true),
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
    let p = conn::get_or_create(&k, unsafe { bpf_ktime_get_ns() })?;
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
    let p = conn::get_or_create(&k, now)?;
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
    conn::emit(ConnEventKind::Reset, if sent { 1 } else { 2 }, &k, p, now, false);
    Some(())
}
