//! However the bytes are cut into segments, and whatever is sent again, the counts stay the same.

use super::*;

#[test]
fn heads_split_at_every_byte_give_the_same_counts() {
    let (q, r) = conversation();
    let whole = run_conversation(&q, &r, &[], &[]);
    for cut in 1..q.len() {
        let c = run_conversation(&q, &r, &[cut], &[]);
        assert_eq!(c.events, whole.events, "requests cut at {cut}");
        assert_eq!(c.f.counts, whole.f.counts, "requests cut at {cut}");
        assert_eq!(c.completed, whole.completed);
    }
    for cut in 1..r.len() {
        let c = run_conversation(&q, &r, &[], &[cut]);
        assert_eq!(c.events, whole.events, "responses cut at {cut}");
        assert_eq!(c.f.counts, whole.f.counts, "responses cut at {cut}");
        assert_eq!(c.completed, whole.completed);
    }
    // One byte per segment.
    let every: Vec<usize> = (1..r.len().max(q.len())).collect();
    let c = run_conversation(&q, &r, &every, &every);
    assert_eq!(c.events, whole.events);
    assert_eq!(c.f.counts, whole.f.counts);
}

#[test]
fn retransmissions_count_once() {
    let mut c = Conn::new();
    let req = get("/");
    c.send(C, &req);
    c.at::<MAX_STEPS>(C, 1001, &req);
    let r = resp(200, "0123456789");
    let seq = c.seq[S as usize];
    c.send(S, &r[..20]);
    c.at::<MAX_STEPS>(S, seq, &r[..20]); // again
    c.at::<MAX_STEPS>(S, seq + 10, &r[10..]); // overlapping the first, with the rest
    c.seq[S as usize] = seq + r.len() as u32;
    c.send(S, &resp(200, "x")); // unanswered: unmatched
    assert_eq!(c.statuses(), vec![200, 200]);
    assert_eq!(c.f.counts.requests, 1);
    assert_eq!(c.f.counts.unmatched_responses, 1);
}

use proptest::prelude::*;

proptest! {
    /// Any segmentation of the conversation, with retransmitted segments, counts the same.
    #[test]
    fn any_segmentation(q_cuts in proptest::collection::vec(1usize..400, 0..12), r_cuts in proptest::collection::vec(1usize..500, 0..12), dup in any::<bool>()) {
        let (q, r) = conversation();
        let whole = run_conversation(&q, &r, &[], &[]);
        let mut qc = q_cuts.clone();
        qc.sort();
        let mut rc = r_cuts.clone();
        rc.sort();
        let mut c = Conn::new();
        c.tick = false;
        c.ts = 1_000_000;
        c.send_cut(C, &q, &qc);
        c.ts = 3_000_000;
        let mut at = 0;
        for &cut in rc.iter().chain([r.len()].iter()) {
            if cut > at && cut <= r.len() {
                let seq = c.seq[S as usize];
                c.send(S, &r[at..cut]);
                if dup {
                    c.at::<MAX_STEPS>(S, seq, &r[at..cut]);
                }
                at = cut;
            }
        }
        prop_assert_eq!(&c.events, &whole.events);
        prop_assert_eq!(c.f.counts, whole.f.counts);
    }
}
