//! `observer run`: load, attach, serve, and detach on SIGINT/SIGTERM.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result};
use observer_common::global::Counter;

use crate::{
    api,
    bpf::{self, Attachment, MapSizes, Maps},
    metrics::{KernelCounters, Metrics},
    sys,
    table::Connection,
};

/// Everything `observer run` is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Empty: every interface that is up and not loopback.
    pub interfaces: Vec<String>,
    pub listen: SocketAddr,
    pub map_sizes: MapSizes,
}

/// What the API handlers share.
pub struct App {
    maps: Mutex<Maps>,
    pub attachments: Vec<Attachment>,
    pub metrics: Metrics,
    pub started: Instant,
}

impl App {
    /// Every connection in the kernel map, with its exact counters.
    pub fn connections(&self) -> Vec<Connection> {
        let maps = self.maps.lock().expect("maps lock poisoned");
        let mut out: Vec<Connection> = maps.conns.iter().filter_map(Result::ok).map(|(k, v)| Connection::new(&k, &v)).collect();
        out.sort_by(|a, b| a.connection.cmp(&b.connection));
        out
    }

    /// The kernel's global counters, summed over CPUs.
    pub fn kernel_counters(&self) -> KernelCounters {
        let maps = self.maps.lock().expect("maps lock poisoned");
        let sum = |c: Counter| maps.global.get(&(c as u32), 0).map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0);
        KernelCounters {
            packets_seen: sum(Counter::PacketsSeen),
            not_tcp: sum(Counter::NotTcp),
            parse_failures: sum(Counter::ParseFailures),
            conn_insert_failures: sum(Counter::ConnInsertFailures),
            connections_tracked: maps.conns.keys().count() as u64,
        }
    }
}

pub async fn run(config: Config) -> Result<()> {
    sys::require_root()?;
    sys::raise_memlock();
    sys::ensure_mounted("bpf", "/sys/fs/bpf")?;
    if let Err(e) = sys::ensure_mounted("tracefs", "/sys/kernel/tracing") {
        log::warn!("{e:#}");
    }
    let interfaces = if config.interfaces.is_empty() { sys::default_interfaces()? } else { config.interfaces.clone() };
    if interfaces.is_empty() {
        anyhow::bail!("no interface is up (other than loopback): name one with --interface");
    }
    // Bind first: a busy port is reported before anything is attached.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another observer running? choose another address with --listen", config.listen))?;
    let (loaded, maps) = bpf::load_and_attach(&interfaces, config.map_sizes)?;
    let app = Arc::new(App {
        maps: Mutex::new(maps),
        metrics: Metrics::new(&loaded.attachments),
        attachments: loaded.attachments.clone(),
        started: Instant::now(),
    });
    log::info!("observing {} on http://{}", interfaces.join(", "), config.listen);
    axum::serve(listener, api::router(app.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the API")?;
    drop(app);
    drop(loaded);
    log::info!("detached from {}; bye", interfaces.join(", "));
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: detaching"),
        _ = term.recv() => log::info!("SIGTERM: detaching"),
    }
}
