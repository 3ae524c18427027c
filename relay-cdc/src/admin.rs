//! The admin HTTP port: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (every source streams from its slot).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Metrics,
    pub sources: Vec<String>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let states: serde_json::Map<String, serde_json::Value> = s
        .sources
        .iter()
        .map(|name| {
            let up = s.metrics.source_up.with_label_values(&[name]).get() == 1;
            (
                name.clone(),
                serde_json::Value::from(if up { "streaming" } else { "down" }),
            )
        })
        .collect();
    let ready = states.values().all(|v| v == "streaming");
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({ "ready": ready, "sources": states })),
    )
}
