//! What installs the daemon, checked offline against the binary under test: the systemd unit
//! (`systemd-analyze verify`, and the capabilities it grants are the ones the daemon asks for),
//! the Kubernetes DaemonSet (its capabilities, its arguments are options `observer run --help`
//! knows, its probes ask the listener that serves them) and `cargo xtask dist`'s Debian package
//! (its fields, files and modes). No root, no network, no cluster; nothing is installed.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use observer_tests::{observer::observer_bin, workspace_root};
use serde_json::Value;

/// Is `tool` here? If not: skip (false), except under CI=true, where `cargo xtask setup`
/// installs it and its absence is an error.
fn tool_or_skip(test: &str, tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {tool} is missing: `cargo xtask setup` installs it (Debian package {package})");
    }
    eprintln!("{test}: skipped: {tool} is missing (Debian package {package}; `cargo xtask setup`)");
    false
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The long options of `observer run --help`, and the help itself.
fn run_options() -> (BTreeSet<String>, String) {
    let out = run(Command::new(observer_bin()).args(["run", "--help"]));
    assert!(out.status.success(), "observer run --help: {}", text(&out.stderr));
    let help = text(&out.stdout);
    let options = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned())
        .collect();
    (options, help)
}

/// An option's default as `observer run --help` prints it (`[default: X]`).
fn run_default(help: &str, option: &str) -> String {
    let named = |l: &str| l.trim_start().split([' ', ',', '=']).any(|w| w == option) && l.trim_start().starts_with('-');
    let line = help.lines().position(named).unwrap_or_else(|| panic!("{option} in observer run --help:\n{help}"));
    let rest = help.lines().skip(line).collect::<Vec<_>>().join("\n");
    let start = rest.find("[default: ").unwrap_or_else(|| panic!("no default for {option}:\n{help}")) + "[default: ".len();
    rest[start..start + rest[start..].find(']').unwrap()].to_owned()
}

/// The capabilities `observer run` asks for, from the daemon itself: started without any, it
/// names what it lacks (`lacks CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON:`) and exits.
fn capabilities_the_daemon_asks_for() -> BTreeSet<String> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        // A uid change drops every capability: nobody, as a unit's user starts without ambient ones.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]).arg(observer_bin());
        c
    } else {
        Command::new(observer_bin())
    };
    let out = run(cmd.args(["run", "--ephemeral"]));
    let log = text(&out.stderr);
    assert!(!out.status.success(), "observer run without capabilities must refuse:\n{log}");
    let lacks = log.split("lacks ").nth(1).and_then(|l| l.split(':').next()).unwrap_or_else(|| panic!("the daemon names what it lacks:\n{log}"));
    lacks.split(", ").map(str::to_owned).collect()
}

