//! State that outlives the daemon: maps and links pinned under a directory on a BPF filesystem
//! (`--state-dir`, default `/sys/fs/bpf/observer`), so the programs keep counting while the
//! daemon is down (kill -9, `systemctl restart`, an upgrade) and the next daemon continues every
//! counter.
//!
//! Layout: `<state-dir>/v<LAYOUT>/` holds one pin per map in [`PINNED_MAPS`] (by map name) and
//! one per link (`link_tc_<direction>_<interface>`, `link_tp_<program>`). A build whose pinned
//! types differ uses another `v<N>`: a directory of another layout is refused with the command
//! that removes it.
use std::{
    io,
    os::unix::{ffi::OsStrExt as _, net::UnixListener},
    path::{Path, PathBuf},
};

use super::names::map;
use anyhow::{bail, Context as _, Result};
use aya::maps::MapData;
use observer_common::{
    conn::{ConnKey, ConnStats},
    frame::ConnFrame,
    http::{AggKey, HttpHints},
};

/// Bumped whenever the key or value of a pinned map changes (or a map joins or leaves the list).
pub const LAYOUT: u32 = 2;

pub const DEFAULT_STATE_DIR: &str = "/sys/fs/bpf/observer";

/// `statfs(2)`'s `f_type` of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The maps that carry counts and undelivered records across restarts, with the key and value
/// sizes this build gives them. Scratch space, the trace filters and the port filter are not
/// pinned: each daemon starts them afresh.
pub const PINNED_MAPS: [(&str, usize, usize); 10] = [
    (map::CONNS, size_of::<ConnKey>(), size_of::<ConnStats>()),
    (map::HALF_OPEN, size_of::<ConnKey>(), size_of::<ConnStats>()),
    (map::GLOBAL, 4, 8),
    (map::HTTP_FRAMES, size_of::<ConnKey>(), size_of::<ConnFrame>()),
    (map::FRAME_LOST, 4, 8),
    (map::HTTP_AGG, size_of::<AggKey>(), 8),
    (map::HTTP_HINTS, size_of::<ConnKey>(), size_of::<HttpHints>()),
    (map::TLS_NAMES, size_of::<ConnKey>(), size_of::<observer_common::proto::ServerName>()),
    // Ring buffers: records the programs wrote while no daemon read them.
    (map::EVENTS, 0, 0),
    (map::PAYLOAD, 0, 0),
];

/// This daemon's pinned state: the layout directory, and a lock that keeps a second daemon off it.
pub struct State {
    /// The `--state-dir` (what `observer detach` takes).
    pub root: PathBuf,
    /// Its layout directory, `<root>/v<LAYOUT>`.
    pub dir: PathBuf,
    /// Held for the daemon's life (an abstract Unix socket named after the directory: released by
    /// the kernel however the process ends).
    _lock: UnixListener,
}

impl State {
    /// Opens (creating it if needed) the state under `root`, refusing one of another layout, a
    /// directory that is not on a BPF filesystem, and a state another daemon is using.
    pub fn open(root: &Path) -> Result<State> {
        std::fs::create_dir_all(root).with_context(|| format!("creating the state directory {}", root.display()))?;
        if !on_bpffs(root)? {
            bail!(
                "{} is not on a BPF filesystem, so nothing pinned there would outlive the daemon: mount one (`mount -t bpf bpf {}`), or choose a directory under /sys/fs/bpf with --state-dir",
                root.display(),
                root.display()
            );
        }
        let ours = format!("v{LAYOUT}");
        for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('v') && name != ours {
                bail!(
                    "{} holds the pinned state of another observer build (layout {name}, this build reads {ours}): `observer detach --state-dir {}` detaches its programs and removes it, with its counts",
                    root.display(),
                    root.display()
                );
            }
        }
        let lock = lock(root)?;
        let dir = root.join(ours);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(State { root: root.to_path_buf(), dir, _lock: lock })
    }

    /// Checks every map pinned here against this build's key and value sizes, and returns the
    /// pinned sizes (`max_entries`) by map name: a pinned map keeps its size.
    pub fn pinned_map_sizes(&self) -> Result<Vec<(&'static str, u32)>> {
        let mut sizes = Vec::new();
        for (name, key, value) in PINNED_MAPS {
            let path = self.dir.join(name);
            if !path.exists() {
                continue;
            }
            let map = MapData::from_pin(&path).with_context(|| format!("opening the pinned map {}", path.display()))?;
            let info = map.info().with_context(|| format!("reading the pinned map {}", path.display()))?;
            if (info.key_size() as usize, info.value_size() as usize) != (key, value) {
                bail!(
                    "the pinned map {} has {}-byte keys and {}-byte values, this build's {key} and {value}: it was written by an incompatible build; `observer detach --state-dir {}` removes the state (and its counts)",
                    path.display(),
                    info.key_size(),
                    info.value_size(),
                    self.root.display()
                );
            }
            if name == map::GLOBAL && info.max_entries() != observer_common::global::GLOBAL_SLOTS {
                bail!(
                    "the pinned map {} holds {} counters, this build {}: it was written by an incompatible build; `observer detach --state-dir {}` removes the state (and its counts)",
                    path.display(),
                    info.max_entries(),
                    observer_common::global::GLOBAL_SLOTS,
                    self.root.display()
                );
            }
            sizes.push((name, info.max_entries()));
        }
        Ok(sizes)
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn tc_link_path(&self, direction: &str, interface: &str) -> PathBuf {
        self.dir.join(format!("link_tc_{direction}_{interface}"))
    }

    pub fn tracepoint_link_path(&self, program: &str) -> PathBuf {
        self.dir.join(format!("link_tp_{program}"))
    }

    /// Removes the link pins that are not in `keep` (links of interfaces or hooks this daemon no
    /// longer uses): their programs stop.
    pub fn remove_links_except(&self, keep: &[PathBuf]) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))? {
            let path = entry?.path();
            let is_link = path.file_name().is_some_and(|n| n.as_bytes().starts_with(b"link_"));
            if is_link && !keep.contains(&path) {
                log::info!("removing {} (not used by this daemon): its program stops", path.display());
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// Removes everything pinned under `root` (every layout): the programs pinned there detach, and
/// the maps go with their counts once nothing uses them.
pub fn remove_all(root: &Path) -> Result<usize> {
    if !root.exists() {
        return Ok(0);
    }
    let _lock = lock(root)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let layout = entry?.path();
        if !layout.is_dir() {
            continue;
        }
        for pin in std::fs::read_dir(&layout).with_context(|| format!("listing {}", layout.display()))? {
            let pin = pin?.path();
            std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
            removed += 1;
        }
        std::fs::remove_dir(&layout).with_context(|| format!("removing {}", layout.display()))?;
    }
    std::fs::remove_dir(root).with_context(|| format!("removing {}", root.display()))?;
    Ok(removed)
}

fn on_bpffs(path: &Path) -> Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).context("a path without NUL")?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a buffer of the right type.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// One daemon per state directory: an abstract socket named after it (per network namespace,
/// released when the process ends, however it ends).
fn lock(root: &Path) -> Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let mut name = b"observer-state:".to_vec();
    name.extend_from_slice(canonical.as_os_str().as_bytes());
    name.truncate(100);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).context("an abstract socket name")?;
    UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "another observer is using the state in {} (in this network namespace): stop it first, or give this one its own --state-dir",
                root.display()
            )
        } else {
            anyhow::Error::from(e).context("taking the state directory's lock")
        }
    })
}
