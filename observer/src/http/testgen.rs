//! Generated HTTP/1.x traffic for the tests that compare or torture the two framers
//! (`differential`, `properties`): well-formed connections and what they mean, noise and
//! corruptions, segmentations with duplicates, reorders and overlapping retransmissions, and a
//! driver that feeds the kernel framer (`observer_common::frame`) as a BPF program does, checking
//! its bounds after every segment. One place, so that every test draws from the same generators.
//!
//! Here: the directions and the random generator every generator draws from. The generators,
//! by what they make: `script` (well-formed connections), [`noise`] (noise and corruptions),
//! [`delivery`] (segmentations and messed-up orders), [`kernel`] (the kernel framer's driver).
use observer_common::http::{DIR_IN, DIR_OUT};

mod delivery;
mod kernel;
mod noise;
mod script;

pub use delivery::{deliveries, segments, Mess};
pub use kernel::KernelFeed;
pub use noise::{corrupt, http_noise};
pub use script::{script, script_sized, Script};

pub const C: u8 = DIR_IN;
pub const S: u8 = DIR_OUT;

/// SplitMix64: small, deterministic, good enough to vary streams.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }

    /// `n` arbitrary bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
