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
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

use observer_common::{
    conn::ConnKey,
    frame::{Event, LostReason, Phase, MAX_STEPS},
    http::{MSG_FIRST, MSG_REQUEST, MSG_RESPONSE, SEG_ACK, SEG_BOUNDARY, SEG_FIN, SEG_HANDOFF, SEG_MSG, SEG_SYN},
    seq,
};

use super::{
    differential::{check_truth, describe, per_dir, run, Item},
    framing::{BodyMode, Found, Framer, Head},
    stream::GAP_TIMEOUT_NS,
    testgen::{corrupt, deliveries, http_noise, script_sized, segments, KernelFeed, Mess, Rng, C, S},
    HttpTable, Outcome, StreamEnds,
};

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
            "{name}: case {i} failed (OBSERVER_FUZZ_SEED={base:#x}); run it alone:\n  OBSERVER_FUZZ_REPLAY={seed:#x} OBSERVER_SKIP_EBPF=1 cargo test -p observer --bin observer -- http::properties::{name} --exact --nocapture"
        );
    }
    let done = done.into_inner();
    eprintln!("fuzz: {name}: {done} cases in {secs:.1} s ({:.0} cases/s, {workers} threads, seed {base:#x})", done as f64 / secs.max(1e-9));
    assert_eq!(done, n, "{name}: cases run");
}

/// Initial sequence numbers: anywhere, and often just before the wrap.
fn isns(rng: &mut Rng) -> [u32; 2] {
    let one = |rng: &mut Rng| if rng.chance(20) { u32::MAX - rng.range(0, 3000) as u32 } else { rng.next() as u32 };
    [one(rng), one(rng)]
}

/// Each round's bytes, requests then responses.
type Rounds = Vec<[Vec<u8>; 2]>;

/// A small generated connection, its rounds cut to about `max` bytes in all.
fn small_script(rng: &mut Rng, allow_broken: bool, max: usize) -> Rounds {
    let s = script_sized(rng, allow_broken, 400);
    let mut rounds = Vec::new();
    let mut total = 0;
    for r in s.rounds {
        if total >= max {
            break;
        }
        let mut q = r.requests;
        let mut a = r.responses;
        q.truncate(max);
        a.truncate(max);
        total += q.len() + a.len();
        rounds.push([q, a]);
    }
    rounds
}

/// Noise, HTTP-like noise, or a small connection with random edits, in one to three rounds.
fn noisy_rounds(rng: &mut Rng) -> Rounds {
    let gen = |rng: &mut Rng, n: usize| if rng.chance(30) { rng.bytes(n) } else { http_noise(rng, n) };
    match rng.range(0, 2) {
        0 => (0..rng.range(1, 3)).map(|_| [0, 1].map(|_| {
            let n = rng.range(0, 300) as usize;
            gen(rng, n)
        })).collect(),
        _ => {
            let broken = rng.chance(20);
            let mut rounds = small_script(rng, broken, 1500);
            for round in rounds.iter_mut() {
                for d in round.iter_mut() {
                    if rng.chance(50) {
                        corrupt(rng, d);
                    }
                }
            }
            rounds
        }
    }
}

/// Feeds `rounds` to a kernel framer (from the SYNs when `isn` is given), each direction of a
/// round cut into segments of up to `max` bytes, one time per round and direction.
fn kernel_run(rounds: &Rounds, isn: Option<[u32; 2]>, rng: &mut Rng, max: usize, fin: bool) -> KernelFeed {
    let mut k = KernelFeed::new(isn, MAX_STEPS);
    let start = isn.unwrap_or([1000, 5000]);
    let mut seq = [start[0].wrapping_add(1), start[1].wrapping_add(1)];
    let mut ts = 1_000_000_000u64;
    for (r, round) in rounds.iter().enumerate() {
        for dir in [C, S] {
            ts += 1_000_000;
            let data = &round[dir as usize];
            for (a, b) in segments(rng, data.len(), max) {
                k.segment(dir, seq[dir as usize].wrapping_add(a as u32), &data[a..b], ts);
            }
            seq[dir as usize] = seq[dir as usize].wrapping_add(data.len() as u32);
            if fin && r + 1 == rounds.len() {
                k.fin(dir);
            }
        }
    }
    k
}

