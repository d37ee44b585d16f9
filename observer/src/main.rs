//! `observer`: a kernel-level edge traffic observer for Linux gateway hosts.
//! `main` parses arguments and wires the parts together.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

mod api;
mod btf;
mod cli;
mod client;
mod tracefs;
mod bpf;
mod daemon;
mod http;
mod kernel_http;
mod metrics;
mod query;
mod ring_lag;
mod sys;
mod table;
mod term;
mod trace;
mod unix_socket;

/// Where the daemon listens unless told otherwise, and where the CLI looks for it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9470";

#[derive(Parser)]
#[command(name = "observer", version, about = "Watch every TCP connection and HTTP/1.x exchange on a gateway host, from the kernel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs, attach them, and serve /metrics and the JSON API (needs root).
    Run {
        /// Interface to observe (repeatable). Default: every interface that is up, except loopback.
        #[arg(long = "interface", short = 'i', value_name = "IF")]
        interfaces: Vec<String>,
        /// Address of the HTTP API and /metrics. Connection tuples identify clients: anything wider
        /// than loopback must be asked for explicitly.
        #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
        listen: SocketAddr,
        /// Also serve /metrics here, for Prometheus: aggregates only, without the per-connection
        /// (top K) series whose labels are four-tuples, and without the API.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Also serve the whole API (what --listen serves) on a Unix socket at PATH, created with
        /// mode 0600: only this user (root) may connect, where any local user can reach a loopback
        /// port. The CLI reaches it with `--server unix:PATH`. A socket file nothing answers on is
        /// replaced; the daemon removes its own on exit.
        #[arg(long, value_name = "PATH")]
        unix_socket: Option<PathBuf>,
        /// /readyz fails (503) when a ring buffer has had records waiting unread longer than this:
        /// the daemon is behind the kernel and what it shows is late.
        #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        ready_max_lag_ms: u64,
        /// Connections the kernel map holds; when full, the least recently active is evicted.
        #[arg(long, default_value_t = 65_536, value_name = "N", value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
        max_connections: u32,
        /// Size of the kernel's lifecycle event ring buffer in KiB (a power of two, at least 4).
        #[arg(long, default_value_t = 2048, value_name = "KIB", value_parser = parse_ring_kib)]
        events_kib: u32,
        /// How long closed connections stay in the table, in seconds.
        #[arg(long, default_value_t = 900, value_name = "SECONDS")]
        closed_retention: u64,
        /// At most this many closed connections are kept (the oldest go first).
        #[arg(long, default_value_t = 100_000, value_name = "N")]
        closed_max: usize,
        /// Size of the kernel's HTTP payload ring buffer in KiB (a power of two).
        #[arg(long, default_value_t = 4096, value_name = "KIB", value_parser = parse_ring_kib)]
        payload_kib: u32,
        /// Parse HTTP only on these ports (local or remote; repeatable, or comma-separated).
        /// Default: every port, HTTP detected by the first bytes of each connection.
        #[arg(long = "http-port", value_name = "PORT", value_delimiter = ',')]
        http_ports: Vec<u16>,
        /// Export per-connection series for the K connections with the worst 10 s error ratio
        /// (labelled local and remote address:port); 0 turns them off.
        #[arg(long, default_value_t = 20, value_name = "K")]
        top_k: usize,
        /// Where HTTP/1.x is framed. `kernel`: the tc programs count each connection's requests
        /// and responses where the bytes are, send the daemon one small record per message, and
        /// hand a direction they lose their place in to the daemon's framer. `daemon`: every data
        /// segment's payload goes to the daemon, which frames it (the reference; it costs more
        /// per request). The kernel framer needs bpf_loop (Linux 5.17+).
        #[arg(long, value_enum, default_value = "kernel", value_name = "WHERE")]
        http_framing: HttpFraming,
        /// What follows each connection's TCP state changes: `auto` takes the BTF-typed
        /// tracepoint (`tp_btf/inet_sock_set_state`: the socket itself, fields read as plain
        /// loads) where the kernel loads it, else the classic `sock:inet_sock_set_state`.
        #[arg(long, value_enum, default_value = "auto", value_name = "HOOK")]
        lifecycle_hook: bpf::LifecycleHook,
        /// Where maps and links are pinned (a directory on a BPF filesystem): the programs keep
        /// counting while the daemon is down or restarting, and the next daemon continues every
        /// counter. They stay attached when the daemon exits; `observer detach` removes them.
        #[arg(long, default_value = bpf::pin::DEFAULT_STATE_DIR, value_name = "DIR", conflicts_with = "ephemeral")]
        state_dir: PathBuf,
        /// Pin nothing: the programs detach when the daemon exits, and counts start from zero
        /// each time.
        #[arg(long)]
        ephemeral: bool,
        /// Keep query strings in request targets. By default the API and traces show the path
        /// and `?…` where a query was: tokens in URLs stay out of them.
        #[arg(long)]
        show_query: bool,
    },
    /// List connections from a running daemon, as a table (or JSON).
    Connections {
        #[command(flatten)]
        list: ListOpts,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerOpt,
    },
    /// The worst connections now, refreshed every second (q quits; e/r/f/b/a sort; w window).
    Top {
        #[command(flatten)]
        list: ListOpts,
        /// Stop after this many refreshes (default: until q).
        #[arg(long, value_name = "N")]
        iterations: Option<u64>,
        #[command(flatten)]
        server: ServerOpt,
    },
    /// Follow connections live: one by its four-tuple (LOCAL REMOTE), or all of a remote
    /// address, remote endpoint, or local port. Prints what is known first, then the timeline.
    Trace {
        /// LOCAL REMOTE endpoints, e.g. `198.18.1.1:80 198.18.1.2:51234`.
        #[arg(num_args = 0..=2, value_name = "ENDPOINT")]
        connection: Vec<String>,
        /// Every connection with this remote address (198.18.1.2) or endpoint (198.18.1.2:51234).
        #[arg(long, conflicts_with_all = ["connection", "local_port"])]
        remote: Option<String>,
        /// Every connection on this local port.
        #[arg(long, conflicts_with_all = ["connection", "remote"])]
        local_port: Option<u16>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after this many timeline lines.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<f64>,
        #[command(flatten)]
        server: ServerOpt,
    },
    /// What the daemon has attached and counted.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerOpt,
    },
    /// Detach the programs a daemon left attached and remove its pinned state (its counts go
    /// too). Run it where the daemon ran (same network namespace), with the daemon stopped.
    Detach {
        /// The daemon's --state-dir.
        #[arg(long, default_value = bpf::pin::DEFAULT_STATE_DIR, value_name = "DIR")]
        state_dir: PathBuf,
    },
}

