//! Loading the embedded object and attaching its programs (tc on each interface, the socket
//! tracepoints), with the layouts this kernel's BTF and tracefs give.
use std::path::PathBuf;

use aya::{
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        BtfTracePoint, ProgramError, SchedClassifier, TcAttachType, TracePoint,
    },
    util::KernelVersion,
    Btf as AyaBtf, Ebpf, EbpfError, EbpfLoader,
};
use observer_common::tracepoint::{SockLayout, TpLayout};

use super::{
    layout::{netns_filter, skb_segs, sock_layout},
    names::{
        global, map, program,
        program::{TC_EGRESS, TC_INGRESS},
        TRACEPOINTS,
    },
    pin, Attachment, BpfError, Kernel, LifecycleHook, Loaded, MapSizes, Maps, Programs, Ring, Rings, TraceMaps, EBPF_OBJECT, EBPF_OBJECT_LITE,
};

/// Loads the embedded object, attaches the tc programs to ingress and egress of `interfaces`, and
/// starts forwarding the programs' aya-log records to this process's log.
///
/// With `kernel_http`, a kernel whose verifier refuses the kernel framer (Debian 12's 6.1 gives up
/// at its instruction limit; kernels before 5.17 lack `bpf_loop`) gets the object without it, and
/// the daemon frames every connection's HTTP itself (`Loaded::kernel_http_refused` says why).
pub fn load_and_attach(
    interfaces: &[String],
    sizes: MapSizes,
    http_ports: &[u16],
    kernel_http: bool,
    lifecycle: LifecycleHook,
    state: Option<&pin::State>,
) -> Result<Kernel, BpfError> {
    if !kernel_http {
        return load_object(EBPF_OBJECT_LITE, interfaces, sizes, http_ports, false, lifecycle, state);
    }
    match load_object(EBPF_OBJECT, interfaces, sizes, http_ports, true, lifecycle, state) {
        Err(BpfError::Verifier { program, io_error, log }) if program == TC_INGRESS || program == TC_EGRESS => {
            let last = log
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty() && !l.starts_with("verification time") && !l.starts_with("stack depth") && !l.starts_with("processed"))
                .unwrap_or("")
                .trim();
            let why = format!("the kernel's verifier refused {program} with the kernel HTTP framer ({io_error}: {last})");
            log::warn!(
                "{why}: loading the programs without it; HTTP is framed by the daemon (as with --http-framing daemon: the same counts, more CPU per request)"
            );
            let mut kernel = load_object(EBPF_OBJECT_LITE, interfaces, sizes, http_ports, false, lifecycle, state)?;
            kernel.loaded.kernel_http_refused = Some(why);
            Ok(kernel)
        }
        other => other,
    }
}

