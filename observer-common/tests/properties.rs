//! Property tests of the parsers the kernel programs run: whatever the bytes, they answer without
//! panicking, and what they accept is what was written.
use observer_common::{
    http::{classify, Method, Start, START_LEN},
    packet,
};
use proptest::prelude::*;

fn padded(s: &[u8]) -> ([u8; START_LEN], usize) {
    let mut b = [0u8; START_LEN];
    let n = s.len().min(START_LEN);
    b[..n].copy_from_slice(&s[..n]);
    (b, n)
}

proptest! {
    #[test]
    fn classify_answers_for_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        let (b, n) = padded(&bytes);
        let _ = classify(&b, n);
    }

    #[test]
    fn every_status_line_is_read_back(minor in 0u8..=1, code in 100u16..=599, reason in "[A-Za-z ]{0,8}") {
        let line = format!("HTTP/1.{minor} {code} {reason}\r\n");
        let (b, n) = padded(line.as_bytes());
        prop_assert_eq!(classify(&b, n), Start::Response(code));
    }

    #[test]
    fn request_lines_are_read_back(m in 0usize..9, path in "/[a-z0-9/]{0,10}") {
        let methods = [Method::Get, Method::Head, Method::Post, Method::Put, Method::Delete, Method::Connect, Method::Options, Method::Trace, Method::Patch];
        let line = format!("{} {path} HTTP/1.1\r\n", methods[m].name());
        let (b, n) = padded(line.as_bytes());
        prop_assert_eq!(classify(&b, n), Start::Request(methods[m]));
    }

    #[test]
    fn header_parsers_answer_for_any_bytes(eth in any::<[u8; 18]>(), ip4 in any::<[u8; 20]>(), ip6 in proptest::collection::vec(any::<u8>(), 40), tcp in any::<[u8; 20]>()) {
        let (_, l3) = packet::ethernet(&eth);
        prop_assert!(l3 == 14 || l3 == 18);
        if let Some(ip) = packet::ipv4(&ip4) {
            prop_assert!(ip.header_len >= 20 && ip.header_len <= 60);
        }
        let ip6: [u8; 40] = ip6.try_into().unwrap();
        let _ = packet::ipv6(&ip6);
        if let Some(t) = packet::tcp(&tcp) {
            prop_assert!(t.header_len >= 20 && t.header_len <= 60);
        }
    }

    #[test]
    fn payload_length_never_exceeds_the_packet(len_field in any::<u16>(), covers in 0usize..41, l3 in 14usize..19, ihl in 20usize..61, thl in 20usize..61, pkt in 0usize..70000) {
        let l4 = l3 + ihl;
        let n = packet::tcp_payload_len(len_field, covers, l3, l4, thl, pkt);
        prop_assert!(n <= pkt.saturating_sub(l4 + thl));
    }
}
