//! What a connection carries (`observer_common::proto`), read once from the first segment of its
//! stream: HTTP/1.x, TLS with the server name its client asked for, HTTP/2, or other.
use aya_ebpf::{bindings::__sk_buff, helpers::generated::bpf_skb_load_bytes};
use observer_common::{
    conn::ConnStats,
    http::START_LEN,
    proto::{client_hello_sni, protocol_of, HELLO_LEN, PROTO_TLS},
};

use crate::maps::{ACCOUNT_ARGS, HELLO_SCRATCH, NAME_SCRATCH, TLS_NAMES};

/// Classifies the connection from this segment (the first of its stream; its key, offset and
/// length in this CPU's `ACCOUNT_ARGS`) into `stats.protocol`, and keeps a TLS server name in
/// `TLS_NAMES`. A global BPF function: checked once, and called once per connection.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn observer_protocol(skb: *mut __sk_buff, stats: *mut ConnStats) -> u32 {
    if skb.is_null() || stats.is_null() {
        return 0;
    }
    let (Some(a), Some(buf), Some(name)) = (ACCOUNT_ARGS.get_ptr(0), HELLO_SCRATCH.get_ptr_mut(0), NAME_SCRATCH.get_ptr_mut(0)) else { return 0 };
    // SAFETY: this CPU's slots: the classifier's arguments and two scratch blocks.
    let (a, buf, name) = unsafe { (&*a, &mut *buf, &mut *name) };
    let len = a.payload_len as usize;
    if len == 0 {
        return 0;
    }
    let n = if len > HELLO_LEN { HELLO_LEN } else { len } as u32;
    let n = crate::util::len_within(n, HELLO_LEN as u32);
    // SAFETY: `n` ≤ HELLO_LEN bytes into the block.
    if unsafe { bpf_skb_load_bytes(skb as *const _, a.payload_off, buf.as_mut_ptr() as *mut _, n) } != 0 {
        return 0;
    }
    let mut head = [0u8; START_LEN];
    head.copy_from_slice(&buf[..START_LEN]);
    let p = protocol_of(&head, if (n as usize) < START_LEN { n as usize } else { START_LEN });
    // SAFETY: `stats` is the connection's non-null map value.
    unsafe { (*stats).protocol = p };
    if p == PROTO_TLS {
        let found = client_hello_sni(buf, n as usize, &mut name.name);
        if found > 0 {
            name.len = found as u32;
            // SAFETY: as above.
            name.conn = unsafe { (*stats).first_seen_ns } as u32;
            let _ = TLS_NAMES.insert(&a.key, name, 0);
        }
    }
    0
}
