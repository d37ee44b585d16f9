//! What `observer run` is configured with (`command.rs` builds it from the command line; the
//! state and the API read it; `/api/v1/status` shows all of it).
use std::{net::SocketAddr, time::Duration};

use crate::bpf::MapSizes;

/// Everything `observer run` is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Empty: every interface that is up and not loopback.
    pub interfaces: Vec<String>,
    pub listen: SocketAddr,
    pub map_sizes: MapSizes,
    pub closed_retention: Duration,
    pub closed_max: usize,
    /// Per-connection Prometheus series for this many connections (worst 10 s error ratio).
    pub top_k: usize,
    /// Ports whose connections are parsed as HTTP; empty: every port, detected by content.
    pub http_ports: Vec<u16>,
    /// HTTP framed in the kernel (`--http-framing kernel`), else by the daemon from payload.
    pub kernel_http: bool,
    pub lifecycle_hook: crate::bpf::LifecycleHook,
    /// A second listener for Prometheus: `/metrics` without per-connection series, `/healthz`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where maps and links are pinned (`None`: nothing outlives the daemon).
    pub state_dir: Option<std::path::PathBuf>,
    /// The API also on this Unix socket (mode 0600), for the CLI.
    pub unix_socket: Option<std::path::PathBuf>,
    /// `/readyz` fails when a ring buffer has had records waiting unread longer than this.
    pub ready_max_lag: Duration,
    /// How outbound connections get their bounded `upstream` label.
    pub upstreams: crate::metrics::upstream::Policy,
}
