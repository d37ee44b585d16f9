//! What operators use, driven the way they use it: the Prometheus text (parsed, and checked by
//! `promtool`), the CLI as a process (stdout and stderr apart), `observer top` in a real
//! pseudo-terminal (tmux), the NDJSON trace stream, the daemon's kernel maps (bpftool), and a raw
//! keep-alive HTTP client whose connection the test owns (its port, its exact bytes).
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    fs::{self, File},
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{netns::Netns, observer::WAIT, poll, process::Background};

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

// ---------------------------------------------------------------------------------------------
// Prometheus text

/// One sample line of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// The line as received.
    pub line: String,
}

/// A parsed exposition: `# TYPE` per family and every sample line.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    /// Parses the text format; panics, quoting the line, on anything it cannot read.
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition { text: text.to_owned(), ..Default::default() };
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                e.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            e.samples.push(parse_sample(line).unwrap_or_else(|| panic!("cannot parse sample line {line:?}")));
        }
        e
    }

    /// Samples of the metric called exactly `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The family a sample belongs to: its name, or for histogram/summary parts the name without
    /// `_bucket`, `_sum`, `_count`.
    pub fn family_of<'a>(&'a self, sample_name: &'a str) -> &'a str {
        if self.types.contains_key(sample_name) {
            return sample_name;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample_name.strip_suffix(suffix) {
                if self.types.contains_key(base) {
                    return base;
                }
            }
        }
        sample_name
    }

    /// The value of the sample `name` with exactly `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.named(name).find(|s| s.labels == want).map(|s| s.value)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name_end, mut labels) = match line.find('{') {
        Some(open) if open < line.find(' ').unwrap_or(usize::MAX) => (open, BTreeMap::new()),
        _ => (line.find(' ')?, BTreeMap::new()),
    };
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        // name="value" pairs; values may hold escaped quotes, backslashes and newlines.
        let mut chars = inner.char_indices().peekable();
        let mut consumed = None;
        loop {
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    consumed = Some(*i + 1);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        rest = &inner[consumed?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name, labels, value, line: line.to_owned() })
}

/// What `promtool check metrics` said about a text: its exit status and what it printed (lint
/// findings go to stdout or stderr depending on the version).
pub struct PromtoolReport {
    pub status: ExitStatus,
    pub output: String,
}

/// Pipes `text` to `promtool check metrics` on stdin.
pub fn promtool_check_metrics(text: &str) -> PromtoolReport {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool (Debian package `prometheus`, see `cargo xtask setup`): {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let text = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("waiting for promtool");
    writer.join().expect("writer thread").expect("writing to promtool");
    PromtoolReport { status: out.status, output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)) }
}

// ---------------------------------------------------------------------------------------------
// A raw keep-alive HTTP/1.1 client

/// What one exchange on a [`KeepAlive`] connection moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub status: u16,
    /// The status line as received, without CRLF.
    pub status_line: String,
    /// Bytes of the request as written.
    pub request_bytes: u64,
    /// Bytes of the response as read: head and body (chunk framing included).
    pub response_bytes: u64,
}

/// One HTTP/1.1 keep-alive connection opened from inside a namespace, with a socket the test
/// owns: its local port is known before any request, and every byte is counted.
pub struct KeepAlive {
    stream: BufReader<TcpStream>,
    host: SocketAddr,
}

impl KeepAlive {
    pub const TIMEOUT: Duration = Duration::from_secs(20);

    /// Connects from inside `ns` to `server`.
    pub fn open(ns: &Netns, server: SocketAddr) -> io::Result<KeepAlive> {
        Ok(Self::open_many(ns, server, 1)?.pop().expect("one"))
    }

    /// Opens `n` connections from inside `ns` to `server`, all held open.
    pub fn open_many(ns: &Netns, server: SocketAddr, n: usize) -> io::Result<Vec<KeepAlive>> {
        let streams = ns.enter(move || (0..n).map(|_| TcpStream::connect_timeout(&server, Self::TIMEOUT)).collect::<io::Result<Vec<_>>>())??;
        streams
            .into_iter()
            .map(|s| {
                s.set_read_timeout(Some(Self::TIMEOUT))?;
                s.set_write_timeout(Some(Self::TIMEOUT))?;
                s.set_nodelay(true)?;
                Ok(KeepAlive { stream: BufReader::new(s), host: server })
            })
            .collect()
    }

