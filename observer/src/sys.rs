//! The host: privileges, resource limits, pseudo file systems, interfaces and clocks.
use std::{fs, io, path::Path, time::SystemTime};

use anyhow::{bail, Context, Result};

/// `observer run` loads BPF programs and attaches them to interfaces.
/// Capabilities by number (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

fn cap_name(cap: u32) -> &'static str {
    match cap {
        CAP_NET_ADMIN => "CAP_NET_ADMIN",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => "CAP_?",
    }
}

/// The process's capability sets (effective, permitted, inheritable), 64 bits each.
fn capget() -> Result<[u64; 3]> {
    let mut header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this process
    let mut data = [[0u32; 3]; 2];
    // SAFETY: a version-3 header and room for its two data records.
    if unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error()).context("capget");
    }
    let set = |i: usize| u64::from(data[0][i]) | (u64::from(data[1][i]) << 32);
    Ok([set(0), set(1), set(2)])
}

fn capset(effective: u64, permitted: u64) -> io::Result<()> {
    let header = [0x2008_0522u32, 0];
    let data = [[effective as u32, permitted as u32, 0], [(effective >> 32) as u32, (permitted >> 32) as u32, 0]];
    // SAFETY: a version-3 header and its two data records.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `observer run` needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (as root, or granted to another
/// user); CAP_SYS_ADMIN also works for CAP_BPF and CAP_PERFMON (kernels before 5.8 know only it).
pub fn require_capabilities() -> Result<()> {
    let [effective, _, _] = capget()?;
    let has = |c: u32| effective & (1 << c) != 0;
    let missing: Vec<&str> = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON]
        .into_iter()
        // CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, not for CAP_NET_ADMIN.
        .filter(|&c| !(has(c) || (c != CAP_NET_ADMIN && has(CAP_SYS_ADMIN))))
        .map(cap_name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "observer run loads and attaches eBPF programs and lacks {}: run it as root (sudo), or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (systemd: AmbientCapabilities=; a file: setcap cap_bpf,cap_net_admin,cap_perfmon+ep)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The root-only commands (`observer detach`).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this command removes pinned eBPF state and tc filters: run it as root (sudo)");
    }
    Ok(())
}

/// Once everything is loaded and attached, keeps only `keep` (and what the process had of them):
/// reading maps needs CAP_BPF where unprivileged BPF is off; nothing else is needed any more.
/// Returns the capabilities kept, by name.
pub fn drop_capabilities(keep: &[u32]) -> Result<Vec<&'static str>> {
    let [effective, permitted, _] = capget()?;
    let wanted = keep.iter().fold(0u64, |m, &c| m | (1 << c));
    let kept = permitted & wanted;
    // Ambient capabilities would come back in a child; none is started, but clear them anyway.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    capset(effective & kept, kept).context("dropping capabilities (capset)")?;
    Ok(keep.iter().filter(|&&c| kept & (1 << c) != 0).map(|&c| cap_name(c)).collect())
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
        bail!(
            "{fstype} is not mounted at {target} and mounting it failed ({}): mount it with `mount -t {fstype} {fstype} {target}`",
            io::Error::last_os_error()
        );
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

/// Runs `f` with the file mode creation mask `mask`, then restores the previous one. The mask
/// belongs to the process, not the thread: call this before other threads create files (the
/// daemon binds its sockets before it starts anything else).
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask has no preconditions.
    let before = unsafe { libc::umask(mask) };
    let result = f();
    // SAFETY: as above.
    unsafe { libc::umask(before) };
    result
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

/// The local zone's offset from UTC in seconds at `unix` (east positive), from the C library's
/// zone data (`TZ`, else /etc/localtime, read by glibc on first use): it follows daylight saving
/// time, which a fixed offset taken once would not. 0 when the time cannot be converted.
pub fn utc_offset_seconds(unix: i64) -> i32 {
    let t: libc::time_t = unix;
    // SAFETY: localtime_r writes into the valid `tm` it is given, and reads `t`.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff as i32
    }
}
