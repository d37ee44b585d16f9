//! What operators use, driven the way they use it, one tool a module: the Prometheus text (parsed,
//! and checked by `promtool`), the JSON API as raw JSON, the CLI as a process (stdout and stderr
//! apart), `observer top` in a real pseudo-terminal (tmux), the NDJSON trace stream, the daemon's
//! kernel maps (bpftool), and a raw keep-alive HTTP client whose connection the test owns (its
//! port, its exact bytes).
use std::{
    io,
    sync::atomic::{AtomicU32, Ordering},
};

pub mod api;
pub mod bpftool;
pub mod cli;
pub mod keepalive;
pub mod prometheus;
pub mod tmux;
pub mod trace;

pub use api::{conn_names, conn_set, wait_closed_and_counted, wait_json, TRACEPOINTS};
pub use bpftool::{bpf_conn_keys, bpf_map_dump, bpf_maps_of, bpf_value_u64, bpftool, daemon_pid};
pub use cli::{cli, text, CliProcess};
pub use keepalive::{Exchange, KeepAlive};
pub use prometheus::{promtool_check_metrics, wait_metrics, Exposition, PromtoolReport, Sample};
pub use tmux::Tmux;
pub use trace::TraceStream;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `PREFIX-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Raises this process's soft limit of open files to at least `min` (the hard limit too, which
/// root may do), for tests that hold many sockets open. Children inherit it.
pub fn raise_nofile(min: u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            panic!("getrlimit: {}", io::Error::last_os_error());
        }
        if r.rlim_cur >= min {
            return;
        }
        r.rlim_cur = min;
        r.rlim_max = r.rlim_max.max(min);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            panic!("setrlimit(RLIMIT_NOFILE, {min}): {}", io::Error::last_os_error());
        }
    }
}
