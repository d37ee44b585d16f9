//! One TCP connection as the kernel tracks it: a canonical four-tuple key and exact counters.

/// `AF_INET`, as stored in [`ConnKey::family`].
pub const FAMILY_IPV4: u16 = 2;
/// `AF_INET6`, as stored in [`ConnKey::family`].
pub const FAMILY_IPV6: u16 = 10;

/// A connection's canonical key, the same for both directions of its packets: the *local* end is
/// this host's side (the destination of an ingress packet, the source of an egress one), the
/// *remote* end is the peer. Ports are in host byte order; an IPv4 address fills the first four
/// bytes of its 16-byte field and the rest stays zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

impl ConnKey {
    /// Sockets of a dual-stack listener see IPv4 peers as `::ffff:a.b.c.d`; the tc programs see
    /// plain IPv4 on the wire. Folding the mapped form into IPv4 lets both views meet in one entry.
    #[inline(always)]
    pub fn fold_v4_mapped(&mut self) {
        if self.family == FAMILY_IPV6 && is_v4_mapped(&self.local_addr) && is_v4_mapped(&self.remote_addr) {
            self.family = FAMILY_IPV4;
            self.local_addr = [self.local_addr[12], self.local_addr[13], self.local_addr[14], self.local_addr[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            self.remote_addr = [self.remote_addr[12], self.remote_addr[13], self.remote_addr[14], self.remote_addr[15], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        }
    }

    pub const fn zeroed() -> Self {
        Self {
            family: 0,
            local_port: 0,
            remote_port: 0,
            _pad: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
        }
    }
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0 && a[4] == 0 && a[5] == 0 && a[6] == 0 && a[7] == 0 && a[8] == 0 && a[9] == 0 && a[10] == 0xff && a[11] == 0xff
}

/// Exact per-connection counters kept in the `CONNS` map.
///
/// Direction is from this host's point of view: `_in` is what the peer sent to us (tc ingress),
/// `_out` what we sent (tc egress). Counters are only ever added to atomically, so concurrent
/// updates from ingress and egress on different CPUs never lose a count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// TCP segments, counting each segment of a GSO/GRO super-packet.
    pub packets_in: u64,
    pub packets_out: u64,
    /// TCP payload bytes, each byte of the stream once: what the applications sent (headers
    /// and retransmitted copies excluded; those are in `retransmitted_bytes_*`).
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub syn_in: u64,
    pub syn_out: u64,
    pub fin_in: u64,
    pub fin_out: u64,
    pub rst_in: u64,
    pub rst_out: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and the latest packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Resets the local TCP stack sent / received on this connection (socket tracepoints).
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Retransmitted segments (`tcp:tcp_retransmit_skb`, successful ones only).
    pub retransmits: u64,
    /// When the connection reached ESTABLISHED / CLOSE (socket tracepoint), 0 if not (yet).
    pub opened_ns: u64,
    pub closed_ns: u64,
    /// Time of our SYN (outbound) or SYN-ACK (inbound), for the handshake RTT.
    pub syn_ns: u64,
    /// Handshake round-trip time: SYN → SYN-ACK (outbound), SYN-ACK → first ACK (inbound). 0: unknown.
    pub handshake_rtt_ns: u64,
    /// Latest TCP state (`TCP_ESTABLISHED` = 1 ... as in the kernel), 0 when no socket event was seen.
    pub state: u8,
    /// The state before CLOSE (tells a refused or timed-out connect from a reset one).
    pub state_before_close: u8,
    /// [`Role`] as u8.
    pub role: u8,
    /// [`Closer`] as u8.
    pub closer: u8,
    /// Initial sequence numbers of each direction (from the SYNs), 0 when not seen: the daemon's
    /// HTTP framing starts each stream at ISN + 1.
    pub isn_in: u32,
    pub isn_out: u32,
    /// Bit 0: a SYN was received, bit 1: a SYN was sent.
    pub syn_seen: u8,
    /// What the connection carries, from its first bytes (`crate::proto`, `PROTO_*`).
    pub protocol: u8,
    pub _pad2: u16,
    /// Which bytes of each direction were seen (`crate::seq`: the highest sequence number and
    /// one gap behind it, in one word the programs update with compare-and-exchange).
    pub seq_in: u64,
    pub seq_out: u64,
    /// Segments that carried data already seen in their direction (sent again), and those
    /// bytes. A segment that fills a gap left by reordering is new data, not counted here.
    pub retransmitted_segments_in: u64,
    pub retransmitted_segments_out: u64,
    pub retransmitted_bytes_in: u64,
    pub retransmitted_bytes_out: u64,
    /// HTTP payload records of this connection the full ring buffer refused: its framing missed
    /// bytes (the counts on the wire stay exact).
    pub payload_records_lost: u64,
}


impl ConnStats {
    pub const fn zeroed() -> Self {
        Self {
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            syn_in: 0,
            syn_out: 0,
            fin_in: 0,
            fin_out: 0,
            rst_in: 0,
            rst_out: 0,
            first_seen_ns: 0,
            last_seen_ns: 0,
            resets_sent: 0,
            resets_received: 0,
            retransmits: 0,
            opened_ns: 0,
            closed_ns: 0,
            syn_ns: 0,
            handshake_rtt_ns: 0,
            state: 0,
            state_before_close: 0,
            role: 0,
            closer: 0,
            isn_in: 0,
            isn_out: 0,
            syn_seen: 0,
            protocol: 0,
            _pad2: 0,
            seq_in: 0,
            seq_out: 0,
            retransmitted_segments_in: 0,
            retransmitted_segments_out: 0,
            retransmitted_bytes_in: 0,
            retransmitted_bytes_out: 0,
            payload_records_lost: 0,
        }
    }
}

/// Who opened the connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum Role {
    #[default]
    Unknown = 0,
    /// A remote peer connected to a local listening port (client → gateway).
    Inbound = 1,
    /// This host connected out (gateway → upstream).
    Outbound = 2,
}

impl Role {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Role::Inbound,
            2 => Role::Outbound,
            _ => Role::Unknown,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Inbound => "inbound",
            Role::Outbound => "outbound",
        }
    }
}

