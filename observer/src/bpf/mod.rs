//! The kernel boundary: load the embedded programs, attach them, and hand out typed views of
//! their maps and rings. The only module that talks to aya; names of maps, programs and globals
//! are in [`names`], the ring records' decoding in [`ring`], loading and attaching in `load`.
#![expect(clippy::result_large_err, reason = "BpfError is built once, at start-up, on the way to an exit")]
use std::{io, path::PathBuf};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::ProgramError,
    Ebpf, EbpfError,
};
use observer_common::{
    conn::{ConnEvent, ConnKey, ConnStats},
    frame::{ConnFrame, LostReason},
    global::Counter,
    http::{AggKey, HttpHints, PayloadHeader},
    proto::ServerName,
    trace::TraceRecord,
};
use thiserror::Error;

mod layout;
mod load;
pub mod names;
pub mod pin;
pub mod ring;

pub use load::{load_and_attach, remove_tc_filters};
pub use ring::{DrainRequest, Ring};

/// The kernel object built by `build.rs` (empty when built with `OBSERVER_SKIP_EBPF=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer-ebpf.o"));
/// The same programs without the kernel HTTP framer, for kernels whose verifier refuses it.
static EBPF_OBJECT_LITE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer-ebpf-lite.o"));

/// Which hook follows connections' state changes (`sock:inet_sock_set_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LifecycleHook {
    /// The BTF-typed tracepoint where the kernel loads it, else the classic one.
    Auto,
    /// Only the BTF-typed tracepoint (`tp_btf`): the socket itself, fields read as plain loads.
    TpBtf,
    /// Only the classic tracepoint: a record read through tracefs' layout, a helper call per field.
    Tracepoint,
}

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("{0:#}")]
    State(anyhow::Error),
    #[error("pinning {what} at {path}: {error}")]
    Pin { what: String, path: PathBuf, error: String },
    #[error(
        "this observer binary was built with OBSERVER_SKIP_EBPF=1 and carries no kernel programs: rebuild it without that variable (`cargo build --release`)"
    )]
    NotBuilt,
    #[error("interface {0:?} does not exist here (see `ip link`): pass an existing one to --interface")]
    InterfaceMissing(String),
    #[error("the kernel lacks {feature} (available from Linux {since}); this kernel is {kernel}")]
    MissingFeature { feature: &'static str, since: &'static str, kernel: String },
    #[error("the kernel's verifier rejected program {program}: {io_error}\n--- verifier log ---\n{log}")]
    Verifier { program: &'static str, io_error: io::Error, log: String },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] EbpfError),
    #[error("program {program} is missing from the eBPF object or has the wrong type: {source}")]
    Program { program: &'static str, source: ProgramError },
    #[error("attaching {program} to {interface} ({direction}) failed: {source}")]
    Attach { program: &'static str, interface: String, direction: &'static str, source: ProgramError },
    #[error("map {0} is missing from the eBPF object or has the wrong type")]
    Map(&'static str),
}

/// How a tc program was attached.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attachment {
    pub interface: String,
    pub direction: &'static str,
    pub program: &'static str,
    /// `tcx` (Linux >= 6.6) or `clsact` (netlink tc filter on older kernels).
    pub mode: &'static str,
}

/// Sizes of the kernel maps, from the daemon's configuration.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub connections: u32,
    /// Bytes of the lifecycle event ring buffer (a power of two, a multiple of the page size).
    pub events_bytes: u32,
    /// Bytes of the HTTP payload ring buffer (same constraints).
    pub payload_bytes: u32,
}

/// What was loaded and attached. Dropping it detaches every program it attached, except those pinned in
/// the state directory: they keep counting until `observer detach`.
pub struct Loaded {
    /// Owns programs, links and the maps not taken out; shared with [`Programs`].
    pub programs: Programs,
    pub attachments: Vec<Attachment>,
    /// Every socket tracepoint and whether it is attached (`sock:inet_sock_set_state`, ...).
    pub tracepoints: Vec<(String, bool)>,
    /// Whether socket events are restricted to this network namespace.
    pub netns_filter: bool,
    /// What follows state changes: `tp_btf`, `tracepoint`, or `none`.
    pub lifecycle_hook: &'static str,
    /// Whether the kernel frames HTTP (else every payload goes to the daemon's framer).
    pub kernel_http: bool,
    /// Why the kernel does not frame HTTP although it was asked to.
    pub kernel_http_refused: Option<String>,
}

