//! How segments arrive: a stream cut into segments, and the order a network (and two CPUs racing
//! on one flow) delivers them in, with duplicates, swaps, delays and overlapping retransmissions.
use super::Rng;

/// Cuts `len` bytes into segments of up to `max` bytes, with now and then a larger one (so that
/// long bodies do not make thousands of tiny segments). Offsets `(start, end)`.
pub fn segments(rng: &mut Rng, len: usize, max: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < len {
        let max = if max < 1448 && rng.chance(10) { 4096 } else { max };
        let n = (rng.range(1, max as u64) as usize).min(len - at);
        v.push((at, at + n));
        at += n;
    }
    v
}

/// How a network (and two CPUs racing on one flow) mess up the order of segments, in percent
/// per segment.
#[derive(Clone, Copy, Debug)]
pub struct Mess {
    /// Delivered again, right after or a few segments later.
    pub dup: u64,
    /// Swapped with the next one.
    pub swap: u64,
    /// Delivered two to four places later.
    pub delay: u64,
    /// Followed by a retransmission that overlaps it and its neighbours.
    pub overlap: u64,
}

impl Mess {
    pub const NONE: Mess = Mess { dup: 0, swap: 0, delay: 0, overlap: 0 };

    pub fn random(rng: &mut Rng) -> Mess {
        let p = |rng: &mut Rng| if rng.chance(50) { 0 } else { rng.pick(&[2, 5, 10, 30]) };
        Mess { dup: p(rng), swap: p(rng), delay: p(rng), overlap: p(rng) }
    }
}

/// The order segments `cuts` (of a stream of `len` bytes) arrive in, messed up by `mess`: every
/// byte arrives at least once.
pub fn deliveries(rng: &mut Rng, cuts: &[(usize, usize)], len: usize, mess: Mess) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = Vec::with_capacity(cuts.len() * 2);
    for &(a, b) in cuts {
        v.push((a, b));
        if rng.chance(mess.overlap) {
            let a2 = a - rng.range(0, a.min(300) as u64) as usize;
            let b2 = (b + rng.range(0, 300) as usize).min(len);
            v.push((a2, b2));
        }
    }
    let mut i = 0;
    while i + 1 < v.len() {
        if rng.chance(mess.swap) {
            v.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
    for i in 0..v.len() {
        if rng.chance(mess.delay) {
            let s = v.remove(i);
            let to = (i + rng.range(2, 4) as usize).min(v.len());
            v.insert(to, s);
        }
    }
    let mut i = 0;
    while i < v.len() {
        if rng.chance(mess.dup) {
            let to = (i + rng.range(1, 3) as usize).min(v.len());
            v.insert(to, v[i]);
            i += 1;
        }
        i += 1;
    }
    v
}