/// Noise and corrupted connections, cut two ways: the kernel framer never panics, never loads
/// outside a segment, keeps its bounds, counts only statuses in 100..=599, never counts
/// backwards, needs at most a turn per byte; and framing from the SYNs, where it is always in
/// step with the stream, both cuts give the same events, counts and end state.
#[test]
fn kernel_framer_on_noise_keeps_its_bounds_and_ignores_segmentation() {
    check(Property::KernelNoise, "kernel_framer_on_noise_keeps_its_bounds_and_ignores_segmentation", |rng| {
        let rounds = noisy_rounds(rng);
        let from_syn = rng.chance(90);
        let isn = from_syn.then(|| isns(rng));
        let fin = rng.chance(20);
        let cut = |rng: &mut Rng| rng.pick(&[1usize, 3, 16, 64, 200, 1448, 4096]);
        let (max_a, max_b) = (cut(rng), cut(rng));
        let mut a = kernel_run(&rounds, isn, rng, max_a, fin);
        let mut b = kernel_run(&rounds, isn, rng, max_b, fin);
        assert!(!a.lost().iter().any(|(_, r)| *r == LostReason::Budget), "segments under the budget never run out of turns");
        if from_syn {
            assert_eq!(a.events, b.events, "events, segments up to {max_a} and {max_b} bytes");
            assert_eq!(a.f.counts, b.f.counts);
            for d in [C, S] {
                assert_eq!((a.f.phase(d), a.f.lost(d)), (b.f.phase(d), b.f.lost(d)), "end state of direction {d}");
            }
            assert_eq!(a.f.close(), b.f.close());
        }
    });
}

/// Per direction, the stream as delivered so far: which bytes arrived, up to where without a
/// hole, and whether `observer_common::seq` (which remembers one hole, within bounds) is still
/// exact about it.
struct Arrivals {
    arrived: Vec<bool>,
    contiguous: usize,
    furthest: usize,
    word: u64,
    exact: bool,
}

impl Arrivals {
    fn new(isn: u32) -> Self {
        Self { arrived: Vec::new(), contiguous: 0, furthest: 0, word: seq::step(0, isn, 0, true, false).word, exact: true }
    }

    /// Bytes `[a, b)` (stream offsets, sequence number `at`) arrive: checks what the sequence
    /// bookkeeping says of them. Returns whether every byte was seen before.
    fn arrive(&mut self, at: u32, a: usize, b: usize) -> bool {
        if self.arrived.len() < b {
            self.arrived.resize(b, false);
        }
        let new = self.arrived[a..b].iter().filter(|x| !**x).count();
        let step = seq::step(self.word, at, (b - a) as u32, false, false);
        assert_eq!((step.new_bytes + step.resent_bytes) as usize, b - a, "every byte is new or resent");
        if self.exact {
            assert_eq!(step.new_bytes as usize, new, "new bytes of [{a}, {b})");
            assert_eq!(step.retransmit, new < b - a, "retransmission [{a}, {b})");
        }
        self.word = step.word;
        self.arrived[a..b].iter_mut().for_each(|x| *x = true);
        self.furthest = self.furthest.max(b);
        while self.contiguous < self.arrived.len() && self.arrived[self.contiguous] {
            self.contiguous += 1;
        }
        // One hole behind the furthest byte, within what one word holds: still exact.
        let mut holes = Vec::new();
        let mut i = self.contiguous;
        while i < self.furthest {
            if !self.arrived[i] {
                let from = i;
                while i < self.furthest && !self.arrived[i] {
                    i += 1;
                }
                holes.push((from, i));
            }
            i += 1;
        }
        self.exact &= match holes.as_slice() {
            [] => true,
            [(lo, hi)] => hi - lo <= 0xffff && self.furthest - hi <= 0x7fff,
            _ => false,
        };
        new == 0
    }
}

