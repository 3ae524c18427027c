//! Sign-up: hash the password, then insert the user and write its `UserCreated` event
//! (an outbox row or a logical decoding message, as the [`Capture`] says) in one
//! transaction.

use outbox::{Capture, WriteError};
use sqlx::PgPool;
use uuid::Uuid;

use super::hashing::{HashError, PasswordHasher};
use crate::domain::events::{UserCreated, USER_AGGREGATE, USER_CREATED};
use crate::domain::{Email, Password, User};
use crate::store::{self, StoreError};

/// A validated sign-up request.
#[derive(Debug)]
pub struct NewUser {
    pub email: Email,
    pub password: Password,
}

/// Why a sign-up did not happen. Every variant leaves the database unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("email is already registered")]
    EmailTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed")]
    Hashing(#[from] HashError),
    #[error("event payload could not be serialised")]
    Payload(#[from] serde_json::Error),
    /// The event breaks a rule of the outbox (message mode checks it before writing).
    #[error("event cannot be written to the outbox")]
    Event(#[source] outbox::message::EnvelopeError),
}

impl From<sqlx::Error> for CreateUserError {
    fn from(err: sqlx::Error) -> Self {
        if store::users::is_email_taken(&err) {
            Self::EmailTaken
        } else {
            Self::Store(err.into())
        }
    }
}

impl From<WriteError> for CreateUserError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Database(err) => err.into(),
            WriteError::Event { source, .. } => Self::Event(source),
        }
    }
}

/// Registers a user and records `UserCreated` in the outbox the way `capture` says,
/// carrying `trace` (the request span's W3C context) so the account opening continues
/// that trace.
///
/// Invariant: the `users` row and the event (outbox row or transactional message) commit
/// together or not at all; an error at any step drops the transaction, which rolls both
/// back (PostgreSQL never decodes a rolled-back transaction's messages). The unique index on
/// the email, not a prior lookup, decides which of two concurrent sign-ups wins.
///
/// If the connection breaks during `commit`, the outcome is unknown to the service and
/// the error is reported as [`StoreError::Unavailable`]; a retry then either
/// succeeds or finds the email taken.
pub async fn execute(
    pool: &PgPool,
    hasher: &PasswordHasher,
    capture: &Capture,
    new_user: NewUser,
    trace: Option<outbox::TraceContext>,
) -> Result<User, CreateUserError> {
    let NewUser { email, password } = new_user;
    let password_hash = hasher.hash(password).await?;
    let id = Uuid::now_v7();

    let mut tx = pool.begin().await?;
    let created_at = store::users::insert(&mut tx, id, &email, &password_hash).await?;
    let event = outbox::NewEvent::new(
        USER_AGGREGATE,
        id,
        USER_CREATED,
        &UserCreated {
            id,
            email: email.as_str(),
            created_at,
        },
    )?
    .with_trace(trace);
    outbox::write(&mut tx, capture, &event).await?;
    tx.commit().await?;

    Ok(User {
        id,
        email,
        created_at,
    })
}
