//! `POST /users` and `GET /users/{id}`, with their request and response DTOs.

use std::collections::BTreeMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use service_http::{JsonBody, RequestTrace};

use service_http::docs::{ByIdErrors, JsonBodyErrors, ServerErrors};

use super::{ApiError, AppState, Envelope, ErrorBody};
use crate::app::{self, NewUser};
use crate::domain::{email, password, Email, Password, User};

// Fields are read as raw JSON so that a missing or mistyped field is reported by name
// instead of as an opaque deserialisation error. No `Debug`: it holds a password.
/// A sign-up.
#[derive(Deserialize, ToSchema)]
pub struct CreateUserRequest {
    #[schema(schema_with = email_schema, required = true)]
    email: Option<Value>,
    #[schema(schema_with = password_schema, required = true)]
    password: Option<Value>,
}

fn email_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::Custom("email".into())))
        .max_length(Some(email::MAX_LEN))
        .description(Some(
            "Trimmed and lower-cased before it is stored; ASCII `local@domain.tld` only.",
        ))
        .examples(["ada@example.com"])
}

fn password_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Password,
        )))
        .min_length(Some(password::MIN_CHARS))
        .max_length(Some(password::MAX_CHARS))
        .description(Some(
            "Characters, not bytes. Stored only as an argon2id hash.",
        ))
}

impl CreateUserRequest {
    /// Checks every field and reports all that are wrong at once.
    fn validate(self) -> Result<NewUser, ApiError> {
        let mut errors = BTreeMap::new();
        let email = match string_field(self.email, "email", &mut errors) {
            Some(raw) => Email::parse(&raw)
                .map_err(|err| errors.insert("email".into(), err.to_string()))
                .ok(),
            None => None,
        };
        let password = match string_field(self.password, "password", &mut errors) {
            Some(raw) => Password::parse(SecretString::from(raw))
                .map_err(|err| errors.insert("password".into(), err.to_string()))
                .ok(),
            None => None,
        };
        match (email, password) {
            (Some(email), Some(password)) => Ok(NewUser { email, password }),
            _ => Err(ApiError::Invalid(errors)),
        }
    }
}

/// The string in `value`, or a reason recorded under `field`.
fn string_field(
    value: Option<Value>,
    field: &str,
    errors: &mut BTreeMap<String, String>,
) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.insert(field.into(), "must be a string".into());
            None
        }
        None => {
            errors.insert(field.into(), "is required".into());
            None
        }
    }
}

/// The new user's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    pub id: Uuid,
}

/// A user as clients see it: no password material.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: Uuid,
    #[schema(schema_with = email_schema)]
    pub email: String,
    pub created_at: DateTime<Utc>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            email: user.email.as_str().to_owned(),
            created_at: user.created_at,
        }
    }
}

/// `{id}` of `/users/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct UserPath {
    /// The user id, hyphenated.
    #[param(schema_with = service_http::uuid_schema)]
    id: String,
}

/// Register a user
///
/// 201 with the new id and a `Location` header.
#[utoipa::path(post, path = "/users", operation_id = "createUser",
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created. The event `UserCreated` is in the outbox (a row, or a logical decoding message, as `OUTBOX_CAPTURE` says).",
            body = Envelope<CreatedUser>,
            headers(("Location" = String, description = "`/users/{id}`")),
            links(("GetUserById" = (
                operation_id = "getUser",
                parameters(("id" = "$response.body#/data/id"))
            )))),
        JsonBodyErrors,
        (status = 409, description = "The email is already registered (compared trimmed and case-insensitively).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    RequestTrace(trace): RequestTrace,
    JsonBody(body): JsonBody<CreateUserRequest>,
) -> Result<Response, ApiError> {
    let new_user = body.validate()?;
    let user =
        app::create_user::execute(&state.pool, &state.hasher, &state.capture, new_user, trace)
            .await?;
    tracing::info!(user_id = %user.id, "user created");
    Ok((
        [(header::LOCATION, format!("/users/{}", user.id))],
        Envelope::data(
            StatusCode::CREATED,
            "user created successfully",
            CreatedUser { id: user.id },
        ),
    )
        .into_response())
}

/// Read a user
#[utoipa::path(get, path = "/users/{id}", operation_id = "getUser", params(UserPath),
    responses(
        (status = 200, description = "The user. Never any password material.", body = Envelope<UserView>),
        ByIdErrors,
        ServerErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Envelope<UserView>, ApiError> {
    let id = service_http::path_uuid(id, "id")?;
    let user = app::get_user::execute(&state.pool, id).await?;
    Ok(Envelope::data(StatusCode::OK, "ok", user.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(body: Value) -> Result<NewUser, BTreeMap<String, String>> {
        let request: CreateUserRequest = serde_json::from_value(body).unwrap();
        request.validate().map_err(|err| match err {
            ApiError::Invalid(errors) => errors,
            other => panic!("expected a validation error, got {other:?}"),
        })
    }

    #[test]
    fn a_valid_body_becomes_a_new_user_with_a_normalised_email() {
        let user = validate(serde_json::json!({
            "email": " Ada@Example.com ",
            "password": "long enough"
        }))
        .unwrap();
        assert_eq!(user.email.as_str(), "ada@example.com");
    }

    #[test]
    fn missing_fields_are_each_required() {
        let errors = validate(serde_json::json!({})).unwrap_err();
        assert_eq!(errors["email"], "is required");
        assert_eq!(errors["password"], "is required");
    }

    #[test]
    fn null_counts_as_missing_and_numbers_are_not_strings() {
        let errors =
            validate(serde_json::json!({"email": null, "password": 12345678})).unwrap_err();
        assert_eq!(errors["email"], "is required");
        assert_eq!(errors["password"], "must be a string");
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let errors =
            validate(serde_json::json!({"email": "nope", "password": "short"})).unwrap_err();
        assert_eq!(errors["email"], "must be a valid email address");
        assert_eq!(errors["password"], "must be at least 8 characters");
    }
}
