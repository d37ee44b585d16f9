//! Differential test: the kernel framer (`observer_common::frame`, fed block by block as a BPF
//! program would) against the reference user-space framer (`HttpTable`: `httparse`, reassembly,
//! pairing), over generated connections cut into random segments. Both must report the same
//! requests and responses, in the same order, with the same status codes and latencies, the same
//! unanswered requests at close, and agree with what the generator meant. The generators are
//! `testgen`'s; [`run`] also serves the property tests (`properties`), which mess up the delivery.
use observer_common::{
    conn::ConnKey,
    frame::{Event, LostReason, MAX_STEPS},
    http::{SEG_ACK, SEG_FIN, SEG_SYN},
};

use super::{
    testgen::{deliveries, script, segments, KernelFeed, Mess, Rng, Script, C, S},
    HttpTable, Outcome, StreamEnds,
};

/// What either framer reported, in one comparable form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Item {
    Request(String),
    Response(u16, Option<u64>),
    Lost,
    NoResponse(u64),
}

/// What the two framers reported for one delivery of a script.
pub(super) struct Run {
    pub reference: Vec<(u8, Item)>,
    pub kernel: Vec<(u8, Item)>,
    pub kernel_lost: Vec<(u8, LostReason)>,
    /// The most blocks the kernel framer loaded for one segment.
    pub max_loads: usize,
    /// A segment arrived while bytes before it had not: in order, framing needs no more.
    pub exposed: bool,
}

/// Feeds `s` to both framers: round by round, the requests then the responses, each direction
/// cut into segments of up to `max_segment` bytes, delivered in the order `mess` makes (now and
/// then a segment of the round before again, as a late retransmission); the kernel framer with
/// `budget` turns per segment.
pub(super) fn run(s: &Script, rng: &mut Rng, max_segment: usize, budget: usize, mess: Mess) -> Run {
    let isn = [rng.next() as u32, rng.next() as u32];
    let key = ConnKey::zeroed();
    let mut t = HttpTable::new(4);
    t.on_record(key, C, isn[0], SEG_SYN, b"", 1);
    t.on_record(key, S, isn[1], SEG_SYN | SEG_ACK, b"", 2);
    let mut k = KernelFeed::new(Some(isn), budget);
    let seq = [isn[0].wrapping_add(1), isn[1].wrapping_add(1)];
    let mut out = Run { reference: Vec::new(), kernel: Vec::new(), kernel_lost: Vec::new(), max_loads: 0, exposed: false };
    let mut ts = 1_000_000_000u64;
    // Per direction: the stream so far (for late retransmissions), and how much of it arrived
    // without a hole.
    let mut sent: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut contiguous = [0usize; 2];
    let mut arrived: [Vec<bool>; 2] = [Vec::new(), Vec::new()];
    let n_rounds = s.rounds.len();
    for (r, round) in s.rounds.iter().enumerate() {
        for (dir, data) in [(C, &round.requests), (S, &round.responses)] {
            let di = dir as usize;
            // One time per round and direction: latencies compare exactly whatever the cuts.
            ts += 1_000_000;
            let base = sent[di].len();
            sent[di].extend_from_slice(data);
            arrived[di].resize(sent[di].len(), false);
            let cuts = segments(rng, data.len(), max_segment);
            let mut order: Vec<(usize, usize)> = deliveries(rng, &cuts, data.len(), mess).into_iter().map(|(a, b)| (base + a, base + b)).collect();
            if base > 0 && rng.chance(mess.dup) {
                // A late retransmission of bytes of an earlier round.
                let a = rng.range(0, base as u64 - 1) as usize;
                order.push((a, (a + rng.range(1, 200) as usize).min(base)));
            }
            let fin_at = (s.until_close && dir == S && r + 1 == n_rounds).then_some(sent[di].len());
            for (a, b) in order {
                let piece = &sent[di][a..b];
                let fin = fin_at == Some(b);
                let at = seq[di].wrapping_add(a as u32);
                if a > contiguous[di] {
                    out.exposed = true;
                }
                arrived[di][a..b].iter_mut().for_each(|x| *x = true);
                while contiguous[di] < arrived[di].len() && arrived[di][contiguous[di]] {
                    contiguous[di] += 1;
                }
                let u = t.on_record(key, dir, at, if fin { SEG_FIN } else { 0 }, piece, ts);
                for o in u.outcomes {
                    out.reference.push((dir, reference_item(o)));
                }
                let before = k.events.len();
                k.segment(dir, at, piece, ts);
                for (_, e) in &k.events[before..] {
                    match *e {
                        Event::None => {}
                        Event::Request { method } => out.kernel.push((dir, Item::Request(method.name().to_owned()))),
                        Event::Response { status, latency_ns } => out.kernel.push((dir, Item::Response(status, latency_ns))),
                        Event::Lost(why) => {
                            out.kernel.push((dir, Item::Lost));
                            out.kernel_lost.push((dir, why));
                        }
                    }
                }
                if fin {
                    k.fin(dir);
                }
            }
        }
    }
    if let Some((_, outcomes)) = t.close(&key, 0, ts + 1, &StreamEnds::default()) {
        for o in outcomes {
            out.reference.push((S, reference_item(o)));
        }
    }
    let closed = k.f.close();
    if closed.unanswered > 0 && !closed.lost {
        out.kernel.push((S, Item::NoResponse(closed.unanswered as u64)));
    }
    out.max_loads = k.max_loads;
    out
}

