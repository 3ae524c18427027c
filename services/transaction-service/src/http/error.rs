//! [`ApiError`]: every error response, as `{"code", "message", "errors"?}`.
//!
//! 5xx errors are logged with their cause here; clients only ever see a generic
//! message, never database or Kafka text.

use std::collections::BTreeMap;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::app::create_transaction::{CreateTransactionError, Party};
use crate::app::StoreError;

/// Field name → what is wrong with it.
pub type FieldErrors = BTreeMap<String, String>;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or fails validation.
    BadRequest {
        message: String,
        errors: Option<FieldErrors>,
    },
    /// 404: no such resource (or no such route).
    NotFound(String),
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 422: well-formed, but refers to state that makes it impossible.
    Unprocessable {
        message: String,
        errors: Option<FieldErrors>,
    },
    /// 503: a dependency (the database) is unreachable; retrying later may work.
    Unavailable(Cause),
    /// 500: a bug or broken invariant.
    Internal(Cause),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The HTTP status code, repeated.
    pub code: u16,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<FieldErrors>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            errors: None,
        }
    }

    pub fn invalid_fields(errors: FieldErrors) -> Self {
        Self::BadRequest {
            message: "the request has invalid fields".into(),
            errors: Some(errors),
        }
    }

    pub fn invalid_field(field: &str, reason: impl Into<String>) -> Self {
        Self::invalid_fields(FieldErrors::from([(field.to_string(), reason.into())]))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (message, errors) = match self {
            Self::BadRequest { message, errors } | Self::Unprocessable { message, errors } => {
                (message, errors)
            }
            Self::NotFound(message) => (message, None),
            Self::MethodNotAllowed => ("method not allowed".into(), None),
            Self::PayloadTooLarge => ("request body is too large (limit 16 KiB)".into(), None),
            Self::UnsupportedMediaType => (
                "request body must be JSON (Content-Type: application/json)".into(),
                None,
            ),
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "answering 503: database unavailable");
                ("the database is unavailable, retry later".into(), None)
            }
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "answering 500: internal error");
                ("internal error".into(), None)
            }
        };
        let body = Json(ErrorBody {
            code: status.as_u16(),
            message,
            errors,
        });
        if status == StatusCode::SERVICE_UNAVAILABLE {
            (status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(e) => Self::Unavailable(Box::new(e)),
            StoreError::Failed(e) => Self::Internal(Box::new(e)),
        }
    }
}

impl From<CreateTransactionError> for ApiError {
    fn from(error: CreateTransactionError) -> Self {
        match error {
            CreateTransactionError::UnknownAccounts(parties) => Self::Unprocessable {
                message: "unknown account".into(),
                errors: Some(
                    parties
                        .into_iter()
                        .map(|party| {
                            let field = match party {
                                Party::From => "fromUserId",
                                Party::To => "toUserId",
                            };
                            (
                                field.to_string(),
                                "no account exists for this user".to_string(),
                            )
                        })
                        .collect(),
                ),
            },
            CreateTransactionError::IdempotencyKeyReused => Self::Unprocessable {
                message: "this Idempotency-Key was already used for a different request".into(),
                errors: Some(FieldErrors::from([(
                    "Idempotency-Key".to_string(),
                    "already used for a different request".to_string(),
                )])),
            },
            CreateTransactionError::Store(e) => e.into(),
        }
    }
}
