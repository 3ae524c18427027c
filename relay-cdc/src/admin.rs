//! The admin HTTP port: `/metrics` (Prometheus text), `/healthz` (every source makes
//! progress: 503 naming a stalled stage or a halted source) and `/readyz` (every source
//! streams from its slot).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::metrics::Metrics;
use crate::status::{self, Health};

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Metrics,
    pub health: Health,
    /// `kafka.delivery`, shown on `/readyz`.
    pub delivery: &'static str,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    s.health.refresh(&s.metrics);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let (ok, body) = status::healthz(&s.health.snapshots());
    (code(ok), Json(body))
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let (ok, mut body) = status::readyz(&s.health.snapshots());
    body["delivery"] = s.delivery.into();
    (code(ok), Json(body))
}