pub(super) fn reference_item(o: Outcome) -> Item {
    match o {
        Outcome::Request { method, .. } => Item::Request(method.to_string()),
        Outcome::Response { status, latency_ns } => Item::Response(status, latency_ns),
        Outcome::NoResponse(n) => Item::NoResponse(n),
        Outcome::FramingLost | Outcome::NotHttp => Item::Lost,
    }
}

/// The script, written to a file for a failure message to point at (bodies cut short).
pub(super) fn describe(s: &Script) -> String {
    let mut d = String::new();
    for (i, r) in s.rounds.iter().enumerate() {
        d.push_str(&format!(
            "--- round {i} requests ---\n{:?}\n--- round {i} responses ---\n{:?}\n",
            String::from_utf8_lossy(&r.requests[..r.requests.len().min(2000)]),
            String::from_utf8_lossy(&r.responses[..r.responses.len().min(2000)])
        ));
    }
    let path = std::env::temp_dir().join(format!("observer-differential-{}.txt", std::process::id()));
    match std::fs::write(&path, d) {
        Ok(()) => format!("script in {}", path.display()),
        Err(e) => format!("script not written: {e}"),
    }
}

/// Seeds to try: `DIFF_SEED=s` replays one, `DIFF_SEEDS=n` tries the first n (more than the default).
fn seeds(n: u64) -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match (var("DIFF_SEED"), var("DIFF_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(n)) => (0..n).collect(),
        (None, None) => (0..n).collect(),
    }
}

pub(super) fn per_dir(items: &[(u8, Item)], dir: u8) -> Vec<Item> {
    items.iter().filter(|(d, _)| *d == dir).map(|(_, i)| i.clone()).collect()
}

/// The generator's meaning: requests, statuses, unanswered.
pub(super) fn check_truth(s: &Script, items: &[(u8, Item)], who: &str, seed: u64) {
    let methods: Vec<String> = items.iter().filter_map(|(_, i)| if let Item::Request(m) = i { Some(m.clone()) } else { None }).collect();
    let statuses: Vec<u16> = items.iter().filter_map(|(_, i)| if let Item::Response(st, _) = i { Some(*st) } else { None }).collect();
    let unanswered: u64 = items.iter().filter_map(|(_, i)| if let Item::NoResponse(n) = i { Some(*n) } else { None }).sum();
    assert_eq!(methods, s.methods, "{who}: requests (seed {seed})\n{}", describe(s));
    assert_eq!(statuses, s.statuses, "{who}: statuses (seed {seed})\n{}", describe(s));
    assert_eq!(unanswered, s.unanswered, "{who}: unanswered (seed {seed})\n{}", describe(s));
    assert!(!items.iter().any(|(_, i)| *i == Item::Lost), "{who}: lost framing (seed {seed})\n{}", describe(s));
}

