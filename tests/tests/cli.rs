//! The CLI as an operator meets it: `--server` in every written form and from
//! `OBSERVER_SERVER`, shell completions and the man page, every connections filter of the API,
//! traces that combine a remote with a local port and keep only the responses of one status,
//! `observer top` leaving the terminal as it found it on Ctrl-C or a signal (SIGTERM, SIGHUP,
//! SIGINT from outside) and redrawing for a new size,
//! times printed with their zone, and the daemon's JSON log.
//!
//! Ground truth: the traffic each test sends itself (curl's `--write-out`, the statuses it
//! asked nginx for), the daemon's own API for what the CLI must print, `stty` run in the same
//! terminal after `top` exits.
use std::{
    collections::BTreeSet,
    process::{Command, Output, Stdio},
    time::Duration,
};

use observer_tests::{
    addr::{self, proxy_url as url, proxy_v4},
    curl, inbound,
    observer::{observer_bin, WAIT},
    operator::{conn_set, text, CliProcess, KeepAlive, Tmux},
    poll, root_or_skip, tcp, Lab, Netns, Observer, Topology,
};
use serde_json::Value;

/// `observer ARGS` in the gateway namespace with `env` set, stdout piped.
fn cli_env(ns: &Netns, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = ns.command(observer_bin(), args);
    cmd.env_remove("OBSERVER_SERVER").env_remove("TZ");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("observer {args:?}: {e}"))
}

fn cli(ns: &Netns, args: &[&str]) -> Output {
    cli_env(ns, &[], args)
}

