//! Where the fields of the socket tracepoints' records are. Layouts change between kernel
//! versions (e.g. `tcp:tcp_send_reset` in 6.10), and Rust eBPF gets no CO-RE relocations, so the
//! daemon reads `/sys/kernel/tracing/events/<sys>/<name>/format` at start-up and hands the
//! offsets to the programs as globals.

/// Marks a field the running kernel's record does not have.
pub const ABSENT: u16 = 0xffff;

/// Field offsets of one tracepoint record; [`ABSENT`] where the field does not exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpLayout {
    pub skaddr: u16,
    pub skbaddr: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    /// `tcp_retransmit_skb`'s result (since 6.13): negative means nothing was retransmitted.
    pub err: u16,
    /// 1 when `saddr`/`daddr` hold a 28-byte `sockaddr_in`/`sockaddr_in6` (family, port and
    /// address inside) instead of separate port, family and address fields.
    pub sockaddr_form: u16,
    /// 1 when the daemon found this tracepoint and filled the offsets in.
    pub present: u16,
    pub _pad: u16,
}

/// Where a retransmitted skb says how many segments it carries: `TCP_SKB_CB(skb)->tcp_gso_segs`,
/// i.e. `skb->cb` + the field's offset in `struct tcp_skb_cb` (from the kernel's BTF). With it,
/// retransmissions count segments, as the kernel's own `total_retrans` does; without it
/// (`enabled` 0), one per retransmitted skb.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbSegs {
    pub enabled: u32,
    /// Offset of `tcp_gso_segs` from the start of the skb.
    pub offset: u32,
    /// 1 when `total_retrans` (below) was found.
    pub total_enabled: u32,
    /// Offset of `total_retrans` in `struct tcp_sock`: the retransmission record's socket is
    /// read for the kernel's own count, which then is the connection's `retransmits` exactly
    /// (since 6.13 the record also fires for attempts that failed, some after the kernel counted
    /// them and some before: only the socket can say which).
    pub total_retrans: u32,
}

impl SkbSegs {
    pub const fn disabled() -> Self {
        Self { enabled: 0, offset: 0, total_enabled: 0, total_retrans: 0 }
    }
}

impl TpLayout {
    pub const fn absent() -> Self {
        Self {
            skaddr: ABSENT,
            skbaddr: ABSENT,
            sport: ABSENT,
            dport: ABSENT,
            family: ABSENT,
            saddr: ABSENT,
            daddr: ABSENT,
            saddr_v6: ABSENT,
            daddr_v6: ABSENT,
            oldstate: ABSENT,
            newstate: ABSENT,
            protocol: ABSENT,
            err: ABSENT,
            sockaddr_form: 0,
            present: 0,
            _pad: 0,
        }
    }
}

/// Restricts the socket tracepoints (which fire for every network namespace) to the daemon's
/// own: `sk->__sk_common.skc_net.net->ns.inum` must equal `inum`. Offsets come from the kernel's
/// BTF; `enabled` is 0 when they could not be found (then every namespace is observed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsFilter {
    pub enabled: u32,
    pub inum: u32,
    /// Offset of `skc_net` (a `struct net *`) in `struct sock`.
    pub sock_net: u32,
    /// Offset of `ns.inum` in `struct net`.
    pub net_inum: u32,
}

impl NetnsFilter {
    pub const fn disabled() -> Self {
        Self { enabled: 0, inum: 0, sock_net: 0, net_inum: 0 }
    }
}

/// Where `struct sock` keeps what the lifecycle hook reads, for the BTF-typed tracepoint
/// (`tp_btf/inet_sock_set_state`), which gets the socket itself instead of a record: the program
/// loads the fields directly (no probe-read helper calls). Offsets come from the kernel's BTF;
/// they sit in read-only data the verifier sees as constants. `present` is 0 when any of them
/// could not be found (then the classic tracepoint is used).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockLayout {
    pub present: u16,
    /// `sk_protocol` (a `u16` since Linux 5.6).
    pub protocol: u16,
    /// `__sk_common.skc_family`.
    pub family: u16,
    /// `inet_sock.inet_sport`: the local port, network order. Beyond `struct sock`, so read with
    /// a probe (`skc_num` would be a plain load, but the kernel clears it before the state
    /// change to CLOSE fires).
    pub sport: u16,
    /// `__sk_common.skc_dport`: the remote port, network order.
    pub dport: u16,
    /// `__sk_common.skc_rcv_saddr` and `skc_daddr`: IPv4 local and remote addresses.
    pub rcv_saddr: u16,
    pub daddr: u16,
    /// `__sk_common.skc_v6_rcv_saddr` and `skc_v6_daddr`.
    pub v6_rcv_saddr: u16,
    pub v6_daddr: u16,
    pub _pad: u16,
}

impl SockLayout {
    pub const fn absent() -> Self {
        Self { present: 0, protocol: 0, family: 0, sport: 0, dport: 0, rcv_saddr: 0, daddr: 0, v6_rcv_saddr: 0, v6_daddr: 0, _pad: 0 }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: #[repr(C)] integers only, no implicit padding.
    unsafe impl aya::Pod for TpLayout {}
    unsafe impl aya::Pod for NetnsFilter {}
    unsafe impl aya::Pod for SkbSegs {}
    unsafe impl aya::Pod for SockLayout {}
}
