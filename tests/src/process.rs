//! Background processes that end with their owner.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    time::Duration,
};

use crate::poll;

/// A process running in the background, its stdout and stderr going to a log file. `Drop` sends
/// SIGTERM, waits up to five seconds, then SIGKILLs; it always reaps the process.
pub struct Background {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Background {
    pub(crate) fn new(name: String, child: Child, log: PathBuf) -> Self {
        Self { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// The exit status if the process has ended (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// SIGTERM, then waits up to `grace` for the process to exit (SIGKILL after that). Returns its
    /// exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = poll(grace, Duration::from_millis(20), || self.exited()) {
            return Some(status);
        }
        eprintln!("{}: still running {grace:?} after SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
