//! tc classifiers on ingress and egress: parse Ethernet (one VLAN tag), IPv4 (with options) or
//! IPv6 (bounded extension headers) and TCP, and add the segment to its connection's counters.
//! They never change or drop a packet: every path returns `TC_ACT_UNSPEC`, which lets the next
//! program (another tool's, attached after us) or the kernel's default decide.
use aya_ebpf::{bindings::TC_ACT_UNSPEC, helpers::bpf_ktime_get_ns, macros::classifier, programs::TcContext};
use aya_log_ebpf::warn;
use observer_common::{
    conn::{ConnEventKind, ConnKey, Role, FAMILY_IPV4, FAMILY_IPV6},
    flags::SynSeen,
    global::Counter,
    packet::{self, Ipv6Next},
    seq::{self, SeqStep},
    Direction,
};

use crate::{
    conn, http, trace,
    util::{add, count},
};

#[classifier]
pub fn observer_tc_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::In);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn observer_tc_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::Out);
    TC_ACT_UNSPEC
}

/// What did not make it to a connection entry, and why.
enum Skip {
    NotTcp,
    Malformed,
}

/// `dir`: [`Direction::In`] on ingress (what the peer sent), [`Direction::Out`] on egress.
#[inline(always)]
fn observe(ctx: &TcContext, dir: Direction) {
    count(Counter::PacketsSeen);
    match parse_and_count(ctx, dir) {
        Ok(()) => {}
        Err(Skip::NotTcp) => count(Counter::NotTcp),
        Err(Skip::Malformed) => count(Counter::ParseFailures),
    }
}

/// The parsed headers of one TCP segment.
struct Segment {
    key: ConnKey,
    tcp: packet::Tcp,
    /// Offsets of the IP and TCP headers.
    l3: usize,
    l4: usize,
    payload_off: usize,
    payload_len: usize,
}

#[inline(always)]
fn parse(ctx: &TcContext, dir: Direction) -> Result<Segment, Skip> {
    let eth: [u8; packet::ETH_HLEN + 4] = ctx.load(0).map_err(|_| Skip::Malformed)?;
    let (ethertype, l3) = packet::ethernet(&eth);
    let packet_len = ctx.len() as usize;
    let mut key = ConnKey::zeroed();
    let (l4, ip_len_field, ip_len_covers) = match ethertype {
        packet::ETH_P_IP => {
            let h: [u8; packet::IPV4_MIN_HLEN] = ctx.load(l3).map_err(|_| Skip::Malformed)?;
            let ip = packet::ipv4(&h).ok_or(Skip::Malformed)?;
            if ip.protocol != packet::IPPROTO_TCP {
                return Err(Skip::NotTcp);
            }
            if ip.is_later_fragment {
                return Err(Skip::Malformed);
            }
            key.family = FAMILY_IPV4;
            let (local, remote) = match dir {
                Direction::In => (ip.dst, ip.src),
                Direction::Out => (ip.src, ip.dst),
            };
            key.local_addr[..4].copy_from_slice(&local);
            key.remote_addr[..4].copy_from_slice(&remote);
            (l3 + ip.header_len, ip.total_len, 0)
        }
        packet::ETH_P_IPV6 => {
            let h: [u8; packet::IPV6_HLEN] = ctx.load(l3).map_err(|_| Skip::Malformed)?;
            let ip = packet::ipv6(&h).ok_or(Skip::Malformed)?;
            let mut next = ip.next_header;
            let mut off = l3 + packet::IPV6_HLEN;
            let mut found = false;
            // Bounded walk: a chain longer than this is counted as a parse failure.
            for _ in 0..packet::IPV6_MAX_EXT_HEADERS + 1 {
                let ext: [u8; 2] = if next == packet::IPPROTO_TCP { [0, 0] } else { ctx.load(off).map_err(|_| Skip::Malformed)? };
                match packet::ipv6_ext(next, ext) {
                    Ipv6Next::Upper => {
                        found = true;
                        break;
                    }
                    Ipv6Next::Extension { len, next_header } => {
                        off += len;
                        next = next_header;
                    }
                    Ipv6Next::Fragment => return Err(Skip::Malformed),
                }
            }
            if !found {
                return Err(Skip::Malformed);
            }
            if next != packet::IPPROTO_TCP {
                return Err(Skip::NotTcp);
            }
            key.family = FAMILY_IPV6;
            let (local, remote) = match dir {
                Direction::In => (ip.dst, ip.src),
                Direction::Out => (ip.src, ip.dst),
            };
            key.local_addr = local;
            key.remote_addr = remote;
            (off, ip.payload_len, packet::IPV6_HLEN)
        }
        _ => return Err(Skip::NotTcp),
    };
    let h: [u8; packet::TCP_MIN_HLEN] = ctx.load(l4).map_err(|_| Skip::Malformed)?;
    let tcp = packet::tcp(&h).ok_or(Skip::Malformed)?;
    let (local_port, remote_port) = match dir {
        Direction::In => (tcp.dst_port, tcp.src_port),
        Direction::Out => (tcp.src_port, tcp.dst_port),
    };
    key.local_port = local_port;
    key.remote_port = remote_port;
    let payload_len = packet::tcp_payload_len(ip_len_field, ip_len_covers, l3, l4, tcp.header_len, packet_len);
    Ok(Segment { key, tcp, l3, l4, payload_off: l4 + tcp.header_len, payload_len })
}

