//! Network namespaces: the three-namespace topology, commands and processes inside a namespace,
//! and removal of what a dead test process left behind.
use std::{
    ffi::OsStr,
    fs::{self, File},
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Once,
    },
    time::Duration,
};

use crate::{
    addr::{self, CLIENT_IF, GW_CLIENT_IF, GW_UPSTREAM_IF, UPSTREAM_IF},
    process::Background,
};

/// Everything this harness creates starts with this, then `<pid>-<n>`.
const PREFIX: &str = "obs-";

/// One network namespace, by name (as in `ip netns list`). Cheap to clone; it does not own the
/// namespace ([`Topology`] does).
#[derive(Clone, Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program args` inside the namespace (`ip netns exec`, which also mounts
    /// a /sys that shows the namespace's interfaces).
    pub fn command<S: AsRef<OsStr>>(&self, program: impl AsRef<OsStr>, args: impl IntoIterator<Item = S>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&self.name).arg(program).args(args);
        cmd
    }

    /// Runs `program args` inside the namespace and returns its output, whatever its exit status.
    /// Panics only if it cannot be started.
    pub fn exec<S: AsRef<OsStr>>(&self, program: &str, args: impl IntoIterator<Item = S>) -> Output {
        self.command(program, args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run `ip netns exec {} {program}`: {e}", self.name))
    }

    /// Runs `program args` inside the namespace and returns its stdout; panics with its stderr if
    /// it fails.
    pub fn run<S: AsRef<OsStr>>(&self, program: &str, args: impl IntoIterator<Item = S>) -> String {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.exec(program, &args);
        if !out.status.success() {
            panic!(
                "`ip netns exec {} {program} {}` failed ({}):\n{}{}",
                self.name,
                args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `program args` in the background inside the namespace, stdout and stderr to `log`.
    /// The process is stopped when the returned handle drops. `name` labels it in messages.
    pub fn spawn<S: AsRef<OsStr>>(&self, name: &str, program: impl AsRef<OsStr>, args: impl IntoIterator<Item = S>, log: &Path) -> Background {
        let program = program.as_ref().to_owned();
        let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning a file handle");
        let mut cmd = self.command(&program, args);
        // Should the test process die without running its `Drop`s (SIGKILL, abort), the kernel
        // kills this child too. `ip netns exec` execs the program in place, so the child is the
        // program itself. The signal follows the death of the spawning *thread*: keep the handle
        // on the thread that made it.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} in {}: {e}", program.to_string_lossy(), self.name));
        Background::new(format!("{name} in {}", self.name), child, log.to_owned())
    }

    /// Runs `f` on a new thread that has joined the namespace (`setns`): sockets it opens live in
    /// the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let file = File::open(Path::new("/run/netns").join(&self.name))?;
        std::thread::spawn(move || {
            // SAFETY: a valid namespace file descriptor; CLONE_NEWNET changes only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .expect("a thread inside a namespace panicked")
    }

    /// TCP segments this namespace has retransmitted so far (`RetransSegs` of its
    /// `/proc/net/snmp`; SYN retransmissions and tail loss probes included).
    pub fn tcp_retransmitted_segments(&self) -> u64 {
        let snmp = self
            .enter(|| fs::read_to_string("/proc/thread-self/net/snmp"))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("reading /proc/net/snmp in {}: {e}", self.name));
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:")).map(|l| l.split_whitespace().collect::<Vec<_>>());
        let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else { panic!("no Tcp: lines in /proc/net/snmp of {}:\n{snmp}", self.name) };
        let i = names.iter().position(|n| *n == "RetransSegs").expect("RetransSegs in /proc/net/snmp");
        values[i].parse().expect("a number")
    }

    /// `GET path` from inside the namespace: returns the status code and the body. HTTP/1.0, one
    /// connection per request; `timeout` bounds connecting and each read.
    pub fn http_get(&self, server: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
        let path = path.to_owned();
        self.enter(move || http_get(server, &path, timeout))?
    }
}

fn http_get(server: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&server, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {server}\r\nUser-Agent: observer-tests\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP response: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

/// Three namespaces `client` ⇄ `gateway` ⇄ `upstream` joined by two veth pairs, and a scratch
/// directory for the servers and daemon of one test. `Drop` removes it all (processes still
/// running in the namespaces are killed), also on panic; the directory is kept, and its path
/// printed, when the test panicked.
///
/// | namespace | interface | addresses |
/// | --- | --- | --- |
/// | client | `eth0` | 198.18.1.2/24, 2001:db8:1::2/64 |
/// | gateway | `gw-c` | 198.18.1.1/24, 2001:db8:1::1/64 |
/// | gateway | `gw-u` | 198.18.2.1/24, 2001:db8:2::1/64 |
/// | upstream | `eth0` | 198.18.2.2/24, 2001:db8:2::2/64 |
pub struct Topology {
    /// `obs-<pid>-<n>`: unique per test and process.
    pub prefix: String,
    pub client: Netns,
    pub gateway: Netns,
    pub upstream: Netns,
    /// Scratch directory for this topology (`$TMPDIR/obs-<pid>-<n>`).
    pub dir: PathBuf,
    /// The namespaces created so far (what `Drop` removes).
    created: Vec<String>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

impl Topology {
    /// Creates the namespaces, links and addresses. `test` is printed with the names, to tell
    /// parallel tests apart in the output.
    pub fn new(test: &str) -> Topology {
        SWEEP.call_once(remove_leftovers);
        let prefix = format!("{PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let ns = |suffix: &str| Netns { name: format!("{prefix}-{suffix}") };
        let dir = std::env::temp_dir().join(&prefix);
        let mut topo = Topology { client: ns("c"), gateway: ns("g"), upstream: ns("u"), dir, prefix, created: Vec::new() };
        let _ = fs::remove_dir_all(&topo.dir);
        fs::create_dir_all(&topo.dir).unwrap_or_else(|e| panic!("creating {}: {e}", topo.dir.display()));
        eprintln!(
            "{test}: topology {} (namespaces {}, {}, {}; files in {})",
            topo.prefix,
            topo.client.name,
            topo.gateway.name,
            topo.upstream.name,
            topo.dir.display()
        );

        for n in [topo.client.name.clone(), topo.gateway.name.clone(), topo.upstream.name.clone()] {
            ip(&["netns", "add", &n]);
            topo.created.push(n);
        }
        let (c, g, u) = (&topo.client.name, &topo.gateway.name, &topo.upstream.name);
        // Created from inside the gateway namespace with the peer placed directly in its own: no
        // name ever exists in the host's namespace.
        ip(&["-n", g, "link", "add", GW_CLIENT_IF, "type", "veth", "peer", "name", CLIENT_IF, "netns", c]);
        ip(&["-n", g, "link", "add", GW_UPSTREAM_IF, "type", "veth", "peer", "name", UPSTREAM_IF, "netns", u]);
        let addresses: [(&str, &str, String, String); 4] = [
            (c, CLIENT_IF, format!("{}/24", addr::CLIENT_V4), format!("{}/64", addr::CLIENT_V6)),
            (g, GW_CLIENT_IF, format!("{}/24", addr::GATEWAY_CLIENT_SIDE_V4), format!("{}/64", addr::GATEWAY_CLIENT_SIDE_V6)),
            (g, GW_UPSTREAM_IF, format!("{}/24", addr::GATEWAY_UPSTREAM_SIDE_V4), format!("{}/64", addr::GATEWAY_UPSTREAM_SIDE_V6)),
            (u, UPSTREAM_IF, format!("{}/24", addr::UPSTREAM_V4), format!("{}/64", addr::UPSTREAM_V6)),
        ];
        for (ns, dev, v4, v6) in &addresses {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev]);
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        for ns in [c, g, u] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        topo
    }

    /// TCP segments retransmitted so far, summed over the three namespaces. While it stays the
    /// same, what crossed the links is exactly what the applications sent, once.
    pub fn tcp_retransmitted_segments(&self) -> u64 {
        [&self.client, &self.gateway, &self.upstream].iter().map(|ns| ns.tcp_retransmitted_segments()).sum()
    }

    /// A path inside this topology's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            remove_netns(ns);
        }
        if std::thread::panicking() {
            eprintln!("{}: test failed; its files stay in {}", self.prefix, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `ip args` in the host's namespace; panics with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run ip (is iproute2 installed?): {e}"));
    if !out.status.success() {
        panic!("`ip {}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
}

/// Kills whatever still runs in namespace `name`, then deletes it. Errors are reported, not fatal.
fn remove_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    match Command::new("ip").args(["netns", "del", name]).stdin(Stdio::null()).output() {
        Ok(out) if !out.status.success() => eprintln!("removing namespace {name}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => eprintln!("removing namespace {name}: cannot run ip: {e}"),
        Ok(_) => {}
    }
}

/// The pid in a name `obs-<pid>-...`, if it has that form.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes namespaces named `obs-<pid>-...` whose process is gone (a test run that was killed
/// before its `Drop`s ran), and such scratch directories once they are a day old (the directories
/// of failed tests are kept for a while to be read).
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).stderr(Stdio::null()).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `ip netns list` prints `name` or `name (id: 3)`.
        let Some(name) = line.split_whitespace().next() else { continue };
        if owner_pid(name).is_some_and(|pid| !process_alive(pid)) {
            eprintln!("removing namespace {name}, left behind by a test process that is gone");
            remove_netns(name);
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > Duration::from_secs(24 * 3600));
            if old && owner_pid(&name).is_some_and(|pid| !process_alive(pid)) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}
