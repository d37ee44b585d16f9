//! HTTP API: Prometheus `/metrics`, JSON under `/api/v1/`, `/healthz`. Malformed requests get a
//! 400 with a message that says what was expected.
#![forbid(unsafe_code)]
use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query as QueryParams, State,
    },
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use observer_common::global::Counter;
use serde_json::json;

use crate::{
    model::{self, TimelineEvent},
    query::{parse_connection, Query},
    state::State as App,
};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/connections/{connection}", get(connection))
        .route("/api/v1/status", get(status))
        .route("/api/v1/trace", get(trace))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route: see /api/v1/connections, /api/v1/connections/{LOCAL REMOTE}, /api/v1/status, /metrics, /healthz".into(),
            )
        })
        .with_state(app)
}

/// Readiness: 200 when everything the daemon attached still observes (each interface exists, the
/// lifecycle hook is attached) and its view is fresh (no ring buffer has had records waiting
/// unread longer than `--ready-max-lag-ms`); 503 with the reasons otherwise. `/healthz` stays
/// liveness (a stopped ring pump ends the daemon).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let mut problems = Vec::new();
    let mut interfaces: Vec<&str> = app.loading.attachments.iter().map(|a| a.interface.as_str()).collect();
    interfaces.sort_unstable();
    interfaces.dedup();
    for i in interfaces {
        if !crate::sys::interface_exists(i) {
            problems.push(format!("interface {i} is gone: its traffic is not observed (restart the daemon once it is back)"));
        }
    }
    if app.loading.lifecycle_hook == "none" {
        problems.push("no lifecycle hook is attached: opens and closes are seen on the wire only".to_owned());
    }
    let bound = app.config.ready_max_lag;
    for ring in app.ring_lag.all() {
        let lag = ring.lag();
        if lag > bound {
            problems.push(format!(
                "the {} ring buffer has had records waiting {:.3} s unread, more than --ready-max-lag-ms {}: the daemon is behind the kernel and what it shows is late",
                ring.name,
                lag.as_secs_f64(),
                bound.as_millis()
            ));
        }
    }
    let code = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    answer(code, &model::Readiness { ready: problems.is_empty(), problems })
}

/// `--metrics-listen`: aggregates for Prometheus, never a four-tuple.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(aggregates))
        .route("/healthz", get(healthz))
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "this listener serves /metrics (aggregates only) and /healthz; the API is on the daemon's --listen address".into())
        })
        .with_state(app)
}

async fn aggregates(State(app): State<Arc<App>>) -> impl IntoResponse {
    exposition(&app, false).await
}

/// Liveness: the daemon answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `/metrics` in Prometheus' text format, with or without the per-connection (top K) series.
async fn exposition(app: &App, with_connections: bool) -> impl IntoResponse {
    app.sync().await;
    let body = app.render_metrics(with_connections);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// API connections served at once; one more is closed as soon as it is accepted (and counted).
pub const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send a request's head (also the first): idle or slow sockets do not
/// hold a place for long.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What [`serve`] takes connections from: a TCP listener (`--listen`, `--metrics-listen`) or the
/// Unix socket (`--unix-socket`).
pub trait Listener: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_stream(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Serves `router` on `listener` until `shutdown` resolves: at most [`MAX_CONNECTIONS`] at once,
/// each given [`HEAD_TIMEOUT`] for every request head. (axum's own `serve` has neither bound:
/// a thousand idle sockets would take every file descriptor the daemon may open.)
pub async fn serve(listener: impl Listener, router: Router, refused: prometheus::IntCounter, shutdown: impl std::future::Future<Output = ()>) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept_stream() => a,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors or memory: wait a moment rather than spin.
                log::warn!("accepting an API connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            refused.inc();
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT);
            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            drop(place);
        });
    }
}

fn error(code: StatusCode, message: String) -> Response {
    answer(code, &model::ApiError { error: message })
}

