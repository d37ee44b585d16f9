//! Properties of the kernel framer alone (`observer_common::frame`, with the sequence
//! bookkeeping `observer_common::seq` in front, as the tc program runs them): noise and
//! corrupted connections cut two ways, and deliveries with duplicates, reorders and overlapping
//! retransmissions checked against the clean in-order delivery.
use observer_common::{
    frame::{LostReason, MAX_STEPS},
    seq,
};

use super::{
    super::testgen::{deliveries, segments, KernelFeed, Mess, Rng, C, S},
    scripts::{isns, noisy_rounds, small_script, Rounds},
};

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

/// One case of [`super::kernel_framer_on_noise_keeps_its_bounds_and_ignores_segmentation`].
pub(super) fn noise(rng: &mut Rng) {
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

/// One case of [`super::kernel_framer_under_duplicates_and_reorders_counts_exactly_or_says_lost`].
pub(super) fn under_mess(rng: &mut Rng) {
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
        assert!(
            matches!(why, LostReason::Gap | LostReason::Unpaired | LostReason::PipelineTooDeep) || clean_lost.contains(&(*d, *why)),
            "lost {why:?} in direction {d}"
        );
    }
    for dir in [C, S] {
        let (m, _) = messy.before_loss(dir);
        let (c, _) = clean.before_loss(dir);
        assert!(c.starts_with(&m), "direction {dir}: before its loss, what the clean delivery counted\nmessy {m:?}\nclean {c:?}");
    }
}