/// Well-formed (and now and then malformed) connections delivered with duplicates, reorders
/// and overlapping retransmissions, through the sequence bookkeeping as the tc program does:
/// `seq` counts each byte new exactly once while it can (one hole), a segment it calls a
/// retransmission changes no count, and the kernel framer gives exactly the counts of the clean
/// in-order delivery, or says it lost its place (a gap), never silently other counts.
#[test]
fn kernel_framer_under_duplicates_and_reorders_counts_exactly_or_says_lost() {
    check(Property::KernelMess, "kernel_framer_under_duplicates_and_reorders_counts_exactly_or_says_lost", |rng| {
        let broken = rng.chance(10);
        let rounds = small_script(rng, broken, 12_000);
        let isn = isns(rng);
        let max = rng.pick(&[16usize, 100, 536, 1448, 4096]);
        let mess = Mess::random(rng);
        let mut clean = KernelFeed::new(Some(isn), MAX_STEPS);
        let mut messy = KernelFeed::new(Some(isn), MAX_STEPS);
        let mut arrivals = [Arrivals::new(isn[0]), Arrivals::new(isn[1])];
        let mut offset = [0usize; 2];
        let mut streams: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let mut exposed = false;
        let mut ts = 1_000_000_000u64;
        for round in &rounds {
            for dir in [C, S] {
                let di = dir as usize;
                ts += 1_000_000;
                let data = &round[di];
                let base = offset[di];
                streams[di].extend_from_slice(data);
                let cuts = segments(rng, data.len(), max);
                let first = isn[di].wrapping_add(1);
                for &(a, b) in &cuts {
                    clean.segment(dir, first.wrapping_add((base + a) as u32), &data[a..b], ts);
                }
                let mut order: Vec<(usize, usize)> = deliveries(rng, &cuts, data.len(), mess).into_iter().map(|(a, b)| (base + a, base + b)).collect();
                if base > 0 && rng.chance(mess.dup) {
                    let a = rng.range(0, base as u64 - 1) as usize;
                    order.push((a, (a + rng.range(1, 300) as usize).min(base)));
                }
                for (a, b) in order {
                    let at = first.wrapping_add(a as u32);
                    exposed |= a > arrivals[di].contiguous;
                    let exact = arrivals[di].exact;
                    let resent = arrivals[di].arrive(at, a, b);
                    let events = messy.segment(dir, at, &streams[di][a..b], ts);
                    if exact && resent {
                        assert_eq!(events, 0, "a retransmission [{a}, {b}) of direction {dir} changed counts: {:?}", &messy.events[messy.events.len() - events..]);
                    }
                }
                offset[di] += data.len();
            }
        }
        let lost = messy.lost();
        if !exposed || lost.is_empty() {
            assert_eq!(messy.events, clean.events, "in order or not lost: the clean counts (exposed: {exposed}, {mess:?})");
            assert_eq!(messy.f.counts, clean.f.counts);
            return;
        }
        let clean_lost = clean.lost();
        for (d, why) in &lost {
            assert!(matches!(why, LostReason::Gap | LostReason::Unpaired | LostReason::PipelineTooDeep) || clean_lost.contains(&(*d, *why)), "lost {why:?} in direction {d}");
        }
        for dir in [C, S] {
            let (m, _) = messy.before_loss(dir);
            let (c, _) = clean.before_loss(dir);
            assert!(c.starts_with(&m), "direction {dir}: before its loss, what the clean delivery counted\nmessy {m:?}\nclean {c:?}");
        }
    });
}

