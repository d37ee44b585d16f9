//! The kernel framer (`observer_common::frame`) driven as the tc program drives it, segment by
//! segment, with its bounds and counts checked after every segment ([`KernelFeed`]).
use observer_common::{
    frame::{ConnFrame, Event, FrameCounts, LostReason, Phase, Scan, Turn, BLOCK, MAX_CHUNK_LINE, MAX_HEAD, PENDING_DEPTH},
    http::START_LEN,
};

use super::{C, S};

/// The kernel framer fed segment by segment as the tc program feeds it (`begin_segment`, turns
/// of `step` as `bpf_loop` makes them, `finish_segment`), with its bounds checked after every
/// segment: everything a property needs to say about it.
pub struct KernelFeed {
    pub f: ConnFrame,
    /// Per-CPU scratch, reused across segments: its stale contents must not matter.
    scan: Scan,
    /// Turns per segment (`bpf_loop`'s count).
    budget: usize,
    pub events: Vec<(u8, Event)>,
    /// Sequence number of each direction's first byte, when framing started at the SYNs.
    base: [Option<u32>; 2],
    /// One past the furthest byte delivered in each direction, as an offset from `base`.
    furthest: [u64; 2],
    counts: FrameCounts,
    /// The most blocks loaded for one segment.
    pub max_loads: usize,
}

impl KernelFeed {
    /// Framing from the SYNs (`isn`: client, server), or joining midway (`None`).
    pub fn new(isn: Option<[u32; 2]>, budget: usize) -> Self {
        let mut f = ConnFrame::zeroed();
        let mut base = [None; 2];
        if let Some([c, s]) = isn {
            f.on_syn(C, c, false);
            f.on_syn(S, s, true);
            base = [Some(c.wrapping_add(1)), Some(s.wrapping_add(1))];
        }
        Self { f, scan: Scan::zeroed(), budget, events: Vec::new(), base, furthest: [0; 2], counts: FrameCounts::zeroed(), max_loads: 0 }
    }

    /// One segment `[seq, seq + data.len())` of `dir` seen at `ts`: returns how many events it
    /// made.
    pub fn segment(&mut self, dir: u8, seq: u32, data: &[u8], ts: u64) -> usize {
        self.feed(dir, seq, data.len() as u32, ts, |off, block: &mut [u8; BLOCK], n| {
            assert!((1..=BLOCK).contains(&n), "a load of {n} bytes");
            assert!(off as usize + n <= data.len(), "a load past the segment: {off} + {n} > {}", data.len());
            block[..n].copy_from_slice(&data[off as usize..off as usize + n]);
            true
        })
    }

    /// A segment of `len` bytes of `dir` at `seq` that lies inside a body: framed without a load
    /// (one fails the test), however long.
    pub fn body(&mut self, dir: u8, seq: u32, len: u32, ts: u64) -> usize {
        self.feed(dir, seq, len, ts, |off, _: &mut [u8; BLOCK], _| panic!("a load at {off} of a segment inside a body"))
    }

    fn feed(&mut self, dir: u8, seq: u32, len: u32, ts: u64, mut load: impl FnMut(u32, &mut [u8; BLOCK], usize) -> bool) -> usize {
        let before = self.events.len();
        let first = self.f.begin_segment(&mut self.scan, dir, seq, len, ts);
        if first.event != Event::None {
            self.events.push((dir, first.event));
        }
        let (mut turns, mut loads, mut done) = (0usize, 0usize, false);
        for _ in 0..self.budget {
            let turn = self.f.step(&mut self.scan, |off, block: &mut [u8; BLOCK], n| {
                loads += 1;
                load(off, block, n)
            });
            match turn {
                Turn::Continue => turns += 1,
                Turn::Event(e) => {
                    turns += 1;
                    self.events.push((dir, e));
                }
                Turn::Done => {
                    done = true;
                    break;
                }
            }
        }
        let last = self.f.finish_segment(&self.scan);
        if let Event::Lost(LostReason::Budget) = last.event {
            assert!(!done);
            self.events.push((dir, last.event));
        }
        // Every turn takes a byte or more (or syncs an unsynced direction, once a segment): the
        // budget holds for any segment shorter than it.
        assert!(turns as u64 <= len as u64 + 1, "{turns} turns for a segment of {len} bytes");
        self.max_loads = self.max_loads.max(loads);
        if let Some(base) = self.base[dir as usize] {
            // Distances in sequence space (a body skipped may take the stream past 4 GiB).
            let ahead = seq.wrapping_add(len).wrapping_sub(base.wrapping_add(self.furthest[dir as usize] as u32)) as i32;
            if ahead > 0 {
                self.furthest[dir as usize] += ahead as u64;
            }
        }
        self.check(ts);
        self.events.len() - before
    }

