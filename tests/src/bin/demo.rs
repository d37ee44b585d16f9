//! `cargo xtask demo`: one bad connection among many good ones, found by `observer top` and
//! followed by `observer trace`, on a gateway built in network namespaces.
//!
//! The gateway runs nginx from Debian as a reverse proxy: `/api/orders` goes to an upstream port
//! where nothing listens, so nginx answers it with 502, everything else to a healthy upstream.
//! Healthy clients keep several keep-alive connections busy with 200s; one client connection also
//! asks for `/api/orders` once or twice every ten seconds. The daemon runs on the gateway with
//! `--ephemeral`: it pins nothing and detaches on exit.
//!
//! Everything (namespaces, nginx, the daemon, the CLI) goes when the demo ends: at the end, on
//! Ctrl-C (SIGINT, SIGTERM, SIGHUP) and on failure (the harness removes on `Drop`, which a panic
//! runs too). Addresses: 198.18.0.0/15, inside the demo's own namespaces only.
//!
//! `--duration SECS` (default 45): how long the traffic runs, the first snapshot and the trace
//! included. The lines `bad connection: ...`, `502s served on it: N` and the commands (`$ ...`)
//! are printed in a fixed form: the end-to-end test reads them.
use std::{
    io::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use observer_tests::{
    addr::{self, http_base, proxy_v4},
    observer::{observer_bin, WAIT},
    operator::{CliProcess, KeepAlive},
    poll, Nginx, Observer, Topology,
};

/// Set by SIGINT, SIGTERM or SIGHUP: the demo stops at its next wait and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Healthy client connections, each asking for a page every [`HEALTHY_PAUSE`].
const HEALTHY_CONNECTIONS: usize = 6;
const HEALTHY_PAUSE: Duration = Duration::from_millis(150);
/// The bad connection's own healthy requests between its 502s.
const BAD_PAUSE: Duration = Duration::from_secs(1);
/// How often the bad connection draws its 502s.
const BURST_EVERY: Duration = Duration::from_secs(10);
/// How long the trace keeps following the connection after it showed a 502.
const TRACE_AFTER_502: Duration = Duration::from_secs(3);
/// The route whose upstream is down, and the port it points at (nothing listens there).
const BROKEN_ROUTE: &str = "/api/orders";
const BROKEN_UPSTREAM_PORT: u16 = 81;

/// The demo's failure: what went wrong, for the operator.
#[derive(Debug)]
enum DemoError {
    Interrupted,
    Usage(String),
    NotRoot,
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Interrupted => write!(f, "interrupted; everything the demo started is removed"),
            DemoError::Usage(why) => write!(f, "{why}\nusage: demo [--duration SECS]"),
            DemoError::NotRoot => write!(f, "the demo needs root (network namespaces, eBPF): run `sudo cargo xtask demo`"),
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn parse_duration() -> Result<Duration, DemoError> {
    let mut args = std::env::args().skip(1);
    let mut secs = 45;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                let v = args.next().ok_or_else(|| DemoError::Usage("--duration needs a number of seconds".into()))?;
                secs = v.parse().map_err(|_| DemoError::Usage(format!("--duration {v}: not a number of seconds")))?;
            }
            other => return Err(DemoError::Usage(format!("unknown argument {other}"))),
        }
    }
    Ok(Duration::from_secs(secs))
}