/// A connection key of the reference property: four-tuples that differ in their local port.
fn key(i: u64) -> ConnKey {
    ConnKey { local_port: 1 + i as u16, ..ConnKey::zeroed() }
}

/// One record for `HttpTable::on_record`.
struct Record {
    key: u64,
    dir: u8,
    seq: u32,
    flags: u8,
    data: Vec<u8>,
}

/// A random message record (what the kernel framer sends for a message it counted), or nonsense
/// in one's place.
fn message_record(rng: &mut Rng) -> Vec<u8> {
    let n = rng.range(0, 40) as usize;
    let mut d = rng.bytes(n);
    if d.len() >= 8 && rng.chance(80) {
        d[0] = rng.pick(&[MSG_REQUEST, MSG_RESPONSE]);
        d[2] = if rng.chance(30) { MSG_FIRST } else { 0 };
        d[3] = rng.range(0, 20) as u8;
        let status = if rng.chance(80) { rng.range(100, 599) as u16 } else { rng.next() as u16 };
        d[4..6].copy_from_slice(&status.to_le_bytes());
    }
    d
}

/// The reference fed several connections at once, into a table smaller than their number:
/// noise, corrupted and well-formed connections, messed-up deliveries, message and hand-off
/// records, FINs, new SYNs on a used four-tuple, gap expiry, closes. It never panics, keeps its
/// bounds (connections, retired states, reassembly buffers, heads, history), evicts through its
/// index, and reports only statuses in 100..=599.
#[test]
fn reference_on_noise_and_reorders_keeps_its_bounds() {
    check(Property::ReferenceNoise, "reference_on_noise_and_reorders_keeps_its_bounds", |rng| {
        let max = rng.range(1, 4) as usize;
        let mut t = HttpTable::new(max);
        let n_keys = rng.range(1, 6);
        let mut queues: Vec<std::collections::VecDeque<Record>> = Vec::new();
        for k in 0..n_keys {
            let rounds = if rng.chance(50) { noisy_rounds(rng) } else { small_script(rng, false, 3000) };
            let isn = isns(rng);
            let mess = Mess::random(rng);
            let mut q = std::collections::VecDeque::new();
            if rng.chance(80) {
                q.push_back(Record { key: k, dir: C, seq: isn[0], flags: SEG_SYN, data: Vec::new() });
                q.push_back(Record { key: k, dir: S, seq: isn[1], flags: SEG_SYN | SEG_ACK, data: Vec::new() });
            }
            let mut seq = [isn[0].wrapping_add(1), isn[1].wrapping_add(1)];
            for round in &rounds {
                for dir in [C, S] {
                    let data = &round[dir as usize];
                    let max = rng.pick(&[7usize, 100, 1448]);
                    let cuts = segments(rng, data.len(), max);
                    for (a, b) in deliveries(rng, &cuts, data.len(), mess) {
                        let at = seq[dir as usize].wrapping_add(a as u32);
                        let flags = match rng.range(0, 99) {
                            0..=2 => SEG_MSG,
                            3..=4 => SEG_HANDOFF | if rng.chance(50) { SEG_BOUNDARY } else { 0 },
                            5 => SEG_SYN | if rng.chance(50) { SEG_ACK } else { 0 },
                            6 => rng.next() as u8,
                            _ => 0,
                        };
                        let data = if flags == SEG_MSG { message_record(rng) } else { data[a..b].to_vec() };
                        q.push_back(Record { key: k, dir, seq: at, flags, data });
                    }
                    seq[dir as usize] = seq[dir as usize].wrapping_add(data.len() as u32);
                }
            }
            for dir in [C, S] {
                if rng.chance(50) {
                    q.push_back(Record { key: k, dir, seq: seq[dir as usize], flags: SEG_FIN, data: Vec::new() });
                }
            }
            queues.push(q);
        }
        let mut ts = 1_000_000_000u64;
        while queues.iter().any(|q| !q.is_empty()) {
            let k = rng.range(0, n_keys - 1) as usize;
            let Some(r) = queues[k].pop_front() else { continue };
            // Kernel times: mostly forward, now and then from a CPU a little behind.
            ts = if rng.chance(5) { ts.saturating_sub(rng.range(0, 1_000_000)) } else { ts + rng.range(0, 3_000_000) };
            let dir = if rng.chance(1) { rng.range(0, 3) as u8 } else { r.dir };
            let u = t.on_record(key(r.key), dir, r.seq, r.flags, &r.data, ts);
            for o in &u.outcomes {
                if let Outcome::Response { status, .. } = o {
                    assert!((100..=599).contains(status), "a response with status {status}");
                }
            }
            match rng.range(0, 199) {
                0 => t.set_records_lost(rng.chance(50)),
                1 => {
                    t.expire_gaps(ts + rng.pick(&[0, GAP_TIMEOUT_NS / 2, 2 * GAP_TIMEOUT_NS]));
                }
                2 => {
                    let ends = StreamEnds { seq: [rng.chance(50).then(|| rng.next() as u32), None], carried: [rng.chance(50), rng.chance(50)], records_lost: rng.chance(30) };
                    t.close(&key(rng.range(0, n_keys - 1)), 0, ts, &ends);
                }
                _ => {}
            }
            t.check_bounds();
        }
    });
}

