//! Filters, sorting and limits of `GET /api/v1/connections`, and the written form of a
//! connection (`LOCAL REMOTE`), parsed with errors that say what was expected.
#![forbid(unsafe_code)]
use std::{cmp::Ordering, collections::HashMap, net::IpAddr};

use observer_common::conn::{ConnKey, ParseConnKeyError};

use crate::model::{ConnStatus, Connection, Role, TcpState};

/// `state=`: open, ended (`closed`: final or still closing), or one TCP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFilter {
    Open,
    Ended,
    Tcp(TcpState),
}

pub const CONNECTION_FORM: &str = "a connection is written LOCAL REMOTE, e.g. `198.18.0.1:80 198.18.0.2:51234` or `[2001:db8::1]:443 [2001:db8::2]:40000` (in a URL path the space is %20; a comma also separates)";

/// Parses a connection in its written form, local endpoint first (`observer_common`'s
/// `FromStr`, beside the `Display` that writes it), with the form in the message.
pub fn parse_connection(s: &str) -> Result<ConnKey, String> {
    s.parse::<ConnKey>().map_err(|e| match e {
        ParseConnKeyError::Form => format!("{s:?}: {CONNECTION_FORM}"),
        e => format!("{s:?}: {e}"),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    FirstSeen,
    LastSeen,
    Duration,
    BytesIn,
    BytesOut,
    Packets,
    Retransmits,
    Resets,
    /// HTTP, over the query's window:
    ErrorRatio,
    Requests,
    Failed,
}

/// Which HTTP counts `sort` and the `min_requests` filter use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Window {
    #[default]
    Last10s,
    Last60s,
    Lifetime,
}

impl Window {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "10s" => Window::Last10s,
            "60s" => Window::Last60s,
            "lifetime" => Window::Lifetime,
            other => return Err(format!("window={other:?}: expected 10s, 60s or lifetime")),
        })
    }

    fn of(self, c: &Connection) -> Option<&crate::http::WindowView> {
        c.http.as_ref().map(|h| match self {
            Window::Last10s => &h.last_10s,
            Window::Last60s => &h.last_60s,
            Window::Lifetime => &h.lifetime,
        })
    }
}

impl SortKey {
    const NAMES: &'static str = "error_ratio, requests, failed, first_seen, last_seen, duration, bytes_in, bytes_out, packets, retransmits, resets";

    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "first_seen" | "age" => SortKey::FirstSeen,
            "last_seen" => SortKey::LastSeen,
            "duration" => SortKey::Duration,
            "bytes_in" => SortKey::BytesIn,
            "bytes_out" => SortKey::BytesOut,
            "packets" => SortKey::Packets,
            "retransmits" => SortKey::Retransmits,
            "resets" => SortKey::Resets,
            "error_ratio" => SortKey::ErrorRatio,
            "requests" => SortKey::Requests,
            "failed" | "failures" => SortKey::Failed,
            other => return Err(format!("sort={other:?} is not a sort key: expected one of {}", Self::NAMES)),
        })
    }

    fn value(self, c: &Connection, w: Window) -> f64 {
        match self {
            SortKey::ErrorRatio => w.of(c).map_or(0.0, |v| v.error_ratio),
            SortKey::Requests => w.of(c).map_or(0.0, |v| v.counts.requests as f64),
            SortKey::Failed => w.of(c).map_or(0.0, |v| v.failed as f64),
            SortKey::FirstSeen => c.first_seen,
            SortKey::LastSeen => c.last_seen,
            SortKey::Duration => c.duration_seconds,
            SortKey::BytesIn => c.bytes_in as f64,
            SortKey::BytesOut => c.bytes_out as f64,
            SortKey::Packets => (c.packets_in + c.packets_out) as f64,
            SortKey::Retransmits => c.retransmits as f64,
            SortKey::Resets => (c.resets_sent + c.resets_received + c.rst_in + c.rst_out) as f64,
        }
    }
}

/// A parsed `GET /api/v1/connections` query.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// `open`, `closed`, or a TCP state name (`established`, `time_wait`, ...).
    pub state: Option<StateFilter>,
    pub role: Option<Role>,
    /// Matches the local or the remote port.
    pub port: Option<u16>,
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
    /// Matches the local or the remote address.
    pub address: Option<IpAddr>,
    pub sort: Option<SortKey>,
    pub ascending: bool,
    pub limit: Option<usize>,
    pub window: Window,
    /// Only connections with at least this many HTTP requests in the window.
    pub min_requests: Option<u64>,
}

/// Connections in one answer unless `limit` says otherwise, and the most `limit` may ask for:
/// their views are collected in memory first, about 2 KiB per connection (the text is written as
/// it is sent).
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 100_000;

const PARAMS: &str = "state, role, port, local_port, remote_port, address, sort, order, limit, window, min_requests";

fn port(name: &str, v: &str) -> Result<u16, String> {
    v.parse().map_err(|_| format!("{name}={v:?} is not a port: expected a number from 0 to 65535"))
}

