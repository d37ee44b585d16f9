//! Which bytes of one direction of a TCP stream this host has already seen, in one `u64`.
//!
//! The tc programs see a flow's segments in the order the kernel hands them over, which is not
//! always sequence order: veth and backlog processing run a flow's packets on whichever CPU sent
//! them, so two CPUs can process adjacent segments of one flow at once, and the later one may be
//! counted first. A later segment that fills a gap opened that way is *new* data, not a
//! retransmission. So besides the highest sequence number seen, the state remembers one gap (a
//! hole behind the highest number) and counts bytes that fill it as new.
//!
//! Everything lives in one word so that the kernel can update it with one compare-and-exchange:
//! two CPUs handling segments of one flow at once never lose or double an update.
//!
//! | bits  | field |
//! | ----- | ----- |
//! | 0-31  | the highest sequence number seen (end of data, SYN and FIN included) |
//! | 32-47 | the hole's length in bytes (0: no hole) |
//! | 48-62 | how far the hole's end lies behind the highest number |
//! | 63    | the position is known |
//!
//! Bounded approximations, by design: a hole longer than 64 KiB, or one left more than 32 KiB
//! behind, is forgotten (bytes that fill it later count as retransmitted, as they would be when
//! lost before this host and sent again); only one hole is remembered, so a reordering that
//! opens a second hole before the first is filled merges them (a byte sent twice inside the
//! merged range counts as new once more). Neither happens with adjacent segments of one flow
//! racing on two CPUs, which is what the hole is for.

const KNOWN: u64 = 1 << 63;
const MAX_HOLE_LEN: u32 = 0xffff;
const MAX_HOLE_BACK: u32 = 0x7fff;

/// The state of one direction, as stored in `ConnStats::seq_in` / `seq_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqState {
    pub known: bool,
    /// The highest sequence number seen (one past the last byte, SYN and FIN included).
    pub end: u32,
    /// Bytes not yet seen: `[end - back - len, end - back)`; `len == 0` means none.
    pub hole_len: u32,
    pub hole_back: u32,
}

impl SeqState {
    #[inline(always)]
    pub const fn unpack(word: u64) -> Self {
        Self { known: word & KNOWN != 0, end: word as u32, hole_len: ((word >> 32) & 0xffff) as u32, hole_back: ((word >> 48) & 0x7fff) as u32 }
    }

    #[inline(always)]
    pub const fn pack(self) -> u64 {
        if !self.known {
            return 0;
        }
        if self.hole_len == 0 || self.hole_len > MAX_HOLE_LEN || self.hole_back > MAX_HOLE_BACK {
            return KNOWN | self.end as u64;
        }
        KNOWN | self.end as u64 | (self.hole_len as u64) << 32 | (self.hole_back as u64) << 48
    }
}

/// What one segment was, against what had been seen before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqStep {
    /// The state after the segment.
    pub word: u64,
    /// Payload bytes seen for the first time.
    pub new_bytes: u32,
    /// Payload bytes seen before.
    pub resent_bytes: u32,
    /// The segment carried nothing new: a retransmission (of data, or of a FIN alone).
    pub retransmit: bool,
}

/// The end of a direction's data by this state (the FIN, when one was seen, takes one number).
#[inline(always)]
pub const fn data_end(word: u64, fin_seen: bool) -> Option<u32> {
    let s = SeqState::unpack(word);
    if !s.known {
        return None;
    }
    Some(s.end.wrapping_sub(fin_seen as u32))
}

