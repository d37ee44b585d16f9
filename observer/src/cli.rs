//! The CLI subcommands that talk to a running daemon: `connections`, `top`, `status`, `trace`.
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

/// Columns of the connections table: the first three are text (left-aligned), the rest numbers.
const COLUMNS: [&str; 15] = ["CONNECTION (local remote)", "ROLE", "STATE", "PROTO", "REQ", "4XX", "5XX", "NORESP", "ERR%", "LAST", "RETX", "RST", "IN", "OUT", "AGE"];
const LEFT_ALIGNED: usize = 4;

/// The connections table, one line each, for `connections` and `top`. Each column is as wide as
/// its widest value (or its header), so nothing is cut but at `width`, the terminal's edge.
pub fn render_table(conns: &[Value], window: &str, width: usize) -> String {
    let rows: Vec<[String; 15]> = conns.iter().map(|c| table_row(c, window)).collect();
    let widths: Vec<usize> = (0..COLUMNS.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([COLUMNS[i].chars().count()]).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in std::iter::once(COLUMNS.map(str::to_owned)).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            let sep = if i == 0 { "" } else { " " };
            let _ = if i < LEFT_ALIGNED { write!(line, "{sep}{cell:<w$}") } else { write!(line, "{sep}{cell:>w$}") };
        }
        out.push_str(line.trim_end().chars().take(width.max(40)).collect::<String>().as_str());
        out.push('\n');
    }
    out
}

/// One connection's cells, in the order of [`COLUMNS`].
fn table_row(c: &Value, window: &str) -> [String; 15] {
    let w = match window {
        "60s" => "last_60s",
        "lifetime" => "lifetime",
        _ => "last_10s",
    };
    {
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
        [
            s(c, "connection").to_owned(),
            s(c, "role").to_owned(),
            state,
            // `tls:NAME` with the server name the client asked for.
            match c.get("sni").and_then(Value::as_str) {
                Some(name) => format!("tls:{name}"),
                None => c.get("protocol").and_then(Value::as_str).unwrap_or("-").to_owned(),
            },
            req,
            r4,
            r5,
            nr,
            err,
            last,
            u(c, &["retransmits"]).to_string(),
            resets.to_string(),
            human_bytes(u(c, &["bytes_in"])),
            human_bytes(u(c, &["bytes_out"])),
            human_secs(f(c, &["duration_seconds"])),
        ]
    }
}

/// Options of `observer connections` and `observer top`.
pub struct ListArgs {
    pub sort: String,
    pub limit: usize,
    pub window: String,
    pub filters: Vec<(String, String)>,
}

/// A query value as it may stand in a URL: what the written forms of endpoints and connections
/// hold that a URL cannot carry as is.
fn escape(v: &str) -> String {
    v.replace('%', "%25").replace(' ', "%20").replace('[', "%5B").replace(']', "%5D").replace('&', "%26").replace('#', "%23").replace('+', "%2B")
}

fn list_path(a: &ListArgs) -> String {
    let mut p = format!("/api/v1/connections?sort={}&window={}&limit={}", escape(&a.sort), escape(&a.window), a.limit);
    for (k, v) in &a.filters {
        let _ = write!(p, "&{k}={}", escape(v));
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

/// `observer top`: full screen on a terminal (keys change the sort, q or Ctrl-C quits); plain
/// snapshots when stdout is not a terminal.
pub fn top(client: &Client, mut a: ListArgs, iterations: Option<u64>, zone: Zone) -> Result<()> {
    let mut screen = term::Screen::enter();
    let mut n = 0u64;
    loop {
        let cols = match &screen {
            Some(sc) => {
                let (rows, cols) = sc.size();
                // The header, the column header and the keys line around the rows.
                a.limit = rows.saturating_sub(4).max(1);
                cols
            }
            None => usize::MAX,
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut frame = format!("observer top  {}  sort: {} ({})  {}\n", client.server(), a.sort, a.window, stamp(now, zone, Stamp::DateSeconds));
        match client.json(&list_path(&a)) {
            Ok(v) => {
                let conns = v.get("connections").and_then(Value::as_array).cloned().unwrap_or_default();
                frame.push_str(&render_table(&conns, &a.window, cols));
            }
            Err(e) => {
                let _ = writeln!(frame, "{e:#}");
            }
        }
        match &mut screen {
            Some(sc) => {
                let mut lines: Vec<String> = frame.lines().map(str::to_owned).collect();
                lines.push("keys: e error ratio  r requests  f failed  b bytes in  a age  w window  q quit".into());
                sc.draw(&lines)?;
            }
            None => {
                println!("{frame}");
                std::io::stdout().flush()?;
            }
        }
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        let Some(sc) = &mut screen else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match sc.wait(left) {
                Some(term::Input::Key('q') | term::Input::Interrupt) => return Ok(()),
                Some(term::Input::Key('e')) => a.sort = "error_ratio".into(),
                Some(term::Input::Key('r')) => a.sort = "requests".into(),
                Some(term::Input::Key('f')) => a.sort = "failed".into(),
                Some(term::Input::Key('b')) => a.sort = "bytes_in".into(),
                Some(term::Input::Key('a')) => a.sort = "first_seen".into(),
                Some(term::Input::Key('w')) => a.window = match a.window.as_str() { "10s" => "60s".into(), "60s" => "lifetime".into(), _ => "10s".into() },
                Some(term::Input::Resize) => {}
                Some(term::Input::Key(_)) | None if std::time::Instant::now() < deadline => continue,
                Some(term::Input::Key(_)) | None => {}
            }
            break;
        }
    }
}

/// What `observer trace` follows.
pub enum TraceTarget {
    Connection(String),
    /// A remote address or endpoint, a local port, or both.
    Partial { remote: Option<String>, local_port: Option<u16> },
}

/// How `observer trace` shows what it follows.
pub struct TraceOpts {
    /// Only responses with this status: `502` or `5xx` (the daemon checks it).
    pub status: Option<String>,
    pub json: bool,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub zone: Zone,
}

/// The zone times are printed in (`--utc`, else local).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    Local,
    Utc,
}

/// How much of a time to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// `14:03:07.123456+02:00`: timeline lines, where microseconds tell packets apart.
    Micros,
    /// `2025-06-01 14:03:07+02:00`: `top`'s header.
    DateSeconds,
}

