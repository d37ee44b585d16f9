//! Builds the kernel programs (`observer-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR/observer-ebpf.o`, which `src/bpf.rs` embeds.
//!
//! Two toolchain paths, chosen automatically, overridable with `OBSERVER_EBPF_TOOLCHAIN`:
//! - `debian`: Debian's rustc-web (`/usr/bin/rustc`, `/usr/bin/cargo`) with the precompiled BPF
//!   `core` from `libstd-rust-web-dev-bpf`; needs `RUSTC_BOOTSTRAP=1` for aya-ebpf's nightly features.
//! - `nightly`: rustup's nightly with `rust-src`, building `core` with `-Z build-std=core`.
//!
//! `OBSERVER_SKIP_EBPF=1` skips the kernel build (for `cargo check`/`clippy` and docs): the binary
//! then refuses `observer run` with a message saying how it was built.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("observer/ has a parent")?;
    let ebpf_dir = root.join("observer-ebpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("observer-ebpf.o");

    for var in ["OBSERVER_SKIP_EBPF", "OBSERVER_EBPF_TOOLCHAIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for path in ["observer-ebpf/src", "observer-ebpf/Cargo.toml", "observer-ebpf/Cargo.lock", "observer-common/src", "observer-common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    if env::var("OBSERVER_SKIP_EBPF").is_ok_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&object, b"").context("writing the empty eBPF placeholder")?;
        std::fs::write(out_dir.join("observer-ebpf-lite.o"), b"").context("writing the empty eBPF placeholder")?;
        println!("cargo:rustc-cfg=observer_no_ebpf");
        println!("cargo:rustc-check-cfg=cfg(observer_no_ebpf)");
        return Ok(());
    }
    println!("cargo:rustc-check-cfg=cfg(observer_no_ebpf)");

    // The kernel build gets its own target directory beside the host one, so the nested cargo
    // never waits on the lock the outer cargo holds.
    let target_dir = out_dir.ancestors().nth(4).map(|t| t.join("observer-ebpf")).unwrap_or_else(|| root.join("target/observer-ebpf"));

    let toolchain = match env::var("OBSERVER_EBPF_TOOLCHAIN").ok().filter(|v| !v.is_empty()) {
        Some(t) => t,
        None => detect_toolchain().to_owned(),
    };
    if !on_path("bpf-linker") {
        bail!("bpf-linker is not on PATH: run `cargo xtask setup` (or `cargo install bpf-linker`), or build with OBSERVER_SKIP_EBPF=1 for check/clippy only");
    }
    // Two objects: the full one (the kernel HTTP framer), and one without it for kernels whose
    // verifier refuses the framer or lacks bpf_loop (the daemon then frames HTTP itself).
    for (features, object) in [(None, object), (Some("--no-default-features"), out_dir.join("observer-ebpf-lite.o"))] {
        let mut cmd = ebpf_cargo(&toolchain)?;
        cmd.current_dir(&ebpf_dir)
            .arg("--locked")
            .args(features)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", "bpf-linker")
            // BTF for bpftool and the verifier log's line info; v3 for 32-bit jumps and atomics.
            .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3");
        let status = cmd.status().with_context(|| format!("running the {toolchain} toolchain to build observer-ebpf: {cmd:?}"))?;
        if !status.success() {
            bail!("building observer-ebpf with the {toolchain} toolchain failed ({status}); `cargo xtask setup` installs what is missing");
        }
        let built = target_dir.join(TARGET).join("release").join("observer-ebpf");
        std::fs::copy(&built, &object).with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    }
    Ok(())
}

/// `cargo build` of the kernel crate with `toolchain`, nothing of the outer build leaking in.
fn ebpf_cargo(toolchain: &str) -> Result<Command> {
    let mut cmd = match toolchain {
        "debian" => {
            let mut c = Command::new(DEBIAN_CARGO);
            c.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            c.args(["build", "--release", "--target", TARGET]);
            c
        }
        "nightly" => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo", "build", "--release", "--target", TARGET, "-Z", "build-std=core"]);
            c
        }
        other => bail!("OBSERVER_EBPF_TOOLCHAIN={other:?}: expected `debian` or `nightly` (or unset to choose automatically)"),
    };
    for var in
        ["RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "CARGO_BUILD_RUSTFLAGS"]
    {
        cmd.env_remove(var);
    }
    if toolchain == "nightly" {
        cmd.env_remove("RUSTC");
    }
    Ok(cmd)
}

/// Debian's packaged BPF `core` when it is installed, else rustup's nightly.
fn detect_toolchain() -> &'static str {
    if Path::new(DEBIAN_BPF_CORE).is_dir() && Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_CARGO).exists() {
        "debian"
    } else {
        "nightly"
    }
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH").is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
