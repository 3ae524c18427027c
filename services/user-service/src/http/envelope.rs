//! The JSON envelope of every response: `{"code", "message", "data"?, "errors"?}`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// `code` repeats the HTTP status; `data` is present on success, `errors` (field name
/// to reason) on errors where specific fields are at fault.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize = ()> {
    pub code: u16,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<BTreeMap<String, String>>,
}

impl<T: Serialize> Envelope<T> {
    /// A success envelope carrying `data`.
    pub fn data(status: StatusCode, message: impl Into<String>, data: T) -> Self {
        Self {
            code: status.as_u16(),
            message: message.into(),
            data: Some(data),
            errors: None,
        }
    }
}

impl Envelope<()> {
    /// An envelope with a message only.
    pub fn message(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code: status.as_u16(),
            message: message.into(),
            data: None,
            errors: None,
        }
    }
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}
