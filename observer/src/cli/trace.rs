//! `observer trace`: what the daemon knows of a connection, then its timeline live, one line per
//! [`TimelineEvent`], as JSON or as a person reads it.
#![forbid(unsafe_code)]
use std::{fmt::Write as _, io::Write, time::Duration};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::{escape, render_table, stamp, Stamp, Zone};
use crate::{
    client::Client,
    model::{name_of, Connection, PacketDirection, ResetDirection, Role, TimelineEvent},
};

/// What `observer trace` follows.
pub enum TraceTarget {
    Connection(String),
    /// A remote address or endpoint, a local port, or both.
    Partial {
        remote: Option<String>,
        local_port: Option<u16>,
    },
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

/// One timeline line as a person reads it. `client_is_remote`: requests travel in (inbound).
pub fn timeline_line(e: &TimelineEvent, client_is_remote: Option<bool>, with_connection: bool, zone: Zone) -> String {
    let toward_server = |dir: PacketDirection| match (client_is_remote.unwrap_or(true), dir) {
        (true, PacketDirection::In) | (false, PacketDirection::Out) => "→",
        _ => "←",
    };
    let body = match e {
        TimelineEvent::Packet { direction, flags, seq, ack, window, len, retransmit, http, .. } => {
            let mut l = format!("{} {:<11} seq {seq} ack {ack} win {window} len {len}", toward_server(*direction), format!("[{flags}]"));
            if *retransmit {
                l.push_str(" RETRANSMIT");
            }
            if let Some(h) = http {
                l.push_str(&format!("  {h:?}"));
            }
            l
        }
        // Requests always travel from the client toward the server.
        TimelineEvent::Request { method, target, .. } => format!("→ {method} {target}"),
        TimelineEvent::Response { status, latency_ms, method, target, .. } => {
            let mut l = format!("← {status}");
            if let Some(ms) = latency_ms {
                let _ = write!(l, " after {ms:.1} ms");
            }
            // A trace by status shows no request lines: the response names the one it answers.
            if let (Some(method), Some(target)) = (method, target) {
                let _ = write!(l, " for {method} {target}");
            }
            l
        }
        TimelineEvent::NoResponse { requests, .. } => format!("✗ {requests} request(s) never answered"),
        TimelineEvent::Reset { direction, .. } => {
            // Sent by this host: toward the remote end.
            let arrow = match direction {
                ResetDirection::Sent => toward_server(PacketDirection::Out),
                ResetDirection::Received => toward_server(PacketDirection::In),
            };
            format!("{arrow} RST ({})", name_of(direction))
        }
        TimelineEvent::Opened { role, .. } => format!("● opened ({})", name_of(role)),
        TimelineEvent::Closed { state_before, .. } => format!("● closed (from {})", name_of(state_before)),
        TimelineEvent::FramingLost { .. } => "? HTTP framing lost; resynchronising".to_owned(),
        // Shown whole.
        TimelineEvent::NotHttp { .. } | TimelineEvent::Subscribed { .. } => {
            return raw_line(&crate::model::written(e).unwrap_or_default(), with_connection, zone)
        }
    };
    format!("{}{} {body}", stamp(e.time().unwrap_or(0.0), zone, Stamp::Micros), who(e.connection(), with_connection))
}

/// A line shown whole after its time and type: one this CLI has no words for (a newer daemon's).
fn raw_line(v: &Value, with_connection: bool, zone: Zone) -> String {
    let time = v.get("time").and_then(Value::as_f64).unwrap_or(0.0);
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("-");
    format!("{}{} {kind} {v}", stamp(time, zone, Stamp::Micros), who(v.get("connection").and_then(Value::as_str), with_connection))
}

/// ` [CONNECTION]` when a trace follows more than one.
fn who(connection: Option<&str>, with_connection: bool) -> String {
    if with_connection {
        format!(" [{}]", connection.unwrap_or("-"))
    } else {
        String::new()
    }
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
                let conn = Connection::deserialize(&v)
                    .with_context(|| format!("the daemon's answer about {c} is not what this observer expects: is it another version?"))?;
                client_is_remote = Some(conn.role != Role::Outbound);
                if json {
                    // The daemon's answer as it wrote it.
                    println!("{}", serde_json::json!({"type": "known", "connection": v}));
                } else {
                    print!("{}", render_table(std::slice::from_ref(&conn), "lifetime", usize::MAX));
                    for e in conn.http.iter().flat_map(|h| &h.recent) {
                        if status_match.is_some_and(|m| !m.matches(u64::from(e.status))) {
                            continue;
                        }
                        let lat = e.latency_ms.map_or(String::new(), |ms| format!(" after {ms:.1} ms"));
                        let (method, target) = (e.method.as_deref().unwrap_or("-"), e.target.as_deref().unwrap_or("-"));
                        println!("  {} {method} {target} ← {}{lat}", stamp(e.time, zone, Stamp::Micros), e.status);
                    }
                    println!("--- live ---");
                }
            }
            Ok(r) if r.status == 404 => {
                if !json {
                    println!("{c}: not seen yet; waiting for it");
                }
            }
            Ok(r) => anyhow::bail!("{}", crate::client::error_message(&r.body)),
            Err(e) => return Err(e),
        }
    }
    let deadline = duration.map(|d| std::time::Instant::now() + d);
    let mut n = 0u64;
    let many = !matches!(target, TraceTarget::Connection(_));
    let mut out = std::io::stdout().lock();
    client.stream(&format!("/api/v1/trace?{query}"), deadline, &mut |line| {
        let text = match serde_json::from_str::<TimelineEvent>(line) {
            Ok(TimelineEvent::Subscribed { .. }) => return true,
            Ok(e) => {
                if let TimelineEvent::Opened { role, .. } = e {
                    client_is_remote = Some(role != Role::Outbound);
                }
                if json {
                    line.to_owned()
                } else {
                    timeline_line(&e, client_is_remote, many, zone)
                }
            }
            // A line this CLI does not know (from a newer daemon): passed on as it came.
            Err(_) => match serde_json::from_str::<Value>(line) {
                Ok(v) if !json => raw_line(&v, many, zone),
                Ok(_) => line.to_owned(),
                Err(_) => return true,
            },
        };
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
    fn a_response_names_the_request_it_answers_when_the_line_carries_it() {
        let line = |v: &str| timeline_line(&serde_json::from_str(v).unwrap(), Some(true), false, Zone::Utc).split_once(' ').unwrap().1.to_owned();
        let c = r#""connection":"198.18.1.1:80 198.18.1.2:5000""#;
        assert_eq!(line(&format!(r#"{{{c},"type":"response","time":0.0,"status":502,"latency_ms":31.21}}"#)), "← 502 after 31.2 ms");
        assert_eq!(
            line(&format!(r#"{{{c},"type":"response","time":0.0,"status":502,"latency_ms":31.21,"method":"GET","target":"/api/orders"}}"#)),
            "← 502 after 31.2 ms for GET /api/orders"
        );
        assert_eq!(
            line(&format!(r#"{{{c},"type":"response","time":0.0,"status":100,"latency_ms":null,"method":"PUT","target":"/upload"}}"#)),
            "← 100 for PUT /upload"
        );
    }

    #[test]
    fn lines_it_has_no_words_for_are_shown_whole() {
        let not_http = r#"{"connection":"198.18.1.1:80 198.18.1.2:5000","time":0.0,"type":"not_http"}"#;
        assert_eq!(
            timeline_line(&serde_json::from_str(not_http).unwrap(), None, true, Zone::Utc),
            format!("00:00:00.000000Z [198.18.1.1:80 198.18.1.2:5000] not_http {not_http}")
        );
        let newer = r#"{"connection":"198.18.1.1:80 198.18.1.2:5000","time":0.0,"type":"from_a_newer_daemon","x":1}"#;
        assert_eq!(raw_line(&serde_json::from_str(newer).unwrap(), false, Zone::Utc), format!("00:00:00.000000Z from_a_newer_daemon {newer}"));
    }
}
