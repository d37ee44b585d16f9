//! The command line: every subcommand's arguments (clap), and what each runs. `main.rs` calls
//! [`main`]; `observer man` and `observer completions` are written from the same definition.
use std::{net::SocketAddr, path::PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::{bpf, cli, client, daemon, http, man, metrics::upstream};

/// Where the daemon listens unless told otherwise, and where the CLI looks for it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9470";

#[derive(Parser)]
#[command(name = "observer", version, about = "Watch every TCP connection and HTTP/1.x exchange on a gateway host, from the kernel")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print times in UTC (`…Z`) instead of local time with its offset (`…+02:00`).
    #[arg(long, global = true)]
    utc: bool,
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
        /// Name the upstreams of outbound connections (repeatable; first match wins): an
        /// endpoint (198.18.0.2:8080, [2001:db8::2]:8080), an address (any port) or a network
        /// (198.18.0.0/24), optionally `=NAME`. With rules, `observer_upstream_*` series are
        /// labelled with the rule's name, other upstreams `other`.
        #[arg(long = "upstream", value_name = "ENDPOINT[=NAME]")]
        upstreams: Vec<upstream::Rule>,
        /// Without --upstream: the first N distinct upstream endpoints (address:port) get their
        /// own `upstream` label for the daemon's life, later ones `other`.
        #[arg(long, default_value_t = 32, value_name = "N")]
        upstream_labels: usize,
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
        /// `text` (for people), or `json`: one object per line with `time` (RFC 3339, UTC),
        /// `level`, `target` and `message`, for log collectors. RUST_LOG sets the level.
        #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
        log_format: LogFormat,
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
    /// address or endpoint, a local port, or both. Prints what is known first, then the timeline.
    Trace {
        /// LOCAL REMOTE endpoints, e.g. `198.18.1.1:80 198.18.1.2:51234`.
        #[arg(num_args = 0..=2, value_name = "ENDPOINT")]
        connection: Vec<String>,
        /// Every connection with this remote address (198.18.1.2) or endpoint (198.18.1.2:51234);
        /// with --local-port, only those on that local port.
        #[arg(long, conflicts_with = "connection")]
        remote: Option<String>,
        /// Every connection on this local port; with --remote, only those of that remote.
        #[arg(long, conflicts_with = "connection")]
        local_port: Option<u16>,
        /// Only responses with this status: a code (502) or a class (5xx). The timeline then
        /// shows those responses alone (no packets, requests or lifecycle lines).
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
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
    /// Print a completion script for SHELL: `observer completions bash > /etc/bash_completion.d/observer`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `observer man | man -l -`, or save it as observer.1; with a
    /// SUBCOMMAND, that subcommand's page; with --dir, write every page.
    Man {
        /// Print this subcommand's page (`trace`: observer-trace(1)) instead.
        #[arg(value_name = "SUBCOMMAND", value_parser = man_page_of, conflicts_with = "dir")]
        subcommand: Option<String>,
        /// Write observer.1 and a page per subcommand (observer-run.1, observer-trace.1, ...) into
        /// DIR, made if missing: `observer man --dir /usr/local/share/man/man1`.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
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
    /// The daemon's API: HOST:PORT or http://HOST:PORT (its --listen; http://[V6]:PORT for
    /// IPv6), or unix:PATH (its --unix-socket). The flag wins over OBSERVER_SERVER.
    #[arg(long, env = "OBSERVER_SERVER", default_value = DEFAULT_LISTEN, value_name = "ADDR", value_parser = client::Server::parse)]
    server: client::Server,
}

impl ServerOpt {
    fn client(&self) -> client::Client {
        client::Client::new(self.server.clone())
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
    /// This host's port.
    #[arg(long)]
    local_port: Option<u16>,
    /// The peer's port.
    #[arg(long)]
    remote_port: Option<u16>,
    /// Local or remote address.
    #[arg(long)]
    address: Option<std::net::IpAddr>,
    /// Only connections with at least N requests in the window.
    #[arg(long, value_name = "N")]
    min_requests: Option<u64>,
    /// Sort order: desc (the largest first) or asc.
    #[arg(long, value_parser = ["desc", "asc"])]
    order: Option<String>,
}

impl ListOpts {
    /// Every filter goes to the API under its own name: the daemon validates the values, so the
    /// CLI and the API cannot disagree about them.
    fn into_args(self) -> cli::ListArgs {
        let ListOpts { sort, limit, window, state, role, port, local_port, remote_port, address, min_requests, order } = self;
        let filters = [
            ("state", state),
            ("role", role),
            ("port", port.map(|v| v.to_string())),
            ("local_port", local_port.map(|v| v.to_string())),
            ("remote_port", remote_port.map(|v| v.to_string())),
            ("address", address.map(|v| v.to_string())),
            ("min_requests", min_requests.map(|v| v.to_string())),
            ("order", order),
        ];
        let filters = filters.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect();
        cli::ListArgs { sort, limit, window, filters }
    }
}

/// `observer run --log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The log, as `--log-format` asks: env_logger's own lines, or one JSON object per line (a log
/// collector then needs no pattern for our messages, which may hold spaces, colons and quotes).
fn init_log(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            use std::io::Write as _;
            let line = serde_json::json!({
                "time": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

/// `observer run --http-framing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum HttpFraming {
    Kernel,
    Daemon,
}

/// Parses the command line and runs the subcommand.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Run { log_format, .. } => *log_format,
        _ => LogFormat::Text,
    };
    init_log(log_format);
    let zone = if cli.utc { cli::Zone::Utc } else { cli::Zone::Local };
    let result = match cli.command {
        Command::Run {
            interfaces,
            listen,
            metrics_listen,
            unix_socket,
            ready_max_lag_ms,
            max_connections,
            events_kib,
            closed_retention,
            closed_max,
            payload_kib,
            http_ports,
            top_k,
            upstreams,
            upstream_labels,
            http_framing,
            lifecycle_hook,
            state_dir,
            ephemeral,
            show_query,
            log_format: _,
        } => {
            http::set_keep_query(show_query);
            let config = crate::config::Config {
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
                upstreams: upstream::Policy { rules: upstreams, max_labels: upstream_labels },
            };
            tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(daemon::run(config)))
        }
        Command::Connections { list, json, server } => cli::connections(&server.client(), &list.into_args(), json),
        Command::Top { list, iterations, server } => cli::top(&server.client(), list.into_args(), iterations, zone),
        Command::Status { json, server } => cli::status(&server.client(), json),
        Command::Detach { state_dir } => daemon::detach(&state_dir),
        Command::Trace { connection, remote, local_port, status, json, count, duration, server } => {
            let target = match (connection.as_slice(), remote, local_port) {
                ([local, remote], None, None) => Ok(cli::TraceTarget::Connection(format!("{local} {remote}"))),
                ([], remote, local_port) if remote.is_some() || local_port.is_some() => Ok(cli::TraceTarget::Partial { remote, local_port }),
                _ => Err(anyhow::anyhow!("say what to follow: LOCAL REMOTE (e.g. `observer trace 198.18.1.1:80 198.18.1.2:51234`), --remote ADDR[:PORT], --local-port PORT, or both of these")),
            };
            let duration = duration.map(|d| std::time::Duration::from_secs_f64(d.max(0.0)));
            let opts = cli::TraceOpts { status, json, count, duration, zone };
            target.and_then(|t| cli::trace(&server.client(), t, &opts))
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "observer", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { subcommand, dir: None } => man::page(Cli::command(), subcommand.as_deref()).and_then(|p| Ok(p.render(&mut std::io::stdout())?)),
        Command::Man { subcommand: _, dir: Some(dir) } => man::write_pages(Cli::command(), &dir).map(drop),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("observer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `observer man SUBCOMMAND`: a subcommand clap knows (read when the arguments are parsed, so
/// the definition is complete by then).
fn man_page_of(s: &str) -> Result<String, String> {
    let names = man::subcommand_names(&Cli::command());
    if names.iter().any(|n| n == s) {
        Ok(s.to_owned())
    } else {
        Err(format!("no subcommand {s:?}; the pages are of {}", names.join(", ")))
    }
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s.parse().map_err(|_| format!("{s:?} is not a number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1024 * 1024 {
        return Err(format!("{kib} KiB: the ring buffer size must be a power of two from 4 to 1048576 KiB"));
    }
    Ok(kib)
}

#[cfg(test)]
mod tests;
