//! `cargo xtask test --stress N [--load]`: the end-to-end suite N times in a row, optionally with
//! every CPU kept busy, and how often each test failed. A test that fails once in N is a bug.
use std::{
    collections::BTreeMap,
    env, fs,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// Busy loops on every CPU until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..100_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                        }
                    }
                })
            })
            .collect();
        eprintln!("xtask stress: {cpus} busy loops running");
        Self { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Names of the tests a `cargo test` output reports as failed (`test NAME ... FAILED`), with
/// their binary (`Running tests/NAME.rs`).
fn failures(output: &str) -> Vec<String> {
    let mut binary = String::new();
    let mut failed = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Running ") {
            binary = rest.split_whitespace().next().unwrap_or("").trim_start_matches("tests/").trim_end_matches(".rs").to_owned();
        } else if let Some(rest) = line.strip_prefix("test ") {
            if let Some(name) = rest.strip_suffix(" ... FAILED") {
                failed.push(format!("{binary}::{name}"));
            }
        }
    }
    failed
}

pub fn run(runs: u32, load: bool, bin: &Path, args: &[String]) -> Result<()> {
    if runs == 0 {
        bail!("--stress needs at least one run");
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Build the test binaries once, outside the timed runs.
    let built =
        Command::new(&cargo).args(["test", "--package", "observer-tests", "--no-run"]).current_dir(workspace_root()).status().context("building the tests")?;
    if !built.success() {
        bail!("building the end-to-end tests failed");
    }
    let logs = workspace_root().join("target/stress");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let _load = load.then(Load::start);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut red = 0;
    let started = Instant::now();
    for i in 1..=runs {
        let t = Instant::now();
        let out = Command::new(&cargo)
            .args(["test", "--package", "observer-tests", "--no-fail-fast"])
            .args(args)
            .env("OBSERVER_BIN", bin)
            .current_dir(workspace_root())
            .output()
            .context("running cargo test")?;
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let log = logs.join(format!("run-{i}.log"));
        fs::write(&log, &text).with_context(|| format!("writing {}", log.display()))?;
        let failed = failures(&text);
        let verdict = if out.status.success() {
            "green".to_owned()
        } else {
            red += 1;
            if failed.is_empty() {
                format!("RED ({}, no test named: see the log)", out.status)
            } else {
                format!("RED: {}", failed.join(", "))
            }
        };
        eprintln!("xtask stress: run {i}/{runs} in {:.0} s: {verdict} (log: {})", t.elapsed().as_secs_f64(), log.display());
        for f in failed {
            *counts.entry(f).or_default() += 1;
        }
    }
    eprintln!("xtask stress: {runs} runs{} in {:.0} s, {red} red", if load { " under load" } else { "" }, started.elapsed().as_secs_f64());
    if counts.is_empty() {
        eprintln!("xtask stress: no test failed");
        return Ok(());
    }
    eprintln!("failures  test");
    for (name, n) in &counts {
        eprintln!("{n:>8}  {name}");
    }
    bail!("{} test(s) failed at least once in {runs} runs", counts.len())
}

#[cfg(test)]
mod tests {
    use super::failures;

    #[test]
    fn failed_tests_are_named_with_their_binary() {
        let out =
            "     Running tests/trace.rs (target/debug/deps/trace-1)\ntest a ... ok\ntest b ... FAILED\n     Running tests/http.rs (x)\ntest c ... FAILED\n";
        assert_eq!(failures(out), ["trace::b", "http::c"]);
    }
}