fn load_object(
    object: &[u8],
    interfaces: &[String],
    sizes: MapSizes,
    http_ports: &[u16],
    kernel_http: bool,
    lifecycle: LifecycleHook,
    state: Option<&pin::State>,
) -> Result<Kernel, BpfError> {
    if object.is_empty() {
        return Err(BpfError::NotBuilt);
    }
    if let Some(missing) = interfaces.iter().find(|i| !crate::sys::interface_exists(i)) {
        return Err(BpfError::InterfaceMissing(missing.clone()));
    }
    // Tracepoint record layouts of this kernel, handed to the programs as globals.
    let layouts: Vec<Result<TpLayout, crate::tracefs::TracepointError>> =
        TRACEPOINTS.iter().map(|(_, category, name, _)| crate::tracefs::read_layout(category, name)).collect();
    let btf = crate::btf::Btf::from_sys_fs();
    if let Err(e) = &btf {
        log::warn!("{e:#}");
    }
    let btf = btf.as_ref().ok();
    let netns = netns_filter(btf);
    let skb_segs = skb_segs(btf);
    let sock_layout = if lifecycle == LifecycleHook::Tracepoint { SockLayout::absent() } else { sock_layout(btf) };
    let ports_only: u32 = u32::from(!http_ports.is_empty());
    let kernel_http: u32 = u32::from(kernel_http);
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map::CONNS, sizes.connections)
        .map_max_entries(map::EVENTS, sizes.events_bytes)
        .map_max_entries(map::PAYLOAD, sizes.payload_bytes)
        .map_max_entries(map::HTTP_HINTS, sizes.connections)
        .map_max_entries(map::TLS_NAMES, sizes.connections)
        // Attempts whose handshake is under way: a quarter of the connections (at least 1024).
        .map_max_entries(map::HALF_OPEN, (sizes.connections / 4).max(1024))
        // LRU maps are preallocated: without the kernel framer, a token size instead of ~20 MiB.
        .map_max_entries(map::HTTP_FRAMES, if kernel_http == 1 { sizes.connections } else { 64 })
        .override_global(global::NETNS_FILTER, &netns, true)
        .override_global(global::SOCK_LAYOUT, &sock_layout, true)
        .override_global(global::RETRANSMIT_SEGS, &skb_segs, true)
        .override_global(global::HTTP_PORTS_ONLY, &ports_only, true)
        .override_global(global::KERNEL_HTTP, &kernel_http, true);
    // Pinned maps are reused as they are (their size included); the others are created and pinned.
    if let Some(state) = state {
        let pinned = state.pinned_map_sizes().map_err(BpfError::State)?;
        for (name, entries) in pinned {
            let asked = match name {
                map::CONNS | map::HTTP_HINTS | map::TLS_NAMES => Some(sizes.connections),
                map::EVENTS => Some(sizes.events_bytes),
                map::PAYLOAD => Some(sizes.payload_bytes),
                _ => None,
            };
            if asked.is_some_and(|a| a != entries) {
                log::warn!("the pinned map {name} keeps its size ({entries}); a new size takes effect after `observer detach`");
            }
            loader.map_max_entries(name, entries);
        }
        for (name, _, _) in pin::PINNED_MAPS {
            loader.map_pin_path(name, state.map_path(name));
        }
    }
    for ((_, _, _, global), layout) in TRACEPOINTS.iter().zip(&layouts) {
        if let Ok(layout) = layout {
            loader.override_global(global, layout, true);
        }
    }
    let mut ebpf = loader.load(object).map_err(classify_load_error)?;
    start_log_forwarding(&mut ebpf);
    // The port filter is in place before any program runs.
    let mut ports: HashMap<_, u16, u8> =
        HashMap::try_from(ebpf.map_mut(map::HTTP_PORTS).ok_or(BpfError::Map(map::HTTP_PORTS))?).map_err(|_| BpfError::Map(map::HTTP_PORTS))?;
    for p in http_ports {
        ports.insert(p, 1, 0).map_err(|_| BpfError::Map(map::HTTP_PORTS))?;
    }

    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    let mut attachments = Vec::new();
    let mut program_ids = Vec::new();
    // The link pins this daemon uses; others are removed once everything is attached.
    let mut keep: Vec<PathBuf> = Vec::new();
    for (program, attach_type, direction) in [(TC_INGRESS, TcAttachType::Ingress, "ingress"), (TC_EGRESS, TcAttachType::Egress, "egress")] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(program)
            .ok_or(BpfError::Program { program, source: ProgramError::NotLoaded })?
            .try_into()
            .map_err(|source| BpfError::Program { program, source })?;
        prog.load().map_err(|e| classify_program_error(program, e))?;
        if let Ok(info) = prog.info() {
            program_ids.push((program, info.id()));
        }
        for interface in interfaces {
            if !tcx {
                // Older kernels attach through the clsact qdisc; it may exist already (ours from
                // an earlier run, or someone else's): sharing it is fine, replacing it is not.
                if let Err(e) = tc::qdisc_add_clsact(interface) {
                    log::debug!("clsact on {interface}: {e} (already present?)");
                }
            }
            let attach_error = |source| BpfError::Attach { program, interface: interface.clone(), direction, source };
            match state {
                // tcx: the link is pinned; a pinned link of an earlier daemon gets this program
                // in one atomic step (no packet missed, none counted twice).
                Some(state) if tcx => {
                    let path = state.tc_link_path(direction, interface);
                    keep.push(path.clone());
                    let replaced = PinnedLink::from_pin(&path).ok().and_then(|old| {
                        let link = SchedClassifierLink::try_from(FdLink::from(old)).ok()?;
                        match prog.attach_to_link(link) {
                            Ok(id) => Some(id),
                            Err(e) => {
                                log::warn!("{}: the pinned link could not take the new program ({e}): attaching anew", path.display());
                                let _ = std::fs::remove_file(&path);
                                None
                            }
                        }
                    });
                    let adopted = replaced.is_some();
                    let id = match replaced {
                        Some(id) => id,
                        None => prog.attach(interface, attach_type).map_err(attach_error)?,
                    };
                    let link = prog.take_link(id).map_err(attach_error)?;
                    if !adopted {
                        let fd = FdLink::try_from(link).map_err(|e| BpfError::Pin {
                            what: format!("the {direction} link on {interface}"),
                            path: path.clone(),
                            error: e.to_string(),
                        })?;
                        fd.pin(&path).map_err(|e| BpfError::Pin {
                            what: format!("the {direction} link on {interface}"),
                            path: path.clone(),
                            error: e.to_string(),
                        })?;
                    }
                    log::info!(
                        "{} {program} on {interface} {direction} (tcx, pinned at {})",
                        if adopted { "replaced the program of" } else { "attached" },
                        path.display()
                    );
                }
                // clsact: netlink filters outlive the process that added them; a killed
                // daemon's filter is removed (by name) before this one goes in, and this one
                // stays when the daemon exits.
                Some(_) => {
                    if tc::qdisc_detach_program(interface, attach_type, program).is_ok() {
                        log::info!("removed the {program} filter an earlier daemon left on {interface}");
                    }
                    let id = prog.attach(interface, attach_type).map_err(attach_error)?;
                    std::mem::forget(prog.take_link(id).map_err(attach_error)?);
                }
                // `attach` appends (tcx) or adds a filter with a kernel-chosen priority (clsact):
                // programs others attached stay in place and keep running.
                None => {
                    prog.attach(interface, attach_type).map_err(attach_error)?;
                }
            }
            attachments.push(Attachment { interface: interface.clone(), direction, program, mode: if tcx { "tcx" } else { "clsact" } });
            if state.is_none() || !tcx {
                log::info!("attached {program} to {interface} {direction} ({})", if tcx { "tcx" } else { "clsact" });
            }
        }
    }

    // A missing or unusable tracepoint is reported; the rest keeps working.
    let mut tracepoints = Vec::new();
    let mut lifecycle_hook = "none";
    for ((program, category, name, _), layout) in TRACEPOINTS.iter().zip(layouts) {
        let full = format!("{category}:{name}");
        if *program == TRACEPOINTS[0].0 && sock_layout.present == 1 {
            match attach_btf_tracepoint(&mut ebpf, program::SOCK_SET_STATE_BTF, name, state, &mut keep) {
                Ok(id) => {
                    program_ids.push((program::SOCK_SET_STATE_BTF, id));
                    log::info!("attached {} to tp_btf/{name}", program::SOCK_SET_STATE_BTF);
                    lifecycle_hook = "tp_btf";
                    tracepoints.push((full, true));
                    continue;
                }
                Err(e) if lifecycle == LifecycleHook::TpBtf => return Err(e),
                Err(e) => log::info!("tp_btf/{name}: {e}: the classic tracepoint follows state changes instead"),
            }
        } else if *program == TRACEPOINTS[0].0 && lifecycle == LifecycleHook::TpBtf {
            return Err(BpfError::MissingFeature {
                feature: "the kernel BTF of struct sock (for --lifecycle-hook tp-btf)",
                since: "5.5",
                kernel: crate::sys::kernel_release(),
            });
        }
        let attached = match layout {
            Err(e) => {
                log::warn!("{e}: its part of the connection lifecycle is not observed");
                false
            }
            Ok(_) => match attach_tracepoint(&mut ebpf, program, category, name, state, &mut keep) {
                Ok(id) => {
                    program_ids.push((*program, id));
                    log::info!("attached {program} to {full}");
                    if *program == TRACEPOINTS[0].0 {
                        lifecycle_hook = "tracepoint";
                    }
                    true
                }
                Err(e @ BpfError::Verifier { .. }) => return Err(e),
                Err(e) => {
                    log::warn!("{full}: {e}: its part of the connection lifecycle is not observed");
                    false
                }
            },
        };
        tracepoints.push((full, attached));
    }

    if let Some(state) = state {
        state.remove_links_except(&keep).map_err(BpfError::State)?;
    }
    let conns = take(&mut ebpf, map::CONNS, HashMap::try_from)?;
    let global_counters = take(&mut ebpf, map::GLOBAL, PerCpuArray::try_from)?;
    let http_hints = take(&mut ebpf, map::HTTP_HINTS, HashMap::try_from)?;
    let tls_names = take(&mut ebpf, map::TLS_NAMES, HashMap::try_from)?;
    let frame_lost = take(&mut ebpf, map::FRAME_LOST, PerCpuArray::try_from)?;
    let http_agg = take(&mut ebpf, map::HTTP_AGG, PerCpuHashMap::try_from)?;
    let http_frames = take(&mut ebpf, map::HTTP_FRAMES, HashMap::try_from)?;
    let ring = |ebpf: &mut Ebpf, name: &'static str| -> Result<RingBuf<_>, BpfError> { take(ebpf, name, RingBuf::try_from) };
    let rings = Rings {
        events: Ring::new(ring(&mut ebpf, map::EVENTS)?, "event").map_err(BpfError::State)?,
        payload: Ring::new(ring(&mut ebpf, map::PAYLOAD)?, "payload").map_err(BpfError::State)?,
        trace: Ring::new(ring(&mut ebpf, map::TRACE)?, "trace").map_err(BpfError::State)?,
    };
    let trace = TraceMaps {
        filters: std::sync::Mutex::new(take(&mut ebpf, map::TRACE_FILTERS, HashMap::try_from)?),
        shapes: std::sync::Mutex::new(take(&mut ebpf, map::TRACE_SHAPES, Array::try_from)?),
    };
    Ok(Kernel {
        loaded: Loaded {
            programs: Programs { ebpf: std::sync::Arc::new(std::sync::Mutex::new(ebpf)), ids: program_ids },
            attachments,
            tracepoints,
            netns_filter: netns.enabled == 1,
            lifecycle_hook,
            kernel_http: kernel_http == 1,
            kernel_http_refused: None,
        },
        maps: Maps { conns, global: global_counters, http_hints, tls_names, http_frames, frame_lost, http_agg },
        rings,
        trace,
    })
}

