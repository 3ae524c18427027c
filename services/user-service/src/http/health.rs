//! `/readyz` (`/healthz`, `/metrics` and `/openapi.json` are service-http's).

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use service_http::docs::Readiness;

use super::{AppState, FieldErrors};

/// How long the readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: the database answers
///
/// 200 when the database answers `select 1` within 2 s; 503 naming it otherwise.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", responses(Readiness))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut failures = FieldErrors::new();
    if let Err(reason) = service_postgres::check_ready(&state.pool, CHECK_TIMEOUT).await {
        failures.insert("database".into(), reason.into());
    }
    service_http::readiness(failures)
}
