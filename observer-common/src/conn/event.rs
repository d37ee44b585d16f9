//! A connection's lifecycle events, through the `EVENTS` ring buffer: the kind on the wire is a
//! `u32`, read back with `ConnEventKind::try_from`.

use core::fmt;

use super::{ConnKey, ConnStats};
use crate::direction::Direction;

/// What a [`ConnEvent`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnEventKind {
    /// Reached ESTABLISHED.
    Opened = 1,
    /// Reached CLOSE; `stats` holds the counters at that moment (the map entry stays exact).
    Closed = 2,
    /// A reset was sent (`detail` = [`RESET_SENT`]) or received (`detail` = [`RESET_RECEIVED`]).
    Reset = 3,
    /// A closed connection's entry is about to be reused by a new connection on its four-tuple:
    /// `stats` (and `frame`) are its final counts, with what came after the close (a FIN that
    /// arrived in TIME_WAIT).
    Superseded = 4,
}

impl ConnEventKind {
    pub const ALL: [ConnEventKind; 4] = [ConnEventKind::Opened, ConnEventKind::Closed, ConnEventKind::Reset, ConnEventKind::Superseded];

    /// Lower-case name as the API writes it.
    pub const fn name(self) -> &'static str {
        match self {
            ConnEventKind::Opened => "opened",
            ConnEventKind::Closed => "closed",
            ConnEventKind::Reset => "reset",
            ConnEventKind::Superseded => "superseded",
        }
    }
}

/// A `ConnEvent::kind` that is no [`ConnEventKind`] (a newer kernel object's, or garbage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownEventKind(pub u32);

impl fmt::Display for UnknownEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown connection event kind {}", self.0)
    }
}

impl TryFrom<u32> for ConnEventKind {
    type Error = UnknownEventKind;

    #[inline(always)]
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        match v {
            1 => Ok(ConnEventKind::Opened),
            2 => Ok(ConnEventKind::Closed),
            3 => Ok(ConnEventKind::Reset),
            4 => Ok(ConnEventKind::Superseded),
            _ => Err(UnknownEventKind(v)),
        }
    }
}

/// `ConnEvent::detail` of a [`ConnEventKind::Reset`]: this host sent the reset.
pub const RESET_SENT: u32 = 1;
/// `ConnEvent::detail` of a [`ConnEventKind::Reset`]: the peer sent it.
pub const RESET_RECEIVED: u32 = 2;

/// A lifecycle event, through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    /// [`ConnEventKind`] as u32.
    pub kind: u32,
    /// With `Closed`: the TCP state before the close (`tcp_state`); with `Reset`: [`RESET_SENT`]
    /// or [`RESET_RECEIVED`].
    pub detail: u32,
    pub ts_ns: u64,
    pub key: ConnKey,
    pub stats: ConnStats,
    /// With `Closed`: 1 when `frame` holds the connection's kernel HTTP framing state at its
    /// close (taken here, not later from the map: the four-tuple may be reused in the meantime).
    pub frame_valid: u32,
    pub _pad: u32,
    pub frame: crate::frame::ConnFrame,
}

impl ConnEvent {
    /// `kind`, typed.
    pub fn event_kind(&self) -> Result<ConnEventKind, UnknownEventKind> {
        ConnEventKind::try_from(self.kind)
    }

    /// Of a reset: which way it travelled ([`Direction::Out`]: this host sent it). `None` for
    /// other events.
    pub fn reset_direction(&self) -> Option<Direction> {
        if self.kind != ConnEventKind::Reset as u32 {
            return None;
        }
        Some(if self.detail == RESET_SENT { Direction::Out } else { Direction::In })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_read_back_from_their_wire_values() {
        for k in ConnEventKind::ALL {
            assert_eq!(ConnEventKind::try_from(k as u32), Ok(k), "{}", k.name());
        }
        assert_eq!(ConnEventKind::try_from(0), Err(UnknownEventKind(0)));
        assert_eq!(ConnEventKind::try_from(5), Err(UnknownEventKind(5)));
        assert_eq!(ConnEventKind::ALL.map(|k| k as u32), [1, 2, 3, 4], "the numbering is the wire format");
    }

    #[test]
    fn a_reset_event_says_which_way_it_went() {
        let mut ev = ConnEvent {
            kind: ConnEventKind::Reset as u32,
            detail: RESET_SENT,
            ts_ns: 0,
            key: ConnKey::zeroed(),
            stats: ConnStats::zeroed(),
            frame_valid: 0,
            _pad: 0,
            frame: crate::frame::ConnFrame::zeroed(),
        };
        assert_eq!(ev.event_kind(), Ok(ConnEventKind::Reset));
        assert_eq!(ev.reset_direction(), Some(Direction::Out));
        ev.detail = RESET_RECEIVED;
        assert_eq!(ev.reset_direction(), Some(Direction::In));
        ev.kind = ConnEventKind::Opened as u32;
        assert_eq!(ev.reset_direction(), None);
    }
}