/// A Unix time in `zone`, always with its offset (`Z` for UTC): a time read off a screen or a
/// pasted log is then never an hour off for a reader in another zone.
pub fn stamp(unix: f64, zone: Zone, form: Stamp) -> String {
    let offset = match zone {
        Zone::Utc => None,
        Zone::Local => Some(crate::sys::utc_offset_seconds(unix.floor() as i64)),
    };
    stamp_at(unix, offset, form)
}

/// [`stamp`] with the offset given: `None` is UTC, written `Z`.
fn stamp_at(unix: f64, offset: Option<i32>, form: Stamp) -> String {
    let micros_total = (unix * 1e6).round() as i64 + i64::from(offset.unwrap_or(0)) * 1_000_000;
    let (secs, micros) = (micros_total.div_euclid(1_000_000), micros_total.rem_euclid(1_000_000));
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, sec) = (day_secs / 3600, day_secs / 60 % 60, day_secs % 60);
    let zone = match offset {
        None => "Z".to_owned(),
        Some(o) => format!("{}{:02}:{:02}", if o < 0 { '-' } else { '+' }, o.unsigned_abs() / 3600, o.unsigned_abs() / 60 % 60),
    };
    match form {
        Stamp::Micros => format!("{h:02}:{m:02}:{sec:02}.{micros:06}{zone}"),
        Stamp::DateSeconds => {
            let (y, mo, d) = civil_from_days(days);
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{sec:02}{zone}")
        }
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One timeline line as a person reads it. `client_is_remote`: requests travel in (inbound).
pub fn timeline_line(v: &Value, client_is_remote: Option<bool>, with_connection: bool, zone: Zone) -> String {
    let t = stamp(f(v, &["time"]), zone, Stamp::Micros);
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
        "response" => {
            let mut l = format!("← {}", u(v, &["status"]));
            if let Some(ms) = v.get("latency_ms").and_then(Value::as_f64) {
                let _ = write!(l, " after {ms:.1} ms");
            }
            // A trace by status shows no request lines: the response names the one it answers.
            if let (Some(method), Some(target)) = (v.get("method").and_then(Value::as_str), v.get("target").and_then(Value::as_str)) {
                let _ = write!(l, " for {method} {target}");
            }
            l
        }
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

pub fn trace(client: &Client, target: TraceTarget, o: &TraceOpts) -> Result<()> {
    let TraceOpts { status, json, count, duration, zone } = o;
    let (json, count, zone) = (*json, *count, *zone);
    let mut params: Vec<(&str, String)> = match &target {
        TraceTarget::Connection(c) => vec![("connection", c.clone())],
        TraceTarget::Partial { remote, local_port } => {
            remote.iter().map(|r| ("remote", r.clone())).chain(local_port.map(|p| ("local_port", p.to_string()))).collect()
        }
    };
    params.extend(status.iter().map(|s| ("status", s.clone())));
    let query = params.iter().map(|(k, v)| format!("{k}={}", escape(v))).collect::<Vec<_>>().join("&");
    // The status as the daemon will read it, to show only the matching part of the history;
    // a bad one is the daemon's to refuse, with its message.
    let status_match = status.as_deref().and_then(|s| crate::trace::StatusMatch::parse(s).ok());
    let mut client_is_remote = None;
    // First what the daemon already knows about the connection.
    if let TraceTarget::Connection(c) = &target {
        match client.get(&format!("/api/v1/connections/{}", escape(c))) {
            Ok(r) if r.status == 200 => {
                let v: Value = serde_json::from_str(&r.body)?;
                client_is_remote = Some(s(&v, "role") != "outbound");
                if json {
                    println!("{}", serde_json::json!({"type": "known", "connection": v}));
                } else {
                    print!("{}", render_table(std::slice::from_ref(&v), "lifetime", usize::MAX));
                    for e in v.get("http").and_then(|h| h.get("recent")).and_then(Value::as_array).into_iter().flatten() {
                        if status_match.is_some_and(|m| !m.matches(u(e, &["status"]))) {
                            continue;
                        }
                        let lat = e.get("latency_ms").and_then(Value::as_f64).map_or(String::new(), |ms| format!(" after {ms:.1} ms"));
                        println!("  {} {} {} ← {}{lat}", stamp(f(e, &["time"]), zone, Stamp::Micros), s(e, "method"), s(e, "target"), u(e, &["status"]));
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
    client.stream(&format!("/api/v1/trace?{query}"), deadline, &mut |line| {
        let Ok(v) = serde_json::from_str::<Value>(line) else { return true };
        if s(&v, "type") == "subscribed" {
            return true;
        }
        if s(&v, "type") == "opened" {
            client_is_remote = Some(s(&v, "role") != "outbound");
        }
        let text = if json { line.to_owned() } else { timeline_line(&v, client_is_remote, many, zone) };
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return false;
        }
        n += 1;
        count.is_none_or(|max| n < max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_their_zone() {
        // 2025-03-30 00:59:59.25 UTC.
        let t = 1_743_296_399.25;
        assert_eq!(stamp_at(t, None, Stamp::Micros), "00:59:59.250000Z");
        assert_eq!(stamp_at(t, Some(7200), Stamp::Micros), "02:59:59.250000+02:00");
        assert_eq!(stamp_at(t, Some(-9000), Stamp::DateSeconds), "2025-03-29 22:29:59-02:30");
        assert_eq!(stamp_at(t, None, Stamp::DateSeconds), "2025-03-30 00:59:59Z");
        assert_eq!(stamp_at(951_782_400.0, None, Stamp::DateSeconds), "2000-02-29 00:00:00Z", "a leap day");
        assert_eq!(stamp_at(0.9999996, None, Stamp::Micros), "00:00:01.000000Z", "rounding carries into the seconds");
        assert_eq!(stamp(t, Zone::Utc, Stamp::Micros), "00:59:59.250000Z");
    }

    #[test]
    fn columns_are_as_wide_as_their_values() {
        let conns = [
            serde_json::json!({"connection": "198.18.1.1:80 198.18.1.2:51234", "role": "inbound", "status": "closed", "close_reason": "reset", "bytes_in": 2048}),
            serde_json::json!({"connection": "[2001:db8::1]:443 [2001:db8::2]:40000", "role": "outbound", "status": "open", "state": "established", "retransmits": 1234567}),
        ];
        let table = render_table(&conns, "10s", usize::MAX);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].contains(" closed:reset "), "the state whole:\n{table}");
        assert!(lines[2].contains(" established "), "{table}");
        // Every column starts where its header does.
        let header = lines[0];
        let at = |l: &str, what: &str| l.find(what).unwrap();
        assert_eq!(at(lines[1], "closed:reset"), at(header, "STATE"));
        assert_eq!(at(lines[1], "inbound"), at(header, "ROLE"));
        assert_eq!(at(lines[2], "1234567") + "1234567".len(), at(header, "RETX") + "RETX".len(), "numbers end under their header:\n{table}");
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>()[..4], ["198.18.1.1:80", "198.18.1.2:51234", "inbound", "closed:reset"]);
        // Cut at the terminal's edge, nowhere else.
        assert!(render_table(&conns, "10s", 50).lines().all(|l| l.chars().count() <= 50));
    }

    #[test]
    fn a_response_names_the_request_it_answers_when_the_line_carries_it() {
        let line = |v: Value| timeline_line(&v, Some(true), false, Zone::Utc).split_once(' ').unwrap().1.to_owned();
        assert_eq!(line(serde_json::json!({"type": "response", "time": 0.0, "status": 502, "latency_ms": 31.21})), "← 502 after 31.2 ms");
        assert_eq!(line(serde_json::json!({"type": "response", "time": 0.0, "status": 502, "latency_ms": 31.21, "method": "GET", "target": "/api/orders"})), "← 502 after 31.2 ms for GET /api/orders");
        assert_eq!(line(serde_json::json!({"type": "response", "time": 0.0, "status": 100, "latency_ms": null, "method": "PUT", "target": "/upload"})), "← 100 for PUT /upload");
    }

    #[test]
    fn query_values_are_escaped_for_the_url() {
        assert_eq!(escape("[2001:db8::1]:443 198.18.0.2:1"), "%5B2001:db8::1%5D:443%20198.18.0.2:1");
        assert_eq!(escape("a&b#c+d%"), "a%26b%23c%2Bd%25");
    }
}
