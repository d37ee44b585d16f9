//! The bounded `upstream` label of outbound connections: which endpoint behind the gateway the
//! requests went to and how it answered (`observer_upstream_*`).
//!
//! Bounded two ways. With rules (`--upstream ENDPOINT[=NAME]`, an allowlist), a connection takes
//! the name of the first rule its remote end matches, else `other`. Without, each of the first N
//! distinct remote endpoints (`--upstream-labels N`) keeps its `address:port` for the daemon's
//! life and later ones are `other`. Not "the top N by traffic": these are counters, and a series
//! that left a top N and came back would restart from zero where `rate()` cannot see it.
//!
//! The counts are each connection's lifetime HTTP counts as the API shows them (the kernel's
//! exact ones where it framed the connection), added as deltas: at each scrape for open
//! connections, and once, final, when a connection is archived.
#![forbid(unsafe_code)]
use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Mutex,
};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use observer_common::conn::{ConnKey, ConnStats, Role};
use prometheus::{IntCounterVec, Opts, Registry};

use crate::{
    http::Counts,
    table::{Connection, Incarnation},
};

/// The label of endpoints past the bound or outside the rules.
pub const OTHER: &str = "other";

/// What a rule matches: an endpoint, an address (any port), or a network (any port).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    Endpoint(SocketAddr),
    Address(IpAddr),
    Network(IpAddr, u8),
}

/// One `--upstream ENDPOINT[=NAME]` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    matcher: Matcher,
    /// The label value; the rule's own text when no name was given.
    pub name: String,
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (what, name) = match s.split_once('=') {
            Some((w, n)) if n.trim().is_empty() => return Err(format!("{w}=: the name after = is empty")),
            Some((w, n)) => (w.trim(), n.trim().to_owned()),
            None => (s.trim(), s.trim().to_owned()),
        };
        let expected = || {
            format!("{what:?}: expected ADDRESS:PORT (198.18.0.2:8080, [2001:db8::2]:8080), ADDRESS, or NETWORK/PREFIX (198.18.0.0/24), optionally followed by =NAME")
        };
        let matcher = if let Ok(e) = what.parse::<SocketAddr>() {
            Matcher::Endpoint(e)
        } else if let Ok(a) = what.parse::<IpAddr>() {
            Matcher::Address(a)
        } else if let Some((net, prefix)) = what.split_once('/') {
            let net: IpAddr = net.parse().map_err(|_| expected())?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| format!("{what:?}: the prefix length must be 0 to {max}"))?;
            Matcher::Network(net, prefix)
        } else {
            return Err(expected());
        };
        Ok(Self { matcher, name })
    }
}

impl Rule {
    fn matches(&self, remote: &SocketAddr) -> bool {
        match self.matcher {
            Matcher::Endpoint(e) => canonical(e.ip()) == canonical(remote.ip()) && e.port() == remote.port(),
            Matcher::Address(a) => canonical(a) == canonical(remote.ip()),
            Matcher::Network(net, prefix) => in_network(canonical(remote.ip()), canonical(net), prefix),
        }
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's peer) as the IPv4 address it is.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

fn in_network(a: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let mask = |bits: u32| if prefix == 0 { 0 } else { u128::MAX << (bits - u32::from(prefix)) };
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)) ^ u128::from(u32::from(n))) & mask(32) & u128::from(u32::MAX) == 0,
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a) ^ u128::from(n)) & mask(128) == 0,
        _ => false,
    }
}

/// How upstream labels are chosen (`observer run --upstream`, `--upstream-labels`).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Non-empty: an allowlist, first match wins.
    pub rules: Vec<Rule>,
    /// Without rules: this many distinct endpoints get their own label.
    pub max_labels: usize,
}

/// What was counted of one open connection, and at which scrape it was last seen.
struct Seen {
    counts: Counts,
    scrape: u64,
}

/// Open connections not seen for this many scrapes are forgotten (evicted from the kernel map
/// without a close the daemon saw); long enough that a close being finalised is not double-counted.
const FORGET_AFTER_SCRAPES: u64 = 3;

pub struct Upstreams {
    policy: Policy,
    /// Endpoints that have their own label (without rules).
    labelled: Mutex<HashSet<SocketAddr>>,
    seen: Mutex<(u64, HashMap<Incarnation, Seen>)>,
    requests: IntCounterVec,
    responses: IntCounterVec,
    unanswered: IntCounterVec,
    opened: IntCounterVec,
    closed: IntCounterVec,
}

