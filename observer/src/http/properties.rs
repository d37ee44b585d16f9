//! Property tests of both HTTP framers: the kernel's (`observer_common::frame`, with the sequence
//! bookkeeping `observer_common::seq` in front, as the tc program runs them) and the daemon's
//! reference (`HttpTable`), fed noise, corrupted and well-formed connections in random
//! segmentations, with duplicates, reorders and overlapping retransmissions.
//!
//! Each property runs many generated cases: [`SUITE`] says how many in the unit-test suite (over
//! 10^5 in all, in the debug build). `cargo xtask fuzz` runs the same tests in a release build
//! with `OBSERVER_FUZZ_CASES=N` (shared among them in the suite's proportions) and
//! `OBSERVER_FUZZ_SEED`; a failing case prints its own seed, and `OBSERVER_FUZZ_REPLAY=<seed>`
//! runs that case alone.
//!
//! This file holds the harness (how many cases, which seeds, on every CPU) and the list of
//! properties; each property's case is in the module of its theme: [`kernel`] (the kernel
//! framer alone), [`reference`] (the daemon's table alone, and both framers compared), [`strict`]
//! (lengths and status codes both framers must read exactly, or refuse); [`scripts`] makes the
//! connections they share.
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

use super::testgen::Rng;

mod kernel;
mod reference;
mod scripts;
mod strict;

/// Cases per property in the unit-test suite, in the order of [`Property`].
const SUITE: [u64; 5] = [50_000, 20_000, 10_000, 5_000, 20_000];

#[derive(Clone, Copy)]
enum Property {
    KernelNoise = 0,
    KernelMess = 1,
    ReferenceNoise = 2,
    Agreement = 3,
    Strict = 4,
}

/// The cases of `p` this run: its share of `OBSERVER_FUZZ_CASES` when set (what is left over
/// from rounding goes to the first), else its count in [`SUITE`].
fn planned(p: Property) -> u64 {
    let Some(total) = env_u64("OBSERVER_FUZZ_CASES") else { return SUITE[p as usize] };
    let suite: u64 = SUITE.iter().sum();
    let shares: Vec<u64> = SUITE.iter().map(|&n| (total as u128 * n as u128 / suite as u128) as u64).collect();
    let rest = total - shares.iter().sum::<u64>();
    shares[p as usize] + if p as usize == 0 { rest } else { 0 }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Runs `case` on [`planned`] cases of property `name` across all CPUs, each with its own
/// generator seeded from `OBSERVER_FUZZ_SEED` (0 in the unit suite), the property and the case
/// number. Counts the cases run and prints them with the rate; on a failure, panics with the
/// failing case's seed and the command that runs it alone.
fn check(p: Property, name: &str, case: impl Fn(&mut Rng) + Sync) {
    if let Some(seed) = env_u64("OBSERVER_FUZZ_REPLAY") {
        eprintln!("fuzz: {name}: replaying case seed {seed:#x}");
        case(&mut Rng(seed));
        return;
    }
    let n = planned(p);
    let base = env_u64("OBSERVER_FUZZ_SEED").unwrap_or(0);
    let case_seed = |i: u64| Rng(base ^ (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xd1b5_4a32_d192_ed03)).next();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<(u64, u64)>> = Mutex::new(None);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let from = next.fetch_add(64, Ordering::Relaxed);
                    if from >= n {
                        break;
                    }
                    for i in from..(from + 64).min(n) {
                        let seed = case_seed(i);
                        if catch_unwind(AssertUnwindSafe(|| case(&mut Rng(seed)))).is_err() {
                            stop.store(true, Ordering::Relaxed);
                            failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert((i, seed));
                            return;
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    if let Some((i, seed)) = *failed.lock().unwrap_or_else(|e| e.into_inner()) {
        panic!(
            "{name}: case {i} failed (OBSERVER_FUZZ_SEED={base:#x}); run it alone:\n  OBSERVER_FUZZ_REPLAY={seed:#x} OBSERVER_SKIP_EBPF=1 cargo test -p observer --lib -- http::properties::{name} --exact --nocapture"
        );
    }
    let done = done.into_inner();
    eprintln!("fuzz: {name}: {done} cases in {secs:.1} s ({:.0} cases/s, {workers} threads, seed {base:#x})", done as f64 / secs.max(1e-9));
    assert_eq!(done, n, "{name}: cases run");
}

/// Noise and corrupted connections, cut two ways: the kernel framer never panics, never loads
/// outside a segment, keeps its bounds, counts only statuses in 100..=599, never counts
/// backwards, needs at most a turn per byte; and framing from the SYNs, where it is always in
/// step with the stream, both cuts give the same events, counts and end state.
#[test]
fn kernel_framer_on_noise_keeps_its_bounds_and_ignores_segmentation() {
    check(Property::KernelNoise, "kernel_framer_on_noise_keeps_its_bounds_and_ignores_segmentation", kernel::noise);
}

/// Well-formed (and now and then malformed) connections delivered with duplicates, reorders
/// and overlapping retransmissions, through the sequence bookkeeping as the tc program does:
/// `seq` counts each byte new exactly once while it can (one hole), a segment it calls a
/// retransmission changes no count, and the kernel framer gives exactly the counts of the clean
/// in-order delivery, or says it lost its place (a gap), never silently other counts.
#[test]
fn kernel_framer_under_duplicates_and_reorders_counts_exactly_or_says_lost() {
    check(Property::KernelMess, "kernel_framer_under_duplicates_and_reorders_counts_exactly_or_says_lost", kernel::under_mess);
}

/// The reference fed several connections at once, into a table smaller than their number:
/// noise, corrupted and well-formed connections, messed-up deliveries, message and hand-off
/// records, FINs, new SYNs on a used four-tuple, gap expiry, closes. It never panics, keeps its
/// bounds (connections, retired states, reassembly buffers, heads, history), evicts through its
/// index, and reports only statuses in 100..=599.
#[test]
fn reference_on_noise_and_reorders_keeps_its_bounds() {
    check(Property::ReferenceNoise, "reference_on_noise_and_reorders_keeps_its_bounds", reference::noise_and_reorders);
}

/// Well-formed connections delivered with duplicates, reorders and overlapping retransmissions
/// to both framers (`differential::run`): the reference, which reassembles, reports exactly
/// what the generator meant; the kernel framer reports the same as the reference, or loses its
/// place (a gap) having reported nothing but what the reference did before.
#[test]
fn both_framers_agree_under_duplicates_and_reorders() {
    check(Property::Agreement, "both_framers_agree_under_duplicates_and_reorders", reference::agreement);
}

/// Strict framing in both framers: a Content-Length is digits only (whitespace around them),
/// within 64 bits, one value however many times it is given; a status code is three digits in
/// 100..=599. Anything else is not HTTP to either (the kernel framer loses its place, the
/// reference breaks); a valid length is read exactly, 2 GiB and beyond included, and its body
/// skipped to the next message.
#[test]
fn strict_lengths_and_statuses_in_both_framers() {
    check(Property::Strict, "strict_lengths_and_statuses_in_both_framers", strict::lengths_and_statuses);
}

/// The lengths and status codes the issue names, one by one, in both framers.
#[test]
fn named_bad_lengths_and_statuses_are_not_http_to_either_framer() {
    strict::named_values();
}