fn run() -> Result<(), DemoError> {
    let duration = parse_duration()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DemoError::NotRoot);
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
    let bin = observer_bin();

    say("Building a gateway in three network namespaces (client ⇄ gateway ⇄ upstream, 198.18.0.0/15)...");
    let topo = Topology::new("demo");
    println!("namespaces: {} {} {}", topo.client.name(), topo.gateway.name(), topo.upstream.name());
    let upstream = Nginx::upstream(&topo);
    let locations = format!(
        "        location {BROKEN_ROUTE} {{ proxy_pass {}:{BROKEN_UPSTREAM_PORT}; }}\n        location / {{ proxy_pass {}:80; }}\n",
        http_base(addr::UPSTREAM_V4.into()),
        http_base(addr::UPSTREAM_V4.into())
    );
    let listen = vec![proxy_v4()];
    let proxy = Nginx::start(&topo.gateway, "proxy", topo.path("proxy"), listen, &locations);
    say(&format!(
        "nginx on the gateway ({}) proxies to the upstream ({}:80); its route {BROKEN_ROUTE} points at {}:{BROKEN_UPSTREAM_PORT}, where nothing listens: nginx answers 502 there.",
        proxy_v4(),
        addr::UPSTREAM_V4,
        addr::UPSTREAM_V4
    ));
    let observer = Observer::start_with(&topo, &[addr::GW_CLIENT_IF, addr::GW_UPSTREAM_IF], &["--ephemeral"]);
    say("The observer daemon runs on the gateway: `observer run --interface gw-c --interface gw-u --ephemeral`.");
    println!("observer daemon pid: {}", observer.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let healthy = KeepAlive::open_many(&topo.client, proxy_v4(), HEALTHY_CONNECTIONS).expect("opening the healthy connections");
    let mut clients: Vec<thread::JoinHandle<()>> = healthy
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let stop = stop.clone();
            thread::spawn(move || keep_asking(conn, if i % 2 == 0 { "/ok" } else { "/size/1000" }, HEALTHY_PAUSE, &stop))
        })
        .collect();
    let bad = KeepAlive::open(&topo.client, proxy_v4()).expect("opening the bad connection");
    let bad_local = bad.local();
    let bad_name = format!("{} {bad_local}", proxy_v4());
    let bad = Arc::new(Mutex::new(bad));
    clients.push({
        let (bad, stop) = (bad.clone(), stop.clone());
        thread::spawn(move || loop {
            if stop.load(Ordering::SeqCst) || bad.lock().expect("the bad connection").get("/ok").is_err() {
                return;
            }
            thread::sleep(BAD_PAUSE);
        })
    });
    say(&format!("{HEALTHY_CONNECTIONS} healthy keep-alive connections from the client ask for /ok and /size/1000; one more also asks for {BROKEN_ROUTE} once or twice every ten seconds."));
    println!("bad connection: {bad_name}");

    let started = Instant::now();
    let mut served = 0u64;
    let mut bursts = 0u64;
    let result = (|| {
        served += burst(&bad, &mut bursts);
        wait_counted(&observer, bad_local, served)?;
        say("Which connection is failing? `observer top`, piped, prints one snapshot (sorted by error ratio; --window lifetime counts since the connection opened):");
        show_top(&topo, &bin, &proxy, bad_local, served);

        say(&format!("Follow that connection live: `observer trace` prints what is known about it, then each request and response as it happens (the next {BROKEN_ROUTE} is sent while it watches)."));
        let trace_args = ["trace".to_owned(), proxy_v4().to_string(), bad_local.to_string()];
        println!("$ observer {}", trace_args.join(" "));
        let mut trace = CliProcess::spawn(&topo.gateway, "trace", &bin, &trace_args, &topo.dir);
        let mut shown = 0;
        wait_until(&mut || {
            shown = echo_new_lines(&trace, shown);
            trace.stdout().contains("--- live ---").then_some(())
        })?;
        wait_until(&mut || (observer.status()["traces_active"].as_u64() == Some(1)).then_some(()))?;
        served += burst(&bad, &mut bursts);
        wait_until(&mut || {
            shown = echo_new_lines(&trace, shown);
            trace.lines().iter().any(|l| l.contains("← 502")).then_some(())
        })?;
        let until = Instant::now() + TRACE_AFTER_502;
        while Instant::now() < until {
            shown = echo_new_lines(&trace, shown);
            sleep(Duration::from_millis(100))?;
        }
        trace.stop();
        echo_new_lines(&trace, shown);

        let mut next = started + BURST_EVERY * bursts as u32;
        while started.elapsed() < duration {
            if Instant::now() >= next {
                served += burst(&bad, &mut bursts);
                next += BURST_EVERY;
            }
            sleep(Duration::from_millis(100))?;
        }
        wait_counted(&observer, bad_local, served)?;
        say(&format!("After {} s of traffic, the same snapshot:", started.elapsed().as_secs()));
        show_top(&topo, &bin, &proxy, bad_local, served);
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    result?;

    say(&format!(
        "What you saw: among {} client connections, `observer top` put {bad_name} first: every one of its 502s (5XX, {served} = nginx's access log) and its error ratio (ERR%), counted in the kernel as the bytes crossed the gateway. \
         `observer trace` then followed it alone, filtered in the kernel: its 200s for /ok, and `→ GET {BROKEN_ROUTE}` answered `← 502` (nginx's error log says why: connection refused by {}:{BROKEN_UPSTREAM_PORT}).",
        HEALTHY_CONNECTIONS + 1,
        addr::UPSTREAM_V4
    ));
    let prefix = topo.prefix.clone();
    drop((observer, proxy, upstream, topo));
    say(&format!("Cleaned up: the daemon detached its programs (--ephemeral), nginx stopped, namespaces {prefix}-* removed."));
    Ok(())
}

fn say(text: &str) {
    println!("\n# {text}");
    let _ = std::io::stdout().flush();
}

/// Asks for `path` on `conn` every `pause` until `stop` (or the connection fails).
fn keep_asking(mut conn: KeepAlive, path: &str, pause: Duration, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = conn.get(path) {
            if !stop.load(Ordering::SeqCst) {
                eprintln!("demo: a healthy connection failed: {e}");
            }
            return;
        }
        thread::sleep(pause);
    }
}

