//! HTTP API: Prometheus `/metrics`, JSON under `/api/v1/`, `/healthz`.
#![forbid(unsafe_code)]
use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;

use crate::daemon::App;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/connections", get(connections))
        .route("/api/v1/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let body = app.metrics.render(&app.kernel_counters());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

async fn connections(State(app): State<Arc<App>>) -> impl IntoResponse {
    let connections = app.connections();
    Json(json!({ "count": connections.len(), "connections": connections }))
}

async fn status(State(app): State<Arc<App>>) -> impl IntoResponse {
    let k = app.kernel_counters();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": crate::sys::kernel_release(),
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "attachments": app.attachments,
        "kernel_counters": {
            "packets_seen": k.packets_seen,
            "not_tcp": k.not_tcp,
            "parse_failures": k.parse_failures,
            "conn_insert_failures": k.conn_insert_failures,
        },
        "connections_tracked": k.connections_tracked,
    }))
}
