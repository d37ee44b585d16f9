//! Which way bytes travel, from this host's point of view: the one word for "in" and "out" that
//! the counters (`ConnStats::*_in` / `*_out`), the payload and trace records, the kernel framer and
//! the daemon share.

use core::fmt;

/// A direction of a connection, as the tc programs see it: [`Direction::In`] is what the peer sent
/// to this host (tc ingress), [`Direction::Out`] what this host sent (tc egress).
///
/// On the wire (record fields, map values) it is a `u8`, 0 or 1: the index of the direction's
/// half in a per-direction pair (`ConnFrame::dirs`, `SynSeen` bits).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum Direction {
    /// Received by this host.
    In = 0,
    /// Sent by this host.
    Out = 1,
}

impl Direction {
    /// Both directions, in index order.
    pub const BOTH: [Direction; 2] = [Direction::In, Direction::Out];

    /// The direction whose wire value is the low bit of `v`: total and branch-free, for the
    /// kernel programs, which index two-element arrays with it (a verifier sees `0..=1`).
    #[inline(always)]
    pub const fn from_bit(v: u8) -> Self {
        if v & 1 == 0 {
            Direction::In
        } else {
            Direction::Out
        }
    }

    /// The other direction (the answers to this one's messages travel there).
    #[inline(always)]
    pub const fn opposite(self) -> Self {
        match self {
            Direction::In => Direction::Out,
            Direction::Out => Direction::In,
        }
    }

    /// The index of this direction's half of a per-direction pair.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The wire value (`PayloadHeader::dir`, `TraceRecord::dir`, `Scan::dir`, ...).
    #[inline(always)]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The written form: `in` or `out`.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// A wire value that is no [`Direction`] (only 0 and 1 are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownDirection(pub u8);

impl fmt::Display for UnknownDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown direction {} (expected 0: in, or 1: out)", self.0)
    }
}

impl TryFrom<u8> for Direction {
    type Error = UnknownDirection;

    #[inline(always)]
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(Direction::In),
            1 => Ok(Direction::Out),
            _ => Err(UnknownDirection(v)),
        }
    }
}

impl From<Direction> for u8 {
    #[inline(always)]
    fn from(d: Direction) -> u8 {
        d as u8
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_are_those_of_dir_in_and_dir_out() {
        assert_eq!(Direction::In as u8, crate::http::DIR_IN);
        assert_eq!(Direction::Out as u8, crate::http::DIR_OUT);
        assert_eq!(Direction::try_from(0), Ok(Direction::In));
        assert_eq!(Direction::try_from(1), Ok(Direction::Out));
        assert_eq!(Direction::try_from(2), Err(UnknownDirection(2)));
        assert_eq!(u8::from(Direction::Out), 1);
        for v in 0..=u8::MAX {
            assert_eq!(Direction::from_bit(v).as_u8(), v & 1, "the low bit decides");
        }
    }

    #[test]
    fn opposite_swaps_and_index_follows_the_wire_value() {
        for d in Direction::BOTH {
            assert_ne!(d.opposite(), d);
            assert_eq!(d.opposite().opposite(), d);
            assert_eq!(d.index(), d.as_u8() as usize);
            assert_eq!(d.opposite().index(), d.index() ^ 1);
        }
        assert_eq!(Direction::BOTH.map(Direction::name), ["in", "out"]);
    }
}