/// Accounts one segment occupying `[seq, seq + payload)` plus SYN and FIN flags.
/// Relative offsets to `end` keep the arithmetic right across sequence-number wrap.
#[inline(always)]
pub fn step(word: u64, seq: u32, payload: u32, syn: bool, fin: bool) -> SeqStep {
    let span = payload + syn as u32 + fin as u32;
    let s = SeqState::unpack(word);
    if span == 0 {
        return SeqStep { word, new_bytes: 0, resent_bytes: 0, retransmit: false };
    }
    let data_start = seq.wrapping_add(syn as u32);
    let seg_end = seq.wrapping_add(span);
    // A SYN (again) starts the direction; so does the first segment seen mid-stream.
    if syn || !s.known {
        let next = SeqState { known: true, end: seg_end, hole_len: 0, hole_back: 0 };
        return SeqStep { word: next.pack(), new_bytes: payload, resent_bytes: 0, retransmit: false };
    }
    // Offsets relative to the highest number seen: negative before it, positive beyond.
    let rel = |x: u32| x.wrapping_sub(s.end) as i32 as i64;
    let a = rel(data_start);
    let b = a + payload as i64;
    let e = rel(seg_end);
    let (mut h_lo, mut h_hi) = if s.hole_len > 0 { (-((s.hole_back + s.hole_len) as i64), -(s.hole_back as i64)) } else { (0, 0) };

    let mut new_bytes: i64 = 0;
    let mut resent: i64 = 0;
    // Payload behind `end`: in the hole it is new (and shrinks the hole), elsewhere seen before.
    if a < 0 {
        let old_hi = if b < 0 { b } else { 0 };
        let lo = if a > h_lo { a } else { h_lo };
        let hi = if old_hi < h_hi { old_hi } else { h_hi };
        let filled = if hi > lo { hi - lo } else { 0 };
        new_bytes += filled;
        resent += (old_hi - a) - filled;
        if filled > 0 {
            if lo <= h_lo {
                h_lo = hi;
            } else if hi >= h_hi {
                h_hi = lo;
            } else if hi - h_lo >= h_hi - lo {
                // A fill in the middle: keep the larger side (one hole is all one word holds).
                h_hi = lo;
            } else {
                h_lo = hi;
            }
        }
    }
    // Payload beyond `end` is new; a gap before it becomes the hole.
    if b > 0 {
        new_bytes += b - if a > 0 { a } else { 0 };
    }
    let mut end = s.end;
    if e > 0 {
        if a > 0 {
            if h_hi > h_lo {
                h_hi = a; // a second gap: merged with the first (see the module's note)
            } else {
                h_lo = 0;
                h_hi = a;
            }
        }
        h_lo -= e;
        h_hi -= e;
        end = seg_end;
    }
    let hole = h_hi > h_lo;
    let next = SeqState { known: true, end, hole_len: if hole { (h_hi - h_lo) as u32 } else { 0 }, hole_back: if hole { (-h_hi) as u32 } else { 0 } };
    // Data seen before, or a lone FIN at or behind the end (nothing lies beyond a FIN, so one
    // behind the end was seen already).
    let retransmit = if payload == 0 { e <= 0 } else { resent > 0 };
    SeqStep { word: next.pack(), new_bytes: new_bytes as u32, resent_bytes: resent as u32, retransmit }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use proptest::prelude::*;

    fn run(segments: &[(u32, u32, bool)], start: u32) -> (u64, u64, u64, u64) {
        // (seq, len, fin): the SYN is at `start`.
        let mut w = step(0, start, 0, true, false).word;
        let (mut new, mut resent, mut retrans) = (0u64, 0u64, 0u64);
        for &(seq, len, fin) in segments {
            let s = step(w, seq, len, false, fin);
            w = s.word;
            new += s.new_bytes as u64;
            resent += s.resent_bytes as u64;
            retrans += s.retransmit as u64;
        }
        (new, resent, retrans, w)
    }

    #[test]
    fn in_order_stream_counts_every_byte_once() {
        let isn = 1000u32;
        let segs: Vec<_> = (0..10).map(|i| (isn + 1 + i * 100, 100, i == 9)).collect();
        let (new, resent, retrans, w) = run(&segs, isn);
        assert_eq!((new, resent, retrans), (1000, 0, 0));
        assert_eq!(data_end(w, true), Some(isn + 1 + 1000));
    }

    #[test]
    fn two_adjacent_segments_swapped_are_new_data_not_retransmissions() {
        let (new, resent, retrans, w) = run(&[(201, 100, false), (101, 100, false), (301, 50, false)], 100);
        assert_eq!((new, resent, retrans), (250, 0, 0));
        assert_eq!(SeqState::unpack(w).hole_len, 0, "the hole was filled");
    }

    #[test]
    fn a_real_retransmission_is_counted() {
        let (new, resent, retrans, _) = run(&[(101, 100, false), (201, 100, false), (101, 100, false)], 100);
        assert_eq!((new, resent, retrans), (200, 100, 1));
        // Partly new, partly old.
        let (new, resent, retrans, _) = run(&[(101, 100, false), (151, 100, false)], 100);
        assert_eq!((new, resent, retrans), (150, 50, 1));
        // A FIN sent again.
        let (new, resent, retrans, _) = run(&[(101, 10, true), (111, 0, true)], 100);
        assert_eq!((new, resent, retrans), (10, 0, 1));
    }

    #[test]
    fn wraps_around_sequence_space() {
        let isn = u32::MAX - 150;
        let segs = [(isn.wrapping_add(101), 100, false), (isn.wrapping_add(1), 100, false), (isn.wrapping_add(201), 100, true)];
        let (new, resent, retrans, w) = run(&segs, isn);
        assert_eq!((new, resent, retrans), (300, 0, 0));
        assert_eq!(data_end(w, true), Some(isn.wrapping_add(301)));
    }

    #[test]
    fn a_fin_filling_nothing_after_reordering_is_not_a_retransmission() {
        // Data [101, 201) arrives after the FIN at 201.
        let (new, resent, retrans, _) = run(&[(201, 0, true), (101, 100, false)], 100);
        assert_eq!((new, resent, retrans), (100, 0, 0));
    }

    proptest! {
        /// Any order in which each segment is displaced by at most one place (two CPUs racing),
        /// plus exact duplicates: every byte counted once, duplicates and only they are resent.
        #[test]
        fn neighbour_swaps_and_duplicates(isn in any::<u32>(), lens in prop::collection::vec(1u32..3000, 1..40), swaps in prop::collection::vec(any::<bool>(), 40), dups in prop::collection::vec(0usize..40, 0..5)) {
            let mut segs = Vec::new();
            let mut seq = isn.wrapping_add(1);
            for &l in &lens {
                segs.push((seq, l, false));
                seq = seq.wrapping_add(l);
            }
            let total: u64 = lens.iter().map(|&l| l as u64).sum();
            let mut i = 0;
            while i + 1 < segs.len() {
                if swaps[i] {
                    segs.swap(i, i + 1);
                    i += 2;
                } else {
                    i += 1;
                }
            }
            let mut order = segs.clone();
            let mut dup_bytes = 0u64;
            for d in &dups {
                // A duplicate arrives after everything (a retransmission after a timeout).
                let s = segs[d % segs.len()];
                order.push(s);
                dup_bytes += s.1 as u64;
            }
            let (new, resent, retrans, _) = run(&order, isn);
            prop_assert_eq!(new, total);
            prop_assert_eq!(resent, dup_bytes);
            prop_assert_eq!(retrans, dups.len() as u64);
        }
    }
}
