//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiError, AppState, Envelope};
use crate::store;

/// `GET /healthz`: the process is up and serving HTTP. Never touches the database, so
/// an orchestrator does not restart the service during a database outage.
pub async fn healthz() -> Envelope {
    Envelope::message(StatusCode::OK, "alive")
}

/// `GET /readyz`: the database answers `select 1`; 503 otherwise.
pub async fn readyz(State(state): State<AppState>) -> Result<Envelope, ApiError> {
    store::ping(&state.pool)
        .await
        .map_err(|err| ApiError::Unavailable(err.into()))?;
    Ok(Envelope::message(StatusCode::OK, "ready"))
}
