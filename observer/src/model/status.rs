//! `GET /api/v1/status`: what the daemon attached and how it runs. The daemon's own types hold
//! borrowed names (`&'static str`); these are their written forms, owned, so that a client can
//! read them back.
#![forbid(unsafe_code)]
use std::{collections::BTreeMap, path::PathBuf};

use observer_common::global::Counter;
use serde::{Deserialize, Serialize};

/// `GET /api/v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// The kernel's release (`uname -r`).
    pub kernel: String,
    pub uptime_seconds: f64,
    /// The tc programs, one per interface and direction.
    pub attachments: Vec<Attachment>,
    /// Every socket tracepoint, and whether it is attached.
    pub tracepoints: Vec<Tracepoint>,
    /// Whether socket events are restricted to the daemon's network namespace.
    pub netns_filter: bool,
    /// What follows state changes: `tp_btf`, `tracepoint`, or `none`.
    pub lifecycle_hook: String,
    /// The capabilities kept once everything was loaded and attached.
    pub capabilities: Vec<String>,
    pub programs: Vec<ProgramStats>,
    /// Live traces (`observer trace`, `/api/v1/trace`).
    pub traces_active: usize,
    pub rings: Vec<RingLag>,
    /// Sweeps of the connection table since the start.
    pub sweeps: u64,
    pub kernel_counters: KernelCounters,
    /// Entries in the kernel's connection table (as `table.kernel_entries`).
    pub connections_tracked: u64,
    pub table: TableGauges,
    pub config: DaemonConfig,
}

/// How a tc program was attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub interface: String,
    /// `ingress` or `egress`.
    pub direction: String,
    pub program: String,
    /// `tcx` (Linux >= 6.6) or `clsact` (netlink tc filter on older kernels).
    pub mode: String,
}

/// A socket tracepoint (`sock:inet_sock_set_state`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracepoint {
    pub tracepoint: String,
    pub attached: bool,
}

/// Run-time accounting of one of the daemon's programs (zero unless `kernel.bpf_stats_enabled`
/// is 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub program: String,
    /// The kernel's id of the program (`bpftool prog show id N`).
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub verified_instructions: Option<u32>,
}

/// How long a ring buffer has had records waiting unread (0 when its reader keeps up).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RingLag {
    /// `events`, `payload` or `trace`.
    pub ring: String,
    pub lag_seconds: f64,
}

/// The kernel's global counters, each under its name (`packets_seen`, ...: `Counter::name`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KernelCounters(pub BTreeMap<String, u64>);

impl KernelCounters {
    /// One counter; 0 if the daemon did not write it (an older daemon's counters are fewer).
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(c.name()).copied().unwrap_or(0)
    }
}

/// What the daemon's table holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableGauges {
    pub kernel_entries: u64,
    pub open_inbound: u64,
    pub open_outbound: u64,
    pub open_unknown: u64,
    pub closed_kept: u64,
    /// Times a daemon bound was reached, by bound (`observer_bounds_reached_total`), written as
    /// `[name, times]` pairs.
    pub bounds: Vec<(String, u64)>,
}

/// The daemon's configuration, as `observer run`'s options set it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonConfig {
    /// As given; empty: every interface that is up and not loopback.
    pub interfaces: Vec<String>,
    pub listen: String,
    pub metrics_listen: Option<String>,
    /// Where maps and links are pinned; null: nothing outlives the daemon.
    pub state_dir: Option<PathBuf>,
    pub top_k: usize,
    /// Ports parsed as HTTP; empty: every port, detected by content.
    pub http_ports: Vec<u16>,
    /// As written on the command line (`--lifecycle-hook`).
    pub lifecycle_hook: Option<String>,
    pub max_connections: u32,
    pub events_bytes: u32,
    pub payload_bytes: u32,
    pub closed_retention_seconds: u64,
    pub closed_max: usize,
    pub http_framing: HttpFraming,
    /// Why the daemon frames HTTP although the kernel was asked to.
    pub http_framing_refused: Option<String>,
    pub ready_max_lag_seconds: f64,
    pub unix_socket: Option<PathBuf>,
    pub upstreams: Upstreams,
}

/// Who frames HTTP (`--http-framing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFraming {
    Kernel,
    Daemon,
}

/// How outbound connections get their bounded `upstream` label: `{"first_endpoints": 16}` or
/// `{"rules": ["api", ...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upstreams {
    /// Without rules: this many distinct endpoints get their own label.
    FirstEndpoints(usize),
    /// The rules' names, first match wins.
    Rules(Vec<String>),
}