#[inline(always)]
fn parse_and_count(ctx: &TcContext, dir: Direction) -> Result<(), Skip> {
    let Segment { key, tcp, l3, l4, payload_off, payload_len } = parse(ctx, dir)?;
    // What the stack will drop for its checksum counts nowhere (`csum`). Sent segments were
    // summed by this host.
    if dir == Direction::In && !crate::csum::accepted(ctx.skb.skb, key.family, l3, l4, tcp.header_len + payload_len) {
        count(Counter::BadChecksum);
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let f = tcp.flags;
    // A fresh SYN opens a new connection, also on a four-tuple used before; a peer's stays in
    // `HALF_OPEN` until its handshake completes.
    let stats = conn::for_packet(&key, now, f, dir == Direction::In);
    let Some((stats, kind)) = stats else {
        // Counted in GLOBAL too; an LRU map should never refuse, so say so loudly.
        warn!(ctx, "CONNS refused a new connection");
        return Ok(());
    };
    // Which of this segment's bytes are new in its direction (`observer_common::seq`): a segment
    // that carries only bytes seen before was sent again. Two CPUs may handle segments of one
    // flow at once (veth and backlog run a flow's packets on the CPU that sent them), so the
    // direction's state is one word, updated with compare-and-exchange.
    let mut step = SeqStep { word: 0, new_bytes: payload_len as u32, resent_bytes: 0, retransmit: false };
    // A segment that occupies no sequence space (a pure ACK, the common case) changes nothing:
    // it leaves before the call.
    let occupies = payload_len > 0 || f & (packet::TCP_SYN | packet::TCP_FIN) != 0;
    if occupies && f & packet::TCP_RST == 0 {
        // SAFETY: `stats` is a non-null pointer to a map value.
        let word = unsafe {
            match dir {
                Direction::In => &mut (*stats).seq_in as *mut u64,
                Direction::Out => &mut (*stats).seq_out as *mut u64,
            }
        };
        if let Some(s) = seq_update(word, tcp.seq, payload_len as u32, f & packet::TCP_SYN != 0, f & packet::TCP_FIN != 0) {
            step = s;
        }
    }
    // Counting is a global function: the verifier checks it once, instead of once for each map
    // the entry may be in (`CONNS`, `HALF_OPEN`); its arguments travel in this CPU's slot.
    let Some(a) = crate::maps::ACCOUNT_ARGS.get_ptr_mut(0) else { return Ok(()) };
    // SAFETY: this CPU's slot, read by the call below.
    unsafe {
        (*a).key = key;
        (*a).tcp = tcp;
        (*a).payload_off = payload_off as u32;
        (*a).payload_len = payload_len as u32;
        (*a).now = now;
        (*a).dir = dir.as_u8();
        (*a).seq = step;
    }
    observer_account(ctx.skb.skb, stats);
    // An attempt's packets (the handshake, a reset ending it) carry nothing to frame. Leaving here
    // also keeps the verifier's paths apart: past this point `stats` is a `CONNS` value only.
    if kind == conn::ATTEMPT {
        return Ok(());
    }
    // SAFETY: as above.
    let (isn, syn_seen) = unsafe { ((*stats).isn(dir), (*stats).saw_syn(dir)) };
    let first_byte = syn_seen && tcp.seq == isn.wrapping_add(1);
    // The first bytes of a stream say what the connection carries (once per connection).
    // SAFETY: `stats` is a non-null `CONNS` value.
    if payload_len > 0 && first_byte && unsafe { (*stats).protocol } == observer_common::proto::PROTO_UNKNOWN {
        crate::proto::observer_protocol(ctx.skb.skb, stats);
    }
    #[cfg_attr(not(feature = "kernel-framer"), allow(unused_mut, reason = "only the kernel framer moves the segment's start"))]
    let mut seg = http::Seg { dir, first_byte, seq: tcp.seq, flags: f, off: payload_off, len: payload_len };
    // With the kernel framer, what it frames never goes to the daemon: only what it lost.
    #[cfg(feature = "kernel-framer")]
    if crate::maps::KERNEL_HTTP.load() == 1 && (occupies || kind == conn::PROMOTED) {
        if let Some(a) = crate::maps::FRAME_ARGS.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, read by the call below.
            unsafe {
                (*a).key = key;
                (*a).ts_ns = now;
                (*a).seq = tcp.seq;
                (*a).len = payload_len as u32;
                (*a).off = payload_off as u32;
                (*a).dir = dir.as_u8();
                (*a).syn = (f & packet::TCP_SYN != 0) as u8;
                (*a).ack = (f & packet::TCP_ACK != 0) as u8;
                (*a).fin = (f & packet::TCP_FIN != 0) as u8;
                // The handshake the framer did not see (an attempt's packets leave above):
                // the two SYNs, from the entry.
                (*a).handshake = (kind == conn::PROMOTED) as u8;
                (*a).isn_in = (*stats).isn_in;
                (*a).isn_out = (*stats).isn_out;
                (*a).syn_seen = (*stats).syn_seen as u8;
            }
            match crate::frame::observer_http_frame(ctx.skb.skb) {
                crate::frame::HANDLED => return Ok(()),
                crate::frame::FORWARD_FROM => {
                    // What comes before `from` was counted here: the daemon gets the rest.
                    // SAFETY: as above; written by the call.
                    let from = unsafe { (*a).from_seq };
                    let ahead = from.wrapping_sub(seg.seq);
                    if ahead as i32 > 0 {
                        if ahead as usize >= seg.len {
                            if f & (packet::TCP_FIN | packet::TCP_RST) == 0 {
                                return Ok(());
                            }
                            seg.len = 0;
                        } else {
                            seg.seq = from;
                            seg.off += ahead as usize;
                            seg.len -= ahead as usize;
                        }
                        seg.first_byte = false;
                    }
                }
                _ => {}
            }
        }
    }
    http::forward(ctx, &key, stats, &seg, now);
    Ok(())
}

