//! The host: privileges, resource limits, pseudo file systems, interfaces and clocks.
use std::{fs, io, path::Path, time::SystemTime};

use anyhow::{bail, Context, Result};

/// `observer run` loads BPF programs and attaches them to interfaces.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("observer run loads eBPF programs and needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON): run it with sudo");
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so map creation cannot fail
/// there. Later kernels charge memory cgroups instead, and a refusal does not matter.
pub fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let e = io::Error::last_os_error();
        if kernel_before(5, 11) {
            log::warn!("could not lift RLIMIT_MEMLOCK ({e}); creating the maps may fail on this kernel (before 5.11): raise it with `ulimit -l unlimited`");
        } else {
            log::debug!("could not lift RLIMIT_MEMLOCK ({e}); not needed from Linux 5.11");
        }
    }
}

/// Is the running kernel older than `major.minor`?
pub fn kernel_before(major: u32, minor: u32) -> bool {
    let release = kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) < (major, minor),
        _ => false,
    }
}

/// Mounts `fstype` at `target` unless something is mounted there already.
pub fn ensure_mounted(fstype: &str, target: &str) -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(target)) {
        return Ok(());
    }
    fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in a mount argument");
    let (src, tgt, ty) = (c(fstype), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!("{fstype} is not mounted at {target} and mounting it failed ({}): mount it with `mount -t {fstype} {fstype} {target}`", io::Error::last_os_error());
    }
    log::info!("mounted {fstype} at {target}");
    Ok(())
}

/// The interfaces that are administratively up and not loopback: the default attach set.
pub fn default_interfaces() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir("/sys/class/net").context("listing /sys/class/net")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let dir = Path::new("/sys/class/net").join(&name);
        let flags = read_hex(&dir.join("flags")).unwrap_or(0);
        const IFF_UP: u64 = 0x1;
        const IFF_LOOPBACK: u64 = 0x8;
        if flags & IFF_UP != 0 && flags & IFF_LOOPBACK == 0 {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Every interface of this network namespace.
pub fn all_interfaces() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir("/sys/class/net").context("listing /sys/class/net")? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

pub fn interface_exists(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
}

fn read_hex(path: &Path) -> Option<u64> {
    let s = fs::read_to_string(path).ok()?;
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts a kernel timestamp (`bpf_ktime_get_ns`) to seconds since the Unix epoch.
/// The offset is taken once, so a given kernel time always converts to the same Unix time
/// (answers about a closed connection do not move between requests).
pub fn ktime_to_unix_seconds(ktime_ns: u64) -> f64 {
    static BOOT_UNIX_NS: std::sync::OnceLock<i128> = std::sync::OnceLock::new();
    let boot = *BOOT_UNIX_NS.get_or_init(|| {
        let now_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        now_unix - monotonic_ns() as i128
    });
    (boot + ktime_ns as i128) as f64 / 1e9
}

/// The running kernel's release, e.g. `6.18.44`.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}
