//! The JSON envelope of every success answer: `{"code", "message", "data"}` (errors
//! are [`service_http::ErrorBody`]: `{"code", "message", "errors"?}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// A success answer; `code` repeats the HTTP status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    #[schema(example = 200)]
    pub code: u16,
    pub message: String,
    pub data: T,
}

impl<T: Serialize> Envelope<T> {
    /// A success envelope carrying `data`.
    pub fn data(status: StatusCode, message: impl Into<String>, data: T) -> Self {
        Self {
            code: status.as_u16(),
            message: message.into(),
            data,
        }
    }
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}
