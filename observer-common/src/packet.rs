//! Pure header parsers over fixed-size byte arrays.
//!
//! The tc programs load each header with one fixed-size read (`ctx.load::<[u8; N]>`) and hand the
//! bytes to these functions; host tests run the very same code. Fixed sizes and constant indices
//! keep them verifier-friendly: no loops, no slices with run-time bounds.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_MIN_HLEN: usize = 20;
/// The most IPv6 extension headers walked before giving up (each costs one load).
pub const IPV6_MAX_EXT_HEADERS: usize = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

#[inline(always)]
const fn be16(b0: u8, b1: u8) -> u16 {
    ((b0 as u16) << 8) | b1 as u16
}

#[inline(always)]
const fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

/// The Ethernet header plus room for one VLAN tag: returns the inner EtherType and the offset of
/// the layer-3 header.
#[inline(always)]
pub fn ethernet(h: &[u8; ETH_HLEN + 4]) -> (u16, usize) {
    let ethertype = be16(h[12], h[13]);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        (be16(h[16], h[17]), ETH_HLEN + 4)
    } else {
        (ethertype, ETH_HLEN)
    }
}

/// What the tc programs need of an IPv4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub header_len: usize,
    pub total_len: u16,
    pub protocol: u8,
    /// A non-first fragment (offset != 0) carries no TCP header.
    pub is_later_fragment: bool,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// Parses the fixed part of an IPv4 header (options are skipped through `header_len`).
/// `None` if it is not IPv4 or its header length is impossible.
#[inline(always)]
pub fn ipv4(h: &[u8; IPV4_MIN_HLEN]) -> Option<Ipv4> {
    if h[0] >> 4 != 4 {
        return None;
    }
    let header_len = ((h[0] & 0x0f) as usize) * 4;
    if header_len < IPV4_MIN_HLEN {
        return None;
    }
    let frag_offset = be16(h[6], h[7]) & 0x1fff;
    Some(Ipv4 {
        header_len,
        total_len: be16(h[2], h[3]),
        protocol: h[9],
        is_later_fragment: frag_offset != 0,
        src: [h[12], h[13], h[14], h[15]],
        dst: [h[16], h[17], h[18], h[19]],
    })
}

/// What the tc programs need of the fixed IPv6 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub payload_len: u16,
    pub next_header: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[inline(always)]
pub fn ipv6(h: &[u8; IPV6_HLEN]) -> Option<Ipv6> {
    if h[0] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    Some(Ipv6 { payload_len: be16(h[4], h[5]), next_header: h[6], src, dst })
}

/// Next step through an IPv6 extension header chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Next {
    /// `next_header` is an upper-layer protocol: stop here.
    Upper,
    /// An extension header of this many bytes, followed by this next header.
    Extension { len: usize, next_header: u8 },
    /// A fragment header: the upper layer cannot be read from this packet alone.
    Fragment,
}

/// Classifies `next_header`; `ext` is the first two bytes of the header it names.
#[inline(always)]
pub fn ipv6_ext(next_header: u8, ext: [u8; 2]) -> Ipv6Next {
    match next_header {
        // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first.
        0 | 43 | 60 => Ipv6Next::Extension { len: (ext[1] as usize + 1) * 8, next_header: ext[0] },
        // Authentication header: length in 4-octet units, minus 2.
        51 => Ipv6Next::Extension { len: (ext[1] as usize + 2) * 4, next_header: ext[0] },
        44 => Ipv6Next::Fragment,
        _ => Ipv6Next::Upper,
    }
}

/// What the tc programs need of a TCP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub header_len: usize,
    pub flags: u8,
    pub window: u16,
}

#[inline(always)]
pub fn tcp(h: &[u8; TCP_MIN_HLEN]) -> Option<Tcp> {
    let header_len = ((h[12] >> 4) as usize) * 4;
    if header_len < TCP_MIN_HLEN {
        return None;
    }
    Some(Tcp {
        src_port: be16(h[0], h[1]),
        dst_port: be16(h[2], h[3]),
        seq: be32([h[4], h[5], h[6], h[7]]),
        ack: be32([h[8], h[9], h[10], h[11]]),
        header_len,
        flags: h[13],
        window: be16(h[14], h[15]),
    })
}