    /// This (the client's) end.
    pub fn local(&self) -> SocketAddr {
        self.stream.get_ref().local_addr().expect("a connected socket has a local address")
    }

    /// Writes `GET path` (HTTP/1.1, keep-alive); returns the bytes written.
    pub fn send(&mut self, path: &str) -> io::Result<u64> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: observer-tests\r\n\r\n", self.host);
        self.stream.get_mut().write_all(req.as_bytes())?;
        Ok(req.len() as u64)
    }

    /// Reads one response (Content-Length or chunked); returns its status line and size.
    pub fn receive(&mut self) -> io::Result<(u16, String, u64)> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut total = 0u64;
        let mut line = String::new();
        let n = self.stream.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        total += n as u64;
        let status_line = line.trim_end().to_owned();
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            total += self.stream.read_line(&mut line)? as u64;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { return Err(bad(format!("bad header {header:?}"))) };
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.trim().parse::<u64>().map_err(|_| bad(format!("bad Content-Length {value:?}")))?),
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        if chunked {
            loop {
                line.clear();
                total += self.stream.read_line(&mut line)? as u64;
                let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                let mut chunk = vec![0; size as usize + 2];
                self.stream.read_exact(&mut chunk)?;
                total += size + 2;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            let mut body = vec![0; n as usize];
            self.stream.read_exact(&mut body)?;
            total += n;
        }
        Ok((status, status_line, total))
    }

    /// One request and its response.
    pub fn get(&mut self, path: &str) -> io::Result<Exchange> {
        let request_bytes = self.send(path)?;
        let (status, status_line, response_bytes) = self.receive()?;
        Ok(Exchange { status, status_line, request_bytes, response_bytes })
    }

    /// Closes the connection (FIN) and waits, up to [`Self::TIMEOUT`], for the server's FIN.
    pub fn close(mut self) {
        let _ = self.stream.get_ref().shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest);
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI as a process

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

// ---------------------------------------------------------------------------------------------
// The NDJSON trace stream, read directly

/// `GET /api/v1/trace?QUERY` held open from inside the gateway namespace; a thread collects the
/// lines. Dropping it closes the connection (the daemon then drops the subscription).
pub struct TraceStream {
    pub status: u16,
    lines: Arc<Mutex<Vec<String>>>,
    socket: TcpStream,
    reader: Option<JoinHandle<()>>,
}