/// A segment in thirty delivered twice (the rest in order).
const DUPLICATES: Mess = Mess { dup: 3, ..Mess::NONE };

#[test]
fn kernel_framer_agrees_with_the_reference() {
    for seed in seeds(600) {
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
        let s = script(&mut rng, false);
        for max_segment in [1usize, 9, 100, 1448, 20_000] {
            let r = run(&s, &mut rng, max_segment, 1 << 20, DUPLICATES);
            assert_eq!(
                r.kernel_lost,
                vec![],
                "seed {seed}, segments up to {max_segment}\nkernel {:?}\nreference {:?}\n{}",
                r.kernel,
                r.reference,
                describe(&s)
            );
            assert_eq!(r.kernel, r.reference, "seed {seed}, segments up to {max_segment}\n{}", describe(&s));
            check_truth(&s, &r.kernel, "kernel framer", seed);
            check_truth(&s, &r.reference, "reference", seed);
        }
    }
}

#[test]
fn both_lose_malformed_messages_the_same_way() {
    for seed in seeds(200) {
        let mut rng = Rng(seed ^ 0xbad_f00d);
        let s = script(&mut rng, true);
        let broken_dir = s.broken.expect("a broken script");
        for max_segment in [1usize, 13, 1448] {
            let r = run(&s, &mut rng, max_segment, 1 << 20, DUPLICATES);
            assert_eq!(r.kernel_lost.len(), 1, "seed {seed}: {:?}\n{}", r.kernel, describe(&s));
            assert_eq!(r.kernel_lost[0].0, broken_dir);
            // The kernel framer counts a message at its start line, the reference once its head
            // parsed: a message whose head is broken counts in the first only. And the two may
            // notice the loss in different segments. Compare what each direction saw before it.
            let why = r.kernel_lost[0].1;
            for dir in [C, S] {
                let mut k = per_dir(&r.kernel, dir);
                let mut f = per_dir(&r.reference, dir);
                let k_lost = k.iter().position(|i| *i == Item::Lost);
                let f_lost = f.iter().position(|i| *i == Item::Lost);
                assert_eq!(k_lost.is_some(), f_lost.is_some(), "seed {seed} dir {dir}: kernel {k:?} reference {f:?}\n{}", describe(&s));
                if let (Some(kl), Some(fl)) = (k_lost, f_lost) {
                    k.truncate(kl);
                    f.truncate(fl);
                    if matches!(why, LostReason::BadLength | LostReason::BadHead) {
                        assert!(matches!(k.pop(), Some(Item::Request(_) | Item::Response(..))), "the broken message's start was counted");
                    }
                }
                // Unanswered requests at close: the kernel framer does not guess once lost.
                f.retain(|i| !matches!(i, Item::NoResponse(_)));
                assert_eq!(k, f, "seed {seed} dir {dir} ({why:?})\n{}", describe(&s));
            }
        }
    }
}

/// With the suggested bound on turns per segment ([`MAX_STEPS`], a `bpf_loop` count) and
/// segments up to 4 KiB, the generated connections never run out of turns.
#[test]
fn the_default_step_budget_suffices() {
    let mut most = 0;
    for seed in seeds(300) {
        let mut rng = Rng(seed ^ 0xb10c);
        let s = script(&mut rng, false);
        for max_segment in [1448, 4096] {
            let r = run(&s, &mut rng, max_segment, MAX_STEPS, DUPLICATES);
            assert_eq!(r.kernel_lost, vec![], "seed {seed}\n{}", describe(&s));
            assert_eq!(r.kernel, r.reference, "seed {seed}\n{}", describe(&s));
            most = most.max(r.max_loads);
        }
    }
    eprintln!("most blocks loaded for one segment of up to 4 KiB: {most}");
}
