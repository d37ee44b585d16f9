//! One TCP connection as the kernel tracks it: a canonical four-tuple key and exact counters,
//! who opened and closed it, its lifecycle events (`event`), why it ended (`close`), and its
//! written form (`written`: `LOCAL REMOTE`).

mod close;
mod event;
#[cfg(any(feature = "user", test))]
mod written;

pub use close::CloseReason;
pub use event::{ConnEvent, ConnEventKind, UnknownEventKind, RESET_RECEIVED, RESET_SENT};
#[cfg(any(feature = "user", test))]
pub use written::{Endpoint, ParseConnKeyError, CONNECTION_FORM};

use crate::{direction::Direction, flags::SynSeen, proto::Protocol};

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
        Self { family: 0, local_port: 0, remote_port: 0, _pad: 0, local_addr: [0; 16], remote_addr: [0; 16] }
    }
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
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
    /// [`SynSeen`] as u8 (bit 0: a SYN was received, bit 1: a SYN was sent).
    pub syn_seen: u8,
    /// What the connection carries, from its first bytes: [`Protocol`] as u8 (`PROTO_*`).
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

    /// `role`, typed.
    #[inline(always)]
    pub const fn role(&self) -> Role {
        Role::from_u8(self.role)
    }

    /// `closer`, typed.
    #[inline(always)]
    pub const fn closer(&self) -> Closer {
        Closer::from_u8(self.closer)
    }

    /// `protocol`, typed.
    #[inline(always)]
    pub const fn protocol(&self) -> Protocol {
        Protocol::from_u8(self.protocol)
    }

    /// `syn_seen`, typed.
    #[inline(always)]
    pub const fn syn_seen_flags(&self) -> SynSeen {
        SynSeen(self.syn_seen)
    }

    /// A SYN travelling in `dir` was seen: [`Self::isn`] of `dir` is its initial sequence number.
    #[inline(always)]
    pub const fn saw_syn(&self, dir: Direction) -> bool {
        self.syn_seen & SynSeen::of(dir).bits() != 0
    }

    /// The initial sequence number of `dir` (`isn_in` / `isn_out`; 0 when its SYN was not seen).
    #[inline(always)]
    pub const fn isn(&self, dir: Direction) -> u32 {
        match dir {
            Direction::In => self.isn_in,
            Direction::Out => self.isn_out,
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

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: both are #[repr(C)], made only of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnStats {}
    unsafe impl aya::Pod for ConnEvent {}
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

    #[test]
    fn typed_accessors_read_the_stored_bytes() {
        let mut s = ConnStats::zeroed();
        assert_eq!((s.role(), s.closer(), s.protocol()), (Role::Unknown, Closer::Unknown, Protocol::Unknown));
        assert!(!s.saw_syn(Direction::In) && !s.saw_syn(Direction::Out));
        s.role = Role::Outbound as u8;
        s.closer = Closer::Remote as u8;
        s.protocol = crate::proto::PROTO_TLS;
        s.syn_seen = SynSeen::SENT.bits();
        s.isn_in = 7;
        s.isn_out = 9;
        assert_eq!((s.role(), s.closer(), s.protocol()), (Role::Outbound, Closer::Remote, Protocol::Tls));
        assert!(!s.saw_syn(Direction::In) && s.saw_syn(Direction::Out));
        assert_eq!(s.syn_seen_flags(), SynSeen::SENT);
        assert_eq!((s.isn(Direction::In), s.isn(Direction::Out)), (7, 9));
    }
}
