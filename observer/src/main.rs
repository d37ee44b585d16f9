//! `observer`: a kernel-level edge traffic observer for Linux gateway hosts.
//! `main` parses arguments and wires the parts together.
use std::net::SocketAddr;

use clap::{Parser, Subcommand};

mod api;
mod bpf;
mod daemon;
mod metrics;
mod sys;
mod table;

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
        /// Connections the kernel map holds; when full, the least recently active is evicted.
        #[arg(long, default_value_t = 65_536, value_name = "N", value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
        max_connections: u32,
    },
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { interfaces, listen, max_connections } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(daemon::run(daemon::Config { interfaces, listen, map_sizes: bpf::MapSizes { connections: max_connections } }))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("observer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
