//! Count only what the host accepts: an ingress segment whose checksum the TCP stack will find
//! wrong is dropped there (`TCP_CSUM`), so it must not count as packets, bytes, a connection or an
//! HTTP message here either. tc ingress runs before that check, so the classifier asks first.
//!
//! Three cases, cheapest first, by how the packet arrived (`skb->ip_summed`, which tc programs
//! cannot read directly):
//! 1. `CHECKSUM_UNNECESSARY` (the NIC verified it; `bpf_csum_level` answers only then): accepted.
//! 2. `CHECKSUM_PARTIAL` (sent by this host's own stack, e.g. over veth from a container, or
//!    merged by GRO): the checksum field holds only the pseudo-header's sum, which the stack
//!    trusts. Recognised by exactly that value, one 12- or 40-byte sum.
//! 3. Anything else (`CHECKSUM_NONE`, `CHECKSUM_COMPLETE`): the stack checks the sum in software,
//!    so this does too, over the pseudo header and the whole segment (and the IPv4 header), in
//!    512-byte blocks (`bpf_csum_diff`'s limit).
//!
//! Where it cannot tell (a load fails, a segment over 64 KiB) it accepts: losing a real
//! segment's counts is worse than counting one the stack drops. A forged segment whose checksum
//! field happens to equal its pseudo-header sum passes as case 2.
use aya_ebpf::{
    bindings::{__sk_buff, BPF_CSUM_LEVEL_QUERY},
    helpers::generated::{bpf_csum_diff, bpf_csum_level, bpf_skb_load_bytes},
};
use observer_common::{conn::FAMILY_IPV4, packet::IPPROTO_TCP};

use crate::maps::CSUM_SCRATCH;

/// Bytes summed per `bpf_csum_diff` call (its limit).
pub const BLOCK: usize = 512;
/// Blocks summed at most: a 64 KiB segment (longer ones are accepted unchecked).
const MAX_BLOCKS: u32 = 128;

/// Whether the host's stack will accept this ingress segment's checksums. `l3`, `l4`: offsets of
/// the IP and TCP headers; `tcp_len`: the TCP header and payload as the IP header counts them.
#[inline(always)]
pub fn accepted(skb: *mut __sk_buff, family: u16, l3: usize, l4: usize, tcp_len: usize) -> bool {
    // SAFETY: the classifier's own context.
    if unsafe { bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY as u64) } >= 0 {
        return true;
    }
    observer_csum_check(skb, family as u32, l3 as u32, l4 as u32, tcp_len as u32) != 0
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let s = (sum & 0xffff) + ((sum >> 16) & 0xffff);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Cases 2 and 3 of the module's doc, as a global BPF function (checked once by the verifier,
/// apart from the classifier's paths). 1: accepted, 0: the stack will drop it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn observer_csum_check(skb: *mut __sk_buff, family: u32, l3: u32, l4: u32, tcp_len: u32) -> u32 {
    if skb.is_null() {
        return 1;
    }
    let Some(buf) = CSUM_SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's scratch block, used by nothing else while this runs.
    let buf = unsafe { &mut *buf };
    let bytes = buf.as_mut_ptr() as *mut u8;
    // The pseudo header: addresses (from the packet), protocol, TCP length.
    let pseudo_len: u32 = if family == FAMILY_IPV4 as u32 {
        // SAFETY: 8 bytes into a 512-byte block.
        if unsafe { bpf_skb_load_bytes(skb as *const _, l3 + 12, bytes as *mut _, 8) } != 0 {
            return 1;
        }
        buf[2] = u32::from_ne_bytes([0, IPPROTO_TCP, (tcp_len >> 8) as u8, tcp_len as u8]);
        12
    } else {
        // SAFETY: 32 bytes into a 512-byte block.
        if unsafe { bpf_skb_load_bytes(skb as *const _, l3 + 8, bytes as *mut _, 32) } != 0 {
            return 1;
        }
        buf[8] = u32::from_ne_bytes(tcp_len.to_be_bytes());
        buf[9] = u32::from_ne_bytes([0, 0, 0, IPPROTO_TCP]);
        40
    };
    // SAFETY: `pseudo_len` bytes of the block.
    let pseudo = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr(), pseudo_len, 0) };
    if pseudo < 0 {
        return 1;
    }
    let mut field = [0u8; 2];
    // SAFETY: two bytes onto the stack.
    if unsafe { bpf_skb_load_bytes(skb as *const _, l4 + 16, field.as_mut_ptr() as *mut _, 2) } != 0 {
        return 1;
    }
    // Case 2: the field is the pseudo header's sum (0 and 0xffff are the same number).
    let partial = fold(pseudo as u64);
    let field = u16::from_ne_bytes(field);
    if field == partial || (field == 0 && partial == 0xffff) || (field == 0xffff && partial == 0) {
        return 1;
    }
    // Case 3. The IPv4 header first: IP drops a bad one before TCP sees it.
    if family == FAMILY_IPV4 as u32 {
        let hlen = (l4.wrapping_sub(l3) & 0x3c) as u32;
        if hlen < 20 {
            return 1;
        }
        // SAFETY: 20 ..= 60 bytes into the block.
        if unsafe { bpf_skb_load_bytes(skb as *const _, l3, bytes as *mut _, hlen) } != 0 {
            return 1;
        }
        // SAFETY: as above.
        let ip = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr(), hlen, 0) };
        if ip < 0 {
            return 1;
        }
        if fold(ip as u64) != 0xffff {
            return 0;
        }
    }
    let mut sum = pseudo as u64;
    let mut done: u32 = 0;
    for _ in 0..MAX_BLOCKS {
        if done >= tcp_len {
            break;
        }
        let left = tcp_len - done;
        let n = if left > BLOCK as u32 { BLOCK as u32 } else { left };
        let n = crate::util::len_within(n, BLOCK as u32);
        // Rounded up to whole words, the padding zero (a trailing odd byte is the high half of
        // its 16-bit word, in network order).
        let last = (observer_common::frame::opaque(&((n - 1) / 4)) & (BLOCK as u32 / 4 - 1)) as usize;
        buf[last] = 0;
        // SAFETY: `n` ≤ BLOCK bytes into the block.
        if unsafe { bpf_skb_load_bytes(skb as *const _, l4 + done, bytes as *mut _, n) } != 0 {
            return 1;
        }
        let size = (last as u32 + 1) * 4;
        // SAFETY: `size` ≤ BLOCK bytes of the block.
        let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr(), size, sum as u32) };
        if s < 0 {
            return 1;
        }
        sum = s as u64;
        done += n;
    }
    if done < tcp_len {
        return 1;
    }
    (fold(sum) == 0xffff) as u32
}
