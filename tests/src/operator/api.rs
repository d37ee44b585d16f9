//! The JSON API read as JSON, the way scripts and dashboards read it: polled until it shows what
//! a test waits for, and the connections it lists by their written form.
use std::{collections::BTreeSet, time::Duration};

use serde_json::Value;

use crate::{observer::WAIT, poll, Observer};

/// The socket tracepoints the architecture names.
pub const TRACEPOINTS: [&str; 4] = ["sock:inet_sock_set_state", "tcp:tcp_retransmit_skb", "tcp:tcp_send_reset", "tcp:tcp_receive_reset"];

/// Polls `GET path` until `done` holds for its JSON; panics with the last answer.
pub fn wait_json(obs: &Observer, path: &str, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    poll(timeout, Duration::from_millis(50), || {
        last = obs.get_json(path);
        done(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("waited {timeout:?} for {what}; GET {path} answered:\n{}", serde_json::to_string_pretty(&last).unwrap_or_default()))
}

/// Polls until every connection is closed and the HTTP framing has counted every request and
/// response (`requests` on each side of the proxy): the daemon frames HTTP as payload records
/// arrive, apart from the socket events that close a connection.
pub fn wait_closed_and_counted(obs: &Observer, connections: usize, requests: u64) -> Value {
    wait_json(
        obs,
        "/api/v1/connections?state=closed",
        &format!("{connections} closed connections with {requests} requests and responses on each side"),
        WAIT,
        |v| {
            let conns = v["connections"].as_array().unwrap();
            let sum = |role: &str, key: &str| conns.iter().filter(|c| c["role"] == role).map(|c| c["http"]["lifetime"][key].as_u64().unwrap_or(0)).sum::<u64>();
            let responses =
                |role: &str| ["responses_1xx", "responses_2xx", "responses_3xx", "responses_4xx", "responses_5xx"].iter().map(|k| sum(role, k)).sum::<u64>();
            v["count"] == connections && ["inbound", "outbound"].iter().all(|r| sum(r, "requests") == requests && responses(r) == requests)
        },
    )
}

/// The `connection` strings of an API answer, in order.
pub fn conn_names(v: &Value) -> Vec<String> {
    v["connections"]
        .as_array()
        .unwrap_or_else(|| panic!("no connections in {v}"))
        .iter()
        .map(|c| c["connection"].as_str().expect("connection").to_owned())
        .collect()
}

/// The `connection` strings of an API answer, as a set.
pub fn conn_set(v: &Value) -> BTreeSet<String> {
    conn_names(v).into_iter().collect()
}