/// Well-formed connections delivered with duplicates, reorders and overlapping retransmissions
/// to both framers (`differential::run`): the reference, which reassembles, reports exactly
/// what the generator meant; the kernel framer reports the same as the reference, or loses its
/// place (a gap) having reported nothing but what the reference did before.
#[test]
fn both_framers_agree_under_duplicates_and_reorders() {
    check(Property::Agreement, "both_framers_agree_under_duplicates_and_reorders", |rng| {
        let s = script_sized(rng, false, 20_000);
        let max = rng.pick(&[9usize, 100, 1448, 4096]);
        let mess = Mess::random(rng);
        let r = run(&s, rng, max, MAX_STEPS, mess);
        check_truth(&s, &r.reference, "reference", 0);
        if r.kernel_lost.is_empty() {
            assert_eq!(r.kernel, r.reference, "{mess:?}\n{}", describe(&s));
            return;
        }
        assert!(r.exposed, "lost with every segment in order: {:?}\n{}", r.kernel_lost, describe(&s));
        for (d, why) in &r.kernel_lost {
            assert!(matches!(why, LostReason::Gap | LostReason::Unpaired | LostReason::PipelineTooDeep), "lost {why:?} in direction {d}");
        }
        for dir in [C, S] {
            let mut k = per_dir(&r.kernel, dir);
            k.truncate(k.iter().position(|i| *i == Item::Lost).unwrap_or(k.len()));
            let mut f = per_dir(&r.reference, dir);
            f.retain(|i| !matches!(i, Item::NoResponse(_)));
            assert!(f.starts_with(&k), "direction {dir}: kernel {k:?}\nreference {f:?}\n{}", describe(&s));
        }
    });
}

/// A Content-Length value as written, and the length it means (`None`: not a length).
fn length_value(rng: &mut Rng) -> (String, Option<u64>) {
    let n = match rng.range(0, 6) {
        0 => rng.range(0, 100),
        1 => (1 << 31) + rng.range(0, 4) - 2,
        2 => (1 << 32) + rng.range(0, 4) - 2,
        3 => rng.range(0, 1 << 40),
        4 => rng.next(),
        5 => u64::MAX - rng.range(0, 2),
        _ => rng.range(0, 1 << 36),
    };
    let ws = |rng: &mut Rng| rng.pick(&["", "", " ", "\t", "  \t"]);
    if rng.chance(40) {
        let zeros = "0".repeat(rng.range(0, 3) as usize);
        return (format!("{}{zeros}{n}{}", ws(rng), ws(rng)), Some(n));
    }
    let big = (u64::MAX as u128) + 1 + rng.range(0, 1 << 40) as u128;
    let bad = match rng.range(0, 12) {
        0 => format!("+{n}"),
        1 => format!("-{n}"),
        2 => format!("{n} {n}"),
        3 => format!(" {n} 5"),
        4 => format!("{n},{n}"),
        5 => format!("0x{n:x}"),
        6 => format!("{big}"),
        7 => "99999999999999999999".to_owned(),
        8 => String::new(),
        9 => format!("{n}a"),
        10 => format!("{n}\r5"),
        11 => format!("{n}.0"),
        _ => format!("{n}\x0b"),
    };
    (bad, None)
}

