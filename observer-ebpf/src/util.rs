//! Small helpers for every program.
use observer_common::global::Counter;

use crate::maps::GLOBAL;

/// Adds `v` to `*p` atomically (a BPF `lock xadd`): ingress and egress of one connection may run
/// on two CPUs at once, and a plain `+=` would lose counts.
#[inline(always)]
pub fn add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value the caller looked up and checked for null.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, v);
    }
}

/// Counts one event in the per-CPU global counters (per-CPU: no atomics needed).
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = GLOBAL.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *p += 1 };
    }
}

/// Sets a per-CPU gauge slot of `GLOBAL`.
#[inline(always)]
pub fn gauge(c: Counter, v: u64) {
    if let Some(p) = GLOBAL.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *p = v };
    }
}

/// `n` (1 ..= `max`, a power of two) in a form every verifier follows as a length for a helper
/// (`bpf_skb_load_bytes`): masked after an opaque read, since the compiler, knowing the bounds,
/// would fold a plain mask away, and older verifiers (6.1) lose them and refuse a length that
/// may be 0.
#[inline(always)]
pub fn len_within(n: u32, max: u32) -> u32 {
    (observer_common::frame::opaque(&n).wrapping_sub(1) & (max - 1)) + 1
}