/// Which side closed first (sent the first FIN, or the reset).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum Closer {
    Unknown = 0,
    Local = 1,
    Remote = 2,
}

impl Closer {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Closer::Local,
            2 => Closer::Remote,
            _ => Closer::Unknown,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Closer::Unknown => "unknown",
            Closer::Local => "local",
            Closer::Remote => "remote",
        }
    }
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;

    /// Lower-case name as operators read it (`established`, `syn_sent`, ...); `unknown` for 0
    /// (no socket event seen: e.g. a connection refused before any socket existed).
    pub const fn name(state: u8) -> &'static str {
        match state {
            ESTABLISHED => "established",
            SYN_SENT => "syn_sent",
            SYN_RECV => "syn_recv",
            FIN_WAIT1 => "fin_wait1",
            FIN_WAIT2 => "fin_wait2",
            TIME_WAIT => "time_wait",
            CLOSE => "closed",
            CLOSE_WAIT => "close_wait",
            LAST_ACK => "last_ack",
            LISTEN => "listen",
            CLOSING => "closing",
            NEW_SYN_RECV => "new_syn_recv",
            _ => "unknown",
        }
    }
}

/// Why a connection ended.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum CloseReason {
    /// FIN both ways.
    Normal = 1,
    /// This host sent a reset (e.g. an application closed with SO_LINGER 0, or unread data).
    ResetSent = 2,
    /// The peer sent a reset.
    ResetReceived = 3,
    /// The connection never opened: the listening side answered the SYN with a reset.
    Refused = 4,
    /// The connection never opened, or died, without an answer (SYN or retransmission timeout).
    TimedOut = 5,
}

impl CloseReason {
    pub const fn name(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ResetSent => "reset_sent",
            CloseReason::ResetReceived => "reset_received",
            CloseReason::Refused => "refused",
            CloseReason::TimedOut => "timed_out",
        }
    }

    pub const ALL: [CloseReason; 5] = [CloseReason::Normal, CloseReason::ResetSent, CloseReason::ResetReceived, CloseReason::Refused, CloseReason::TimedOut];

    /// The reason, from a closed connection's final counters. A reset on the wire (tc view) counts
    /// as well as one the socket layer reported: a refused inbound SYN never had a socket.
    pub fn of(s: &ConnStats) -> CloseReason {
        let sent = s.resets_sent + s.rst_out > 0;
        let received = s.resets_received + s.rst_in > 0;
        let never_opened = s.opened_ns == 0 && s.state_before_close != tcp_state::ESTABLISHED;
        if never_opened {
            if sent || received {
                return CloseReason::Refused;
            }
            return CloseReason::TimedOut;
        }
        // The first reset decides; a reset answering a reset is not news.
        match (sent, received) {
            (true, false) => CloseReason::ResetSent,
            (false, true) => CloseReason::ResetReceived,
            (true, true) => {
                if Closer::from_u8(s.closer) == Closer::Remote { CloseReason::ResetReceived } else { CloseReason::ResetSent }
            }
            (false, false) => {
                // FIN on the wire, or a socket that went through the closing states: an orderly
                // close. Otherwise it died where it stood (retransmission or keepalive timeout).
                let closing = matches!(
                    s.state_before_close,
                    tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK | tcp_state::CLOSE_WAIT | tcp_state::TIME_WAIT
                );
                if s.fin_in > 0 || s.fin_out > 0 || closing { CloseReason::Normal } else { CloseReason::TimedOut }
            }
        }
    }
}

/// What a [`ConnEvent`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEventKind {
    /// Reached ESTABLISHED.
    Opened = 1,
    /// Reached CLOSE; `stats` holds the counters at that moment (the map entry stays exact).
    Closed = 2,
    /// A reset was sent (`detail` = 1) or received (`detail` = 2).
    Reset = 3,
    /// A closed connection's entry is about to be reused by a new connection on its four-tuple:
    /// `stats` (and `frame`) are its final counts, with what came after the close (a FIN that
    /// arrived in TIME_WAIT).
    Superseded = 4,
}

