//! The one written form of a connection, `LOCAL REMOTE`: what the daemon writes (`Display`) and
//! what its API and CLI read back (`FromStr`), side by side so that they cannot drift apart.
//!
//! - IPv4: `198.18.0.1:80 198.18.0.2:51234`
//! - IPv6: `[2001:db8::1]:443 [2001:db8::2]:40000`
//!
//! The family is that of the addresses (both the same). A key of the IPv6 family whose addresses
//! are v4-mapped (`[::ffff:198.18.0.1]:80`) stays IPv6 both ways: folding it into IPv4 is the
//! kernel's business ([`ConnKey::fold_v4_mapped`]), not the written form's.
//!
//! User space only (feature `user`, and the tests): `core::net` is all it needs, but the kernel
//! programs never write or read text.

use core::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use super::{ConnKey, FAMILY_IPV4, FAMILY_IPV6};

/// What a connection's written form looks like, for error messages.
pub const CONNECTION_FORM: &str = "expected LOCAL REMOTE, e.g. `198.18.0.1:80 198.18.0.2:51234` or `[2001:db8::1]:443 [2001:db8::2]:40000`";

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
        (family == remote_family).then_some(Self { family, local_port: local.port(), remote_port: remote.port(), _pad: 0, local_addr, remote_addr })
    }
}

/// The one written form of a connection: local then remote, `198.18.0.1:80 198.18.0.2:51234`
/// or `[2001:db8::1]:80 [2001:db8::2]:51234`.
impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.local(), self.remote())
    }
}

/// Which end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Local,
    Remote,
}

impl Endpoint {
    pub const fn name(self) -> &'static str {
        match self {
            Endpoint::Local => "local",
            Endpoint::Remote => "remote",
        }
    }
}

/// Why a text is not a connection's written form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseConnKeyError {
    /// Not two endpoints (separated by whitespace, or a comma).
    Form,
    /// This endpoint is not `ADDRESS:PORT`.
    Endpoint(Endpoint),
    /// One endpoint is IPv4, the other IPv6.
    MixedFamilies,
}

impl fmt::Display for ParseConnKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseConnKeyError::Form => f.write_str(CONNECTION_FORM),
            ParseConnKeyError::Endpoint(which) => {
                write!(f, "the {} endpoint is not ADDRESS:PORT, e.g. 198.18.0.1:51234 or [2001:db8::1]:443", which.name())
            }
            ParseConnKeyError::MixedFamilies => f.write_str("both endpoints must be IPv4, or both IPv6"),
        }
    }
}

/// Reads what `Display` writes. Whitespace around and between the endpoints may be any amount;
/// a comma also separates them (the form a URL carries without escaping its space).
impl FromStr for ConnKey {
    type Err = ParseConnKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(|c: char| c.is_whitespace() || c == ',').filter(|p| !p.is_empty());
        let (Some(local), Some(remote), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ParseConnKeyError::Form);
        };
        let local: SocketAddr = local.parse().map_err(|_| ParseConnKeyError::Endpoint(Endpoint::Local))?;
        let remote: SocketAddr = remote.parse().map_err(|_| ParseConnKeyError::Endpoint(Endpoint::Remote))?;
        ConnKey::from_endpoints(local, remote).ok_or(ParseConnKeyError::MixedFamilies)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::ToString};

    use proptest::prelude::*;

    use super::*;

    fn key(family: u16, local: [u8; 16], local_port: u16, remote: [u8; 16], remote_port: u16) -> ConnKey {
        ConnKey { family, local_port, remote_port, _pad: 0, local_addr: local, remote_addr: remote }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&a);
        b
    }

    #[test]
    fn the_written_forms_of_each_family() {
        let k = key(FAMILY_IPV4, v4([198, 18, 0, 1]), 80, v4([198, 18, 0, 2]), 51234);
        assert_eq!(k.to_string(), "198.18.0.1:80 198.18.0.2:51234");
        let mut l6 = [0u8; 16];
        l6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let mut r6 = l6;
        l6[15] = 1;
        r6[15] = 2;
        let k6 = key(FAMILY_IPV6, l6, 443, r6, 40000);
        assert_eq!(k6.to_string(), "[2001:db8::1]:443 [2001:db8::2]:40000");
        let mapped = key(FAMILY_IPV6, v4_mapped([198, 18, 0, 1]), 80, v4_mapped([198, 18, 0, 2]), 1);
        assert_eq!(mapped.to_string(), "[::ffff:198.18.0.1]:80 [::ffff:198.18.0.2]:1");
        for k in [k, k6, mapped] {
            assert_eq!(k.to_string().parse::<ConnKey>(), Ok(k));
        }
    }

    #[test]
    fn separators_may_be_any_whitespace_or_a_comma() {
        let k: ConnKey = "198.18.0.1:80 198.18.0.2:51234".parse().unwrap();
        for s in ["  198.18.0.1:80\t198.18.0.2:51234\n", "198.18.0.1:80,198.18.0.2:51234", "198.18.0.1:80 , 198.18.0.2:51234"] {
            assert_eq!(s.parse::<ConnKey>(), Ok(k), "{s:?}");
        }
    }

    #[test]
    fn bad_connections_say_what_was_expected() {
        let err = |s: &str| s.parse::<ConnKey>().unwrap_err();
        assert_eq!(err("198.18.0.1:80"), ParseConnKeyError::Form);
        assert_eq!(err(""), ParseConnKeyError::Form);
        assert_eq!(err("198.18.0.1:80 198.18.0.2:1 198.18.0.3:2"), ParseConnKeyError::Form);
        assert!(err("198.18.0.1:80").to_string().contains("expected LOCAL REMOTE, e.g."));
        assert_eq!(err("198.18.0.1 198.18.0.2:1"), ParseConnKeyError::Endpoint(Endpoint::Local));
        assert_eq!(err("198.18.0.1:1 2001:db8::2:1"), ParseConnKeyError::Endpoint(Endpoint::Remote), "IPv6 needs brackets");
        assert_eq!(err("198.18.0.1:1 198.18.0.2:65536"), ParseConnKeyError::Endpoint(Endpoint::Remote));
        assert!(err("198.18.0.1 198.18.0.2:1").to_string().contains("local endpoint is not ADDRESS:PORT"));
        assert_eq!(err("198.18.0.1:80 [2001:db8::2]:1"), ParseConnKeyError::MixedFamilies);
        assert!(format!("{}", ParseConnKeyError::MixedFamilies).contains("both endpoints"));
    }

    fn any_key() -> impl Strategy<Value = ConnKey> {
        (0u8..3, any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u16>(), any::<u16>()).prop_map(|(family, l, r, lp, rp)| match family {
            0 => key(FAMILY_IPV4, v4([l[0], l[1], l[2], l[3]]), lp, v4([r[0], r[1], r[2], r[3]]), rp),
            1 => key(FAMILY_IPV6, l, lp, r, rp),
            _ => key(FAMILY_IPV6, v4_mapped([l[0], l[1], l[2], l[3]]), lp, v4_mapped([r[0], r[1], r[2], r[3]]), rp),
        })
    }

    proptest! {
        /// IPv4, IPv6 and v4-mapped IPv6 keys read back from what `Display` wrote, the family
        /// included.
        #[test]
        fn the_written_form_round_trips(k in any_key()) {
            let written = k.to_string();
            prop_assert_eq!(written.parse::<ConnKey>(), Ok(k), "{}", written);
            prop_assert_eq!(ConnKey::from_endpoints(k.local(), k.remote()), Some(k));
        }
    }
}