/// A status code as written, and the status it means (`None`: not a status line).
fn status_value(rng: &mut Rng) -> (String, Option<u16>) {
    if rng.chance(40) {
        let st = rng.range(100, 599) as u16;
        return (st.to_string(), Some(st));
    }
    (rng.pick(&["000", "099", "600", "999", "99", "1000", "2000", "20", "2x0", "-200", "0200"]).to_owned(), None)
}

/// Feeds `data` to a reference framer of `dir`'s kind, a GET's response when it frames responses.
fn reference_heads(dir: u8, data: &[u8]) -> (Vec<Found>, Framer) {
    let mut f = Framer::new(dir == S);
    let found = f.feed(data, 1, &mut |h| match h {
        Head::Request { body, .. } => *body,
        Head::Response { status, body } => super::framing::response_body(*status, *body, Some("GET")),
    });
    (found, f)
}

/// A message whose body is `length` bytes of `dir` (a POST or a 200 response), skipped by both
/// framers as they do (the kernel's by arithmetic, no load; the daemon by asking the kernel not
/// to forward it), then the next message: both count it, whatever the length's size.
fn skip_a_body(rng: &mut Rng, dir: u8, head: &[u8], length: u64) {
    let next: &[u8] = if dir == S { b"HTTP/1.1 204 No Content\r\n\r\n" } else { b"GET /next HTTP/1.1\r\n\r\n" };
    let isn = isns(rng);
    let first = isn[dir as usize].wrapping_add(1);
    // The kernel framer.
    let mut k = KernelFeed::new(Some(isn), MAX_STEPS);
    if dir == S {
        k.segment(C, isn[0].wrapping_add(1), b"GET / HTTP/1.1\r\n\r\n", 1);
    }
    k.segment(dir, first, head, 2);
    assert_eq!(k.f.dirs[dir as usize].remaining, length, "the kernel reads the length");
    let mut at = first.wrapping_add(head.len() as u32);
    let mut left = length;
    while left > 0 {
        let n = left.min(rng.pick(&[1448, 65_535, 1 << 30])) as u32;
        k.body(dir, at, n, 3);
        at = at.wrapping_add(n);
        left -= n as u64;
    }
    k.segment(dir, at, next, 4);
    assert_eq!(k.lost(), vec![], "the kernel framer after a body of {length} bytes");
    assert_eq!(k.events.len(), if dir == S { 3 } else { 2 }, "{:?}", k.events);
    // The reference, with the kernel's skips emulated: it forwards the bytes from the hint on.
    let mut t = HttpTable::new(4);
    let key = ConnKey::zeroed();
    t.on_record(key, C, isn[0], SEG_SYN, b"", 1);
    t.on_record(key, S, isn[1], SEG_SYN | SEG_ACK, b"", 1);
    let mut outcomes = Vec::new();
    if dir == S {
        outcomes.extend(t.on_record(key, C, isn[0].wrapping_add(1), 0, b"GET / HTTP/1.1\r\n\r\n", 1).outcomes);
    }
    let mut skip = None;
    let feed = |t: &mut HttpTable, at: u32, data: &[u8], outcomes: &mut Vec<Outcome>, skip: &mut Option<u32>| {
        let u = t.on_record(key, dir, at, 0, data, 2);
        outcomes.extend(u.outcomes);
        if let Some(h) = u.hints {
            *skip = Some(if dir == S { h.skip_out } else { h.skip_in });
        }
    };
    feed(&mut t, first, head, &mut outcomes, &mut skip);
    let mut at = first.wrapping_add(head.len() as u32);
    let mut left = length;
    let mut records = 0;
    while left > 0 {
        if let Some(to) = skip.take() {
            let ahead = to.wrapping_sub(at);
            assert!((ahead as i32) > 0 && ahead as u64 <= left, "a hint {ahead} bytes ahead, {left} of the body left");
            at = to;
            left -= ahead as u64;
            continue;
        }
        let n = left.min(1000) as usize;
        feed(&mut t, at, &vec![b'x'; n], &mut outcomes, &mut skip);
        at = at.wrapping_add(n as u32);
        left -= n as u64;
        records += 1;
        assert!(records < 1000, "the body of {length} bytes is forwarded, not skipped");
    }
    feed(&mut t, at, next, &mut outcomes, &mut skip);
    assert!(!outcomes.iter().any(|o| matches!(o, Outcome::FramingLost | Outcome::NotHttp)), "the reference after a body of {length} bytes: {outcomes:?}");
    assert_eq!(outcomes.len(), if dir == S { 3 } else { 2 }, "{outcomes:?}");
}