    /// A FIN in `dir`, after its segment's bytes.
    pub fn fin(&mut self, dir: u8) {
        self.f.fin(dir);
        self.check(u64::MAX);
    }

    /// What the framer keeps stays within its bounds, counts never go backwards, every count has
    /// its event, every status is one HTTP has.
    fn check(&mut self, now: u64) {
        let f = &self.f;
        for (i, d) in f.dirs.iter().enumerate() {
            let phase = Phase::from_u8(d.phase);
            assert_eq!(phase as u8, d.phase, "dir {i}: phase {} is none", d.phase);
            assert_eq!(phase == Phase::Lost, d.lost != 0, "dir {i}: {d:?}");
            if phase == Phase::Lost {
                assert!(LostReason::from_u8(d.lost).is_some(), "dir {i}: lost {}", d.lost);
            }
            assert!(d.start_len as usize <= START_LEN, "dir {i}: {d:?}");
            assert!(d.name_idx < 32, "dir {i}: {d:?}");
            match phase {
                Phase::Start | Phase::Head | Phase::Trailers => assert!(d.head_len <= MAX_HEAD, "dir {i}: {d:?}"),
                Phase::ChunkSize => assert!(d.head_len <= MAX_CHUNK_LINE, "dir {i}: {d:?}"),
                Phase::Body | Phase::ChunkData => assert!(d.remaining > 0, "dir {i}: {d:?}"),
                _ => {}
            }
            // Framing never runs ahead of the bytes it was given (a body skipped is skipped up
            // to the end of a segment that carried it, at most).
            if let (Some(base), true) = (self.base[i], phase != Phase::Unsynced) {
                let behind = base.wrapping_add(self.furthest[i] as u32).wrapping_sub(d.next_seq) as i32;
                assert!(behind >= 0, "dir {i}: next byte {} past the furthest delivered {}", d.next_seq.wrapping_sub(base), self.furthest[i]);
            }
        }
        assert!(f.in_flight() as usize <= PENDING_DEPTH, "{} requests in flight", f.in_flight());
        let (c, p) = (f.counts, self.counts);
        let fields = |c: &FrameCounts| {
            [
                c.requests,
                c.responses_1xx,
                c.responses_2xx,
                c.responses_3xx,
                c.responses_4xx,
                c.responses_5xx,
                c.latency_sum_ns,
                c.latency_count,
                c.unmatched_responses,
                c.unanswered,
            ]
        };
        for (now_v, then) in fields(&c).iter().zip(fields(&p)) {
            assert!(*now_v >= then, "counts went backwards: {p:?} then {c:?}");
        }
        self.counts = c;
        let requests = self.events.iter().filter(|(_, e)| matches!(e, Event::Request { .. })).count() as u64;
        let responses: Vec<(u16, Option<u64>)> =
            self.events.iter().filter_map(|(_, e)| if let Event::Response { status, latency_ns } = e { Some((*status, *latency_ns)) } else { None }).collect();
        assert_eq!(c.requests, requests, "requests counted without their event");
        assert_eq!(
            c.responses_1xx + c.responses_2xx + c.responses_3xx + c.responses_4xx + c.responses_5xx,
            responses.len() as u64,
            "responses counted without their event"
        );
        assert_eq!(c.latency_count, responses.iter().filter(|(_, l)| l.is_some()).count() as u64);
        assert_eq!(c.latency_sum_ns, responses.iter().filter_map(|(_, l)| *l).sum::<u64>());
        for (status, latency) in responses {
            assert!((100..=599).contains(&status), "a response with status {status}");
            assert!(latency.is_none_or(|l| l <= now), "latency {latency:?} at {now}");
        }
    }

    /// This run's events of `dir`, up to its first loss, and whether it lost its place.
    pub fn before_loss(&self, dir: u8) -> (Vec<Event>, Option<LostReason>) {
        let mut v = Vec::new();
        for (d, e) in &self.events {
            if *d != dir {
                continue;
            }
            if let Event::Lost(why) = e {
                return (v, Some(*why));
            }
            v.push(*e);
        }
        (v, None)
    }

    pub fn lost(&self) -> Vec<(u8, LostReason)> {
        self.events.iter().filter_map(|(d, e)| if let Event::Lost(r) = e { Some((*d, *r)) } else { None }).collect()
    }
}
