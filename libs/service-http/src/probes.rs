//! The answers of `/healthz` and `/readyz`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::{ErrorBody, FieldErrors};

/// The body of a probe's 200: `{"code": 200, "message": "alive" | "ready"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Message {
    #[schema(example = 200)]
    pub code: u16,
    #[schema(example = "alive")]
    pub message: String,
}

impl Message {
    fn ok(message: &str) -> Json<Self> {
        Json(Self {
            code: StatusCode::OK.as_u16(),
            message: message.into(),
        })
    }
}

/// Liveness: the process serves HTTP
///
/// Touches no dependency, so an orchestrator does not restart a service during a
/// database outage.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz",
    responses((status = 200, description = "Alive.", body = Message))
)]
pub async fn healthz() -> Json<Message> {
    Message::ok("alive")
}

/// The `/readyz` answer for the failed checks in `failures` (dependency name →
/// reason): 200 when there are none, else 503 naming each.
pub fn readiness(failures: FieldErrors) -> Response {
    if failures.is_empty() {
        Message::ok("ready").into_response()
    } else {
        let body = ErrorBody {
            code: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            message: "not ready".into(),
            errors: Some(failures),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