/// Our loaded programs, for their run-time accounting (`kernel.bpf_stats_enabled`): read through
/// their own descriptors, which needs no capability (listing every program would need
/// CAP_SYS_ADMIN, which the daemon gives up once loaded).
#[derive(Clone)]
pub struct Programs {
    ebpf: std::sync::Arc<std::sync::Mutex<Ebpf>>,
    /// (name, kernel id)
    pub ids: Vec<(&'static str, u32)>,
}

impl Programs {
    pub fn stats(&self) -> Vec<ProgramStats> {
        let ebpf = self.ebpf.lock().expect("programs lock");
        let mut stats: Vec<ProgramStats> = ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .filter_map(|info| {
                let (program, _) = self.ids.iter().find(|(_, id)| *id == info.id())?;
                Some(ProgramStats {
                    program,
                    id: info.id(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                    verified_instructions: info.verified_instruction_count(),
                })
            })
            .collect();
        stats.sort_by_key(|s| s.program);
        stats
    }
}

/// Everything the daemon holds of the kernel side once loaded.
pub struct Kernel {
    pub loaded: Loaded,
    pub maps: Maps,
    pub rings: Rings,
    pub trace: TraceMaps,
}

/// The maps the daemon reads, as typed views (reads never fail: an entry that cannot be read,
/// because it went in the meantime, is not there).
pub struct Maps {
    conns: HashMap<MapData, ConnKey, ConnStats>,
    global: PerCpuArray<MapData, u64>,
    http_hints: HashMap<MapData, ConnKey, HttpHints>,
    tls_names: HashMap<MapData, ConnKey, ServerName>,
    http_frames: HashMap<MapData, ConnKey, ConnFrame>,
    frame_lost: PerCpuArray<MapData, u64>,
    http_agg: PerCpuHashMap<MapData, AggKey, u64>,
}

impl Maps {
    /// Every connection entry (open, and closed ones not yet evicted).
    pub fn conns(&self) -> Vec<(ConnKey, ConnStats)> {
        self.conns.iter().filter_map(Result::ok).collect()
    }

    pub fn conn(&self, key: &ConnKey) -> Option<ConnStats> {
        self.conns.get(key, 0).ok()
    }

    /// The kernel's HTTP framing state of every connection it frames.
    pub fn frames(&self) -> std::collections::HashMap<ConnKey, ConnFrame> {
        self.http_frames.iter().filter_map(Result::ok).collect()
    }

    pub fn frame(&self, key: &ConnKey) -> Option<ConnFrame> {
        self.http_frames.get(key, 0).ok()
    }

    /// TLS server names (SNI) by four-tuple.
    pub fn tls_names(&self) -> std::collections::HashMap<ConnKey, ServerName> {
        self.tls_names.iter().filter_map(Result::ok).collect()
    }

    pub fn tls_name(&self, key: &ConnKey) -> Option<ServerName> {
        self.tls_names.get(key, 0).ok()
    }

    /// A global counter summed over CPUs.
    pub fn counter(&self, c: Counter) -> u64 {
        self.global.get(&(c as u32), 0).map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0)
    }

    /// A global gauge: the highest value any CPU wrote (ring backlogs).
    pub fn counter_max(&self, c: Counter) -> u64 {
        self.global.get(&(c as u32), 0).map(|per_cpu| per_cpu.iter().copied().max().unwrap_or(0)).unwrap_or(0)
    }

    /// Times the kernel framer lost its place, by reason, summed over CPUs.
    pub fn framing_lost(&self) -> Vec<(LostReason, u64)> {
        LostReason::ALL.iter().map(|r| (*r, self.frame_lost.get(&(*r as u32), 0).map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0))).collect()
    }

    /// What the kernel framer counted, by role, service port and status (0: requests), summed
    /// over CPUs.
    pub fn http_aggregates(&self) -> Vec<(AggKey, u64)> {
        self.http_agg.iter().filter_map(Result::ok).map(|(k, per_cpu)| (k, per_cpu.iter().sum::<u64>())).collect()
    }

    /// Tells the kernel what to do with a connection's payload (skip bytes, not HTTP).
    pub fn set_hints(&mut self, key: &ConnKey, hints: HttpHints) -> Result<(), aya::maps::MapError> {
        self.http_hints.insert(key, hints, 0)
    }
}

/// The ring buffers the daemon drains.
pub struct Rings {
    pub events: Ring<ConnEvent>,
    pub payload: Ring<PayloadHeader>,
    pub trace: Ring<TraceRecord>,
}

/// The kernel side of live traces: filters and the mask of filter shapes in use.
pub struct TraceMaps {
    filters: std::sync::Mutex<HashMap<MapData, ConnKey, u32>>,
    shapes: std::sync::Mutex<Array<MapData, u32>>,
}

impl crate::trace::KernelFilters for TraceMaps {
    fn add(&self, f: &crate::trace::Filter) {
        if let Err(e) = self.filters.lock().expect("trace filters lock").insert(f.key, 1, 0) {
            log::warn!("adding a trace filter: {e}");
        }
    }

    fn remove(&self, f: &crate::trace::Filter) {
        let _ = self.filters.lock().expect("trace filters lock").remove(&f.key);
    }

    fn set_shapes(&self, shapes: u32) {
        if let Err(e) = self.shapes.lock().expect("trace shapes lock").set(0, shapes, 0) {
            log::warn!("setting trace shapes: {e}");
        }
    }
}

/// Run-time accounting of one of our programs (zero unless `kernel.bpf_stats_enabled` is 1).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramStats {
    pub program: &'static str,
    /// The kernel's id of the program (`bpftool prog show id N`).
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub verified_instructions: Option<u32>,
}