/// Strict framing in both framers: a Content-Length is digits only (whitespace around them),
/// within 64 bits, one value however many times it is given; a status code is three digits in
/// 100..=599. Anything else is not HTTP to either (the kernel framer loses its place, the
/// reference breaks); a valid length is read exactly, 2 GiB and beyond included, and its body
/// skipped to the next message.
#[test]
fn strict_lengths_and_statuses_in_both_framers() {
    check(Property::Strict, "strict_lengths_and_statuses_in_both_framers", |rng| {
        let dir = if rng.chance(70) { S } else { C };
        let start = if dir == S { "HTTP/1.1 200 OK\r\n" } else { "POST /u HTTP/1.1\r\nHost: h\r\n" };
        if dir == S && rng.chance(30) {
            // A status code.
            let (code, status) = status_value(rng);
            let msg = format!("HTTP/1.1 {code} Reason\r\nContent-Length: 0\r\n\r\n");
            let mut k = KernelFeed::new(Some(isns(rng)), MAX_STEPS);
            k.segment(C, k.f.dirs[C as usize].next_seq, b"GET / HTTP/1.1\r\n\r\n", 1);
            k.segment(S, k.f.dirs[S as usize].next_seq, msg.as_bytes(), 2);
            let (found, _) = reference_heads(S, msg.as_bytes());
            match status {
                Some(st) => {
                    let latency_ns = (st >= 200 || st == 101).then_some(1);
                    assert_eq!(k.events.last(), Some(&(S, Event::Response { status: st, latency_ns })), "{msg:?}");
                    assert!(matches!(found.as_slice(), [Found::Head(Head::Response { status, .. }, _)] if *status == st), "{msg:?}: {found:?}");
                }
                None => {
                    assert_eq!(k.lost(), vec![(S, LostReason::NotHttp)], "{msg:?}");
                    assert!(matches!(found.as_slice(), [Found::Broken(_)]), "{msg:?}: {found:?}");
                }
            }
            return;
        }
        let (value, length) = length_value(rng);
        let name = rng.pick(&["Content-Length", "content-length", "CONTENT-LENGTH"]);
        let mut head = format!("{start}{name}:{value}\r\n");
        let conflicting = length.is_some() && rng.chance(20);
        if conflicting {
            let other = length.map(|n| n.wrapping_add(rng.range(1, 1000)));
            head.push_str(&format!("Content-Length: {}\r\n", other.unwrap_or(0)));
        } else if length.is_some() && rng.chance(20) {
            head.push_str(&format!("Content-Length: 0{}\r\n", length.unwrap_or(0)));
        }
        head.push_str("\r\n");
        let length = if conflicting { None } else { length };
        let mut k = KernelFeed::new(Some(isns(rng)), MAX_STEPS);
        if dir == S {
            k.segment(C, k.f.dirs[C as usize].next_seq, b"GET / HTTP/1.1\r\n\r\n", 1);
        }
        k.segment(dir, k.f.dirs[dir as usize].next_seq, head.as_bytes(), 2);
        let (found, f) = reference_heads(dir, head.as_bytes());
        match length {
            Some(n) => {
                assert_eq!(k.lost(), vec![], "{head:?}");
                let d = &k.f.dirs[dir as usize];
                assert_eq!((d.phase(), d.remaining), if n == 0 { (Phase::Idle, 0) } else { (Phase::Body, n) }, "{head:?}");
                let body = match found.as_slice() {
                    [Found::Head(Head::Response { body, .. } | Head::Request { body, .. }, _)] => *body,
                    _ => panic!("{head:?}: {found:?}"),
                };
                assert_eq!(body, BodyMode::Length(n), "{head:?}");
                assert_eq!(f.skippable(), n, "{head:?}");
                if n <= 1 << 36 && rng.chance(20) {
                    skip_a_body(rng, dir, head.as_bytes(), n);
                }
            }
            None => {
                assert_eq!(k.lost(), vec![(dir, LostReason::BadLength)], "{head:?}");
                assert!(matches!(found.as_slice(), [Found::Broken(_)]), "{head:?}: {found:?}");
            }
        }
    });
}