/// `KEY=VALUE` lines of a unit file, in order (comments and sections left out).
fn unit_entries(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("a unit line without `=`: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_unit_verifies_and_grants_exactly_what_the_daemon_asks_for() {
    const TEST: &str = "the_unit_verifies_and_grants_exactly_what_the_daemon_asks_for";
    let path = workspace_root().join("dist/observer.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let entries = unit_entries(&unit);
    let all = |key: &str| entries.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    let one = |key: &str| match all(key)[..] {
        [v] => v,
        ref vs => panic!("{key}= once in the unit, not {vs:?}"),
    };
    let words = |key: &str| one(key).split_whitespace().map(str::to_owned).collect::<BTreeSet<_>>();

    let asked = capabilities_the_daemon_asks_for();
    assert_eq!(asked, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"].map(String::from).into(), "what the daemon asks for");
    assert_eq!(words("AmbientCapabilities"), asked, "the unit grants what the daemon asks for");
    assert_eq!(words("CapabilityBoundingSet"), asked, "and nothing more");
    assert_eq!((one("User"), one("Group")), ("observer", "observer"), "a static user: the pins outlive the service");
    assert!(all("DynamicUser").is_empty());
    assert_eq!(one("Restart"), "on-failure");
    // Restarts keep counting: nothing in the unit detaches (`observer detach` is the operator's).
    assert!(entries.iter().all(|(k, v)| !(k.starts_with("ExecStop") || v.contains("detach"))), "nothing detaches on stop:\n{unit}");
    assert!(all("ExecStartPre").iter().all(|c| c.trim_start_matches('-').starts_with('+')), "only root's preparation runs before the daemon");

    // The options: ExecStart passes OBSERVER_OPTIONS from the file the package installs.
    assert_eq!(one("ExecStart"), "/usr/bin/observer run $OBSERVER_OPTIONS");
    assert_eq!(one("EnvironmentFile"), "-/etc/default/observer");
    let defaults = std::fs::read_to_string(workspace_root().join("dist/observer.default")).unwrap();
    assert!(defaults.lines().any(|l| l.starts_with("OBSERVER_OPTIONS=")), "dist/observer.default sets OBSERVER_OPTIONS");
    // The state directory is the daemon's default, writable and prepared for its user.
    let (_, help) = run_options();
    let state_dir = run_default(&help, "--state-dir");
    assert_eq!(one("ReadWritePaths"), state_dir, "the unit lets the daemon write its --state-dir");
    assert!(all("ExecStartPre").iter().any(|c| c.contains("-o observer") && c.ends_with(&format!(" {state_dir}"))), "the state directory made the user's");
    assert_eq!(one("ProtectSystem"), "strict");
    assert!(words("RestrictAddressFamilies").contains("AF_NETLINK"), "tc filters on clsact kernels go through netlink");

    if !tool_or_skip(TEST, "systemd-analyze", "systemd") {
        return;
    }
    // verify checks that each command exists: the daemon is not installed here, so a copy of the
    // unit runs the binary under test instead (the only change).
    let dir = TempDir::new(TEST);
    let copy = dir.join("observer.service");
    let bin = observer_bin();
    assert_eq!(unit.matches("/usr/bin/observer ").count(), 1);
    std::fs::write(&copy, unit.replace("/usr/bin/observer ", &format!("{} ", bin.display()))).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", out.status);
    // The sandbox: systemd's own score, shown from 0 (fully confined) to 10 (none), counted in
    // tenths by --threshold; this unit scores 2.1.
    let out = run(Command::new("systemd-analyze").args(["security", "--offline=true", "--threshold=30", "--no-pager"]).arg(&copy));
    assert!(out.status.success(), "systemd-analyze security: exposure above 3\n{}", text(&out.stdout));
}

/// A fresh directory for a test's files, removed on drop (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("obs-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.0.join(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every document of a YAML file, as JSON (PyYAML's safe loader: Debian's python3-yaml).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let out = run(Command::new(python).args(["-c", "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)"]).arg(path));
    assert!(out.status.success(), "reading {}: {}", path.display(), text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The port of `ADDR:PORT`, `[V6]:PORT` or `$(VAR):PORT`.
fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn the_daemonset_grants_what_the_daemon_asks_for_and_probes_what_it_serves() {
    const TEST: &str = "the_daemonset_grants_what_the_daemon_asks_for_and_probes_what_it_serves";
    if !tool_or_skip(TEST, "python3", "python3-yaml") {
        return;
    }
    let docs = yaml_documents(&workspace_root().join("dist/kubernetes/daemonset.yaml"));
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let pod = &ds["spec"]["template"];
    assert_eq!(ds["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"], "the selector selects its pods");
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true, "the node's interfaces, not the pod's");
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // Capabilities: exactly the daemon's, by Kubernetes' names (no CAP_ prefix), on top of none.
    let asked: BTreeSet<String> = capabilities_the_daemon_asks_for().iter().map(|c| c.trim_start_matches("CAP_").to_owned()).collect();
    let sc = &c["securityContext"];
    let added: BTreeSet<String> = sc["capabilities"]["add"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(added, asked, "the capabilities added are what the daemon asks for");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);

    // Arguments: `run` and options `observer run --help` knows.
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(args.first(), Some(&"run"));
    let (options, help) = run_options();
    let mut given = std::collections::BTreeMap::new();
    for arg in &args[1..] {
        let (name, value) = arg.split_once('=').unwrap_or_else(|| panic!("{arg}: write options as --name=value"));
        assert!(options.contains(name), "{name} is not an option of observer run:\n{help}");
        given.insert(name, value);
    }
    let listen = given.get("--listen").map_or_else(|| run_default(&help, "--listen"), |v| v.to_string());
    let metrics = given.get("--metrics-listen").expect("a --metrics-listen for Prometheus");

    // Probes: /healthz and /readyz on the API listener (the metrics listener has no /readyz), on
    // loopback when the API is there (kubelet shares the node's network namespace).
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"].as_u64(), Some(port_of(&listen)), "{probe} asks the --listen port ({listen})");
        if listen.starts_with("127.0.0.1:") {
            assert_eq!(get["host"], "127.0.0.1", "{probe}: the API is on loopback");
        }
    }
    // Prometheus scrapes the metrics listener.
    let notes = &pod["metadata"]["annotations"];
    assert_eq!(notes["prometheus.io/scrape"], "true");
    assert_eq!(notes["prometheus.io/port"].as_str().and_then(|p| p.parse().ok()), Some(port_of(metrics)), "scraped where --metrics-listen serves");
    assert_eq!(notes["prometheus.io/path"], "/metrics");
    if metrics.contains("$(") {
        let var = &metrics[metrics.find("$(").unwrap() + 2..metrics.find(')').unwrap()];
        assert!(c["env"].as_array().unwrap().iter().any(|e| e["name"] == var), "{var} is defined for --metrics-listen");
    }

    // Resources bounded; bpffs (for the pins under --state-dir) and tracefs from the node.
    for key in ["cpu", "memory"] {
        assert!(c["resources"]["limits"][key].is_string(), "a {key} limit");
        assert!(c["resources"]["requests"][key].is_string(), "a {key} request");
    }
    let state_dir = given.get("--state-dir").map_or_else(|| run_default(&help, "--state-dir"), |v| v.to_string());
    let host_path = |mount_path: &str| -> String {
        let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == mount_path).unwrap_or_else(|| panic!("{mount_path} mounted"));
        let volume = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        volume["hostPath"]["path"].as_str().unwrap().to_owned()
    };
    assert!(state_dir.starts_with("/sys/fs/bpf/"), "the state directory on the node's bpffs: {state_dir}");
    assert_eq!(host_path("/sys/fs/bpf"), "/sys/fs/bpf");
    assert_eq!(host_path("/sys/kernel/tracing"), "/sys/kernel/tracing");

    // The image runs the binary: the Containerfile's entry point, on Debian 12.
    let containerfile = std::fs::read_to_string(workspace_root().join("dist/Containerfile")).unwrap();
    let froms: Vec<&str> = containerfile.lines().filter_map(|l| l.strip_prefix("FROM ")).collect();
    assert!(!froms.is_empty() && froms.iter().all(|f| f.starts_with("debian:12")), "Debian 12 stages: {froms:?}");
    assert!(containerfile.lines().any(|l| l == r#"ENTRYPOINT ["/usr/bin/observer"]"#), "the image's entry point is the daemon");
    assert!(c["command"].is_null(), "the DaemonSet runs the image's entry point");
}

/// `tar tv` lines of `dpkg-deb --contents`: (mode, owner, path).
fn deb_contents(deb: &Path) -> Vec<(String, String, String)> {
    let out = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    assert!(out.status.success(), "dpkg-deb --contents: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[1].to_owned(), f[5].trim_start_matches('.').to_owned())
        })
        .collect()
}

#[test]
fn xtask_dist_packages_the_binary_the_unit_and_the_options_file() {
    const TEST: &str = "xtask_dist_packages_the_binary_the_unit_and_the_options_file";
    if !tool_or_skip(TEST, "dpkg-deb", "dpkg") {
        return;
    }
    let out_dir = TempDir::new(TEST);
    let bin = observer_bin();
    // The binary under test, packaged as it is: no second build.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--", "dist", "--binary"])
        .arg(&bin)
        .arg("--out")
        .arg(&out_dir.0)
        .current_dir(workspace_root()));
    assert!(out.status.success(), "cargo xtask dist: {}", text(&out.stderr));
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir.0).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(debs.len(), 1, "one package and nothing else left: {debs:?}");
    let deb = &debs[0];

    let version = text(&run(Command::new(&bin).arg("--version")).stdout).trim().trim_start_matches("observer ").to_owned();
    let arch = text(&run(Command::new("dpkg").arg("--print-architecture")).stdout).trim().to_owned();
    assert_eq!(deb.file_name().unwrap().to_string_lossy(), format!("observer_{version}_{arch}.deb"));
    let field = |name: &str| text(&run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name)).stdout).trim().to_owned();
    assert_eq!(field("Package"), "observer");
    assert_eq!(field("Version"), version, "the binary's own version");
    assert_eq!(field("Architecture"), arch);
    let depends = field("Depends");
    assert!(depends.starts_with("libc6 (>= 2.") && depends.contains("adduser"), "Depends: {depends}");
    assert!(!field("Maintainer").is_empty() && !field("Description").is_empty());
    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(deb)).stdout);
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        assert!(info.lines().any(|l| l.split_whitespace().any(|w| w == script)), "{script} in the control archive:\n{info}");
    }

    let contents = deb_contents(deb);
    for (mode, owner, path) in &contents {
        assert_eq!(owner, "root/root", "{path} is root's");
        let m = mode.as_bytes();
        assert!(m[5] != b'w' && m[8] != b'w' && !mode.contains(['s', 'S']), "{path}: {mode}: writable by group or others, or set-id");
    }
    let mode_of =
        |path: &str| contents.iter().find(|(_, _, p)| p == path).map(|(m, _, _)| m.as_str()).unwrap_or_else(|| panic!("{path} in the package:\n{contents:#?}"));
    assert_eq!(mode_of("/usr/bin/observer"), "-rwxr-xr-x");
    assert_eq!(mode_of("/lib/systemd/system/observer.service"), "-rw-r--r--");
    assert_eq!(mode_of("/etc/default/observer"), "-rw-r--r--");
    // The manual: the main page and one per subcommand, gzipped.
    for page in ["observer.1.gz", "observer-run.1.gz", "observer-trace.1.gz", "observer-top.1.gz"] {
        assert_eq!(mode_of(&format!("/usr/share/man/man1/{page}")), "-rw-r--r--", "{page}");
    }

    // The files are the repository's, and the control files are what dpkg runs.
    let root = out_dir.join("root");
    let ctrl = out_dir.join("control");
    assert!(run(Command::new("dpkg-deb").arg("--extract").arg(deb).arg(&root)).status.success());
    assert!(run(Command::new("dpkg-deb").arg("--control").arg(deb).arg(&ctrl)).status.success());
    assert_eq!(std::fs::read(root.join("usr/bin/observer")).unwrap(), std::fs::read(&bin).unwrap(), "the binary under test");
    for (repo, packaged) in [("dist/observer.service", "lib/systemd/system/observer.service"), ("dist/observer.default", "etc/default/observer")] {
        assert_eq!(std::fs::read(root.join(packaged)).unwrap(), std::fs::read(workspace_root().join(repo)).unwrap(), "{packaged} is {repo}");
    }
    assert_eq!(std::fs::read_to_string(ctrl.join("conffiles")).unwrap(), "/etc/default/observer\n");
    let trace_page = run(Command::new("gzip").arg("-dc").arg(root.join("usr/share/man/man1/observer-trace.1.gz")));
    // roff writes a dash as `\-`.
    assert!(text(&trace_page.stdout).contains(r"\-\-status"), "observer-trace(1) documents trace's options");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(run(Command::new("sh").arg("-n").arg(ctrl.join(script))).status.success(), "{script} is valid sh");
    }
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group") && postinst.contains(" observer"), "postinst creates the system user");
    let prerm = std::fs::read_to_string(ctrl.join("prerm")).unwrap();
    assert!(prerm.contains("observer detach"), "removing the package detaches the programs");
}
