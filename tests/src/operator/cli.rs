//! The CLI as a process: one-shot subcommands with their output, and long-running ones
//! (`observer trace`, `observer top`) in the background with stdout and stderr apart.
use std::{
    ffi::OsStr,
    fs::{self, File},
    io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::unique;
use crate::{netns::Netns, observer::observer_bin, poll, process::Background};

/// `observer ARGS` (a CLI subcommand) run inside `ns`, stdout piped.
pub fn cli(ns: &Netns, args: &[&str]) -> Output {
    ns.exec(observer_bin().to_str().expect("a UTF-8 path"), args)
}

/// Output bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A CLI process (`observer trace`, `observer top`, ...) running in the background inside a
/// namespace, stdout and stderr in separate files. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct CliProcess {
    process: Background,
    stdout: PathBuf,
    stderr: PathBuf,
    pub started: Instant,
}

impl CliProcess {
    /// Starts `program args` in `ns`; its output goes to `DIR/NAME.out` and `DIR/NAME.err`.
    pub fn spawn<S: AsRef<OsStr>>(ns: &Netns, name: &str, program: impl AsRef<OsStr>, args: impl IntoIterator<Item = S>, dir: &Path) -> CliProcess {
        let file = unique(name);
        let stdout = dir.join(format!("{file}.out"));
        let stderr = dir.join(format!("{file}.err"));
        let out = File::create(&stdout).unwrap_or_else(|e| panic!("creating {}: {e}", stdout.display()));
        let err = File::create(&stderr).unwrap_or_else(|e| panic!("creating {}: {e}", stderr.display()));
        let mut cmd = ns.command(program.as_ref(), args);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("cannot start {name} in {}: {e}", ns.name()));
        CliProcess { process: Background::new(format!("{name} in {}", ns.name()), child, stderr.clone()), stdout, stderr, started }
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Complete lines of stdout so far.
    pub fn lines(&self) -> Vec<String> {
        let out = self.stdout();
        let complete = out.rfind('\n').map_or("", |i| &out[..i]);
        complete.lines().map(str::to_owned).collect()
    }

    /// Complete stdout lines parsed as JSON; panics on one that is not.
    pub fn json_lines(&self) -> Vec<Value> {
        self.lines().iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\nstderr: {}", self.stderr()))).collect()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, Duration::from_millis(20), || self.process.exited())
    }

    /// Polls stdout until `done` holds for its JSON lines; panics with them after `timeout`.
    pub fn wait_for_json(&self, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut last = Vec::new();
        poll(timeout, Duration::from_millis(20), || {
            last = self.json_lines();
            done(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("waited {timeout:?} for {what}; the trace printed:\n{}\nstderr: {}", self.stdout(), self.stderr()))
    }

    /// Polls stdout until it contains every one of `needles`; panics with it after `timeout`.
    pub fn wait_for_text(&self, needles: &[&str], timeout: Duration) -> String {
        let mut last = String::new();
        poll(timeout, Duration::from_millis(20), || {
            last = self.stdout();
            needles.iter().all(|n| last.contains(n)).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("waited {timeout:?} for {needles:?}; stdout:\n{last}\nstderr: {}", self.stderr()))
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.stop(Duration::from_secs(5))
    }
}