/// Where the CLI finds the daemon.
#[derive(clap::Args)]
struct ServerOpt {
    /// The daemon's API: HOST:PORT (its --listen), or unix:PATH (its --unix-socket).
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    server: String,
}

impl ServerOpt {
    fn client(&self) -> client::Client {
        client::Client::new(&self.server)
    }
}

#[derive(clap::Args)]
struct ListOpts {
    /// error_ratio, requests, failed, first_seen, last_seen, duration, bytes_in, bytes_out, packets, retransmits, resets.
    #[arg(long, default_value = "error_ratio")]
    sort: String,
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// HTTP window for the counts and the sort: 10s, 60s or lifetime.
    #[arg(long, default_value = "10s")]
    window: String,
    /// open, closed, or a TCP state.
    #[arg(long)]
    state: Option<String>,
    /// inbound or outbound.
    #[arg(long)]
    role: Option<String>,
    /// Local or remote port.
    #[arg(long)]
    port: Option<u16>,
    /// Local or remote address.
    #[arg(long)]
    address: Option<std::net::IpAddr>,
}

impl ListOpts {
    fn into_args(self) -> cli::ListArgs {
        let ListOpts { sort, limit, window, state, role, port, address } = self;
        let mut filters = Vec::new();
        if let Some(v) = state { filters.push(("state".into(), v)) }
        if let Some(v) = role { filters.push(("role".into(), v)) }
        if let Some(v) = port { filters.push(("port".into(), v.to_string())) }
        if let Some(v) = address { filters.push(("address".into(), v.to_string())) }
        cli::ListArgs { sort, limit, window, filters }
    }
}

/// `observer run --http-framing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum HttpFraming {
    Kernel,
    Daemon,
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { interfaces, listen, metrics_listen, unix_socket, ready_max_lag_ms, max_connections, events_kib, closed_retention, closed_max, payload_kib, http_ports, top_k, http_framing, lifecycle_hook, state_dir, ephemeral, show_query } => {
            http::set_keep_query(show_query);
            let config = daemon::Config {
                interfaces,
                listen,
                map_sizes: bpf::MapSizes { connections: max_connections, events_bytes: events_kib * 1024, payload_bytes: payload_kib * 1024 },
                closed_retention: std::time::Duration::from_secs(closed_retention),
                closed_max,
                http_ports,
                top_k,
                kernel_http: http_framing == HttpFraming::Kernel,
                lifecycle_hook,
                metrics_listen,
                state_dir: (!ephemeral).then_some(state_dir),
                unix_socket,
                ready_max_lag: std::time::Duration::from_millis(ready_max_lag_ms),
            };
            tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(daemon::run(config)))
        }
        Command::Connections { list, json, server } => cli::connections(&server.client(), &list.into_args(), json),
        Command::Top { list, iterations, server } => cli::top(&server.client(), list.into_args(), iterations),
        Command::Status { json, server } => cli::status(&server.client(), json),
        Command::Detach { state_dir } => daemon::detach(&state_dir),
        Command::Trace { connection, remote, local_port, json, count, duration, server } => {
            let target = match (connection.as_slice(), remote, local_port) {
                ([local, remote], None, None) => Ok(cli::TraceTarget::Connection(format!("{local} {remote}"))),
                ([], Some(r), None) => Ok(cli::TraceTarget::Remote(r)),
                ([], None, Some(p)) => Ok(cli::TraceTarget::LocalPort(p)),
                _ => Err(anyhow::anyhow!("say what to follow: LOCAL REMOTE (e.g. `observer trace 198.18.1.1:80 198.18.1.2:51234`), --remote ADDR[:PORT], or --local-port PORT")),
            };
            let duration = duration.map(|d| std::time::Duration::from_secs_f64(d.max(0.0)));
            target.and_then(|t| cli::trace(&server.client(), t, json, count, duration))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("observer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s.parse().map_err(|_| format!("{s:?} is not a number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1024 * 1024 {
        return Err(format!("{kib} KiB: the ring buffer size must be a power of two from 4 to 1048576 KiB"));
    }
    Ok(kib)
}
