//! Why a connection ended, from its final counters.

use super::{tcp_state, Closer, ConnStats};

/// Why a connection ended.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum CloseReason {
    /// FIN both ways.
    Normal = 1,
    /// This host sent a reset (e.g. an application closed with SO_LINGER 0, or unread data).
    ResetSent = 2,
    /// The peer sent a reset.
    ResetReceived = 3,
    /// The connection never opened: the listening side answered the SYN with a reset.
    Refused = 4,
    /// The connection never opened, or died, without an answer (SYN or retransmission timeout).
    TimedOut = 5,
}

impl CloseReason {
    pub const fn name(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ResetSent => "reset_sent",
            CloseReason::ResetReceived => "reset_received",
            CloseReason::Refused => "refused",
            CloseReason::TimedOut => "timed_out",
        }
    }

    pub const ALL: [CloseReason; 5] = [CloseReason::Normal, CloseReason::ResetSent, CloseReason::ResetReceived, CloseReason::Refused, CloseReason::TimedOut];

    /// The reason, from a closed connection's final counters. A reset on the wire (tc view) counts
    /// as well as one the socket layer reported: a refused inbound SYN never had a socket.
    pub fn of(s: &ConnStats) -> CloseReason {
        let sent = s.resets_sent + s.rst_out > 0;
        let received = s.resets_received + s.rst_in > 0;
        let never_opened = s.opened_ns == 0 && s.state_before_close != tcp_state::ESTABLISHED;
        if never_opened {
            if sent || received {
                return CloseReason::Refused;
            }
            return CloseReason::TimedOut;
        }
        // The first reset decides; a reset answering a reset is not news.
        match (sent, received) {
            (true, false) => CloseReason::ResetSent,
            (false, true) => CloseReason::ResetReceived,
            (true, true) => {
                if Closer::from_u8(s.closer) == Closer::Remote {
                    CloseReason::ResetReceived
                } else {
                    CloseReason::ResetSent
                }
            }
            (false, false) => {
                // FIN on the wire, or a socket that went through the closing states: an orderly
                // close. Otherwise it died where it stood (retransmission or keepalive timeout).
                let closing = matches!(
                    s.state_before_close,
                    tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::LAST_ACK | tcp_state::CLOSE_WAIT | tcp_state::TIME_WAIT
                );
                if s.fin_in > 0 || s.fin_out > 0 || closing {
                    CloseReason::Normal
                } else {
                    CloseReason::TimedOut
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> ConnStats {
        ConnStats::zeroed()
    }

    #[test]
    fn close_reasons() {
        let mut normal = stats();
        normal.opened_ns = 1;
        normal.fin_in = 1;
        normal.fin_out = 1;
        assert_eq!(CloseReason::of(&normal), CloseReason::Normal);

        let mut aborted_by_peer = normal;
        aborted_by_peer.fin_in = 0;
        aborted_by_peer.fin_out = 0;
        aborted_by_peer.resets_received = 1;
        assert_eq!(CloseReason::of(&aborted_by_peer), CloseReason::ResetReceived);

        let mut aborted_here = normal;
        aborted_here.rst_out = 1;
        assert_eq!(CloseReason::of(&aborted_here), CloseReason::ResetSent);

        let mut refused = stats();
        refused.syn_in = 1;
        refused.rst_out = 1;
        assert_eq!(CloseReason::of(&refused), CloseReason::Refused, "no socket: tc view only");
        let mut refused_out = stats();
        refused_out.state_before_close = tcp_state::SYN_SENT;
        refused_out.resets_received = 1;
        assert_eq!(CloseReason::of(&refused_out), CloseReason::Refused);

        let mut loopback = stats();
        loopback.opened_ns = 1;
        loopback.state_before_close = tcp_state::LAST_ACK;
        assert_eq!(CloseReason::of(&loopback), CloseReason::Normal, "no tc view, socket closed in order");
        let mut rto = loopback;
        rto.state_before_close = tcp_state::ESTABLISHED;
        assert_eq!(CloseReason::of(&rto), CloseReason::TimedOut);

        let mut syn_timeout = stats();
        syn_timeout.state_before_close = tcp_state::SYN_SENT;
        syn_timeout.syn_out = 3;
        assert_eq!(CloseReason::of(&syn_timeout), CloseReason::TimedOut);
    }
}
