//! The answers of `/healthz` and `/readyz`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::{ErrorBody, FieldErrors};

/// `GET /healthz`: the process is up and serving HTTP. Touches no dependency, so an
/// orchestrator does not restart a service during a database outage.
pub async fn healthz() -> Json<Value> {
    Json(json!({"code": 200, "message": "alive"}))
}

/// The `/readyz` answer for the failed checks in `failures` (dependency name →
/// reason): 200 when there are none, else 503 naming each.
pub fn readiness(failures: FieldErrors) -> Response {
    if failures.is_empty() {
        Json(json!({"code": 200, "message": "ready"})).into_response()
    } else {
        let body = ErrorBody {
            code: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            message: "not ready".into(),
            errors: Some(failures),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
