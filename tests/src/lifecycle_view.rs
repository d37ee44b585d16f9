//! What the lifecycle tests read: every sample of `/metrics` by name and labels (compared as
//! deltas around a test's traffic), a connection by its two ends, and the close of one that opened.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use ::observer::model::{CloseReason, ConnStatus, TcpState};

use crate::{observer::WAIT, poll, Connection, ConnectionExt, Observer, Snapshot};

/// Every sample of `/metrics`: (name, labels) → value.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    raw: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in metrics line {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").unwrap_or_else(|| panic!("bad label {p:?} in {line:?}"));
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.insert((name, labels), value);
        }
        Metrics { samples, raw: text.to_owned() }
    }

    /// The sample `name{labels}` with exactly these labels; 0 when absent (a counter not yet
    /// incremented has no series).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_owned(), labels)).copied().unwrap_or(0.0)
    }

    /// The sum of every series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples.iter().filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))).map(|(_, v)| v).sum()
    }

    /// Every series of `name` with its value, for messages.
    pub fn series(&self, name: &str) -> String {
        self.raw.lines().filter(|l| l.starts_with(name)).collect::<Vec<_>>().join("\n")
    }
}

/// One scrape of `/metrics`.
pub fn metrics(o: &Observer) -> Metrics {
    Metrics::parse(&o.metrics())
}

/// Polls `/metrics` until `done` holds (up to [`WAIT`]) and returns that scrape.
pub fn wait_for_metrics(o: &Observer, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let mut last = Metrics::default();
    poll(WAIT, Duration::from_millis(50), || {
        last = metrics(o);
        done(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| {
        panic!("waited {WAIT:?} for /metrics to show {what}; the last scrape had:\n{}\n{}", last.series("observer_connections"), last.series("observer_resets"))
    })
}

/// Connections opened, by role and port.
pub const OPENED: &str = "observer_connections_opened_total";
/// Connections closed, by role, port, reason and protocol.
pub const CLOSED: &str = "observer_connections_closed_total";
/// Resets, by direction.
pub const RESETS: &str = "observer_resets_total";

/// The one entry of `snap` whose local and remote ends are these.
pub fn entry(snap: &Snapshot, local: SocketAddr, remote: SocketAddr) -> &Connection {
    let found: Vec<&Connection> = snap.connections.iter().filter(|c| c.local_addr() == local && c.remote_addr() == remote).collect();
    assert_eq!(found.len(), 1, "exactly one entry for {local} {remote}:\n{}", snap.pretty());
    found[0]
}

/// Asserts the close of a connection that opened: `status` closed, `state` closed, the reason,
/// and `first_seen <= opened <= closed`.
pub fn assert_closed_after_open(c: &Connection, reason: CloseReason) {
    assert_eq!((c.status, c.state, c.close_reason), (ConnStatus::Closed, TcpState::Closed, Some(reason)), "{}: {c:#?}", c.connection);
    let opened = c.opened.unwrap_or_else(|| panic!("{}: opened is null for a connection that was established: {c:#?}", c.connection));
    let closed = c.closed.unwrap_or_else(|| panic!("{}: closed is null for a closed connection: {c:#?}", c.connection));
    assert!(c.first_seen <= opened && opened <= closed, "{}: first_seen {} <= opened {opened} <= closed {closed}", c.connection, c.first_seen);
}

/// An IPv4 endpoint.
pub fn v4(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}