/// [`observer_account`]'s arguments besides the context and the entry.
pub struct AccountArgs {
    pub key: ConnKey,
    pub tcp: packet::Tcp,
    pub payload_off: u32,
    pub payload_len: u32,
    pub now: u64,
    /// [`Direction`] as u8.
    pub dir: u8,
    /// What the sequence bookkeeping found (done by the classifier: a third nested global
    /// function would take the stack past 512 bytes).
    pub seq: SeqStep,
}

/// [`account`] as a global BPF function (see `parse_and_count`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn observer_account(skb: *mut aya_ebpf::bindings::__sk_buff, stats: *mut observer_common::conn::ConnStats) -> u32 {
    if skb.is_null() || stats.is_null() {
        return 0;
    }
    let Some(a) = crate::maps::ACCOUNT_ARGS.get_ptr(0) else { return 0 };
    // SAFETY: this CPU's slot, written by the classifier just before the call.
    let a = unsafe { &*a };
    let dir = Direction::from_bit(a.dir);
    account(&TcContext::new(skb), dir, &a.key, &a.tcp, a.payload_off as usize, a.payload_len as usize, stats, a.now, &a.seq);
    0
}

/// Counts one packet on its connection's entry (`CONNS`, or `HALF_OPEN` for an attempt): packets,
/// new and resent bytes, flags, the handshake, a reset that ends a socketless connection, and the
/// trace record.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "inlined into observer_account, from its argument slot")]
fn account(
    ctx: &TcContext,
    dir: Direction,
    key: &ConnKey,
    tcp: &packet::Tcp,
    payload_off: usize,
    payload_len: usize,
    stats: *mut observer_common::conn::ConnStats,
    now: u64,
    seq: &SeqStep,
) {
    let f = tcp.flags;
    let syn_only = f & (packet::TCP_SYN | packet::TCP_ACK) == packet::TCP_SYN;
    let (retransmit, new_bytes, resent_bytes) = (seq.retransmit, seq.new_bytes as u64, seq.resent_bytes as u64);
    // A GSO/GRO super-packet stands for several wire segments.
    let segs = unsafe { (*ctx.skb.skb).gso_segs }.max(1) as u64;
    // SAFETY: `stats` is a non-null pointer to a map value; counters are only added to
    // atomically, the other fields are plain stores whose races are harmless.
    unsafe {
        let s = &mut *stats;
        match dir {
            Direction::In => {
                add(&mut s.packets_in, segs);
                add(&mut s.bytes_in, new_bytes);
                if retransmit {
                    add(&mut s.retransmitted_segments_in, segs);
                    add(&mut s.retransmitted_bytes_in, resent_bytes);
                }
                if f & packet::TCP_SYN != 0 {
                    add(&mut s.syn_in, 1);
                    s.isn_in = tcp.seq;
                    s.syn_seen |= SynSeen::RECEIVED.bits();
                }
                if f & packet::TCP_FIN != 0 {
                    add(&mut s.fin_in, 1)
                }
                if f & packet::TCP_RST != 0 {
                    add(&mut s.rst_in, 1)
                }
                if syn_only && s.role == Role::Unknown as u8 {
                    s.role = Role::Inbound as u8;
                }
                // Handshake RTT: our SYN to their SYN-ACK (outbound), our SYN-ACK to their ACK (inbound).
                if s.handshake_rtt_ns == 0 && s.syn_ns != 0 && f & packet::TCP_ACK != 0 && f & packet::TCP_RST == 0 {
                    let answers = if s.role == Role::Outbound as u8 { f & packet::TCP_SYN != 0 } else { f & packet::TCP_SYN == 0 };
                    if answers {
                        s.handshake_rtt_ns = now - s.syn_ns;
                    }
                }
            }
            Direction::Out => {
                add(&mut s.packets_out, segs);
                add(&mut s.bytes_out, new_bytes);
                if retransmit {
                    add(&mut s.retransmitted_segments_out, segs);
                    add(&mut s.retransmitted_bytes_out, resent_bytes);
                }
                if f & packet::TCP_SYN != 0 {
                    add(&mut s.syn_out, 1);
                    s.isn_out = tcp.seq;
                    s.syn_seen |= SynSeen::SENT.bits();
                    // The first SYN (outbound) or SYN-ACK (inbound) starts the handshake clock.
                    if s.syn_ns == 0 {
                        s.syn_ns = now;
                    }
                }
                if f & packet::TCP_FIN != 0 {
                    add(&mut s.fin_out, 1)
                }
                if f & packet::TCP_RST != 0 {
                    add(&mut s.rst_out, 1)
                }
                if syn_only && s.role == Role::Unknown as u8 {
                    s.role = Role::Outbound as u8;
                }
            }
        }
        s.last_seen_ns = now;
    }
    // A reset on a connection that never had a socket here (a SYN to a port nobody listens on)
    // ends it: no socket tracepoint will say so, so this program does.
    // SAFETY: as above.
    unsafe {
        let s = &mut *stats;
        if f & packet::TCP_RST != 0 && s.state == 0 && s.closed_ns == 0 {
            s.closed_ns = now;
            // No socket: never HTTP framed here, no framing state to carry.
            conn::emit(ConnEventKind::Closed, 0, key, stats, now, false);
        }
    }
    trace::record(ctx, key, &trace::Packet { dir, tcp_flags: f, seq: tcp.seq, ack: tcp.ack, window: tcp.window, retransmit, payload_off, payload_len }, now);
}