impl Upstreams {
    pub fn new(registry: &Registry, policy: Policy) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(v.clone())).expect("registered once");
            v
        };
        Self {
            policy,
            labelled: Mutex::new(HashSet::new()),
            seen: Mutex::new((0, HashMap::new())),
            requests: vec("observer_upstream_http_requests_total", "HTTP/1.x requests this host sent on outbound connections, by upstream (bounded: --upstream rules, else the first --upstream-labels endpoints, then `other`).", &["upstream"]),
            responses: vec("observer_upstream_http_responses_total", "HTTP/1.x responses upstreams sent on outbound connections (interim 1xx included), by upstream and status class.", &["upstream", "class"]),
            unanswered: vec("observer_upstream_http_requests_unanswered_total", "Requests to an upstream whose connection ended (reset or close) before a response.", &["upstream"]),
            opened: vec("observer_upstream_connections_opened_total", "Outbound connections that reached ESTABLISHED, by upstream.", &["upstream"]),
            closed: vec("observer_upstream_connections_closed_total", "Outbound connections that ended, by upstream and reason (normal, reset_sent, reset_received, refused, timed_out).", &["upstream", "reason"]),
        }
    }

    /// The label of a remote endpoint.
    pub fn label(&self, remote: SocketAddr) -> String {
        if !self.policy.rules.is_empty() {
            return self.policy.rules.iter().find(|r| r.matches(&remote)).map_or_else(|| OTHER.to_owned(), |r| r.name.clone());
        }
        let remote = SocketAddr::new(canonical(remote.ip()), remote.port());
        let mut labelled = self.labelled.lock().expect("upstream labels lock");
        if labelled.contains(&remote) || (labelled.len() < self.policy.max_labels && labelled.insert(remote)) {
            remote.to_string()
        } else {
            OTHER.to_owned()
        }
    }

    pub fn connection_opened(&self, key: &ConnKey, stats: &ConnStats) {
        if Role::from_u8(stats.role) == Role::Outbound {
            self.opened.with_label_values(&[&self.label(key.remote())]).inc();
        }
    }

    pub fn connection_closed(&self, key: &ConnKey, stats: &ConnStats) {
        if Role::from_u8(stats.role) == Role::Outbound {
            let reason = observer_common::conn::CloseReason::of(stats).name();
            self.closed.with_label_values(&[&self.label(key.remote()), reason]).inc();
        }
    }

    /// At a scrape: adds what open outbound connections framed since the last scrape. Closed
    /// ones are left to [`Self::finished`], which sees their final counts.
    pub fn scrape(&self, conns: &[Connection]) {
        let mut seen = self.seen.lock().expect("upstream seen lock");
        seen.0 += 1;
        let now = seen.0;
        for c in conns.iter().filter(|c| c.role == Role::Outbound && c.status == crate::model::ConnStatus::Open) {
            let Some(counts) = c.http.as_ref().map(|h| h.lifetime.counts) else { continue };
            let before = seen.1.insert(c.incarnation, Seen { counts, scrape: now }).map(|s| s.counts);
            self.add(c.incarnation.0.remote(), &counts, before.as_ref());
        }
        seen.1.retain(|_, s| now - s.scrape < FORGET_AFTER_SCRAPES);
    }

    /// A connection was archived: adds the rest of its counts, once.
    pub fn finished(&self, c: &Connection) {
        if c.role != Role::Outbound {
            return;
        }
        let before = self.seen.lock().expect("upstream seen lock").1.remove(&c.incarnation).map(|s| s.counts);
        if let Some(counts) = c.http.as_ref().map(|h| h.lifetime.counts) {
            self.add(c.incarnation.0.remote(), &counts, before.as_ref());
        }
    }

    fn add(&self, remote: SocketAddr, now: &Counts, before: Option<&Counts>) {
        let zero = Counts::default();
        let before = before.unwrap_or(&zero);
        if now == before {
            return;
        }
        let upstream = self.label(remote);
        let delta = |n: u64, b: u64| n.saturating_sub(b);
        // Every series of the upstream, also at 0: an error ratio over series that do not exist
        // yet would be empty rather than 0.
        let add = |c: &IntCounterVec, labels: &[&str], n: u64| c.with_label_values(labels).inc_by(n);
        add(&self.requests, &[&upstream], delta(now.requests, before.requests));
        add(&self.unanswered, &[&upstream], delta(now.no_response, before.no_response));
        for (class, n, b) in [
            ("1xx", now.responses_1xx, before.responses_1xx),
            ("2xx", now.responses_2xx, before.responses_2xx),
            ("3xx", now.responses_3xx, before.responses_3xx),
            ("4xx", now.responses_4xx, before.responses_4xx),
            ("5xx", now.responses_5xx, before.responses_5xx),
        ] {
            add(&self.responses, &[&upstream, class], delta(n, b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn rules_match_endpoints_addresses_and_networks() {
        let a: SocketAddr = "198.18.0.2:8080".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:198.18.0.2]:8080".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
        assert!(rule("198.18.0.2:8080").matches(&a) && !rule("198.18.0.2:8081").matches(&a));
        assert!(rule("198.18.0.2:8080").matches(&mapped), "a dual-stack socket's peer is the IPv4 address");
        assert!(rule("198.18.0.2").matches(&a) && !rule("198.18.0.3").matches(&a));
        assert!(rule("198.18.0.0/24").matches(&a) && rule("198.18.0.0/15").matches(&a) && !rule("198.18.1.0/24").matches(&a));
        assert!(rule("0.0.0.0/0").matches(&a) && !rule("0.0.0.0/0").matches(&v6));
        assert!(rule("2001:db8::/32").matches(&v6) && !rule("2001:db9::/32").matches(&v6) && rule("[2001:db8::7]:443").matches(&v6));
        assert_eq!(rule("198.18.0.0/24=orders").name, "orders");
        assert_eq!(rule("198.18.0.2:8080").name, "198.18.0.2:8080");
    }

    #[test]
    fn bad_rules_say_what_is_expected() {
        for (bad, says) in [
            ("orders", "expected ADDRESS:PORT"),
            ("198.18.0.0/33", "0 to 32"),
            ("2001:db8::/129", "0 to 128"),
            ("198.18.0.2=", "name after = is empty"),
            ("198.18.0.300", "expected"),
        ] {
            let e = bad.parse::<Rule>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn labels_are_bounded_and_stable() {
        let ups = Upstreams::new(&Registry::new(), Policy { rules: vec![], max_labels: 2 });
        let e = |p: u16| SocketAddr::from(([198, 18, 0, 2], p));
        assert_eq!(ups.label(e(1)), "198.18.0.2:1");
        assert_eq!(ups.label(e(2)), "198.18.0.2:2");
        assert_eq!(ups.label(e(3)), OTHER, "past the bound");
        assert_eq!(ups.label(e(1)), "198.18.0.2:1", "a label once given stays");
        let ruled = Upstreams::new(&Registry::new(), Policy { rules: vec![rule("198.18.0.2:2=b"), rule("198.18.0.0/24=net")], max_labels: 2 });
        assert_eq!((ruled.label(e(2)).as_str(), ruled.label(e(1)).as_str()), ("b", "net"), "first match wins");
        assert_eq!(ruled.label(SocketAddr::from(([198, 18, 1, 2], 80))), OTHER);
    }

    #[test]
    fn deltas_add_up_to_the_final_counts_once() {
        let registry = Registry::new();
        let ups = Upstreams::new(&registry, Policy { rules: vec![], max_labels: 8 });
        let remote = SocketAddr::from(([198, 18, 0, 2], 8080));
        let counts = |requests, ok, bad| Counts { requests, responses_2xx: ok, responses_5xx: bad, ..Counts::default() };
        ups.add(remote, &counts(3, 2, 0), None);
        ups.add(remote, &counts(5, 3, 1), Some(&counts(3, 2, 0)));
        ups.add(remote, &counts(5, 3, 1), Some(&counts(5, 3, 1)));
        let get = |c: &IntCounterVec, l: &[&str]| c.with_label_values(l).get();
        assert_eq!(get(&ups.requests, &["198.18.0.2:8080"]), 5);
        assert_eq!(get(&ups.responses, &["198.18.0.2:8080", "2xx"]), 3);
        assert_eq!(get(&ups.responses, &["198.18.0.2:8080", "5xx"]), 1);
    }
}