/// A lifecycle event, through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub kind: u32,
    pub detail: u32,
    pub ts_ns: u64,
    pub key: ConnKey,
    pub stats: ConnStats,
    /// With `Closed`: 1 when `frame` holds the connection's kernel HTTP framing state at its
    /// close (taken here, not later from the map: the four-tuple may be reused in the meantime).
    pub frame_valid: u32,
    pub _pad: u32,
    pub frame: crate::frame::ConnFrame,
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    use core::fmt;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    // SAFETY: both are #[repr(C)], made only of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnStats {}
    unsafe impl aya::Pod for ConnEvent {}

    fn addr(family: u16, bytes: &[u8; 16]) -> IpAddr {
        if family == FAMILY_IPV4 {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*bytes))
        }
    }

    fn addr_bytes(ip: IpAddr) -> (u16, [u8; 16]) {
        match ip {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                (FAMILY_IPV4, b)
            }
            IpAddr::V6(v6) => (FAMILY_IPV6, v6.octets()),
        }
    }

    impl ConnKey {
        pub fn local(&self) -> SocketAddr {
            SocketAddr::new(addr(self.family, &self.local_addr), self.local_port)
        }

        pub fn remote(&self) -> SocketAddr {
            SocketAddr::new(addr(self.family, &self.remote_addr), self.remote_port)
        }

        /// The key for a connection between `local` and `remote`; `None` when their address
        /// families differ.
        pub fn from_endpoints(local: SocketAddr, remote: SocketAddr) -> Option<Self> {
            let (family, local_addr) = addr_bytes(local.ip());
            let (remote_family, remote_addr) = addr_bytes(remote.ip());
            (family == remote_family).then_some(Self {
                family,
                local_port: local.port(),
                remote_port: remote.port(),
                _pad: 0,
                local_addr,
                remote_addr,
            })
        }
    }

    /// The one written form of a connection: local then remote, `198.18.0.1:80 198.18.0.2:51234`
    /// or `[2001:db8::1]:80 [2001:db8::2]:51234`.
    impl fmt::Display for ConnKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{} {}", self.local(), self.remote())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_keys_fold_into_ipv4() {
        let mut k = ConnKey::zeroed();
        k.family = FAMILY_IPV6;
        k.local_addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 1];
        k.remote_addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 2];
        k.fold_v4_mapped();
        assert_eq!(k.family, FAMILY_IPV4);
        assert_eq!(&k.local_addr[..4], &[198, 18, 1, 1]);
        assert_eq!(&k.remote_addr[4..], &[0; 12]);
        let mut v6 = ConnKey::zeroed();
        v6.family = FAMILY_IPV6;
        v6.local_addr[0] = 0x20;
        v6.remote_addr = k.remote_addr;
        v6.fold_v4_mapped();
        assert_eq!(v6.family, FAMILY_IPV6, "a real IPv6 address stays IPv6");
    }

    fn stats() -> ConnStats {
        ConnStats::zeroed()
    }

    #[test]
    fn close_reasons() {
        let mut normal = stats();
        normal.opened_ns = 1;
        normal.fin_in = 1;
        normal.fin_out = 1;
        assert_eq!(CloseReason::of(&normal), CloseReason::Normal);

        let mut aborted_by_peer = normal;
        aborted_by_peer.fin_in = 0;
        aborted_by_peer.fin_out = 0;
        aborted_by_peer.resets_received = 1;
        assert_eq!(CloseReason::of(&aborted_by_peer), CloseReason::ResetReceived);

        let mut aborted_here = normal;
        aborted_here.rst_out = 1;
        assert_eq!(CloseReason::of(&aborted_here), CloseReason::ResetSent);

        let mut refused = stats();
        refused.syn_in = 1;
        refused.rst_out = 1;
        assert_eq!(CloseReason::of(&refused), CloseReason::Refused, "no socket: tc view only");
        let mut refused_out = stats();
        refused_out.state_before_close = tcp_state::SYN_SENT;
        refused_out.resets_received = 1;
        assert_eq!(CloseReason::of(&refused_out), CloseReason::Refused);

        let mut loopback = stats();
        loopback.opened_ns = 1;
        loopback.state_before_close = tcp_state::LAST_ACK;
        assert_eq!(CloseReason::of(&loopback), CloseReason::Normal, "no tc view, socket closed in order");
        let mut rto = loopback;
        rto.state_before_close = tcp_state::ESTABLISHED;
        assert_eq!(CloseReason::of(&rto), CloseReason::TimedOut);

        let mut syn_timeout = stats();
        syn_timeout.state_before_close = tcp_state::SYN_SENT;
        syn_timeout.syn_out = 3;
        assert_eq!(CloseReason::of(&syn_timeout), CloseReason::TimedOut);
    }
}