impl TraceStream {
    /// Opens the stream (HTTP/1.0: the body is delimited by the close, no chunked coding) and
    /// reads the status line and headers.
    pub fn open(ns: &Netns, api: SocketAddr, query: &str) -> io::Result<TraceStream> {
        // Bounds on failure only (the daemon answers at once unless the machine is loaded).
        let stream = ns.enter(move || TcpStream::connect_timeout(&api, WAIT))??;
        stream.set_read_timeout(Some(WAIT))?;
        write!(&stream, "GET /api/v1/trace?{query} HTTP/1.0\r\nHost: {api}\r\n\r\n")?;
        let mut r = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                break;
            }
        }
        // From here on the reader blocks until lines come or the socket is shut down.
        stream.set_read_timeout(None)?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut l = String::new();
            while let Ok(n) = r.read_line(&mut l) {
                if n == 0 {
                    break;
                }
                if l.ends_with('\n') {
                    sink.lock().expect("lines lock").push(l.trim_end().to_owned());
                    l.clear();
                }
            }
        });
        Ok(TraceStream { status, lines, socket: stream, reader: Some(reader) })
    }

    /// The lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// The lines received so far, parsed; panics on one that is not JSON.
    pub fn values(&self) -> Vec<Value> {
        self.lines().iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("trace line is not JSON ({e}): {l:?}"))).collect()
    }

    /// Polls until `done` holds for the lines received; panics with them after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut last = Vec::new();
        poll(timeout, Duration::from_millis(20), || {
            last = self.values();
            done(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("waited {timeout:?} for {what}; the stream sent:\n{}", self.lines().join("\n")))
    }

    /// Closes the connection and returns every line received.
    pub fn close(mut self) -> Vec<Value> {
        self.shutdown();
        self.values()
    }

    fn shutdown(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for TraceStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// A pseudo-terminal: tmux

/// A detached tmux session on its own tmux server (`-L` socket unique to the test), so tests
/// never see each other's sessions. The server is killed on drop.
pub struct Tmux {
    pub socket: String,
    pub session: String,
}

impl Tmux {
    /// Starts `command` (run by a shell) in a new `width`x`height` session. The pane stays after
    /// the command exits, so that its exit status can be read.
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        let name = unique("obs-tmux");
        let tmux = Tmux { socket: name.clone(), session: name };
        let (w, h) = (width.to_string(), height.to_string());
        let out = tmux.run(&["new-session", "-d", "-s", &tmux.session, "-x", &w, "-y", &h, command, ";", "set-option", "-w", "-t", &tmux.session, "remain-on-exit", "on"]);
        if !out.0 {
            panic!("tmux new-session failed: {}", out.1);
        }
        tmux
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("tmux")
            .args(["-f", "/dev/null", "-L", &self.socket])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux (Debian package `tmux`, see `cargo xtask setup`): {e}"));
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// The visible screen, as text.
    pub fn capture(&self) -> String {
        let (ok, text) = self.run(&["capture-pane", "-p", "-t", &self.session]);
        if ok {
            text
        } else {
            format!("(capture-pane failed: {text})")
        }
    }

    /// Polls the screen until `done` holds; panics with the last screen after `timeout`.
    pub fn wait_for_screen(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        poll(timeout, Duration::from_millis(50), || {
            last = self.capture();
            done(&last).then(|| last.clone())
        })
        .unwrap_or_else(|| panic!("waited {timeout:?} for the screen to show {what}; it shows:\n{last}"))
    }

    /// The pane's state as tmux reports it, for messages: dead, exit status, signal, pid, command.
    pub fn pane_state(&self) -> String {
        self.run(&["display-message", "-p", "-t", &self.session, "dead=#{pane_dead} status=#{pane_dead_status} signal=#{pane_dead_signal} pid=#{pane_pid} command=#{pane_current_command}"]).1
    }

    /// Types `keys` (literally) into the pane.
    pub fn send_keys(&self, keys: &str) {
        let (ok, text) = self.run(&["send-keys", "-t", &self.session, "-l", keys]);
        assert!(ok, "tmux send-keys: {text}");
    }

    /// Presses one key by its tmux name (`C-c`: Ctrl-C), as a terminal sends it.
    pub fn send_key(&self, key: &str) {
        let (ok, text) = self.run(&["send-keys", "-t", &self.session, key]);
        assert!(ok, "tmux send-keys {key}: {text}");
    }

    /// Resizes the window, as a terminal emulator does when its window is resized: the program in
    /// the pane gets SIGWINCH.
    pub fn resize(&self, width: u16, height: u16) {
        let (ok, text) = self.run(&["resize-window", "-t", &self.session, "-x", &width.to_string(), "-y", &height.to_string()]);
        assert!(ok, "tmux resize-window: {text}");
    }

    /// `Some(Ok(exit status))` once the pane's command has exited, `Some(Err(signal))` if a
    /// signal ended it, `None` while it runs.
    pub fn exit_status(&self) -> Option<Result<i32, String>> {
        let (ok, text) = self.run(&["display-message", "-p", "-t", &self.session, "#{pane_dead}|#{pane_dead_status}|#{pane_dead_signal}"]);
        assert!(ok, "tmux display-message: {text}");
        let f: Vec<&str> = text.trim().split('|').collect();
        match f[..] {
            // The pane is dead when its terminal closes; the status follows once tmux has reaped
            // the process: until then both are empty.
            ["1", "", ""] => None,
            ["1", status, signal] => Some(status.parse().map_err(|_| format!("status {status:?}, signal {signal:?}"))),
            _ => None,
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's kernel maps

/// The pid of `observer run` in `ns` (not the CLI processes that also run there).
pub fn daemon_pid(ns: &Netns) -> u32 {
    let out = Command::new("ip").args(["netns", "pids", ns.name()]).output().expect("ip netns pids");
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"observer")) && args.get(1).is_some_and(|a| *a == b"run")
        })
        .collect();
    assert_eq!(pids.len(), 1, "one `observer run` in {}: {pids:?}", ns.name());
    pids[0]
}

/// The ids of the BPF maps process `pid` holds open, by the name the kernel keeps (truncated to
/// 15 characters). Maps are global objects: each daemon has its own `TRACE_FILTERS`, so a test
/// finds its daemon's through the daemon's file descriptors (`/proc/PID/fdinfo`: `map_id`).
pub fn bpf_maps_of(ns: &Netns, pid: u32) -> BTreeMap<String, u32> {
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap_or_else(|e| panic!("/proc/{pid}/fdinfo: {e}")).flatten() {
        let info = fs::read_to_string(entry.path()).unwrap_or_default();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|v| v.trim().parse::<u32>().ok()) {
            ids.insert(id);
        }
    }
    let mut maps = BTreeMap::new();
    for id in ids {
        let v = bpftool(ns, &["map", "show", "id", &id.to_string()]);
        if let Some(name) = v.get("name").and_then(Value::as_str) {
            maps.insert(name.to_owned(), id);
        }
    }
    maps
}