impl Query {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, String> {
        let mut q = Query::default();
        for (name, v) in params {
            match name.as_str() {
                "state" => {
                    let v = v.to_ascii_lowercase();
                    const STATES: &str =
                        "open, closed, established, syn_sent, syn_recv, fin_wait1, fin_wait2, time_wait, close_wait, last_ack, closing, unknown";
                    q.state = Some(match v.as_str() {
                        "open" => StateFilter::Open,
                        "closed" => StateFilter::Ended,
                        _ => StateFilter::Tcp(
                            STATES
                                .split(", ")
                                .any(|s| s == v)
                                .then(|| crate::model::from_name(&v))
                                .flatten()
                                .ok_or_else(|| format!("state={v:?}: expected one of {STATES}"))?,
                        ),
                    });
                }
                "role" => q.role = Some(crate::model::from_name(v).ok_or_else(|| format!("role={v:?}: expected inbound, outbound or unknown"))?),
                "port" => q.port = Some(port(name, v)?),
                "local_port" => q.local_port = Some(port(name, v)?),
                "remote_port" => q.remote_port = Some(port(name, v)?),
                "address" => q.address = Some(v.parse().map_err(|_| format!("address={v:?} is not an IP address, e.g. 198.18.0.1 or 2001:db8::1"))?),
                "sort" => q.sort = Some(SortKey::parse(v)?),
                "order" => {
                    q.ascending = match v.as_str() {
                        "asc" => true,
                        "desc" => false,
                        _ => return Err(format!("order={v:?}: expected asc or desc")),
                    }
                }
                "limit" => {
                    let n: usize = v.parse().map_err(|_| format!("limit={v:?} is not a count: expected a whole number"))?;
                    if n > MAX_LIMIT {
                        return Err(format!("limit={n} is more than the {MAX_LIMIT} connections one answer holds: narrow the list with filters (state, role, port, address, min_requests) or ask for fewer"));
                    }
                    q.limit = Some(n);
                }
                "window" => q.window = Window::parse(v)?,
                "min_requests" => q.min_requests = Some(v.parse().map_err(|_| format!("min_requests={v:?} is not a count: expected a whole number"))?),
                other => return Err(format!("unknown parameter {other:?}: expected {PARAMS}")),
            }
        }
        Ok(q)
    }

    pub fn matches(&self, c: &Connection) -> bool {
        let key = &c.incarnation.0;
        let state_ok = match self.state {
            None => true,
            Some(StateFilter::Open) => c.status == ConnStatus::Open,
            // Ended: final, or still gathering its last counts.
            Some(StateFilter::Ended) => c.status != ConnStatus::Open,
            Some(StateFilter::Tcp(s)) => c.state == s,
        };
        state_ok
            && self.role.is_none_or(|r| c.role == r)
            && self.port.is_none_or(|p| key.local_port == p || key.remote_port == p)
            && self.local_port.is_none_or(|p| key.local_port == p)
            && self.remote_port.is_none_or(|p| key.remote_port == p)
            && self.address.is_none_or(|a| key.local().ip() == a || key.remote().ip() == a)
            && self.min_requests.is_none_or(|n| self.window.of(c).is_some_and(|v| v.counts.requests >= n))
    }

    /// Filters, sorts (default: most recently active first) and limits (default
    /// [`DEFAULT_LIMIT`]); also returns how many matched before the limit.
    pub fn apply(&self, mut all: Vec<Connection>) -> (Vec<Connection>, usize) {
        all.retain(|c| self.matches(c));
        let key = self.sort.unwrap_or(SortKey::LastSeen);
        all.sort_by(|a, b| {
            let o = key.value(a, self.window).partial_cmp(&key.value(b, self.window)).unwrap_or(Ordering::Equal);
            let o = if self.ascending { o } else { o.reverse() };
            o.then_with(|| a.connection.cmp(&b.connection))
        });
        let matched = all.len();
        all.truncate(self.limit.unwrap_or(DEFAULT_LIMIT));
        (all, matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_form_round_trips() {
        let k = parse_connection("198.18.0.1:80 198.18.0.2:51234").unwrap();
        assert_eq!(k.to_string(), "198.18.0.1:80 198.18.0.2:51234");
        let k6 = parse_connection("[2001:db8::1]:443,[2001:db8::2]:40000").unwrap();
        assert_eq!(k6.to_string(), "[2001:db8::1]:443 [2001:db8::2]:40000");
    }

    #[test]
    fn bad_connections_say_what_was_expected() {
        assert!(parse_connection("198.18.0.1:80").unwrap_err().contains("LOCAL REMOTE"));
        assert!(parse_connection("198.18.0.1 198.18.0.2:1").unwrap_err().contains("ADDRESS:PORT"));
        assert!(parse_connection("198.18.0.1:80 [2001:db8::2]:1").unwrap_err().contains("both endpoints"));
    }

    #[test]
    fn bad_parameters_are_refused_with_the_list() {
        let p = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        assert!(Query::parse(&p("port", "http")).unwrap_err().contains("0 to 65535"));
        assert!(Query::parse(&p("sort", "cost")).unwrap_err().contains("first_seen"));
        assert!(Query::parse(&p("colour", "red")).unwrap_err().contains("expected state"));
        assert!(Query::parse(&p("role", "inbound")).is_ok());
        assert!(Query::parse(&p("state", "bogus")).unwrap_err().contains("established"));
        assert!(Query::parse(&p("state", "TIME_WAIT")).is_ok());
        assert!(Query::parse(&p("window", "5m")).unwrap_err().contains("10s, 60s or lifetime"));
        assert_eq!(Query::parse(&p("sort", "error_ratio")).unwrap().sort, Some(SortKey::ErrorRatio));
        assert!(Query::parse(&p("limit", "1000000000")).unwrap_err().contains("narrow the list"));
        assert_eq!(Query::parse(&p("limit", "100000")).unwrap().limit, Some(MAX_LIMIT));
    }
}
