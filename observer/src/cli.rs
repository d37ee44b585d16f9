//! The CLI subcommands that talk to a running daemon: `connections`, `top`, `status`.
#![forbid(unsafe_code)]
use std::{fmt::Write as _, io::Write, time::Duration};

use anyhow::Result;
use serde_json::Value;

use crate::{client::Client, term};

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_u64).unwrap_or(0)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_f64).unwrap_or(0.0)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut i = 0;
    while x >= 1024.0 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n}B") } else { format!("{x:.1}{}", UNITS[i]) }
}

fn human_secs(x: f64) -> String {
    if x < 60.0 {
        format!("{x:.1}s")
    } else if x < 3600.0 {
        format!("{:.0}m{:02.0}s", (x / 60.0).floor(), x % 60.0)
    } else {
        format!("{:.0}h{:02.0}m", (x / 3600.0).floor(), (x % 3600.0) / 60.0)
    }
}

/// The connections table, one line each, for `connections` and `top`.
pub fn render_table(conns: &[Value], window: &str, width: usize) -> String {
    let w = match window {
        "60s" => "last_60s",
        "lifetime" => "lifetime",
        _ => "last_10s",
    };
    let mut out = String::new();
    let conn_w = conns.iter().map(|c| s(c, "connection").len()).max().unwrap_or(10).clamp(10, 60);
    let _ = writeln!(
        out,
        "{:<conn_w$} {:<8} {:<11} {:>6} {:>5} {:>5} {:>6} {:>6} {:>4} {:>5} {:>4} {:>9} {:>9} {:>8}",
        "CONNECTION (local remote)", "ROLE", "STATE", "REQ", "4XX", "5XX", "NORESP", "ERR%", "LAST", "RETX", "RST", "IN", "OUT", "AGE"
    );
    for c in conns {
        let http = c.get("http");
        let (req, r4, r5, nr, err, last) = match http {
            Some(h) if !h.is_null() => (
                u(h, &[w, "requests"]).to_string(),
                u(h, &[w, "responses_4xx"]).to_string(),
                u(h, &[w, "responses_5xx"]).to_string(),
                u(h, &[w, "no_response"]).to_string(),
                format!("{:.1}", 100.0 * f(h, &[w, "error_ratio"])),
                h.get("last_status").and_then(Value::as_u64).map_or("-".into(), |x| x.to_string()),
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let state = match s(c, "status") {
            "closed" => format!("closed:{}", s(c, "close_reason")),
            "closing" => "closing".to_owned(),
            _ => s(c, "state").to_owned(),
        };
        let resets = u(c, &["resets_sent"]) + u(c, &["resets_received"]) + u(c, &["rst_in"]) + u(c, &["rst_out"]);
        let line = format!(
            "{:<conn_w$} {:<8} {:<11} {:>6} {:>5} {:>5} {:>6} {:>6} {:>4} {:>5} {:>4} {:>9} {:>9} {:>8}",
            s(c, "connection"),
            s(c, "role"),
            state.chars().take(11).collect::<String>(),
            req,
            r4,
            r5,
            nr,
            err,
            last,
            u(c, &["retransmits"]),
            resets,
            human_bytes(u(c, &["bytes_in"])),
            human_bytes(u(c, &["bytes_out"])),
            human_secs(f(c, &["duration_seconds"])),
        );
        out.push_str(&line.chars().take(width.max(40)).collect::<String>());
        out.push('\n');
    }
    out
}

/// Options of `observer connections` and `observer top`.
pub struct ListArgs {
    pub sort: String,
    pub limit: usize,
    pub window: String,
    pub filters: Vec<(String, String)>,
}

fn list_path(a: &ListArgs) -> String {
    let mut p = format!("/api/v1/connections?sort={}&window={}&limit={}", a.sort, a.window, a.limit);
    for (k, v) in &a.filters {
        let _ = write!(p, "&{k}={}", v.replace(' ', "%20"));
    }
    p
}

pub fn connections(client: &Client, a: &ListArgs, json: bool) -> Result<()> {
    let v = client.json(&list_path(a))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let conns = v.get("connections").and_then(Value::as_array).cloned().unwrap_or_default();
    print!("{}", render_table(&conns, &a.window, usize::MAX));
    Ok(())
}

pub fn status(client: &Client, json: bool) -> Result<()> {
    let v = client.json("/api/v1/status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("observer {} on Linux {}, up {}", s(&v, "version"), s(&v, "kernel"), human_secs(f(&v, &["uptime_seconds"])));
    for a in v.get("attachments").and_then(Value::as_array).into_iter().flatten() {
        println!("  tc      {:<12} {:<8} {}", s(a, "interface"), s(a, "direction"), s(a, "mode"));
    }
    for t in v.get("tracepoints").and_then(Value::as_array).into_iter().flatten() {
        let ok = t.get("attached").and_then(Value::as_bool).unwrap_or(false);
        println!("  tracepoint {:<28} {}", s(t, "tracepoint"), if ok { "attached" } else { "MISSING" });
    }
    println!("  state changes followed by: {}", s(&v, "lifecycle_hook"));
    let framing = v.get("config").map(|c| s(c, "http_framing")).unwrap_or_default();
    match v.get("config").and_then(|c| c.get("http_framing_refused")).and_then(Value::as_str) {
        Some(why) => println!("  HTTP framed by: {framing} ({why})"),
        None => println!("  HTTP framed by: {framing}"),
    }
    let k = v.get("kernel_counters").cloned().unwrap_or_default();
    println!(
        "  connections tracked {}  open in/out {}/{}  closed kept {}",
        u(&v, &["table", "kernel_entries"]),
        u(&v, &["table", "open_inbound"]),
        u(&v, &["table", "open_outbound"]),
        u(&v, &["table", "closed_kept"])
    );
    println!(
        "  packets {}  parse failures {}  events lost {}  payload records lost {}",
        u(&k, &["packets_seen"]),
        u(&k, &["parse_failures"]),
        u(&k, &["events_lost"]),
        u(&k, &["payload_lost"])
    );
    Ok(())
}

/// `observer top`: full screen on a terminal (keys change the sort, q quits); plain snapshots
/// when stdout is not a terminal.
pub fn top(client: &Client, mut a: ListArgs, iterations: Option<u64>) -> Result<()> {
    let raw = term::Raw::enter();
    let mut n = 0u64;
    loop {
        let (rows, cols) = term::size();
        if raw.is_some() {
            a.limit = rows.saturating_sub(4).max(1);
        }
        let v = client.json(&list_path(&a));
        let mut screen = String::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let _ = writeln!(screen, "observer top  {}  sort: {} ({})  t={now}", client_name(client), a.sort, a.window);
        match v {
            Ok(v) => {
                let conns = v.get("connections").and_then(Value::as_array).cloned().unwrap_or_default();
                screen.push_str(&render_table(&conns, &a.window, if raw.is_some() { cols } else { usize::MAX }));
            }
            Err(e) => {
                let _ = writeln!(screen, "{e:#}");
            }
        }
        if raw.is_some() {
            let _ = writeln!(screen, "keys: e error ratio  r requests  f failed  b bytes in  a age  w window  q quit");
            print!("\x1b[H\x1b[2J{}", screen.replace('\n', "\r\n"));
        } else {
            println!("{screen}");
        }
        std::io::stdout().flush()?;
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        match &raw {
            Some(r) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(1);
                while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                    match r.key(left.as_millis() as i32) {
                        Some(b'q') | Some(3) => return Ok(()),
                        Some(b'e') => a.sort = "error_ratio".into(),
                        Some(b'r') => a.sort = "requests".into(),
                        Some(b'f') => a.sort = "failed".into(),
                        Some(b'b') => a.sort = "bytes_in".into(),
                        Some(b'a') => a.sort = "first_seen".into(),
                        Some(b'w') => a.window = match a.window.as_str() { "10s" => "60s".into(), "60s" => "lifetime".into(), _ => "10s".into() },
                        Some(_) => continue,
                        None => break,
                    }
                    break;
                }
            }
            None => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn client_name(c: &Client) -> &str {
    c.server()
}

/// What `observer trace` follows.
pub enum TraceTarget {
    Connection(String),
    Remote(String),
    LocalPort(u16),
}

fn clock(unix: f64) -> String {
    let secs = unix.floor() as u64;
    let micros = ((unix - unix.floor()) * 1e6).round() as u64 % 1_000_000;
    format!("{:02}:{:02}:{:02}.{:06}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60, micros)
}

/// One timeline line as a person reads it. `client_is_remote`: requests travel in (inbound).
pub fn timeline_line(v: &Value, client_is_remote: Option<bool>, with_connection: bool) -> String {
    let t = clock(f(v, &["time"]));
    let toward_server = |dir: &str| match (client_is_remote.unwrap_or(true), dir) {
        (true, "in") | (false, "out") => "→",
        _ => "←",
    };
    let who = if with_connection { format!(" [{}]", s(v, "connection")) } else { String::new() };
    let body = match s(v, "type") {
        "packet" => {
            let dir = s(v, "direction");
            let mut l = format!("{} {:<11} seq {} ack {} win {} len {}", toward_server(dir), format!("[{}]", s(v, "flags")), u(v, &["seq"]), u(v, &["ack"]), u(v, &["window"]), u(v, &["len"]));
            if v.get("retransmit").and_then(Value::as_bool) == Some(true) {
                l.push_str(" RETRANSMIT");
            }
            if let Some(h) = v.get("http").and_then(Value::as_str) {
                l.push_str(&format!("  {h:?}"));
            }
            l
        }
        // Requests always travel from the client toward the server.
        "request" => format!("→ {} {}", s(v, "method"), s(v, "target")),
        "response" => match v.get("latency_ms").and_then(Value::as_f64) {
            Some(ms) => format!("← {} after {ms:.1} ms", u(v, &["status"])),
            None => format!("← {}", u(v, &["status"])),
        },
        "no_response" => format!("✗ {} request(s) never answered", u(v, &["requests"])),
        "reset" => {
            // Sent by this host: toward the remote end.
            let sent = s(v, "direction") == "sent";
            let arrow = if sent { toward_server("out") } else { toward_server("in") };
            format!("{arrow} RST ({})", s(v, "direction"))
        }
        "opened" => format!("● opened ({})", s(v, "role")),
        "closed" => format!("● closed (from {})", s(v, "state_before")),
        "framing_lost" => "? HTTP framing lost; resynchronising".to_owned(),
        other => format!("{other} {v}"),
    };
    format!("{t}{who} {body}")
}

pub fn trace(client: &Client, target: TraceTarget, json: bool, count: Option<u64>, duration: Option<Duration>) -> Result<()> {
    let (param, value) = match &target {
        TraceTarget::Connection(c) => ("connection", c.clone()),
        TraceTarget::Remote(r) => ("remote", r.clone()),
        TraceTarget::LocalPort(p) => ("local_port", p.to_string()),
    };
    let escaped = value.replace(' ', "%20").replace('[', "%5B").replace(']', "%5D");
    let mut client_is_remote = None;
    // First what the daemon already knows about the connection.
    if let TraceTarget::Connection(c) = &target {
        match client.get(&format!("/api/v1/connections/{}", c.replace(' ', "%20").replace('[', "%5B").replace(']', "%5D"))) {
            Ok(r) if r.status == 200 => {
                let v: Value = serde_json::from_str(&r.body)?;
                client_is_remote = Some(s(&v, "role") != "outbound");
                if json {
                    println!("{}", serde_json::json!({"type": "known", "connection": v}));
                } else {
                    print!("{}", render_table(std::slice::from_ref(&v), "lifetime", usize::MAX));
                    for e in v.get("http").and_then(|h| h.get("recent")).and_then(Value::as_array).into_iter().flatten() {
                        let lat = e.get("latency_ms").and_then(Value::as_f64).map_or(String::new(), |ms| format!(" after {ms:.1} ms"));
                        println!("  {} {} {} ← {}{lat}", clock(f(e, &["time"])), s(e, "method"), s(e, "target"), u(e, &["status"]));
                    }
                    println!("--- live ---");
                }
            }
            Ok(r) if r.status == 404 => {
                if !json {
                    println!("{c}: not seen yet; waiting for it");
                }
            }
            Ok(r) => {
                let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
                anyhow::bail!("{}", v.get("error").and_then(Value::as_str).unwrap_or(&r.body));
            }
            Err(e) => return Err(e),
        }
    }
    let deadline = duration.map(|d| std::time::Instant::now() + d);
    let mut n = 0u64;
    let many = !matches!(target, TraceTarget::Connection(_));
    let mut out = std::io::stdout().lock();
    client.stream(&format!("/api/v1/trace?{param}={escaped}"), deadline, &mut |line| {
        let Ok(v) = serde_json::from_str::<Value>(line) else { return true };
        if s(&v, "type") == "subscribed" {
            return true;
        }
        if s(&v, "type") == "opened" {
            client_is_remote = Some(s(&v, "role") != "outbound");
        }
        let text = if json { line.to_owned() } else { timeline_line(&v, client_is_remote, many) };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return false;
        }
        n += 1;
        count.is_none_or(|max| n < max)
    })
}