/// Applies one segment to a direction's sequence word (`observer_common::seq::step`) with
/// compare-and-exchange, retried a bounded number of times: the other CPU can only win a race a
/// few times in a row. `None` when every attempt lost (counted; the segment's bytes are then
/// taken as new, the counts on the wire stay complete).
#[inline(always)]
fn seq_update(word: *mut u64, seq_no: u32, payload: u32, syn: bool, fin: bool) -> Option<SeqStep> {
    let packed = observer_seq_update(word, seq_no, payload, (if syn { SEQ_SYN } else { 0 }) | (if fin { SEQ_FIN } else { 0 }));
    if packed == u64::MAX {
        return None;
    }
    Some(SeqStep { word: 0, new_bytes: packed as u32, resent_bytes: ((packed >> 32) & 0x7fff_ffff) as u32, retransmit: packed >> 63 != 0 })
}

/// [`observer_seq_update`]'s `flags`: the segment carried SYN, FIN.
const SEQ_SYN: u32 = 1;
const SEQ_FIN: u32 = 2;

/// A global BPF function: the verifier checks it once, on its own, instead of once for every
/// path of the classifier that reaches it (which would exceed its budget). It returns new bytes
/// in bits 0-31, resent bytes in 32-62, retransmission in bit 63; `u64::MAX` when every attempt
/// lost the race.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn observer_seq_update(word: *mut u64, seq_no: u32, payload: u32, flags: u32) -> u64 {
    if word.is_null() {
        return u64::MAX;
    }
    for _ in 0..4 {
        // SAFETY: `word` points into a map value; an aligned u64 is never read torn.
        let old = unsafe { core::ptr::read_volatile(word) };
        let s = seq::step(old, seq_no, payload, flags & SEQ_SYN != 0, flags & SEQ_FIN != 0);
        let packed = s.new_bytes as u64 | ((s.resent_bytes & 0x7fff_ffff) as u64) << 32 | (s.retransmit as u64) << 63;
        if s.word == old {
            return packed;
        }
        // SAFETY: as above; BPF_CMPXCHG (cpu v3).
        let (_, swapped) = unsafe {
            core::intrinsics::atomic_cxchg::<u64, { core::intrinsics::AtomicOrdering::SeqCst }, { core::intrinsics::AtomicOrdering::SeqCst }>(word, old, s.word)
        };
        if swapped {
            return packed;
        }
    }
    count(Counter::SeqContention);
    u64::MAX
}