/// `observer ARGS --json` that must succeed, parsed.
fn cli_json(ns: &Netns, args: &[&str]) -> Value {
    let out = cli(ns, &[args, &["--json"]].concat());
    assert!(out.status.success(), "observer {args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("observer {args:?} --json ({e}): {}", text(&out.stdout)))
}

/// Waits until the API lists `n` closed connections with `requests` requests and as many
/// responses between them (lifetime): nothing about them changes after that.
fn wait_settled(obs: &Observer, n: usize, requests: u64) -> Value {
    let mut last = Value::Null;
    poll(WAIT, Duration::from_millis(50), || {
        last = obs.get_json("/api/v1/connections?state=closed&window=lifetime");
        let conns = last["connections"].as_array()?;
        let sum = |key: &str| conns.iter().map(|c| c["http"]["lifetime"][key].as_u64().unwrap_or(0)).sum::<u64>();
        let responses: u64 = ["responses_1xx", "responses_2xx", "responses_3xx", "responses_4xx", "responses_5xx"].iter().map(|k| sum(k)).sum();
        (conns.len() == n && sum("requests") == requests && responses == requests).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("waited {WAIT:?} for {n} closed connections with {requests} requests:\n{last:#}"))
}

#[test]
fn the_server_is_found_by_url_or_environment_and_tls_is_refused_with_the_reason() {
    const TEST: &str = "the_server_is_found_by_url_or_environment_and_tls_is_refused_with_the_reason";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let gw = &lab.topo.gateway;
    let version = format!("observer {}", env!("CARGO_PKG_VERSION"));
    for server in ["127.0.0.1:9470", "http://127.0.0.1:9470", "http://127.0.0.1:9470/", "http://localhost:9470"] {
        let out = cli(gw, &["status", "--server", server]);
        assert!(out.status.success() && text(&out.stdout).starts_with(&version), "--server {server}: {}{}", text(&out.stdout), text(&out.stderr));
    }
    // The environment sets the default; the flag wins over it.
    let out = cli_env(gw, &[("OBSERVER_SERVER", "http://127.0.0.1:1/")], &["status"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no daemon at 127.0.0.1:1"), "{}", text(&out.stderr));
    let out = cli_env(gw, &[("OBSERVER_SERVER", "http://127.0.0.1:1/")], &["status", "--server", "http://127.0.0.1:9470"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The daemon listens on IPv4 loopback only: the IPv6 form is read, and finds nobody there.
    let out = cli(gw, &["status", "--server", "http://[::1]:9470/"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no daemon at [::1]:9470"), "{}", text(&out.stderr));
    // Refused before any connection, saying why.
    for (server, why) in [
        ("https://127.0.0.1:9470", "TLS is not served"),
        ("http://127.0.0.1:9470/api/v1", "without a path"),
        ("127.0.0.1", "no port"),
        ("::1:9470", "http://[V6]:PORT"),
    ] {
        let out = cli(gw, &["status", "--server", server]);
        assert!(!out.status.success(), "--server {server} was accepted");
        assert!(text(&out.stderr).contains(why), "--server {server}: {}", text(&out.stderr));
        let out = cli_env(gw, &[("OBSERVER_SERVER", server)], &["connections"]);
        assert!(!out.status.success() && text(&out.stderr).contains(why), "OBSERVER_SERVER={server}: {}", text(&out.stderr));
    }
}

#[test]
fn completions_and_the_man_page_name_every_subcommand() {
    let run = |args: &[&str]| {
        let out = Command::new(observer_bin()).args(args).env_remove("OBSERVER_SERVER").output().unwrap_or_else(|e| panic!("observer {args:?}: {e}"));
        assert!(out.status.success(), "observer {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let subcommands = ["run", "connections", "top", "trace", "status", "detach", "completions", "man"];
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _observer"), "{bash}");
    for s in subcommands {
        assert!(bash.contains(&format!("observer,{s})")), "bash completion lacks the subcommand {s}");
    }
    assert!(run(&["completions", "zsh"]).starts_with("#compdef observer"));
    let fish = run(&["completions", "fish"]);
    for s in subcommands {
        assert!(fish.contains(&format!("-a \"{s}\"")), "fish completion lacks {s}:\n{fish}");
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH observer 1"), "{man}");
    for s in subcommands {
        assert!(man.contains(&format!("observer\\-{s}(1)")), "the man page lacks {s}:\n{man}");
    }
    // man renders it (where man is installed).
    let rendered =
        Command::new("man").args(["-l", "-"]).env("MANWIDTH", "100").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().and_then(
            |mut c| {
                use std::io::Write as _;
                c.stdin.take().expect("piped").write_all(man.as_bytes())?;
                c.wait_with_output()
            },
        );
    match rendered {
        Ok(out) => {
            let page = text(&out.stdout);
            assert!(out.status.success() && page.contains("NAME") && page.contains("SUBCOMMANDS") && page.contains("trace(1)"), "{page}{}", text(&out.stderr));
        }
        Err(e) => eprintln!("man is not installed ({e}): the page is not rendered"),
    }
    // One page per subcommand: printed by name, or all written into a directory.
    let trace = run(&["man", "trace"]);
    assert!(trace.contains(".TH observer-trace 1") && trace.contains("\\-\\-status") && !trace.contains("\\-\\-state\\-dir"), "{trace}");
    let dir = std::env::temp_dir().join(observer_tests::operator::unique("obs-man"));
    run(&["man", "--dir", &dir.join("man1").display().to_string()]);
    let mut files: Vec<String> = std::fs::read_dir(dir.join("man1")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    let mut expected: Vec<String> = subcommands.iter().map(|s| format!("observer-{s}.1")).chain(["observer.1".to_owned()]).collect();
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(std::fs::read_to_string(dir.join("man1/observer-trace.1")).unwrap(), trace);
    assert_eq!(std::fs::read_to_string(dir.join("man1/observer.1")).unwrap(), man, "`observer man` prints observer.1");
    std::fs::remove_dir_all(&dir).unwrap();
    let out = Command::new(observer_bin()).args(["man", "nonsense"]).output().unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("the pages are of run, connections"), "{}", text(&out.stderr));
}

#[test]
fn every_connections_filter_reaches_the_api() {
    const TEST: &str = "every_connections_filter_reaches_the_api";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let busy = curl(&lab.topo.client, &[url("/ok"), url("/ok"), url("/ok"), url("/ok"), url("/ok")], &[]);
    let quiet = curl(&lab.topo.client, &[url("/ok"), url("/status/404")], &[]);
    // 2 client connections and, one per proxied request, 7 upstream connections.
    let all = conn_set(&wait_settled(&lab.observer, 9, 14));
    let gw = &lab.topo.gateway;
    let inbound_set = BTreeSet::from([inbound(&busy[0]), inbound(&quiet[0])]);
    let outbound_set: BTreeSet<String> = all.difference(&inbound_set).cloned().collect();
    assert_eq!(outbound_set.len(), 7, "{all:?}");

    let list = |args: &[&str]| conn_set(&cli_json(gw, &[&["connections", "--window", "lifetime"], args].concat()));
    assert_eq!(list(&["--local-port", "80"]), inbound_set, "the proxy's port is local on the client side");
    assert_eq!(list(&["--remote-port", "80"]), outbound_set, "the upstream's port is remote");
    assert_eq!(list(&["--port", "80"]), all);
    assert_eq!(list(&["--min-requests", "5"]), BTreeSet::from([inbound(&busy[0])]));
    assert_eq!(list(&["--min-requests", "2"]), inbound_set);
    assert_eq!(list(&["--state", "closed", "--role", "outbound", "--address", &addr::UPSTREAM_V4.to_string()]), outbound_set);
    assert_eq!(list(&["--state", "open"]), BTreeSet::new());
    // Ascending: the fewest requests first, ties in the written order of the connection.
    let fewest = cli_json(gw, &["connections", "--window", "lifetime", "--sort", "requests", "--order", "asc", "--limit", "1"]);
    assert_eq!(conn_set(&fewest), BTreeSet::from([outbound_set.first().unwrap().clone()]));
    let most = cli_json(gw, &["connections", "--window", "lifetime", "--sort", "requests", "--order", "desc", "--limit", "1"]);
    assert_eq!(conn_set(&most), BTreeSet::from([inbound(&busy[0])]));
    // A value the API refuses comes back as its message.
    let out = cli(gw, &["connections", "--state", "sleeping"]);
    assert!(!out.status.success() && text(&out.stderr).contains("established"), "{}", text(&out.stderr));
}

#[test]
fn a_trace_combines_a_remote_with_a_local_port_and_keeps_only_the_responses_of_one_status() {
    const TEST: &str = "a_trace_combines_a_remote_with_a_local_port_and_keeps_only_the_responses_of_one_status";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let gw = &lab.topo.gateway;
    let client = addr::CLIENT_V4.to_string();
    let spawn = |args: &[&str]| CliProcess::spawn(gw, "observer-trace", observer_bin(), args, &lab.topo.dir);
    let mut everything = spawn(&["trace", "--remote", &client, "--local-port", "80", "--json"]);
    let mut errors = spawn(&["trace", "--remote", &client, "--local-port", "80", "--status", "5xx", "--json"]);
    let mut bad_gateway = spawn(&["trace", "--local-port", "80", "--remote", &client, "--status", "502", "--utc"]);
    let mut other_port = spawn(&["trace", "--remote", &client, "--local-port", "8080", "--json"]);
    let active = poll(WAIT, Duration::from_millis(20), || (lab.observer.status()["traces_active"].as_u64() == Some(4)).then_some(()));
    assert!(active.is_some(), "four traces follow: {}", lab.observer.status());

    let t = curl(&lab.topo.client, &[url("/ok"), url("/status/502"), url("/status/404"), url("/status/503")], &[]);
    let name = inbound(&t[0]);
    let statuses = |lines: &[Value]| lines.iter().filter(|l| l["type"] == "response").map(|l| l["status"].as_u64().unwrap()).collect::<Vec<_>>();
    // The unfiltered trace of the same connections sees the whole exchange and the close.
    let all = everything.wait_for_json("every response and the close", WAIT, |l| statuses(l).len() == 4 && l.iter().any(|l| l["type"] == "closed"));
    assert_eq!(statuses(&all), [200, 502, 404, 503], "{all:#?}");
    let five = errors.wait_for_json("the two 5xx responses", WAIT, |l| l.len() >= 2);
    assert_eq!(statuses(&five), [502, 503], "{five:#?}");
    assert!(five.iter().all(|l| l["type"] == "response" && l["connection"] == name.as_str()), "responses alone, of {name}: {five:#?}");
    // Each names the request it answers, which the filter kept out of the trace.
    let answered: Vec<(&str, &str)> = five.iter().map(|l| (l["method"].as_str().unwrap_or("-"), l["target"].as_str().unwrap_or("-"))).collect();
    assert_eq!(answered, [("GET", "/status/502"), ("GET", "/status/503")], "{five:#?}");
    // The unfiltered trace has the request lines: its responses are as they were.
    assert!(all.iter().filter(|l| l["type"] == "response").all(|l| l.get("method").is_none()), "{all:#?}");
    let human = bad_gateway.wait_for_text(&["← 502 after"], WAIT);
    // The upstream connections carry a 502 too, but their remote is the upstream: not followed.
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 1, "one line, the 502 of {name}:\n{human}");
    let (time, rest) = lines[0].split_once(' ').unwrap();
    assert!(rest.starts_with(&format!("[{name}] ← 502 after ")) && rest.ends_with(" ms for GET /status/502"), "{human}");
    // HH:MM:SS.micros in UTC, as asked.
    assert!(time.len() == 16 && time.ends_with('Z') && time.as_bytes()[2] == b':' && time.as_bytes()[8] == b'.', "{time}");
    // Published in the same call as the lines above: a port-8080 trace would have had them.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(other_port.lines(), Vec::<String>::new(), "nothing on local port 8080");
    // The other lines still arrive after the status-filtered ones: nothing more for the 5xx trace.
    assert_eq!(statuses(&errors.json_lines()), [502, 503]);
    for t in [&mut everything, &mut errors, &mut bad_gateway, &mut other_port] {
        t.stop();
    }
    // The daemon checks what the CLI passes through.
    let out = cli(gw, &["trace", "--local-port", "80", "--status", "6xx", "--count", "1"]);
    assert!(!out.status.success() && text(&out.stderr).contains("a class (5xx)"), "{}", text(&out.stderr));

    // A trace that starts on a connection in use: the first response's latency finds its request.
    let mut conn = KeepAlive::open(&lab.topo.client, proxy_v4()).unwrap();
    assert_eq!(conn.get("/ok").unwrap().status, 200);
    let mut late = spawn(&["trace", "--remote", &client, "--local-port", "80", "--status", "502", "--json"]);
    let active = poll(WAIT, Duration::from_millis(20), || (lab.observer.status()["traces_active"].as_u64() == Some(1)).then_some(()));
    assert!(active.is_some(), "one trace follows: {}", lab.observer.status());
    assert_eq!(conn.get("/status/502").unwrap().status, 502);
    let lines = late.wait_for_json("the 502", WAIT, |l| !l.is_empty());
    assert_eq!(
        (&lines[0]["status"], &lines[0]["method"], &lines[0]["target"]),
        (&Value::from(502), &Value::from("GET"), &Value::from("/status/502")),
        "{lines:#?}"
    );
    late.stop();
    conn.close();
}

#[test]
fn top_restores_the_terminal_on_ctrl_c_redraws_for_a_new_size_and_shows_states_whole() {
    const TEST: &str = "top_restores_the_terminal_on_ctrl_c_redraws_for_a_new_size_and_shows_states_whole";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    // Twelve closed connections (more rows than a small terminal holds), and one the client
    // resets: its state is the longest, `closed:` and the reason.
    let mut seen = Vec::new();
    for _ in 0..12 {
        let mut c = KeepAlive::open(&lab.topo.client, proxy_v4()).unwrap();
        assert_eq!(c.get("/ok").unwrap().status, 200);
        seen.push(format!("{} {}", proxy_v4(), c.local()));
        c.close();
    }
    let reset = lab.topo.client.enter(move || std::net::TcpStream::connect(proxy_v4())).unwrap().unwrap();
    let reset_name = format!("{} {}", proxy_v4(), reset.local_addr().unwrap());
    tcp::abort(reset).unwrap();
    let path = format!("/api/v1/connections/{}", reset_name.replace(' ', "%20"));
    let mut last = Value::Null;
    let view = poll(WAIT, Duration::from_millis(50), || {
        last = lab.observer.get_json(&path);
        (last["status"] == "closed").then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("{reset_name} never closed: {last:#}"));
    let state = format!("closed:{}", view["close_reason"].as_str().unwrap());
    assert!(state.len() > 11, "{state}: longer than the old fixed column");

    let exit_file = lab.topo.path("top.exit");
    let stty_file = lab.topo.path("top.stty");
    // After top: its exit status, then the terminal's settings as the next program finds them.
    let command = format!(
        "stty sane; ip netns exec {} {} top --state closed --sort first_seen --limit 100; echo $? > {}; stty -a > {}",
        lab.topo.gateway.name(),
        observer_bin().display(),
        exit_file.display(),
        stty_file.display()
    );
    let tmux = Tmux::start(&command, 200, 40);
    let rows = |s: &str| {
        s.lines()
            .skip_while(|l| !l.starts_with("CONNECTION (local remote)"))
            .skip(1)
            .take_while(|l| !l.starts_with("keys:"))
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    let screen = tmux.wait_for_screen("the reset connection, newest first", WAIT, |s| s.contains(&reset_name) && rows(s) >= 13);
    let row = screen.lines().find(|l| l.starts_with(&reset_name)).unwrap();
    assert_eq!(row.split_whitespace().nth(3), Some(state.as_str()), "the state whole:\n{screen}");
    let header = screen.lines().find(|l| l.starts_with("CONNECTION (local remote)")).unwrap();
    assert_eq!(row.find(&state), header.find("STATE"), "under its header:\n{screen}");

    // A smaller terminal: as many rows as fit, and the keys line on its last line.
    tmux.resize(120, 10);
    let screen =
        tmux.wait_for_screen("6 rows and the keys line in 10 lines", WAIT, |s| rows(s) == 6 && s.lines().nth(8).is_some_and(|l| l.starts_with("keys:")));
    assert!(screen.lines().all(|l| l.chars().count() <= 120), "{screen}");

    tmux.send_key("C-c");
    let status = poll(WAIT, Duration::from_millis(50), || std::fs::read_to_string(&stty_file).ok().filter(|s| s.contains("isig")));
    let stty = status.unwrap_or_else(|| panic!("no stty after top; pane: {}; screen:\n{}", tmux.pane_state(), tmux.capture()));
    assert_eq!(std::fs::read_to_string(&exit_file).unwrap(), "0\n", "Ctrl-C quits like q");
    let flags: BTreeSet<&str> = stty.split_whitespace().collect();
    for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(flags.contains(flag), "{flag} is back on after top:\n{stty}");
    }
    assert!(!tmux.capture().contains("observer top"), "top left its screen behind:\n{}", tmux.capture());
    drop(seen);
}

/// tmux's `FORMAT` for the pane (`#{pane_tty}`, `#{alternate_on}`, `#{cursor_flag}`).
fn pane(tmux: &Tmux, format: &str) -> String {
    let out = Command::new("tmux").args(["-f", "/dev/null", "-L", &tmux.socket, "display-message", "-p", "-t", &tmux.session, format]).output().expect("tmux");
    text(&out.stdout).trim().to_owned()
}

#[test]
fn top_restores_the_terminal_when_a_signal_ends_it() {
    // No daemon is needed: top draws its screen and says it finds none.
    let dir = std::env::temp_dir().join(observer_tests::operator::unique("obs-top-signals"));
    std::fs::create_dir_all(&dir).unwrap();
    for (signal, number) in [("TERM", 15), ("HUP", 1), ("INT", 2)] {
        let [pid_file, exit_file, stty_file] = ["pid", "exit", "stty"].map(|f| dir.join(format!("top-{signal}.{f}")));
        // `exec`: the pid written is top's. After top: its exit status, then the terminal's
        // settings as the next program finds them, and a live pane to read the cursor of (tmux
        // hides it in a dead one).
        let command = format!(
            "stty sane; sh -c 'echo $$ > {}; exec {} top --server 127.0.0.1:1'; echo $? > {}; stty -a > {}; exec sleep 600",
            pid_file.display(),
            observer_bin().display(),
            exit_file.display(),
            stty_file.display()
        );
        let tmux = Tmux::start(&command, 120, 20);
        tmux.wait_for_screen("top's screen", WAIT, |s| s.contains("observer top") && s.contains("keys:"));
        let raw = Command::new("stty").args(["-a", "-F", &pane(&tmux, "#{pane_tty}")]).output().unwrap();
        let raw = text(&raw.stdout);
        assert!(raw.split_whitespace().any(|f| f == "-icanon") && raw.split_whitespace().any(|f| f == "-isig"), "top's terminal is raw:\n{raw}");
        assert_eq!((pane(&tmux, "#{alternate_on}"), pane(&tmux, "#{cursor_flag}")), ("1".into(), "0".into()), "the alternate screen, no cursor");

        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let kill = Command::new("kill").args([&format!("-{signal}"), pid.trim()]).status().unwrap();
        assert!(kill.success(), "kill -{signal} {pid}");
        let status = poll(WAIT, Duration::from_millis(50), || std::fs::read_to_string(&stty_file).ok().filter(|s| s.contains("isig")));
        let stty = status.unwrap_or_else(|| panic!("no stty after SIG{signal}; pane: {}; screen:\n{}", tmux.pane_state(), tmux.capture()));
        assert_eq!(
            std::fs::read_to_string(&exit_file).unwrap(),
            format!("{}\n", 128 + number),
            "SIG{signal}: the status a shell gives a process the signal ended"
        );
        let flags: BTreeSet<&str> = stty.split_whitespace().collect();
        for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
            assert!(flags.contains(flag), "{flag} is back on after SIG{signal}:\n{stty}");
        }
        // tmux reads what top wrote last on its own time.
        let shown = poll(WAIT, Duration::from_millis(20), || (pane(&tmux, "#{alternate_on} #{cursor_flag}") == "0 1").then_some(()));
        assert!(shown.is_some(), "SIG{signal}: the shell's screen, the cursor shown: {}", pane(&tmux, "#{alternate_on} #{cursor_flag}"));
        assert!(!tmux.capture().contains("observer top"), "top left its screen behind after SIG{signal}:\n{}", tmux.capture());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn times_carry_their_zone() {
    const TEST: &str = "times_carry_their_zone";
    if !root_or_skip(TEST) {
        return;
    }
    let lab = Lab::start(TEST);
    let header = |env: &[(&str, &str)], args: &[&str]| {
        let out = cli_env(&lab.topo.gateway, env, &[&["top", "--iterations", "1"], args].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).lines().next().unwrap_or_default().to_owned()
    };
    // A zone without daylight saving time, so that the offset is known whatever the date.
    let kolkata = header(&[("TZ", "<+0530>-5:30")], &[]);
    assert!(kolkata.ends_with("+05:30"), "{kolkata}");
    let utc = header(&[("TZ", "<+0530>-5:30")], &["--utc"]);
    assert!(utc.ends_with('Z'), "{utc}");
    // The same moment (within a minute of each other), 5 h 30 apart on the clock.
    let minutes = |h: &str| {
        let time = h.rsplit(' ').next().unwrap();
        let hm: Vec<i64> = time[..5].split(':').map(|x| x.parse().unwrap()).collect();
        hm[0] * 60 + hm[1]
    };
    let apart = (minutes(&kolkata) - minutes(&utc)).rem_euclid(24 * 60);
    assert!((329..=331).contains(&apart), "{kolkata} / {utc}");
}

#[test]
fn the_daemon_logs_one_json_object_per_line_when_asked() {
    const TEST: &str = "the_daemon_logs_one_json_object_per_line_when_asked";
    if !root_or_skip(TEST) {
        return;
    }
    let topo = Topology::new(TEST);
    let mut observer = Observer::start_with(&topo, &[addr::GW_CLIENT_IF], &["--log-format", "json", "--ephemeral"]);
    let status = observer.stop();
    assert!(status.is_some_and(|s| s.success()), "{status:?}:\n{}", observer.log());
    let log = observer.log();
    let lines: Vec<Value> =
        log.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"))).collect();
    assert!(lines.len() >= 2, "{log}");
    for l in &lines {
        let keys: BTreeSet<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["time", "level", "target", "message"]), "{l}");
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&l["level"].as_str().unwrap()), "{l}");
        let time = l["time"].as_str().unwrap();
        assert!(time.len() == "2025-06-01T14:03:07.123456Z".len() && time.ends_with('Z') && time.as_bytes()[10] == b'T', "RFC 3339 in UTC: {time}");
        assert!(!l["target"].as_str().unwrap().is_empty(), "{l}");
    }
    assert!(lines.iter().any(|l| l["message"].as_str().unwrap().contains("127.0.0.1:9470")), "the listen address is logged:\n{log}");
}
