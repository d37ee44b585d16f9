//! `cargo xtask dist`: the Debian package of the daemon, staged from a built binary and the files
//! in `dist/` and built with `dpkg-deb` (no debhelper: a binary, a unit, a conffile and three
//! maintainer scripts need nothing more). docs/install.md says what it installs and why.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

/// What the package installs: (file in the repository, path in the package, mode).
const FILES: &[(&str, &str, u32)] = &[
    ("dist/observer.service", "lib/systemd/system/observer.service", 0o644),
    ("dist/observer.default", "etc/default/observer", 0o644),
    ("README.md", "usr/share/doc/observer/README.md", 0o644),
    ("docs/install.md", "usr/share/doc/observer/install.md", 0o644),
];
/// Maintainer scripts, from `dist/debian/`.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];
/// Files an upgrade must not overwrite once an operator has edited them.
const CONFFILES: &[&str] = &["/etc/default/observer"];

/// Stages `binary` with the files of `root`/dist and builds `out/observer_VERSION_ARCH.deb`;
/// returns its path. The version is the binary's own (`observer --version`).
pub fn deb(root: &Path, binary: &Path, out: &Path) -> Result<PathBuf> {
    let version = binary_version(binary)?;
    let arch = command_output(Command::new("dpkg").arg("--print-architecture"))?;
    let name = format!("observer_{version}_{arch}");
    let stage = out.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing the old staging tree {}", stage.display()))?;
    }
    install(binary, &stage.join("usr/bin/observer"), 0o755)?;
    man_pages(binary, &stage.join("usr/share/man/man1"))?;
    for (from, to, mode) in FILES {
        install(&root.join(from), &stage.join(to), *mode)?;
    }
    let copyright =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: observer\n\nFiles: *\nLicense: MIT or Apache-2.0\n";
    write(&stage.join("usr/share/doc/observer/copyright"), copyright, 0o644)?;
    for script in SCRIPTS {
        install(&root.join("dist/debian").join(script), &stage.join("DEBIAN").join(script), 0o755)?;
    }
    write(&stage.join("DEBIAN/conffiles"), &CONFFILES.iter().map(|c| format!("{c}\n")).collect::<String>(), 0o644)?;
    let control = control(&version, &arch, &glibc_needed(binary)?, installed_kib(&stage)?);
    // Whatever this user's umask: dpkg-deb wants DEBIAN/ at 0755, and so do the directories it installs.
    directories_0755(&stage)?;
    write(&stage.join("DEBIAN/control"), &control, 0o644)?;

    let deb = out.join(format!("{name}.deb"));
    // --root-owner-group: every file root's in the package, without fakeroot or root here.
    crate::status(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&stage).arg(&deb))?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing the staging tree {}", stage.display()))?;
    Ok(deb)
}

/// The manual pages (observer.1 and one per subcommand), written by the binary from its own
/// command-line definition, compressed as Debian policy wants (`gzip -9n`: no name or time in
/// the header, so the package is reproducible).
fn man_pages(binary: &Path, dir: &Path) -> Result<()> {
    crate::status(Command::new(binary).arg("man").arg("--dir").arg(dir))?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let page = entry?.path();
        crate::status(Command::new("gzip").args(["-9n"]).arg(&page))?;
        let gz = page.with_extension("1.gz");
        fs::set_permissions(&gz, fs::Permissions::from_mode(0o644)).with_context(|| format!("chmod {}", gz.display()))?;
    }
    Ok(())
}

fn control(version: &str, arch: &str, glibc: &str, installed_kib: u64) -> String {
    // Debian's tools take the maintainer from these; a build elsewhere names the project.
    let maintainer = match (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        (Ok(name), Ok(email)) => format!("{name} <{email}>"),
        _ => "observer developers <observer@localhost>".to_owned(),
    };
    format!(
        "Package: observer
Version: {version}
Architecture: {arch}
Maintainer: {maintainer}
Installed-Size: {installed_kib}
Depends: libc6 (>= {glibc}), libgcc-s1, adduser
Section: net
Priority: optional
Description: eBPF edge traffic observer for Linux gateway hosts
 eBPF programs watch every TCP connection on the host's interfaces and keep
 exact per-connection counters in the kernel; a small daemon serves them as
 Prometheus metrics and as a JSON API, and the observer command reads them.
 .
 observer.service runs the daemon as the system user observer with CAP_BPF,
 CAP_NET_ADMIN and CAP_PERFMON; it is installed neither enabled nor started.
"
    )
}

/// `observer X.Y.Z` from `binary --version`: the version the package gets.
fn binary_version(binary: &Path) -> Result<String> {
    let out = command_output(Command::new(binary).arg("--version"))?;
    let version = out.strip_prefix("observer ").with_context(|| format!("{} --version printed {out:?}, not `observer VERSION`", binary.display()))?;
    ensure!(
        version.starts_with(|c: char| c.is_ascii_digit()) && version.chars().all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c)),
        "{version:?} is not a Debian version"
    );
    Ok(version.to_owned())
}

/// The newest glibc symbol version the binary links against (`GLIBC_2.34`): its libc6 dependency.
fn glibc_needed(binary: &Path) -> Result<String> {
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    const TAG: &[u8] = b"GLIBC_2.";
    let mut newest: Option<Vec<u32>> = None;
    for (i, _) in bytes.windows(TAG.len()).enumerate().filter(|(_, w)| *w == TAG) {
        let rest = &bytes[i + "GLIBC_".len()..];
        let text: String = rest.iter().take_while(|b| b.is_ascii_digit() || **b == b'.').map(|&b| b as char).collect();
        let parts: Vec<u32> = text.split('.').map_while(|p| p.parse().ok()).collect();
        if parts.len() >= 2 && newest.as_ref().is_none_or(|n| &parts > n) {
            newest = Some(parts);
        }
    }
    let newest = newest.with_context(|| format!("{} names no GLIBC_2.x symbol version: is it a glibc binary?", binary.display()))?;
    Ok(newest.iter().map(u32::to_string).collect::<Vec<_>>().join("."))
}

/// The staged files' size in KiB, as dpkg counts Installed-Size (each file rounded up).
fn installed_kib(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}

fn directories_0755(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).with_context(|| format!("chmod {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            directories_0755(&entry.path())?;
        }
    }
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().expect("a path in the package has a parent")).with_context(|| format!("creating the directory of {}", to.display()))?;
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", to.display()))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().expect("a path in the package has a parent")).with_context(|| format!("creating the directory of {}", to.display()))?;
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", to.display()))
}

fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
