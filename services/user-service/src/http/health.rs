//! `/readyz` and `/metrics` (`/healthz` is [`service_http::healthz`]).

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;

use super::{AppState, FieldErrors};

/// How long the readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /readyz`: 200 when the database answers `select 1`; 503 naming it otherwise.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut failures = FieldErrors::new();
    if let Err(reason) = service_postgres::check_ready(&state.pool, CHECK_TIMEOUT).await {
        failures.insert("database".into(), reason.into());
    }
    service_http::readiness(failures)
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    service_http::exposition(state.metrics.registry())
}