/// TCP payload length of a segment, from the IP length fields when they are set and from the
/// packet length when they are zero (IPv4/IPv6 BIG TCP super-packets over 64 KiB). Using the IP
/// length ignores Ethernet padding of short frames, which tc ingress still sees.
#[inline(always)]
pub fn tcp_payload_len(ip_len_field: u16, ip_len_covers: usize, l3_offset: usize, l4_offset: usize, tcp_header_len: usize, packet_len: usize) -> usize {
    let end = if ip_len_field != 0 { l3_offset + ip_len_covers + ip_len_field as usize } else { packet_len };
    let end = if end > packet_len { packet_len } else { end };
    let start = l4_offset + tcp_header_len;
    end.saturating_sub(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_with_and_without_vlan() {
        let mut h = [0u8; 18];
        h[12] = 0x08;
        assert_eq!(ethernet(&h), (ETH_P_IP, 14));
        h[12] = 0x81;
        h[13] = 0x00;
        h[16] = 0x86;
        h[17] = 0xdd;
        assert_eq!(ethernet(&h), (ETH_P_IPV6, 18));
    }

    #[test]
    fn ipv4_header_with_options() {
        let mut h = [0u8; 20];
        h[0] = 0x46; // version 4, IHL 6 (24 bytes: one option word)
        h[2] = 0x00;
        h[3] = 0x40;
        h[9] = IPPROTO_TCP;
        h[12..16].copy_from_slice(&[198, 18, 0, 1]);
        h[16..20].copy_from_slice(&[198, 18, 0, 2]);
        let ip = ipv4(&h).unwrap();
        assert_eq!(ip.header_len, 24);
        assert_eq!(ip.total_len, 64);
        assert_eq!(ip.src, [198, 18, 0, 1]);
        assert!(!ip.is_later_fragment);
        h[0] = 0x44;
        assert_eq!(ipv4(&h), None, "IHL below 5 is malformed");
        h[0] = 0x65;
        assert_eq!(ipv4(&h), None, "not version 4");
    }

    #[test]
    fn ipv4_later_fragment_is_flagged() {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[6] = 0x20; // MF set, offset 0: first fragment, TCP header present
        assert!(!ipv4(&h).unwrap().is_later_fragment);
        h[7] = 0x10;
        assert!(ipv4(&h).unwrap().is_later_fragment);
    }

    #[test]
    fn ipv6_extension_chain() {
        assert_eq!(ipv6_ext(0, [6, 0]), Ipv6Next::Extension { len: 8, next_header: 6 });
        assert_eq!(ipv6_ext(60, [6, 1]), Ipv6Next::Extension { len: 16, next_header: 6 });
        assert_eq!(ipv6_ext(51, [6, 4]), Ipv6Next::Extension { len: 24, next_header: 6 });
        assert_eq!(ipv6_ext(44, [6, 0]), Ipv6Next::Fragment);
        assert_eq!(ipv6_ext(6, [0, 0]), Ipv6Next::Upper);
    }

    #[test]
    fn tcp_header_fields() {
        let mut h = [0u8; 20];
        h[0..2].copy_from_slice(&80u16.to_be_bytes());
        h[2..4].copy_from_slice(&51234u16.to_be_bytes());
        h[4..8].copy_from_slice(&7u32.to_be_bytes());
        h[12] = 0x80; // 32-byte header (timestamps)
        h[13] = TCP_SYN | TCP_ACK;
        let t = tcp(&h).unwrap();
        assert_eq!((t.src_port, t.dst_port, t.seq, t.header_len), (80, 51234, 7, 32));
        assert_eq!(t.flags, TCP_SYN | TCP_ACK);
        h[12] = 0x40;
        assert_eq!(tcp(&h), None);
    }

    #[test]
    fn payload_length_ignores_ethernet_padding_and_handles_big_tcp() {
        // 14 eth + 20 ip + 20 tcp + 0 payload, padded to 60 bytes on the wire.
        assert_eq!(tcp_payload_len(40, 0, 14, 34, 20, 60), 0);
        // 100 bytes of payload.
        assert_eq!(tcp_payload_len(140, 0, 14, 34, 20, 154), 100);
        // IPv6: payload_len covers what follows the 40-byte header.
        assert_eq!(tcp_payload_len(32 + 5, 40, 14, 54, 32, 14 + 40 + 37), 5);
        // BIG TCP: length field zero, fall back to the packet length.
        assert_eq!(tcp_payload_len(0, 0, 14, 34, 20, 14 + 20 + 20 + 70000), 70000);
        // A length field that claims more than the packet holds is clamped.
        assert_eq!(tcp_payload_len(1000, 0, 14, 34, 20, 100), 46);
    }
}