/// Takes map `name` out of the object as the typed map `typed` makes of it.
fn take<T, E>(ebpf: &mut Ebpf, name: &'static str, typed: impl FnOnce(aya::maps::Map) -> Result<T, E>) -> Result<T, BpfError> {
    typed(ebpf.take_map(name).ok_or(BpfError::Map(name))?).map_err(|_| BpfError::Map(name))
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
    state: Option<&pin::State>,
    keep: &mut Vec<PathBuf>,
) -> Result<u32, BpfError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(BpfError::Program { program, source: ProgramError::NotLoaded })?
        .try_into()
        .map_err(|source| BpfError::Program { program, source })?;
    prog.load().map_err(|e| classify_program_error(program, e))?;
    let id = prog.attach(category, name).map_err(|source| BpfError::Program { program, source })?;
    if let Some(state) = state {
        let link = prog.take_link(id).map_err(|source| BpfError::Program { program, source })?;
        pin_tracepoint_link(state, program, FdLink::try_from(link).map_err(|e| e.to_string()), keep);
    }
    Ok(prog.info().map(|i| i.id()).unwrap_or(0))
}

/// Pins a tracepoint's new link in place of the earlier daemon's, whose program then stops. The
/// two overlap for the moment between (a tracepoint link cannot take another program): a state
/// change in that moment is seen twice, which the transition makes harmless, and a reset or a
/// retransmission would count twice. Where the kernel cannot pin it (perf-event tracepoints
/// before 5.15), the hook stops with the daemon, and the log says so.
fn pin_tracepoint_link(state: &pin::State, program: &'static str, link: Result<FdLink, String>, keep: &mut Vec<PathBuf>) {
    let path = state.tracepoint_link_path(program);
    let link = match link {
        Ok(link) => link,
        Err(e) => {
            log::warn!("{program}: its link cannot be pinned on this kernel ({e}): it stops while the daemon is down");
            return;
        }
    };
    let _ = std::fs::remove_file(&path);
    match link.pin(&path) {
        Ok(_) => keep.push(path),
        Err(e) => log::warn!("{program}: pinning its link at {} failed ({e}): it stops while the daemon is down", path.display()),
    }
}

