//! One direction of a TCP connection as an ordered byte stream, rebuilt from the payload records
//! the kernel forwards: duplicates (retransmissions) are dropped, reordered segments wait for the
//! gap before them, and bytes the daemon said it does not need are skipped.
#![forbid(unsafe_code)]
use std::collections::BTreeMap;

/// Out-of-order bytes one direction may hold while it waits for a gap to fill.
pub const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;
/// How long a gap may stay open (by kernel timestamps) before the bytes in it count as lost.
pub const GAP_TIMEOUT_NS: u64 = 1_000_000_000;

/// In-order bytes ready for framing, with the kernel time of the segment they came in.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u32,
    pub data: Vec<u8>,
    pub ts_ns: u64,
}

#[derive(Debug, Default)]
pub struct Stream {
    /// Sequence number of the next byte expected; `None` until synchronised.
    next: Option<u32>,
    /// Segments after a gap, by their distance from `next` at the time... kept by absolute
    /// sequence number relative to `next` when drained (wrap-safe: see `offset`).
    pending: BTreeMap<u32, (Vec<u8>, u64)>,
    pending_bytes: usize,
}

/// Distance of `seq` from `from` in sequence space, if `seq` is not before it.
fn ahead(seq: u32, from: u32) -> Option<u32> {
    let d = seq.wrapping_sub(from);
    ((d as i32) >= 0).then_some(d)
}

impl Stream {
    pub fn is_synced(&self) -> bool {
        self.next.is_some()
    }

    pub fn next(&self) -> Option<u32> {
        self.next
    }

