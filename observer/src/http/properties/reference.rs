//! Properties of the reference, the daemon's [`HttpTable`]: fed many connections at once into a
//! table smaller than their number, it keeps its bounds; and compared with the kernel framer
//! over messed-up deliveries, the two agree (or the kernel's says where it lost its place).
use observer_common::{
    conn::ConnKey,
    frame::{LostReason, MAX_STEPS},
    http::{MSG_FIRST, MSG_REQUEST, MSG_RESPONSE, SEG_ACK, SEG_BOUNDARY, SEG_FIN, SEG_HANDOFF, SEG_MSG, SEG_SYN},
};

use super::{
    super::{
        differential::{check_truth, describe, per_dir, run, Item},
        stream::GAP_TIMEOUT_NS,
        testgen::{deliveries, script_sized, segments, Mess, Rng, C, S},
        HttpTable, Outcome, StreamEnds,
    },
    scripts::{isns, noisy_rounds, small_script},
};

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

/// One case of [`super::reference_on_noise_and_reorders_keeps_its_bounds`].
pub(super) fn noise_and_reorders(rng: &mut Rng) {
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
                let ends = StreamEnds {
                    seq: [rng.chance(50).then(|| rng.next() as u32), None],
                    carried: [rng.chance(50), rng.chance(50)],
                    records_lost: rng.chance(30),
                };
                t.close(&key(rng.range(0, n_keys - 1)), 0, ts, &ends);
            }
            _ => {}
        }
        t.check_bounds();
    }
}

/// One case of [`super::both_framers_agree_under_duplicates_and_reorders`].
pub(super) fn agreement(rng: &mut Rng) {
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
}
