//! The thin loader layer: load the embedded kernel programs, attach them, and hand out the maps.
//! The only module that talks to aya directly.
use std::io;

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{tc, ProgramError, SchedClassifier, TcAttachType},
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use observer_common::conn::{ConnKey, ConnStats};
use thiserror::Error;

/// The kernel object built by `build.rs` (empty when built with `OBSERVER_SKIP_EBPF=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer-ebpf.o"));

pub const TC_INGRESS: &str = "observer_tc_ingress";
pub const TC_EGRESS: &str = "observer_tc_egress";

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("this observer binary was built with OBSERVER_SKIP_EBPF=1 and carries no kernel programs: rebuild it without that variable (`cargo build --release`)")]
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
}

/// The loaded programs. Dropping it detaches every program and link it attached.
pub struct Loaded {
    /// Owns programs, links and the maps not taken out.
    _ebpf: Ebpf,
    pub attachments: Vec<Attachment>,
}

/// The maps the daemon reads.
pub struct Maps {
    pub conns: HashMap<MapData, ConnKey, ConnStats>,
    pub global: PerCpuArray<MapData, u64>,
}

/// Loads the embedded object, attaches the tc programs to ingress and egress of `interfaces`, and
/// starts forwarding the programs' aya-log records to this process's log.
pub fn load_and_attach(interfaces: &[String], sizes: MapSizes) -> Result<(Loaded, Maps), BpfError> {
    if EBPF_OBJECT.is_empty() {
        return Err(BpfError::NotBuilt);
    }
    if let Some(missing) = interfaces.iter().find(|i| !crate::sys::interface_exists(i)) {
        return Err(BpfError::InterfaceMissing(missing.clone()));
    }
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("CONNS", sizes.connections)
        .load(EBPF_OBJECT)
        .map_err(classify_load_error)?;
    start_log_forwarding(&mut ebpf);

    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    let mut attachments = Vec::new();
    for (program, attach_type, direction) in [(TC_INGRESS, TcAttachType::Ingress, "ingress"), (TC_EGRESS, TcAttachType::Egress, "egress")] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(program)
            .ok_or(BpfError::Program { program, source: ProgramError::NotLoaded })?
            .try_into()
            .map_err(|source| BpfError::Program { program, source })?;
        prog.load().map_err(|e| classify_program_error(program, e))?;
        for interface in interfaces {
            if !tcx {
                // Older kernels attach through the clsact qdisc; it may exist already (ours from
                // an earlier run, or someone else's): sharing it is fine, replacing it is not.
                if let Err(e) = tc::qdisc_add_clsact(interface) {
                    log::debug!("clsact on {interface}: {e} (already present?)");
                }
            }
            // `attach` appends (tcx) or adds a filter with a kernel-chosen priority (clsact):
            // programs others attached stay in place and keep running.
            prog.attach(interface, attach_type).map_err(|source| BpfError::Attach {
                program,
                interface: interface.clone(),
                direction,
                source,
            })?;
            attachments.push(Attachment { interface: interface.clone(), direction, program, mode: if tcx { "tcx" } else { "clsact" } });
            log::info!("attached {program} to {interface} {direction} ({})", if tcx { "tcx" } else { "clsact" });
        }
    }

    let conns = HashMap::try_from(ebpf.take_map("CONNS").ok_or(BpfError::Map("CONNS"))?).map_err(|_| BpfError::Map("CONNS"))?;
    let global = PerCpuArray::try_from(ebpf.take_map("GLOBAL").ok_or(BpfError::Map("GLOBAL"))?).map_err(|_| BpfError::Map("GLOBAL"))?;
    Ok((Loaded { _ebpf: ebpf, attachments }, Maps { conns, global }))
}

fn classify_load_error(e: EbpfError) -> BpfError {
    match e {
        EbpfError::BtfError(_) => BpfError::MissingFeature { feature: "BTF support for BPF programs", since: "5.2", kernel: crate::sys::kernel_release() },
        other => BpfError::Load(other),
    }
}

fn classify_program_error(program: &'static str, e: ProgramError) -> BpfError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => BpfError::Verifier { program, io_error, log: verifier_log.to_string() },
        source => BpfError::Program { program, source },
    }
}

/// Forwards the programs' aya-log records to the `log` crate. The logger owns the log map and
/// must outlive the programs, so the task keeps it.
#[expect(deprecated, reason = "the logger owns its fd for as long as AsyncFd holds it, which is the soundness condition")]
fn start_log_forwarding(ebpf: &mut Ebpf) {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => match tokio::io::unix::AsyncFd::with_interest(logger, tokio::io::Interest::READABLE) {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable_mut().await else { break };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => log::warn!("kernel program logs will not be shown: {e}"),
        },
        Err(e) => log::warn!("kernel program logs will not be shown: {e}"),
    }
}
