//! The `port` label: which end of a connection names its service.
#![forbid(unsafe_code)]
use observer_common::conn::{ConnKey, Role};

/// The port that names a connection's service: the local one for inbound connections, the
/// remote one for outbound ones; when the role is unknown (the connection was open before the
/// daemon started, no SYN seen, and HTTP framing has not told yet), the end that is not in the
/// ephemeral range `(lo, hi)`, else the lower one: never a client's ephemeral port, which would
/// spend the bounded port labels on one-off values.
pub fn service_port(key: &ConnKey, role: Role, (lo, hi): (u16, u16)) -> u16 {
    match role {
        Role::Outbound => key.remote_port,
        Role::Inbound => key.local_port,
        Role::Unknown => {
            let ephemeral = |p: u16| (lo..=hi).contains(&p);
            match (ephemeral(key.local_port), ephemeral(key.remote_port)) {
                (true, false) => key.remote_port,
                (false, true) => key.local_port,
                _ => key.local_port.min(key.remote_port),
            }
        }
    }
}

/// `net.ipv4.ip_local_port_range` of the daemon's network namespace (Linux's default when it
/// cannot be read).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_role_never_names_an_ephemeral_port() {
        let key = |local, remote| ConnKey { local_port: local, remote_port: remote, ..ConnKey::zeroed() };
        let range = (32768, 60999);
        assert_eq!(service_port(&key(80, 51234), Role::Unknown, range), 80, "a client of ours, open before the start");
        assert_eq!(service_port(&key(45678, 8080), Role::Unknown, range), 8080, "our own connection to an upstream");
        assert_eq!(service_port(&key(443, 8443), Role::Unknown, range), 443, "neither ephemeral: the lower");
        assert_eq!(service_port(&key(45678, 51234), Role::Unknown, range), 45678, "both ephemeral: the lower");
        assert_eq!(service_port(&key(45678, 8080), Role::Outbound, range), 8080);
        assert_eq!(service_port(&key(80, 51234), Role::Inbound, range), 80);
    }
}