    /// Starts the stream at `seq` (after a SYN: ISN + 1; or at a message start found later).
    pub fn sync(&mut self, seq: u32) {
        self.next = Some(seq);
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Forgets the position: framing starts over at the next message start.
    pub fn unsync(&mut self) {
        self.next = None;
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Moves the position forward to `seq` (bytes before it are not needed).
    pub fn skip_to(&mut self, seq: u32) {
        if let Some(next) = self.next {
            if ahead(seq, next).is_some() {
                self.next = Some(seq);
                self.drop_before(seq);
            }
        }
    }

    fn drop_before(&mut self, next: u32) {
        let old = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        for (seq, (data, ts)) in old {
            let end = seq.wrapping_add(data.len() as u32);
            if ahead(end, next).is_some_and(|d| d > 0) {
                self.pending_bytes += data.len();
                self.pending.insert(seq, (data, ts));
            }
        }
    }

    /// Adds a segment's bytes; returns what is now in order. A synchronised stream only.
    pub fn push(&mut self, seq: u32, data: &[u8], ts_ns: u64) -> Vec<Chunk> {
        let Some(next) = self.next else { return Vec::new() };
        if data.is_empty() {
            return Vec::new();
        }
        let end = seq.wrapping_add(data.len() as u32);
        match ahead(end, next) {
            // Entirely before `next`: a retransmission of what was framed already.
            None | Some(0) => return Vec::new(),
            Some(_) => {}
        }
        match ahead(seq, next) {
            Some(0) => {}
            Some(_) => {
                // After a gap: wait for it.
                if self.pending_bytes + data.len() <= MAX_PENDING_BYTES && !self.pending.contains_key(&seq) {
                    self.pending_bytes += data.len();
                    self.pending.insert(seq, (data.to_vec(), ts_ns));
                }
                return Vec::new();
            }
            None => {
                // Overlaps `next`: keep only the new part.
                let cut = next.wrapping_sub(seq) as usize;
                return self.accept(next, &data[cut..], ts_ns);
            }
        }
        self.accept(seq, data, ts_ns)
    }

    fn accept(&mut self, seq: u32, data: &[u8], ts_ns: u64) -> Vec<Chunk> {
        let mut out = vec![Chunk { seq, data: data.to_vec(), ts_ns }];
        let mut next = seq.wrapping_add(data.len() as u32);
        // Whatever waited for this gap may follow now.
        loop {
            let ready = self
                .pending
                .iter()
                .find(|(s, (d, _))| ahead(next, **s).is_some() && ahead(s.wrapping_add(d.len() as u32), next).is_some_and(|x| x > 0))
                .map(|(s, _)| *s);
            let Some(s) = ready else { break };
            let (d, ts) = self.pending.remove(&s).expect("found above");
            self.pending_bytes -= d.len();
            let cut = next.wrapping_sub(s) as usize;
            out.push(Chunk { seq: next, data: d[cut..].to_vec(), ts_ns: ts });
            next = s.wrapping_add(d.len() as u32);
        }
        self.next = Some(next);
        self.drop_before(next);
        out
    }

    /// Bytes waiting behind gaps.
    #[cfg(test)]
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Bytes wait behind a gap.
    pub fn has_gap(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Is a gap past waiting for? Older than the timeout, when records may have been lost to
    /// the daemon (`records_lost`: a gap on the wire fills when the peer retransmits, however
    /// long that takes); or holding as many bytes as a direction may hold.
    pub fn gap_expired(&self, now_ns: u64, records_lost: bool) -> bool {
        let old = self.pending.values().map(|(_, ts)| *ts).min().is_some_and(|oldest| now_ns.saturating_sub(oldest) > GAP_TIMEOUT_NS);
        (records_lost && old) || self.pending_bytes >= MAX_PENDING_BYTES
    }

    /// After a lost gap: the waiting segments, oldest sequence first, to look for a place to
    /// start again. The stream is left unsynchronised.
    pub fn take_pending(&mut self) -> Vec<Chunk> {
        let next = self.next.unwrap_or(0);
        let mut v: Vec<Chunk> = std::mem::take(&mut self.pending).into_iter().map(|(seq, (data, ts_ns))| Chunk { seq, data, ts_ns }).collect();
        v.sort_by_key(|c| c.seq.wrapping_sub(next));
        self.unsync();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(chunks: &[Chunk]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.data.clone()).collect()
    }

    #[test]
    fn in_order_and_retransmitted() {
        let mut s = Stream::default();
        assert!(s.push(100, b"abc", 1).is_empty(), "not synchronised yet");
        s.sync(100);
        assert_eq!(bytes(&s.push(100, b"abc", 1)), b"abc");
        assert!(s.push(100, b"abc", 2).is_empty(), "a retransmission is dropped");
        assert_eq!(bytes(&s.push(101, b"bcde", 3)), b"de", "an overlapping one keeps its new part");
    }

    #[test]
    fn reordered_segments_wait_for_the_gap() {
        let mut s = Stream::default();
        s.sync(0);
        assert!(s.push(3, b"def", 1).is_empty());
        assert!(s.push(6, b"ghi", 2).is_empty());
        assert_eq!(bytes(&s.push(0, b"abc", 3)), b"abcdefghi");
        assert_eq!(s.next(), Some(9));
    }

    #[test]
    fn skipping_and_wrapping() {
        let mut s = Stream::default();
        s.sync(u32::MAX - 1);
        assert_eq!(bytes(&s.push(u32::MAX - 1, b"ab", 1)), b"ab");
        assert_eq!(s.next(), Some(0), "wrapped");
        s.skip_to(10);
        assert!(s.push(5, b"12345", 2).is_empty(), "before the skip point");
        assert_eq!(bytes(&s.push(8, b"xyzw", 3)), b"zw");
    }

    #[test]
    fn expired_gaps_hand_back_what_waited() {
        let mut s = Stream::default();
        s.sync(0);
        s.push(10, b"later", 5);
        assert!(!s.gap_expired(5 + GAP_TIMEOUT_NS, true));
        assert!(s.gap_expired(6 + GAP_TIMEOUT_NS, true));
        assert!(!s.gap_expired(60 * GAP_TIMEOUT_NS, false), "no record lost: the gap is on the wire, it waits");
        let waiting = s.take_pending();
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].seq, 10);
        assert!(!s.is_synced());
    }
}
