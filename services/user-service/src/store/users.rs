//! The `users` table.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{Email, PasswordHash, User};

/// The unique index that makes an email registrable once (see `0002_users.sql`).
const EMAIL_UNIQUE_INDEX: &str = "users_email_lower_key";

/// Inserts a user and returns the creation time the database assigned.
///
/// Fails with a unique violation on [`EMAIL_UNIQUE_INDEX`] when the email is taken;
/// [`is_email_taken`] recognises it.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    email: &Email,
    password_hash: &PasswordHash,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let (created_at,): (DateTime<Utc>,) = sqlx::query_as(
        "insert into users (id, email, password_hash) values ($1, $2, $3) returning created_at",
    )
    .bind(id)
    .bind(email.as_str())
    .bind(password_hash.as_phc())
    .fetch_one(conn)
    .await?;
    Ok(created_at)
}

/// True when `err` is the unique violation of an email that is already registered.
pub fn is_email_taken(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.is_unique_violation() && db.constraint() == Some(EMAIL_UNIQUE_INDEX))
}

/// The user with `id`, without password material, if there is one.
pub async fn find_by_id<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<User>, sqlx::Error> {
    let row: Option<(Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("select id, email, created_at from users where id = $1")
            .bind(id)
            .fetch_optional(executor)
            .await?;
    Ok(row.map(|(id, email, created_at)| User {
        id,
        email: Email::from_trusted(email),
        created_at,
    }))
}
