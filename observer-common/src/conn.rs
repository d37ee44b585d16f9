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
    /// TCP payload bytes (headers excluded; retransmitted bytes count again, as seen on the wire).
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
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    use core::fmt;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    // SAFETY: both are #[repr(C)], made only of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnStats {}

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
