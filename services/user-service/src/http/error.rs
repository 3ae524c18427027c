//! [`ApiError`]: every way a request can fail, and the status and envelope each one gets.

use std::collections::BTreeMap;
use std::error::Error as StdError;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::envelope::Envelope;
use super::{BODY_LIMIT_BYTES, RETRY_AFTER};
use crate::app::{CreateUserError, GetUserError};

type BoxError = Box<dyn StdError + Send + Sync>;

/// An error answer. Client errors say what is wrong; 5xx answers are logged here with
/// their cause and say nothing about it to the client.
#[derive(Debug)]
pub enum ApiError {
    /// 400, with the reason for each field at fault.
    Invalid(BTreeMap<String, String>),
    /// 400 for a body or path that cannot be read at all.
    BadRequest(&'static str),
    NotFound(&'static str),
    MethodNotAllowed,
    /// 409, with the field whose value is taken.
    Conflict {
        message: &'static str,
        field: &'static str,
        reason: &'static str,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    /// 503: the database cannot be reached right now.
    Unavailable(BoxError),
    /// 500: a bug or an unexpected failure.
    Internal(BoxError),
}

impl ApiError {
    /// A 400 naming one field.
    pub fn invalid_field(field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid(BTreeMap::from([(field.to_string(), reason.into())]))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (message, errors): (String, Option<BTreeMap<String, String>>) = match self {
            Self::Invalid(errors) => ("request validation failed".into(), Some(errors)),
            Self::BadRequest(message) | Self::NotFound(message) => (message.into(), None),
            Self::MethodNotAllowed => ("method not allowed".into(), None),
            Self::Conflict {
                message,
                field,
                reason,
            } => (
                message.into(),
                Some(BTreeMap::from([(field.into(), reason.into())])),
            ),
            Self::PayloadTooLarge => (
                format!("request body must be at most {BODY_LIMIT_BYTES} bytes"),
                None,
            ),
            Self::UnsupportedMediaType => ("content type must be application/json".into(), None),
            Self::Unavailable(cause) => {
                tracing::warn!(error = %chain(&*cause), "database unavailable");
                (
                    "service temporarily unavailable: the database cannot be reached, retry later"
                        .into(),
                    None,
                )
            }
            Self::Internal(cause) => {
                tracing::error!(error = %chain(&*cause), "request failed");
                ("internal server error".into(), None)
            }
        };
        let mut envelope = Envelope::message(status, message);
        envelope.errors = errors;
        let mut response = envelope.into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        response
    }
}

/// `err: cause: cause's cause`, for logs.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(_) => Self::BadRequest("request body is not valid JSON"),
            JsonRejection::JsonDataError(_) => {
                Self::BadRequest("request body must be a JSON object")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            _ => Self::BadRequest("request body could not be read"),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        Self::BadRequest("invalid path parameter")
    }
}

impl From<CreateUserError> for ApiError {
    fn from(err: CreateUserError) -> Self {
        match err {
            CreateUserError::EmailTaken => Self::Conflict {
                message: "email is already registered",
                field: "email",
                reason: "is already registered",
            },
            CreateUserError::Unavailable(_) => Self::Unavailable(err.into()),
            CreateUserError::Database(_)
            | CreateUserError::Hashing(_)
            | CreateUserError::Payload(_) => Self::Internal(err.into()),
        }
    }
}

impl From<GetUserError> for ApiError {
    fn from(err: GetUserError) -> Self {
        match err {
            GetUserError::NotFound => Self::NotFound("user not found"),
            GetUserError::Unavailable(_) => Self::Unavailable(err.into()),
            GetUserError::Database(_) => Self::Internal(err.into()),
        }
    }
}

/// The fallback for paths no route matches.
pub async fn route_not_found() -> ApiError {
    ApiError::NotFound("route not found")
}

/// The fallback for known paths asked with a method they do not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(err: ApiError) -> (StatusCode, serde_json::Value) {
        let response = err.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let cause: BoxError = "relation \"users\" does not exist".into();
        let (status, body) = body_of(ApiError::Internal(cause)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"code": 500, "message": "internal server error"})
        );
    }

    #[tokio::test]
    async fn validation_errors_name_their_fields() {
        let (status, body) = body_of(ApiError::invalid_field("email", "must not be empty")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], 400);
        assert_eq!(body["errors"]["email"], "must not be empty");
    }
}