/// `value` as JSON, written as the API always writes it ([`model::written`]).
fn answer<T: serde::Serialize>(code: StatusCode, value: &T) -> Response {
    match model::written(value) {
        Ok(v) => (code, Json(v)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": format!("the answer could not be written as JSON: {e}") }))).into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    exposition(&app, true).await
}

async fn connections(State(app): State<Arc<App>>, params: Result<QueryParams<HashMap<String, String>>, QueryRejection>) -> Response {
    let params = match params {
        Ok(QueryParams(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the query string could not be read ({e}): expected name=value pairs")),
    };
    let query = match Query::parse(&params) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    app.sync().await;
    let (connections, matched) = query.apply(app.connections());
    let head = [("count", json!(connections.len())), ("matched", json!(matched))];
    ([(header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(futures_util::stream::iter(JsonList::new(&head, "connections", connections))))
        .into_response()
}

/// A JSON object whose last member is a long array, written a chunk at a time as hyper sends the
/// body: the text of 100,000 connections (about 2 KiB each) is never in memory at once, and each
/// connection's view goes as soon as its text is written. `{"count":3,"connections":[...]}`.
struct JsonList<T> {
    /// What goes before the first element, until the first chunk takes it.
    head: Vec<u8>,
    items: std::vec::IntoIter<T>,
    /// An element is written: the next one needs a comma.
    separate: bool,
    /// The closing `]}` is written.
    done: bool,
}

/// Chunk size: enough elements per chunk that the framing costs nothing, few enough that a chunk
/// stays small.
const CHUNK_BYTES: usize = 64 * 1024;

impl<T: serde::Serialize> JsonList<T> {
    fn new(head: &[(&str, serde_json::Value)], array: &str, items: Vec<T>) -> Self {
        let mut text = String::from("{");
        for (name, value) in head {
            // Names and values as serde_json writes them (escaped); infallible for strings and values.
            text.push_str(&json!(name).to_string());
            text.push(':');
            text.push_str(&value.to_string());
            text.push(',');
        }
        text.push_str(&json!(array).to_string());
        text.push_str(":[");
        Self { head: text.into_bytes(), items: items.into_iter(), separate: false, done: false }
    }
}

impl<T: serde::Serialize> Iterator for JsonList<T> {
    /// An error ends the body early: the client sees it cut off (never text that parses).
    type Item = Result<axum::body::Bytes, serde_json::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut chunk = std::mem::take(&mut self.head);
        while chunk.len() < CHUNK_BYTES {
            let Some(item) = self.items.next() else {
                chunk.extend_from_slice(b"]}");
                self.done = true;
                break;
            };
            if self.separate {
                chunk.push(b',');
            }
            self.separate = true;
            if let Err(e) = serde_json::to_writer(&mut chunk, &item) {
                log::warn!("writing a JSON list: {e}");
                self.done = true;
                return Some(Err(e));
            }
        }
        Some(Ok(chunk.into()))
    }
}

async fn connection(State(app): State<Arc<App>>, connection: Result<Path<String>, PathRejection>) -> Response {
    let connection = match connection {
        Ok(Path(c)) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}: {}", crate::query::CONNECTION_FORM)),
    };
    let key = match parse_connection(&connection) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    app.sync().await;
    match app.connection(&key) {
        Some(c) => Json(c).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no connection {key} is tracked (open, or closed within the retention time)")),
    }
}

/// Streams the timeline of matching connections as newline-delimited JSON until the client goes.
async fn trace(State(app): State<Arc<App>>, params: Result<QueryParams<HashMap<String, String>>, QueryRejection>) -> Response {
    let params = match params {
        Ok(QueryParams(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the query string could not be read ({e})")),
    };
    let follow = match crate::trace::Follow::from_params(&params) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some((subscription, rx)) = app.trace.subscribe(follow) else {
        app.metrics.trace_refused.inc();
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} traces are already following connections, the most this daemon keeps at once: end one (Ctrl-C on an `observer trace`) and ask again",
                crate::trace::MAX_SUBSCRIBERS
            ),
        );
    };
    let hello = crate::timeline::text(&TimelineEvent::Subscribed { filter: params.into_iter().collect() }) + "\n";
    // The subscription lives in the stream's state: when the client goes, hyper drops the body,
    // and with it the subscription (and, for the last one, the kernel filter).
    let stream = futures_util::stream::unfold((Some(hello), rx, subscription), |(first, mut rx, sub)| async move {
        if let Some(h) = first {
            return Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(h)), (None, rx, sub)));
        }
        let line = rx.recv().await?;
        Some((Ok(axum::body::Bytes::from(line + "\n")), (None, rx, sub)))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(stream)).into_response()
}

async fn status(State(app): State<Arc<App>>) -> Response {
    app.sync().await;
    answer(StatusCode::OK, &status_of(&app))
}

/// What `/api/v1/status` answers: the daemon's own types, in their written forms.
fn status_of(app: &App) -> model::Status {
    let k = app.kernel_counters();
    let crate::metrics::TableGauges { kernel_entries, open_inbound, open_outbound, open_unknown, closed_kept, bounds } =
        app.table_gauges(&app.kernel_entries());
    let attachment = |a: &crate::bpf::Attachment| {
        let crate::bpf::Attachment { interface, direction, program, mode } = a;
        model::Attachment { interface: interface.clone(), direction: (*direction).into(), program: (*program).into(), mode: (*mode).into() }
    };
    let program = |p: crate::bpf::ProgramStats| {
        let crate::bpf::ProgramStats { program, id, run_count, run_time_ns, verified_instructions } = p;
        model::ProgramStats { program: program.into(), id, run_count, run_time_ns, verified_instructions }
    };
    let c = &app.config;
    let upstreams = if c.upstreams.rules.is_empty() {
        model::Upstreams::FirstEndpoints(c.upstreams.max_labels)
    } else {
        model::Upstreams::Rules(c.upstreams.rules.iter().map(|r| r.name.clone()).collect())
    };
    model::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        kernel: crate::sys::kernel_release(),
        uptime_seconds: app.started.elapsed().as_secs_f64(),
        attachments: app.loading.attachments.iter().map(attachment).collect(),
        tracepoints: app.loading.tracepoints.iter().map(|(name, attached)| model::Tracepoint { tracepoint: name.clone(), attached: *attached }).collect(),
        netns_filter: app.loading.netns_filter,
        lifecycle_hook: app.loading.lifecycle_hook.into(),
        capabilities: app.loading.capabilities.iter().map(|&c| c.into()).collect(),
        programs: app.loading.programs.stats().into_iter().map(program).collect(),
        traces_active: app.trace.active(),
        rings: app.ring_lag.all().iter().map(|r| model::RingLag { ring: r.name.into(), lag_seconds: r.lag().as_secs_f64() }).collect(),
        sweeps: app.sweeps.load(std::sync::atomic::Ordering::Relaxed),
        kernel_counters: model::KernelCounters(Counter::ALL.iter().map(|&c| (c.name().into(), k.get(c))).collect()),
        connections_tracked: kernel_entries,
        table: model::TableGauges {
            kernel_entries,
            open_inbound,
            open_outbound,
            open_unknown,
            closed_kept,
            bounds: bounds.iter().map(|&(name, n)| (name.into(), n)).collect(),
        },
        config: model::DaemonConfig {
            interfaces: c.interfaces.clone(),
            listen: c.listen.to_string(),
            metrics_listen: c.metrics_listen.map(|a| a.to_string()),
            state_dir: c.state_dir.clone(),
            top_k: c.top_k,
            http_ports: c.http_ports.clone(),
            // As written on the command line (`--lifecycle-hook`).
            lifecycle_hook: clap::ValueEnum::to_possible_value(&c.lifecycle_hook).map(|v| v.get_name().to_owned()),
            max_connections: c.map_sizes.connections,
            events_bytes: c.map_sizes.events_bytes,
            payload_bytes: c.map_sizes.payload_bytes,
            closed_retention_seconds: c.closed_retention.as_secs(),
            closed_max: c.closed_max,
            http_framing: if c.kernel_http { model::HttpFraming::Kernel } else { model::HttpFraming::Daemon },
            http_framing_refused: app.loading.kernel_http_refused.clone(),
            ready_max_lag_seconds: c.ready_max_lag.as_secs_f64(),
            unix_socket: c.unix_socket.clone(),
            upstreams,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text<T: serde::Serialize>(list: JsonList<T>) -> (String, usize) {
        let chunks: Vec<axum::body::Bytes> = list.map(|c| c.expect("serializable")).collect();
        let n = chunks.len();
        (chunks.iter().map(|c| std::str::from_utf8(c).expect("UTF-8")).collect(), n)
    }

    #[test]
    fn a_streamed_list_is_the_json_of_the_whole_object() {
        for n in [0, 1, 2, 1000, 5000] {
            // About 300 bytes each: several chunks for the longer lists, one quote and
            // backslash each to escape.
            let items: Vec<serde_json::Value> =
                (0..n).map(|i| json!({ "connection": format!("198.18.1.1:80 198.18.1.2:{i}"), "note": "\"quoted\" \\ ".repeat(20), "i": i })).collect();
            let whole = json!({ "count": n, "matched": n + 1, "connections": items });
            let (text, chunks) = text(JsonList::new(&[("count", json!(n)), ("matched", json!(n + 1))], "connections", items));
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{n} items: not JSON ({e})"));
            assert_eq!(parsed, whole, "{n} items");
            // Every chunk but the last is full: streamed in pieces, never in tiny ones.
            assert!(chunks <= text.len() / CHUNK_BYTES + 1, "{n} items: {} bytes in {chunks} chunks", text.len());
            assert!(text.len() < 2 * CHUNK_BYTES || chunks > 1, "{n} items: {} bytes in one chunk", text.len());
        }
    }

    #[test]
    fn a_streamed_list_writes_names_as_json_strings() {
        let (text, _) = text(JsonList::new(&[("a \"b\"", json!("c"))], "list", vec![1, 2]));
        assert_eq!(text, r#"{"a \"b\"":"c","list":[1,2]}"#);
    }
}