/// `bpftool -j ARGS` inside `ns`, parsed.
pub fn bpftool(ns: &Netns, args: &[&str]) -> Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = ns.run("bpftool", &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool {args:?}: not JSON ({e}): {out}"))
}

/// The entries of map `id` (`bpftool map dump`): a JSON array.
pub fn bpf_map_dump(ns: &Netns, id: u32) -> Vec<Value> {
    match bpftool(ns, &["map", "dump", "id", &id.to_string()]) {
        Value::Array(a) => a,
        other => panic!("bpftool map dump id {id}: not an array: {other}"),
    }
}

/// A map value as bpftool prints it without BTF (`"value": ["0x02", "0x00", ...]`) or with BTF
/// (`"formatted": {"value": 2}`), read as a little-endian unsigned number.
pub fn bpf_value_u64(entry: &Value) -> u64 {
    if let Some(v) = entry.get("formatted").and_then(|f| f.get("value")).and_then(Value::as_u64) {
        return v;
    }
    if let Some(v) = entry.get("value").and_then(Value::as_u64) {
        return v;
    }
    let bytes = entry.get("value").and_then(Value::as_array).unwrap_or_else(|| panic!("no value in {entry}"));
    bytes
        .iter()
        .rev()
        .map(|b| u64::from_str_radix(b.as_str().expect("a hex byte").trim_start_matches("0x"), 16).expect("hex"))
        .fold(0, |acc, b| (acc << 8) | b)
}

/// The bytes of a map key or value as bpftool prints them without BTF (`["0x02", ...]`).
fn bpf_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a byte array: {v}"))
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().expect("a hex byte").trim_start_matches("0x"), 16).expect("hex"))
        .collect()
}

/// The keys of the daemon's `CONNS` map (id `id`) as `(local, remote)` endpoints, decoded from
/// `observer_common::conn::ConnKey` (`family: u16, local_port: u16, remote_port: u16, _pad: u16,
/// local_addr: [u8; 16], remote_addr: [u8; 16]`, host byte order, IPv4 in the first 4 bytes).
pub fn bpf_conn_keys(ns: &Netns, id: u32) -> Vec<(SocketAddr, SocketAddr)> {
    bpf_map_dump(ns, id)
        .iter()
        .map(|e| {
            let k = bpf_bytes(&e["key"]);
            assert_eq!(k.len(), 40, "a ConnKey is 40 bytes: {e}");
            let u16_at = |i: usize| u16::from_ne_bytes([k[i], k[i + 1]]);
            let ip = |at: usize| -> std::net::IpAddr {
                match u16_at(0) as i32 {
                    libc::AF_INET => std::net::Ipv4Addr::new(k[at], k[at + 1], k[at + 2], k[at + 3]).into(),
                    libc::AF_INET6 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&k[at..at + 16]).expect("16 bytes")).into(),
                    f => panic!("family {f} in {e}"),
                }
            };
            (SocketAddr::new(ip(8), u16_at(2)), SocketAddr::new(ip(24), u16_at(4)))
        })
        .collect()
}
