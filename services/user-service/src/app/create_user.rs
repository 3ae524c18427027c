//! Sign-up: hash the password, then insert the user and its `UserCreated` outbox event
//! in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::hashing::{HashError, PasswordHasher};
use crate::domain::{Email, Password, User};
use crate::store;

/// The outbox `aggregate_type` of user events (Kafka topic `outbox.event.user`).
pub const AGGREGATE_TYPE: &str = "user";
/// The outbox `event_type` written when a user signs up.
pub const USER_CREATED: &str = "UserCreated";

/// A validated sign-up request.
#[derive(Debug)]
pub struct NewUser {
    pub email: Email,
    pub password: Password,
}

/// The `UserCreated` event body. It carries no password material.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserCreated<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub created_at: DateTime<Utc>,
}

/// Why a sign-up did not happen. Every variant leaves the database unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("email is already registered")]
    EmailTaken,
    #[error("database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("password hashing failed")]
    Hashing(#[from] HashError),
    #[error("event payload could not be serialised")]
    Payload(#[from] serde_json::Error),
}

impl From<sqlx::Error> for CreateUserError {
    fn from(err: sqlx::Error) -> Self {
        if store::users::is_email_taken(&err) {
            Self::EmailTaken
        } else if store::is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Database(err)
        }
    }
}

/// Registers a user and records `UserCreated` in the outbox.
///
/// Invariant: the `users` row and the outbox row commit together or not at all; an
/// error at any step drops the transaction, which rolls both back. The unique index on
/// the email, not a prior lookup, decides which of two concurrent sign-ups wins.
///
/// If the connection breaks during `commit`, the outcome is unknown to the service and
/// the error is reported as [`CreateUserError::Unavailable`]; a retry then either
/// succeeds or finds the email taken.
pub async fn create_user(
    pool: &PgPool,
    hasher: &PasswordHasher,
    new_user: NewUser,
) -> Result<User, CreateUserError> {
    let NewUser { email, password } = new_user;
    let password_hash = hasher.hash(password).await?;
    let id = Uuid::now_v7();

    let mut tx = pool.begin().await?;
    let created_at = store::users::insert(&mut tx, id, &email, &password_hash).await?;
    let event = outbox::NewEvent::new(
        AGGREGATE_TYPE,
        id,
        USER_CREATED,
        &UserCreated {
            id,
            email: email.as_str(),
            created_at,
        },
    )?;
    outbox::insert(&mut tx, &event).await?;
    tx.commit().await?;

    Ok(User {
        id,
        email,
        created_at,
    })
}
