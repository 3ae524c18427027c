//! [`ApiError`]: every way a request can fail, the status each one gets, and the body
//! every error answer carries.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::BODY_LIMIT_BYTES;

/// Field (or header, or path parameter) name → what is wrong with it.
pub type FieldErrors = BTreeMap<String, String>;

/// The cause of a 5xx: logged, never shown.
pub type Cause = Box<dyn StdError + Send + Sync>;

/// How long clients are told (`Retry-After`) to wait before retrying a 503.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An error answer. Client errors say what is wrong; 5xx answers are logged here with
/// their cause and say nothing about it to the client.
#[derive(Debug)]
pub enum ApiError {
    /// 400, with the reason for each field at fault.
    Invalid(FieldErrors),
    /// 400 for a request that cannot be read at all.
    BadRequest(String),
    /// 400: an object of the body has this key twice.
    DuplicateKey(String),
    /// 404: no such resource (or no such route).
    NotFound(String),
    /// 405: the path exists, the method does not.
    MethodNotAllowed,
    /// 409: the request conflicts with what exists (an email already registered).
    Conflict {
        message: String,
        errors: FieldErrors,
    },
    /// 413: the body is over [`BODY_LIMIT_BYTES`].
    PayloadTooLarge,
    /// 415: the body is not declared `application/json`.
    UnsupportedMediaType,
    /// 422: well-formed, but it refers to state that makes it impossible.
    Unprocessable {
        message: String,
        errors: FieldErrors,
    },
    /// 503: the database cannot be reached right now; retrying later may work.
    Unavailable(Cause),
    /// 500: a bug or an unexpected failure.
    Internal(Cause),
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// The HTTP status, repeated.
    #[schema(example = 400)]
    pub code: u16,
    pub message: String,
    /// Field (or header, or path parameter) name → what is wrong with it, when specific
    /// ones are at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(inline, nullable = false)]
    pub errors: Option<FieldErrors>,
}

impl ApiError {
    /// A 400 naming one field.
    pub fn invalid_field(field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid(FieldErrors::from([(field.to_owned(), reason.into())]))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::BadRequest(_) | Self::DuplicateKey(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body this error is answered with; logs the cause of a 5xx.
    pub fn body(self) -> ErrorBody {
        let code = self.status().as_u16();
        let (message, errors) = match self {
            Self::Invalid(errors) => ("the request has invalid fields".into(), Some(errors)),
            Self::BadRequest(message) | Self::NotFound(message) => (message, None),
            Self::DuplicateKey(key) => (
                format!("request body has a duplicate key: {key}"),
                Some(FieldErrors::from([(key, "is given more than once".into())])),
            ),
            Self::MethodNotAllowed => ("method not allowed".into(), None),
            Self::Conflict { message, errors } | Self::Unprocessable { message, errors } => {
                (message, Some(errors))
            }
            Self::PayloadTooLarge => (
                format!("request body must be at most {BODY_LIMIT_BYTES} bytes"),
                None,
            ),
            Self::UnsupportedMediaType => ("content type must be application/json".into(), None),
            Self::Unavailable(cause) => {
                tracing::warn!(error = %chain(&*cause), "answering 503: database unavailable");
                ("the database is unavailable, retry later".into(), None)
            }
            Self::Internal(cause) => {
                tracing::error!(error = %chain(&*cause), "answering 500: request failed");
                ("internal server error".into(), None)
            }
        };
        ErrorBody {
            code,
            message,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        response
    }
}

impl From<service_postgres::StoreError> for ApiError {
    fn from(error: service_postgres::StoreError) -> Self {
        match error {
            service_postgres::StoreError::Unavailable(_) => Self::Unavailable(error.into()),
            service_postgres::StoreError::Failed(_) => Self::Internal(error.into()),
        }
    }
}

/// `err: cause: cause's cause`, for logs.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(err: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = err.into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let cause: Cause = "relation \"users\" does not exist".into();
        let (status, _, body) = answer(ApiError::Internal(cause)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"code": 500, "message": "internal server error"})
        );
    }

    #[tokio::test]
    async fn unavailable_tells_when_to_retry() {
        let (status, retry, body) = answer(ApiError::Unavailable("pool timed out".into())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(!body.to_string().contains("pool"), "{body}");
    }

    #[tokio::test]
    async fn validation_errors_name_their_fields() {
        let (status, _, body) = answer(ApiError::invalid_field("email", "must not be empty")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], 400);
        assert_eq!(body["errors"]["email"], "must not be empty");
    }
}