/// The lengths and status codes the issue names, one by one, in both framers.
#[test]
fn named_bad_lengths_and_statuses_are_not_http_to_either_framer() {
    for value in ["+5", "-1", " 5 5", "99999999999999999999", "18446744073709551616", "5\r\nContent-Length: 6", "5\r5", "0x5", ""] {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
        let mut k = KernelFeed::new(Some([1000, 5000]), MAX_STEPS);
        k.segment(C, 1001, b"GET / HTTP/1.1\r\n\r\n", 1);
        k.segment(S, 5001, head.as_bytes(), 2);
        assert_eq!(k.lost(), vec![(S, LostReason::BadLength)], "kernel, Content-Length {value:?}");
        let (found, _) = reference_heads(S, head.as_bytes());
        assert!(matches!(found.as_slice(), [Found::Broken(_)]), "reference, Content-Length {value:?}: {found:?}");
    }
    for code in ["000", "600", "99", "1000", "099"] {
        let head = format!("HTTP/1.1 {code} X\r\n\r\n");
        let mut k = KernelFeed::new(Some([1000, 5000]), MAX_STEPS);
        k.segment(C, 1001, b"GET / HTTP/1.1\r\n\r\n", 1);
        k.segment(S, 5001, head.as_bytes(), 2);
        assert_eq!(k.lost(), vec![(S, LostReason::NotHttp)], "kernel, status {code}");
        let (found, _) = reference_heads(S, head.as_bytes());
        assert!(matches!(found.as_slice(), [Found::Broken(_)]), "reference, status {code}: {found:?}");
    }
    // Chunk sizes are hex digits only too (no sign, which `from_str_radix` would take).
    let msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nabcde\r\n0\r\n\r\n";
    let (found, _) = reference_heads(S, msg);
    assert!(matches!(found.as_slice(), [Found::Head(..), Found::Broken(_)]), "reference, chunk size +5: {found:?}");
    // Bodies of 2 GiB and more, read and skipped by both, the next message counted.
    for length in [(1u64 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 5_000_000_000, 1 << 36] {
        for dir in [C, S] {
            let head = if dir == S { format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n") } else { format!("POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\n") };
            skip_a_body(&mut Rng(length), dir, head.as_bytes(), length);
        }
    }
}

