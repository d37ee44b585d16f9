//! The CLI subcommands that talk to a running daemon: `connections`, `top`, `status`, `trace`.
#![forbid(unsafe_code)]
use std::{fmt::Write as _, io::Write, time::Duration};

use anyhow::Result;
use observer_common::global::Counter;
use serde_json::Value;

use crate::{
    client::Client,
    model::{name_of, ConnStatus, Connection, ConnectionList, Status},
    term,
};

mod trace;
pub use trace::{timeline_line, trace, TraceOpts, TraceTarget};

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut i = 0;
    while x >= 1024.0 && i < UNITS.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{x:.1}{}", UNITS[i])
    }
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
const COLUMNS: [&str; 15] =
    ["CONNECTION (local remote)", "ROLE", "STATE", "PROTO", "REQ", "4XX", "5XX", "NORESP", "ERR%", "LAST", "RETX", "RST", "IN", "OUT", "AGE"];
const LEFT_ALIGNED: usize = 4;

/// The connections table, one line each, for `connections` and `top`. Each column is as wide as
/// its widest value (or its header), so nothing is cut but at `width`, the terminal's edge.
pub fn render_table(conns: &[Connection], window: &str, width: usize) -> String {
    let rows: Vec<[String; 15]> = conns.iter().map(|c| table_row(c, window)).collect();
    let widths: Vec<usize> =
        (0..COLUMNS.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).chain([COLUMNS[i].chars().count()]).max().unwrap_or(0)).collect();
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
fn table_row(c: &Connection, window: &str) -> [String; 15] {
    let (req, r4, r5, nr, err, last) = match &c.http {
        Some(h) => {
            let w = match window {
                "60s" => &h.last_60s,
                "lifetime" => &h.lifetime,
                _ => &h.last_10s,
            };
            (
                w.counts.requests.to_string(),
                w.counts.responses_4xx.to_string(),
                w.counts.responses_5xx.to_string(),
                w.counts.no_response.to_string(),
                format!("{:.1}", 100.0 * w.error_ratio),
                h.last_status.map_or("-".into(), |x| x.to_string()),
            )
        }
        None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
    };
    let state = match c.status {
        ConnStatus::Closed => format!("closed:{}", c.close_reason.as_ref().map_or("-".into(), name_of)),
        ConnStatus::Closing => "closing".to_owned(),
        ConnStatus::Open => name_of(&c.state),
    };
    let resets = c.resets_sent + c.resets_received + c.rst_in + c.rst_out;
    [
        c.connection.clone(),
        name_of(&c.role),
        state,
        // `tls:NAME` with the server name the client asked for.
        match &c.sni {
            Some(name) => format!("tls:{name}"),
            None => name_of(&c.protocol),
        },
        req,
        r4,
        r5,
        nr,
        err,
        last,
        c.retransmits.to_string(),
        resets.to_string(),
        human_bytes(c.bytes_in),
        human_bytes(c.bytes_out),
        human_secs(c.duration_seconds),
    ]
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
    if json {
        // The daemon's answer as it wrote it, indented.
        let v: Value = client.json(&list_path(a))?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list: ConnectionList = client.json(&list_path(a))?;
    print!("{}", render_table(&list.connections, &a.window, usize::MAX));
    Ok(())
}

pub fn status(client: &Client, json: bool) -> Result<()> {
    if json {
        let v: Value = client.json("/api/v1/status")?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let v: Status = client.json("/api/v1/status")?;
    print!("{}", render_status(&v));
    Ok(())
}

/// `observer status` as a person reads it.
fn render_status(v: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "observer {} on Linux {}, up {}", v.version, v.kernel, human_secs(v.uptime_seconds));
    for a in &v.attachments {
        let _ = writeln!(out, "  tc      {:<12} {:<8} {}", a.interface, a.direction, a.mode);
    }
    for t in &v.tracepoints {
        let _ = writeln!(out, "  tracepoint {:<28} {}", t.tracepoint, if t.attached { "attached" } else { "MISSING" });
    }
    let _ = writeln!(out, "  state changes followed by: {}", v.lifecycle_hook);
    let framing = name_of(&v.config.http_framing);
    let _ = match &v.config.http_framing_refused {
        Some(why) => writeln!(out, "  HTTP framed by: {framing} ({why})"),
        None => writeln!(out, "  HTTP framed by: {framing}"),
    };
    let (t, k) = (&v.table, &v.kernel_counters);
    let _ = writeln!(out, "  connections tracked {}  open in/out {}/{}  closed kept {}", t.kernel_entries, t.open_inbound, t.open_outbound, t.closed_kept);
    let _ = writeln!(
        out,
        "  packets {}  parse failures {}  events lost {}  payload records lost {}",
        k.get(Counter::PacketsSeen),
        k.get(Counter::ParseFailures),
        k.get(Counter::EventsLost),
        k.get(Counter::PayloadLost)
    );
    out
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
        match client.json::<ConnectionList>(&list_path(&a)) {
            Ok(list) => frame.push_str(&render_table(&list.connections, &a.window, cols)),
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
                Some(term::Input::Key('w')) => {
                    a.window = match a.window.as_str() {
                        "10s" => "60s".into(),
                        "60s" => "lifetime".into(),
                        _ => "10s".into(),
                    }
                }
                Some(term::Input::Resize) => {}
                Some(term::Input::Key(_)) | None if std::time::Instant::now() < deadline => continue,
                Some(term::Input::Key(_)) | None => {}
            }
            break;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

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
        let connection = |written: &str| {
            let key = crate::query::parse_connection(written).unwrap();
            Connection::new(&key, &observer_common::conn::ConnStats::default(), false, 0)
        };
        let mut closed = connection("198.18.1.1:80 198.18.1.2:51234");
        (closed.role, closed.status, closed.close_reason, closed.bytes_in) =
            (Role::Inbound, ConnStatus::Closed, Some(crate::model::CloseReason::ResetSent), 2048);
        let mut open = connection("[2001:db8::1]:443 [2001:db8::2]:40000");
        (open.role, open.status, open.state, open.retransmits) = (Role::Outbound, ConnStatus::Open, crate::model::TcpState::Established, 1_234_567);
        let conns = [closed, open];
        let table = render_table(&conns, "10s", usize::MAX);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].contains(" closed:reset_sent "), "the state whole:\n{table}");
        assert!(lines[2].contains(" established "), "{table}");
        // Every column starts where its header does.
        let header = lines[0];
        let at = |l: &str, what: &str| l.find(what).unwrap();
        assert_eq!(at(lines[1], "closed:reset_sent"), at(header, "STATE"));
        assert_eq!(at(lines[1], "inbound"), at(header, "ROLE"));
        assert_eq!(at(lines[2], "1234567") + "1234567".len(), at(header, "RETX") + "RETX".len(), "numbers end under their header:\n{table}");
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>()[..4], ["198.18.1.1:80", "198.18.1.2:51234", "inbound", "closed:reset_sent"]);
        // Cut at the terminal's edge, nowhere else.
        assert!(render_table(&conns, "10s", 50).lines().all(|l| l.chars().count() <= 50));
    }

    #[test]
    fn query_values_are_escaped_for_the_url() {
        assert_eq!(escape("[2001:db8::1]:443 198.18.0.2:1"), "%5B2001:db8::1%5D:443%20198.18.0.2:1");
        assert_eq!(escape("a&b#c+d%"), "a%26b%23c%2Bd%25");
    }
}