fn attach_btf_tracepoint(ebpf: &mut Ebpf, program: &'static str, name: &str, state: Option<&pin::State>, keep: &mut Vec<PathBuf>) -> Result<u32, BpfError> {
    let btf = AyaBtf::from_sys_fs().map_err(|e| BpfError::MissingFeature {
        feature: "kernel BTF (/sys/kernel/btf/vmlinux)",
        since: "5.5",
        kernel: format!("{} ({e})", crate::sys::kernel_release()),
    })?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or(BpfError::Program { program, source: ProgramError::NotLoaded })?
        .try_into()
        .map_err(|source| BpfError::Program { program, source })?;
    prog.load(name, &btf).map_err(|e| classify_program_error(program, e))?;
    let id = prog.attach().map_err(|source| BpfError::Program { program, source })?;
    if let Some(state) = state {
        let link = prog.take_link(id).map_err(|source| BpfError::Program { program, source })?;
        pin_tracepoint_link(state, program, Ok(FdLink::from(link)), keep);
    }
    Ok(prog.info().map(|i| i.id()).unwrap_or(0))
}

/// Removes our tc filters (clsact, kernels before 6.6) from `interfaces`: netlink filters outlive
/// the daemon and are not pinned. Returns how many interfaces and directions had one.
pub fn remove_tc_filters(interfaces: &[String]) -> usize {
    let mut removed = 0;
    for interface in interfaces {
        for (program, attach_type) in [(TC_INGRESS, TcAttachType::Ingress), (TC_EGRESS, TcAttachType::Egress)] {
            if tc::qdisc_detach_program(interface, attach_type, program).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

fn classify_load_error(e: EbpfError) -> BpfError {
    let kernel = crate::sys::kernel_release();
    match e {
        EbpfError::BtfError(_) => BpfError::MissingFeature { feature: "BTF support for BPF programs", since: "5.2", kernel },
        // A map type the kernel does not know is refused with EINVAL at creation.
        EbpfError::MapError(aya::maps::MapError::CreateError { ref name, ref io_error }) if io_error.raw_os_error() == Some(libc::EINVAL) => {
            match name.as_str() {
                map::EVENTS | map::PAYLOAD | map::TRACE | map::AYA_LOGS => {
                    BpfError::MissingFeature { feature: "BPF ring buffers (BPF_MAP_TYPE_RINGBUF)", since: "5.8", kernel }
                }
                map::CONNS | map::HTTP_HINTS | map::HTTP_FRAMES => {
                    BpfError::MissingFeature { feature: "LRU hash maps (BPF_MAP_TYPE_LRU_HASH)", since: "4.10", kernel }
                }
                _ => BpfError::Load(e),
            }
        }
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
