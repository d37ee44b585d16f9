//! `observer run`, the wiring: load and attach (`bpf`), build the state (`state`), start one
//! pump per ring buffer and the sweep, serve the API (`api`) until SIGINT/SIGTERM, then detach
//! (or leave the pinned programs counting).
#![forbid(unsafe_code)]
use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};

use crate::{
    api, bpf,
    config::Config,
    state::{Loading, State},
    sys,
    trace::Hub,
};

/// How often the payload and event ring buffers are drained when the kernel has not woken us:
/// the bound on how stale the daemon's view can be.
const PAYLOAD_POLL: Duration = Duration::from_millis(10);
/// How often the whole kernel map is swept for connections no event reported closed (lost
/// events; FIN-only closes without a socket here). Each sweep reads every entry: not too often.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often HTTP framing held up by a gap gives up on it when nothing followed.
const GAPS_EVERY: Duration = Duration::from_secs(1);

pub async fn run(config: Config) -> Result<()> {
    // Signals first: a SIGTERM while the programs load must still detach cleanly.
    let shutdown = shutdown_signal()?;
    sys::require_capabilities()?;
    sys::raise_memlock();
    // A BPF filesystem only for pinning: `--ephemeral` runs without one (and without the
    // CAP_SYS_ADMIN to mount it).
    if config.state_dir.is_some() {
        sys::ensure_mounted("bpf", "/sys/fs/bpf")?;
    }
    if let Err(e) = sys::ensure_mounted("tracefs", crate::tracefs::TRACEFS) {
        log::warn!("{e:#}: socket tracepoints cannot be attached");
    }
    let interfaces = if config.interfaces.is_empty() { sys::default_interfaces()? } else { config.interfaces.clone() };
    if interfaces.is_empty() {
        anyhow::bail!("no interface is up (other than loopback): name one with --interface");
    }
    // Bind first: a busy port is reported before anything is attached.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another observer running? choose another address with --listen", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for /metrics: choose another address with --metrics-listen"))?,
        ),
        None => None,
    };
    // Removed when `run` returns, also through an error.
    let unix_socket = match &config.unix_socket {
        Some(path) => {
            let (listener, file) = crate::unix_socket::bind(path)?;
            listener.set_nonblocking(true).context("the API's Unix socket")?;
            Some((tokio::net::UnixListener::from_std(listener).context("the API's Unix socket")?, file))
        }
        None => None,
    };
    let pinned = config.state_dir.as_deref().map(bpf::pin::State::open).transpose()?;
    let bpf::Kernel { loaded, maps, rings, trace } =
        bpf::load_and_attach(&interfaces, config.map_sizes, &config.http_ports, config.kernel_http, config.lifecycle_hook, pinned.as_ref())?;
    // The kernel may have refused its framer: what runs is what counts.
    let config = Config { kernel_http: loaded.kernel_http, ..config };
    // Everything is loaded and attached: keep only what reading maps needs (CAP_BPF; CAP_SYS_ADMIN
    // on kernels before 5.8, which have no CAP_BPF), and CAP_NET_ADMIN where the exit detaches
    // netlink tc filters (clsact, nothing pinned).
    let mut keep = vec![if sys::kernel_before(5, 8) { sys::CAP_SYS_ADMIN } else { sys::CAP_BPF }];
    if pinned.is_none() && loaded.attachments.iter().any(|a| a.mode == "clsact") {
        keep.push(sys::CAP_NET_ADMIN);
    }
    let capabilities = sys::drop_capabilities(&keep)?;
    log::info!("loaded and attached; capabilities kept from here on: {}", if capabilities.is_empty() { "none".to_owned() } else { capabilities.join(", ") });
    let (events_drain, events_drain_rx) = tokio::sync::mpsc::channel(64);
    let (payload_drain, payload_drain_rx) = tokio::sync::mpsc::channel(64);
    let state =
        Arc::new(State::new(config.clone(), maps, Loading::of(&loaded, capabilities), Hub::new(Box::new(trace)), [events_drain, payload_drain], PAYLOAD_POLL));
    state.metrics.ring_size.with_label_values(&["events"]).set(i64::from(config.map_sizes.events_bytes));
    state.metrics.ring_size.with_label_values(&["payload"]).set(i64::from(config.map_sizes.payload_bytes));
    let bpf::Rings { events, payload, trace: trace_ring } = rings;
    let s = state.clone();
    let mut pump_task = tokio::spawn(events.pump(Some(PAYLOAD_POLL), Some(events_drain_rx), move |records| {
        let _reading = s.ring_lag.events.reading();
        records.for_each(|ev, _| s.on_event(ev));
    }));
    let s = state.clone();
    let mut payload_task = tokio::spawn(payload.pump(Some(PAYLOAD_POLL), Some(payload_drain_rx), move |records| s.on_payload(records)));
    let s = state.clone();
    let mut trace_task = tokio::spawn(trace_ring.pump(None, None, move |records| {
        let _reading = s.ring_lag.trace.reading();
        records.for_each(|r, _| s.trace.publish(&r.key, || crate::timeline::packet_line(&r)));
    }));
    let every = |period: Duration, work: fn(&State)| {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                work(&state);
            }
        })
    };
    let sweeper = every(SWEEP_EVERY, State::sweep);
    let gaps = every(GAPS_EVERY, State::expire_gaps);
    let metrics_task = metrics_listener.map(|l| {
        log::info!("/metrics without per-connection series on http://{}", config.metrics_listen.expect("bound above"));
        tokio::spawn(api::serve(l, api::metrics_router(state.clone()), state.metrics.api_refused.clone(), std::future::pending()))
    });
    let (unix_listener, socket_file) = unix_socket.unzip();
    let unix_task = unix_listener.map(|l| {
        log::info!("the API also on the Unix socket {} (mode 0600)", config.unix_socket.as_ref().expect("bound above").display());
        tokio::spawn(api::serve(l, api::router(state.clone()), state.metrics.api_refused.clone(), std::future::pending()))
    });
    log::info!("observing {} on http://{}", interfaces.join(", "), config.listen);
    // A ring pump that stops (it never returns while the daemon is well) ends the daemon with its
    // reason and a failing status: a supervisor restarts it, and the pinned state carries over.
    let pump_ended = async {
        let (name, ended) = tokio::select! {
            r = &mut pump_task => ("the lifecycle event pump", r),
            r = &mut payload_task => ("the HTTP record pump", r),
            r = &mut trace_task => ("the trace pump", r),
        };
        match ended {
            Ok(Ok(())) => anyhow::anyhow!("{name} stopped"),
            Ok(Err(e)) => e.context(format!("{name} failed")),
            Err(e) => anyhow::anyhow!("{name} panicked or was cancelled: {e}"),
        }
    };
    let failure = tokio::select! {
        _ = api::serve(listener, api::router(state.clone()), state.metrics.api_refused.clone(), shutdown) => None,
        e = pump_ended => Some(e),
    };
    for t in metrics_task.into_iter().chain(unix_task) {
        t.abort();
    }
    drop(socket_file);
    pump_task.abort();
    payload_task.abort();
    trace_task.abort();
    sweeper.abort();
    gaps.abort();
    drop(state);
    drop(loaded);
    match &pinned {
        Some(state) => log::info!(
            "the programs stay attached to {} and keep counting into {} for the next daemon; `observer detach --state-dir {}` removes them; bye",
            interfaces.join(", "),
            state.dir.display(),
            state.root.display()
        ),
        None => log::info!("detached from {}; bye", interfaces.join(", ")),
    }
    failure.map_or(Ok(()), Err)
}

/// `observer detach`: removes the pinned state (its links detach their programs) and, on kernels
/// without tcx, the tc filters a daemon left (netlink filters are not pinned).
pub fn detach(state_dir: &std::path::Path) -> Result<()> {
    sys::require_root()?;
    sys::ensure_mounted("bpf", "/sys/fs/bpf")?;
    let pins = bpf::pin::remove_all(state_dir)?;
    let filters = bpf::remove_tc_filters(&sys::all_interfaces()?);
    println!("removed {pins} pinned maps and links from {} and {filters} tc filters", state_dir.display());
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => log::info!("SIGINT: detaching"),
            _ = term.recv() => log::info!("SIGTERM: detaching"),
        }
    })
}