/// The bad connection asks for the broken route once or twice (alternately); returns how many
/// 502s it got.
fn burst(bad: &Mutex<KeepAlive>, bursts: &mut u64) -> u64 {
    let n = if bursts.is_multiple_of(2) { 2 } else { 1 };
    *bursts += 1;
    let mut conn = bad.lock().expect("the bad connection");
    (0..n).filter(|_| conn.get(BROKEN_ROUTE).expect("asking for the broken route").status == 502).count() as u64
}

/// Sleeps `d`, unless interrupted.
fn sleep(d: Duration) -> Result<(), DemoError> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(DemoError::Interrupted);
        }
        thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

/// Polls `probe` until it holds (up to [`WAIT`]: a bound on failure only), or the demo is
/// interrupted.
fn wait_until(probe: &mut dyn FnMut() -> Option<()>) -> Result<(), DemoError> {
    let done = poll(WAIT, Duration::from_millis(50), || {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Some(Err(DemoError::Interrupted));
        }
        probe().map(Ok)
    });
    done.unwrap_or_else(|| panic!("waited {WAIT:?} for the daemon or the trace"))
}

/// Waits until the daemon has counted `served` 5xx responses on the connection of `remote`.
fn wait_counted(observer: &Observer, remote: SocketAddr, served: u64) -> Result<(), DemoError> {
    wait_until(&mut || {
        let snapshot = observer.connections();
        let counted = snapshot.with_remote(remote).iter().filter_map(|c| c.http.as_ref().map(|h| h.lifetime.counts.responses_5xx)).next();
        (counted == Some(served)).then_some(())
    })
}

/// Prints `observer top --iterations 1` and what nginx's access log says of the bad connection.
fn show_top(topo: &Topology, bin: &std::path::Path, proxy: &Nginx, bad: SocketAddr, served: u64) {
    let args = ["top", "--iterations", "1", "--window", "lifetime", "--limit", "8"];
    println!("$ observer {}", args.join(" "));
    print!("{}", topo.gateway.run(&bin.display().to_string(), args));
    let logged =
        proxy.wait_for_log(&format!("{served} 502s"), WAIT, |l| l.entries.iter().filter(|e| e.remote() == bad && e.status == 502).count() as u64 == served);
    let logged = logged.entries.iter().filter(|e| e.remote() == bad && e.status == 502).count();
    println!("502s served on it: {served} (nginx's access log: {logged})");
}

/// Prints the complete lines of `trace` after the first `shown`; returns how many there are.
fn echo_new_lines(trace: &CliProcess, shown: usize) -> usize {
    let lines = trace.lines();
    for l in lines.iter().skip(shown) {
        println!("{l}");
    }
    let _ = std::io::stdout().flush();
    lines.len().max(shown)
}
