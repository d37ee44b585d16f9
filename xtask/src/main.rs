//! `cargo xtask`: set-up, build, test, run and bench for observer.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};

mod dist;
mod stress;
use clap::{Parser, Subcommand};

/// Debian packages to build the kernel programs (docs/architecture.md, "Build", says why these).
const BUILD_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf", "llvm-22-dev", "libpolly-22-dev", "zlib1g-dev", "libzstd-dev"];
/// Debian packages the end-to-end tests drive: real servers, clients and tools (`systemd` for
/// `systemd-analyze verify` of dist/observer.service, there already on a systemd host;
/// `python3-yaml` to read dist/kubernetes/; `dpkg-deb`, for `cargo xtask dist`, is in dpkg).
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "nginx-light",
    "haproxy",
    "curl",
    "wrk",
    "iputils-ping",
    "bpftool",
    "tmux",
    "prometheus",
    "python3",
    "procps",
    "libcap2-bin",
    "ethtool",
    "systemd",
    "python3-yaml",
];
/// Debian packages only the benchmark needs: its peer, full packet capture.
const BENCH_PACKAGES: &[&str] = &["tshark"];
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; as root on Debian/Ubuntu, else prints what to install).
    Setup {
        /// Only what building needs, not the test servers and clients.
        #[arg(long)]
        build_only: bool,
    },
    /// Set up, build, and run `observer run` on this host with its defaults (needs root).
    Run {
        /// Extra arguments for `observer run`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks (needs root): throughput with and without the observer through a real nginx,
    /// per-program kernel run time, daemon memory, exactness under load. Release build.
    Bench,
    /// Property tests of both HTTP framers (the kernel's and the daemon's) on many more cases
    /// than the unit suite runs: noise, corruptions, segmentations, duplicates, reorders,
    /// strict lengths and statuses (docs/architecture.md, "Property tests"). Release build, all
    /// CPUs, no root, no kernel programs.
    Fuzz {
        /// Cases in all, shared among the properties as the unit suite shares its 10^5.
        #[arg(long, default_value_t = 10_000_000)]
        cases: u64,
        /// Base seed of the cases (default: from the clock, printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The release binary as a Debian package in target/dist/: the binary, the systemd unit, the
    /// options file /etc/default/observer, the `observer` system user (docs/install.md).
    Dist {
        /// Package this binary instead of building one (`cargo build --release`).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Where the package goes (default: target/dist/).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// A demo (needs root): a gateway in network namespaces (nginx as reverse proxy, an
    /// upstream), many healthy client connections and one that draws 502s; `observer top` finds
    /// it, `observer trace` follows it. Removes everything it made on exit, Ctrl-C or failure.
    Demo {
        /// How long the traffic runs, in seconds.
        #[arg(long, default_value_t = 45)]
        duration: u64,
    },
    /// The habits CI enforces before the tests: `cargo fmt --check` on every crate (the
    /// kernel's too), `cargo clippy -D warnings` on the host crates (all targets, tests
    /// included), and clippy on the kernel crate where a clippy for its toolchain exists.
    Check,
    /// Set up, build, and run the whole test suite: unit, property and end-to-end tests (needs root).
    Test {
        /// Run the end-to-end suite this many times instead (after the unit tests), and print
        /// each test's failure count: finds a flaky test before CI does.
        #[arg(long, value_name = "N")]
        stress: Option<u32>,
        /// With --stress: keep every CPU busy with a busy loop while the suite runs (a loaded
        /// CI machine).
        #[arg(long, requires = "stress")]
        load: bool,
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup { build_only } => setup(build_only),
        Task::Run { args } => {
            setup(true)?;
            cargo(&["build", "--release", "--package", "observer"])?;
            let bin = workspace_root().join("target/release/observer");
            let mut cmd = Command::new(&bin);
            cmd.arg("run").args(&args);
            status(&mut cmd)
        }
        Task::Bench => {
            setup_with(false, BENCH_PACKAGES)?;
            cargo(&["build", "--release", "--package", "observer"])?;
            let bin = workspace_root().join("target/release/observer");
            let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["test", "--release", "--package", "observer-tests", "--test", "bench", "--", "--ignored", "--nocapture", "--test-threads", "1"])
                .env("OBSERVER_BIN", bin)
                .current_dir(workspace_root());
            status(&mut cmd)
        }
        Task::Fuzz { cases, seed } => fuzz(cases, seed),
        Task::Check => check(),
        Task::Dist { binary, out } => {
            let binary = match binary {
                Some(b) => b,
                None => {
                    setup(true)?;
                    cargo(&["build", "--release", "--package", "observer"])?;
                    target_dir().join("release/observer")
                }
            };
            let out = out.unwrap_or_else(|| target_dir().join("dist"));
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let deb = dist::deb(&workspace_root(), &binary, &out)?;
            eprintln!("xtask dist: {}", deb.display());
            Ok(())
        }
        Task::Demo { duration } => {
            setup(false)?;
            cargo(&["build", "--release", "--package", "observer"])?;
            cargo(&["build", "--release", "--package", "observer-tests", "--bin", "demo"])?;
            let release = target_dir().join("release");
            let mut cmd = Command::new(release.join("demo"));
            cmd.args(["--duration", &duration.to_string()]).env("OBSERVER_BIN", release.join("observer"));
            // In place of xtask: no parent of the demo's that a Ctrl-C ends before the demo has
            // removed what it made.
            let e = std::os::unix::process::CommandExt::exec(&mut cmd);
            Err(e).with_context(|| format!("running {cmd:?}"))
        }
        Task::Test { stress, load, args } => {
            setup(false)?;
            // The end-to-end tests run the daemon as operators do: a release build. (A debug
            // daemon frames HTTP several times slower, and under a busy test machine its payload
            // ring overflows where a release daemon keeps up.)
            cargo(&["build", "--release", "--package", "observer"])?;
            let bin = workspace_root().join("target/release/observer");
            if let Some(runs) = stress {
                return stress::run(runs, load, &bin, &args);
            }
            let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            // Every test binary runs even when one fails: one report of everything that is wrong.
            cmd.args(["test", "--workspace", "--no-fail-fast"]).args(&args).env("OBSERVER_BIN", bin).current_dir(workspace_root());
            status(&mut cmd)
        }
    }
}

/// `cargo xtask check`: formatting and lints. Host clippy runs without the kernel object
/// (`OBSERVER_SKIP_EBPF=1`): it needs neither root nor bpf-linker.
fn check() -> Result<()> {
    ensure_components()?;
    let root = workspace_root();
    cargo(&["fmt", "--all", "--", "--check"]).context("formatting: run `cargo fmt --all` (rustfmt.toml holds the style)")?;
    let kernel = root.join("observer-ebpf/Cargo.toml");
    cargo(&["fmt", "--manifest-path", &kernel.to_string_lossy(), "--", "--check"])
        .context("formatting of the kernel crate: run `cargo fmt --manifest-path observer-ebpf/Cargo.toml`")?;
    let mut clippy = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]).env("OBSERVER_SKIP_EBPF", "1").current_dir(&root);
    status(&mut clippy).context("clippy on the host crates")?;
    // The kernel crate builds only with Debian's rustc-web (its precompiled BPF `core`), which
    // ships no clippy; rustup's clippy has no `core` for bpfel-unknown-none.
    if Path::new("/usr/bin/cargo-clippy").exists() || Path::new("/usr/bin/clippy-driver").exists() {
        let mut kclippy = Command::new("/usr/bin/cargo");
        kclippy
            .args(["clippy", "--manifest-path", &kernel.to_string_lossy(), "--release", "--target", "bpfel-unknown-none", "--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&root);
        status(&mut kclippy).context("clippy on the kernel crate")?;
    } else {
        eprintln!("xtask check: the kernel crate is not linted: the toolchain that builds it (Debian's rustc-web) has no clippy here");
    }
    eprintln!("xtask check: formatted, and clippy is clean");
    Ok(())
}

/// rustfmt and clippy, from rustup where they are missing.
fn ensure_components() -> Result<()> {
    let has =
        |sub: &str| Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([sub, "--version"]).output().is_ok_and(|o| o.status.success());
    if has("fmt") && has("clippy") {
        return Ok(());
    }
    eprintln!("xtask check: adding rustfmt and clippy (rustup component add)");
    status(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
        .context("rustfmt and clippy are needed: `rustup component add rustfmt clippy`")
}

/// `cargo xtask fuzz`: the property tests of `observer/src/http/properties.rs`, the code path
/// the unit suite runs, with `cases` cases shared among them and base seed `seed`.
fn fuzz(cases: u64, seed: Option<u64>) -> Result<()> {
    let seed = seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    eprintln!("xtask fuzz: {cases} cases, seed {seed:#x} (again: cargo xtask fuzz --cases {cases} --seed {seed:#x})");
    let started = std::time::Instant::now();
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The kernel programs are not needed (the framers' code is shared, `observer-common`), so
    // neither root nor bpf-linker is. One test thread: each property uses every CPU itself.
    cmd.args(["test", "--release", "--package", "observer", "--lib", "--", "http::properties::", "--nocapture", "--test-threads", "1"])
        .env("OBSERVER_SKIP_EBPF", "1")
        .env("OBSERVER_FUZZ_CASES", cases.to_string())
        .env("OBSERVER_FUZZ_SEED", format!("{seed:#x}"))
        .current_dir(workspace_root());
    let result = status(&mut cmd);
    let secs = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => eprintln!("xtask fuzz: {cases} cases passed in {secs:.0} s ({:.0} cases/s, build included), seed {seed:#x}", cases as f64 / secs),
        Err(_) => eprintln!("xtask fuzz: a property failed (above: its case's seed and how to run it alone); this run: --cases {cases} --seed {seed:#x}"),
    }
    result
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_path_buf()
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else target/ of the workspace.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn status(cmd: &mut Command) -> Result<()> {
    let s = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !s.success() {
        bail!("{cmd:?} failed: {s}");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    status(&mut cmd)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn setup(build_only: bool) -> Result<()> {
    setup_with(build_only, &[])
}

fn setup_with(build_only: bool, extra: &[&str]) -> Result<()> {
    let mut wanted: Vec<&str> = BUILD_PACKAGES.to_vec();
    if !build_only {
        wanted.extend_from_slice(TEST_PACKAGES);
    }
    wanted.extend_from_slice(extra);
    let apt = Path::new("/usr/bin/apt-get").exists() && Path::new("/usr/bin/dpkg-query").exists();
    let missing: Vec<&str> = if apt { wanted.iter().copied().filter(|p| !dpkg_installed(p)).collect() } else { wanted.clone() };
    let linker_missing = !bpf_linker_ok();
    if missing.is_empty() && !linker_missing {
        eprintln!("xtask setup: everything is installed");
        return Ok(());
    }
    if !apt || !is_root() {
        let mut msg = String::from("missing build/test prerequisites and cannot install them here (needs root on Debian/Ubuntu).\nInstall:\n");
        if !missing.is_empty() {
            msg += &format!(
                "  apt-get install {}   (or your distribution's equivalents; elsewhere: a nightly Rust toolchain with rust-src, LLVM 22)\n",
                missing.join(" ")
            );
        }
        if linker_missing {
            msg +=
                &format!("  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22\n");
        }
        bail!(msg);
    }
    if !missing.is_empty() {
        eprintln!("xtask setup: installing {}", missing.join(" "));
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(Command::new("apt-get").args(["install", "-y", "-q"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if linker_missing {
        eprintln!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
        let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22");
        status(&mut cmd)?;
    }
    Ok(())
}
