//! The connections the properties feed, besides `testgen`'s: initial sequence numbers near the
//! wrap, generated connections cut small, and noise or corrupted connections in a few rounds.
use super::super::testgen::{corrupt, http_noise, script_sized, Rng};

/// Initial sequence numbers: anywhere, and often just before the wrap.
pub(super) fn isns(rng: &mut Rng) -> [u32; 2] {
    let one = |rng: &mut Rng| if rng.chance(20) { u32::MAX - rng.range(0, 3000) as u32 } else { rng.next() as u32 };
    [one(rng), one(rng)]
}

/// Each round's bytes, requests then responses.
pub(super) type Rounds = Vec<[Vec<u8>; 2]>;

/// A small generated connection, its rounds cut to about `max` bytes in all.
pub(super) fn small_script(rng: &mut Rng, allow_broken: bool, max: usize) -> Rounds {
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
pub(super) fn noisy_rounds(rng: &mut Rng) -> Rounds {
    let gen = |rng: &mut Rng, n: usize| if rng.chance(30) { rng.bytes(n) } else { http_noise(rng, n) };
    match rng.range(0, 2) {
        0 => (0..rng.range(1, 3))
            .map(|_| {
                [0, 1].map(|_| {
                    let n = rng.range(0, 300) as usize;
                    gen(rng, n)
                })
            })
            .collect(),
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
