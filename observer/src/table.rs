//! The daemon's view of connections: snapshots of the kernel's `CONNS` map as operators read them.
use observer_common::conn::{ConnKey, ConnStats, FAMILY_IPV4};
use serde::Serialize;

use crate::sys::ktime_to_unix_seconds;

/// One connection as the API and CLI show it.
#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    /// The connection's one written form: local then remote endpoint.
    pub connection: String,
    pub local: String,
    pub remote: String,
    pub family: &'static str,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub syn_in: u64,
    pub syn_out: u64,
    pub fin_in: u64,
    pub fin_out: u64,
    pub rst_in: u64,
    pub rst_out: u64,
    /// Unix time, seconds.
    pub first_seen: f64,
    pub last_seen: f64,
    pub duration_seconds: f64,
}

impl Connection {
    pub fn new(key: &ConnKey, stats: &ConnStats) -> Self {
        let ConnStats { packets_in, packets_out, bytes_in, bytes_out, syn_in, syn_out, fin_in, fin_out, rst_in, rst_out, first_seen_ns, last_seen_ns } = *stats;
        Self {
            connection: key.to_string(),
            local: key.local().to_string(),
            remote: key.remote().to_string(),
            family: if key.family == FAMILY_IPV4 { "ipv4" } else { "ipv6" },
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            syn_in,
            syn_out,
            fin_in,
            fin_out,
            rst_in,
            rst_out,
            first_seen: ktime_to_unix_seconds(first_seen_ns),
            last_seen: ktime_to_unix_seconds(last_seen_ns),
            duration_seconds: last_seen_ns.saturating_sub(first_seen_ns) as f64 / 1e9,
        }
    }
}
