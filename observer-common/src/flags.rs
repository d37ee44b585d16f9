//! Named bits of the flag words both sides read: each set a `#[repr(transparent)]` newtype over
//! the integer its field holds (the fields of the shared structs keep their integer type: their
//! layout is pinned), so that a test reads `flags.contains(SegFlags::SYN)`, not `flags & 1 != 0`.
//!
//! Every method is a `const fn` and `#[inline(always)]`: the kernel programs build and test these
//! words on their hot path, and must compile to the same masks as the bare integers did.

use core::{fmt, ops};

use crate::direction::Direction;

/// Defines a flag set: the newtype, its named bits, and the few operations a bit mask needs.
macro_rules! flag_set {
    (
        $(#[$meta:meta])*
        $name:ident($repr:ty) {
            $( $(#[$fmeta:meta])* $flag:ident = $bit:expr; )*
        }
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name(pub $repr);

        impl $name {
            $( $(#[$fmeta])* pub const $flag: Self = Self($bit); )*
            /// No bit set.
            pub const EMPTY: Self = Self(0);
            /// Every named bit, with its name (for `Debug`).
            pub const NAMED: &'static [(&'static str, Self)] = &[$((stringify!($flag), Self::$flag)),*];

            /// The word as stored in its field.
            #[inline(always)]
            pub const fn bits(self) -> $repr {
                self.0
            }

            /// Every bit of `other` is set in `self`.
            #[inline(always)]
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// Some bit of `other` is set in `self`.
            #[inline(always)]
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            #[inline(always)]
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            #[inline(always)]
            pub const fn union(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }

            #[inline(always)]
            pub const fn intersection(self, other: Self) -> Self {
                Self(self.0 & other.0)
            }

            #[inline(always)]
            pub const fn difference(self, other: Self) -> Self {
                Self(self.0 & !other.0)
            }

            /// `self` with the bits of `other` added when `on` (as a kernel program assembles a
            /// word from a packet's conditions).
            #[inline(always)]
            pub const fn with(self, other: Self, on: bool) -> Self {
                if on { Self(self.0 | other.0) } else { self }
            }
        }

        impl ops::BitOr for $name {
            type Output = Self;
            #[inline(always)]
            fn bitor(self, other: Self) -> Self {
                self.union(other)
            }
        }

        impl ops::BitOrAssign for $name {
            #[inline(always)]
            fn bitor_assign(&mut self, other: Self) {
                self.0 |= other.0;
            }
        }

        impl ops::BitAnd for $name {
            type Output = Self;
            #[inline(always)]
            fn bitand(self, other: Self) -> Self {
                self.intersection(other)
            }
        }

        impl From<$repr> for $name {
            #[inline(always)]
            fn from(bits: $repr) -> Self {
                Self(bits)
            }
        }

        impl From<$name> for $repr {
            #[inline(always)]
            fn from(f: $name) -> $repr {
                f.0
            }
        }

        /// The names of the bits set, `|`-separated, and any unnamed rest in hex.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                let mut rest = self.0;
                let mut first = true;
                for (n, v) in Self::NAMED {
                    if v.0 != 0 && self.contains(*v) {
                        f.write_str(if first { "" } else { " | " })?;
                        f.write_str(n)?;
                        rest &= !v.0;
                        first = false;
                    }
                }
                if rest != 0 || first {
                    write!(f, "{}{:#x}", if first { "" } else { " | " }, rest)?;
                }
                f.write_str(")")
            }
        }
    };
}

flag_set! {
    /// `PayloadHeader::flags`: what a `PAYLOAD` record is, or what its segment carried.
    SegFlags(u8) {
        /// The segment carried SYN: `seq` is the initial sequence number and there is no payload.
        SYN = 0x1;
        FIN = 0x2;
        RST = 0x4;
        /// With `SYN`: the SYN carried ACK too (a SYN-ACK, from the listening side).
        ACK = 0x8;
        /// The record is not payload but one message the kernel framed (`observer_common::frame`,
        /// run with `--kernel-http`): `MSG_INFO` bytes (`MsgInfo`); for a request then `START_LEN`
        /// bytes, the first `start_len` of which are the start of its request line, and up to
        /// `MSG_TAIL` bytes that follow them in the segment that classified it. `seq` is the
        /// message's first byte.
        MSG = 0x10;
        /// A header-only record: the kernel framer lost its place in this direction
        /// (`--http-framing kernel`) and hands it to the daemon's framer from `seq` on (the
        /// payload follows in ordinary records). With `BOUNDARY`, a message starts at `seq`: the
        /// daemon's framer starts there, whatever order the bytes come in; without, it starts at
        /// the next record that begins a message.
        HANDOFF = 0x20;
        BOUNDARY = 0x40;
    }
}

flag_set! {
    /// `MsgInfo::flags`, of a message record (`SegFlags::MSG`).
    MsgFlags(u8) {
        /// The connection's first request (a four-tuple reused by a new connection starts
        /// counting afresh).
        FIRST = 0x1;
    }
}

flag_set! {
    /// `HttpHints::flags`, written by the daemon, read by the tc programs.
    HintFlags(u32) {
        /// The connection is not HTTP/1.x: forward nothing of it.
        NOT_HTTP = 0x1;
        /// `skip_in` is valid: received bytes before it are not needed.
        SKIP_IN = 0x2;
        /// `skip_out` is valid: the same for bytes this host sent.
        SKIP_OUT = 0x4;
    }
}

impl HintFlags {
    /// The bit that says `dir`'s skip position is valid.
    #[inline(always)]
    pub const fn skip(dir: Direction) -> Self {
        match dir {
            Direction::In => Self::SKIP_IN,
            Direction::Out => Self::SKIP_OUT,
        }
    }
}

flag_set! {
    /// `ConnStats::syn_seen` (and the framer's copy of it): which directions' SYNs were seen, so
    /// that `isn_in` / `isn_out` hold their initial sequence numbers. One bit per [`Direction`],
    /// at its index.
    SynSeen(u8) {
        /// A SYN was received (`isn_in` is set).
        RECEIVED = 0x1;
        /// A SYN was sent (`isn_out` is set).
        SENT = 0x2;
    }
}

impl SynSeen {
    /// The bit of a SYN travelling in `dir`.
    #[inline(always)]
    pub const fn of(dir: Direction) -> Self {
        Self(1 << dir.index())
    }
}

flag_set! {
    /// `frame::Pending::flags`: what a waiting request's response must know of it.
    ReqFlags(u8) {
        /// The request's method is HEAD: its response has no body.
        HEAD = 0x1;
        /// The request's method is CONNECT: a 2xx response makes the connection a tunnel.
        CONNECT = 0x2;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use super::*;

    #[test]
    fn named_bits_keep_their_wire_values() {
        use crate::http::*;
        let seg = [
            (SegFlags::SYN, SEG_SYN),
            (SegFlags::FIN, SEG_FIN),
            (SegFlags::RST, SEG_RST),
            (SegFlags::ACK, SEG_ACK),
            (SegFlags::MSG, SEG_MSG),
            (SegFlags::HANDOFF, SEG_HANDOFF),
            (SegFlags::BOUNDARY, SEG_BOUNDARY),
        ];
        assert_eq!(seg.map(|(f, b)| (f.bits(), b)), [(0x1, 0x1), (0x2, 0x2), (0x4, 0x4), (0x8, 0x8), (0x10, 0x10), (0x20, 0x20), (0x40, 0x40)]);
        assert_eq!(MsgFlags::FIRST.bits(), MSG_FIRST);
        assert_eq!([HintFlags::NOT_HTTP.bits(), HintFlags::SKIP_IN.bits(), HintFlags::SKIP_OUT.bits()], [HINT_NOT_HTTP, HINT_SKIP_IN, HINT_SKIP_OUT]);
        assert_eq!([ReqFlags::HEAD.bits(), ReqFlags::CONNECT.bits()], [crate::frame::REQ_HEAD, crate::frame::REQ_CONNECT]);
        // "Bit 0: a SYN was received, bit 1: a SYN was sent."
        assert_eq!((SynSeen::RECEIVED.bits(), SynSeen::SENT.bits()), (1, 2));
    }

    #[test]
    fn each_set_names_distinct_single_bits() {
        fn distinct(bits: &[u32]) {
            for (i, a) in bits.iter().enumerate() {
                assert_eq!(a.count_ones(), 1, "{a:#x} is one bit");
                assert!(bits[i + 1..].iter().all(|b| b != a), "{a:#x} named twice");
            }
        }
        distinct(&SegFlags::NAMED.iter().map(|(_, f)| f.bits() as u32).collect::<std::vec::Vec<_>>());
        distinct(&MsgFlags::NAMED.iter().map(|(_, f)| f.bits() as u32).collect::<std::vec::Vec<_>>());
        distinct(&HintFlags::NAMED.iter().map(|(_, f)| f.bits()).collect::<std::vec::Vec<_>>());
        distinct(&SynSeen::NAMED.iter().map(|(_, f)| f.bits() as u32).collect::<std::vec::Vec<_>>());
        distinct(&ReqFlags::NAMED.iter().map(|(_, f)| f.bits() as u32).collect::<std::vec::Vec<_>>());
    }

    #[test]
    fn per_direction_bits_follow_the_direction() {
        assert_eq!(SynSeen::of(Direction::In), SynSeen::RECEIVED);
        assert_eq!(SynSeen::of(Direction::Out), SynSeen::SENT);
        assert_eq!(HintFlags::skip(Direction::In), HintFlags::SKIP_IN);
        assert_eq!(HintFlags::skip(Direction::Out), HintFlags::SKIP_OUT);
    }

    #[test]
    fn operations_are_those_of_the_masks() {
        let f = SegFlags::SYN | SegFlags::ACK;
        assert_eq!(f.bits(), 0x9);
        assert!(f.contains(SegFlags::SYN) && f.contains(SegFlags::SYN | SegFlags::ACK));
        assert!(!f.contains(SegFlags::SYN | SegFlags::FIN) && f.intersects(SegFlags::SYN | SegFlags::FIN));
        assert_eq!(f.difference(SegFlags::SYN), SegFlags::ACK);
        assert_eq!(f & SegFlags::ACK, SegFlags::ACK);
        assert_eq!(SegFlags::EMPTY.with(SegFlags::FIN, true).with(SegFlags::RST, false), SegFlags::FIN);
        let mut g = SegFlags::from(0x2);
        g |= SegFlags::HANDOFF;
        assert_eq!(u8::from(g), 0x22);
        assert!(SegFlags::EMPTY.is_empty());
        assert_eq!(format!("{f:?}"), "SegFlags(SYN | ACK)");
        assert_eq!(format!("{:?}", SegFlags(0x81)), "SegFlags(SYN | 0x80)");
        assert_eq!(format!("{:?}", SegFlags::EMPTY), "SegFlags(0x0)");
    }
}
