//! The `accounts` table: one balance per user, never negative.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

/// An account as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub user_id: Uuid,
    pub balance: Decimal,
    pub updated_at: DateTime<Utc>,
}

/// Opens a zero-balance account for `user_id`; `false` when it already exists.
pub async fn open(conn: &mut PgConnection, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let result = sqlx::query("insert into accounts (user_id) values ($1) on conflict do nothing")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Which of `user_ids` have an account.
pub async fn existing(
    conn: &mut PgConnection,
    user_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("select user_id from accounts where user_id = any($1)")
        .bind(user_ids)
        .fetch_all(conn)
        .await
}

/// The account of `user_id`, if any.
pub async fn get(conn: &mut PgConnection, user_id: Uuid) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as("select user_id, balance, updated_at from accounts where user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

/// Locks the account of `user_id` until the end of the transaction and returns its
/// balance, or `None` when there is no such account.
///
/// Callers that lock several accounts must lock them in ascending `user_id` order:
/// two settlements then always wait for each other in the same order and cannot
/// deadlock.
///
/// The lock is `FOR NO KEY UPDATE` (the strength of the balance `UPDATE` itself): it
/// excludes every other settlement of the account like `FOR UPDATE` would, but lets a
/// concurrent `POST` insert a transaction that references the account (its foreign key
/// check takes `FOR KEY SHARE`) instead of queueing behind the settlement.
pub async fn lock_balance(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<Option<Decimal>, sqlx::Error> {
    sqlx::query_scalar("select balance from accounts where user_id = $1 for no key update")
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

/// Adds `delta` (negative to debit) to the balance of `user_id`. The table's check
/// constraint refuses a negative result.
pub async fn add(
    conn: &mut PgConnection,
    user_id: Uuid,
    delta: Decimal,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update accounts set balance = balance + $2, updated_at = now() where user_id = $1",
    )
    .bind(user_id)
    .bind(delta)
    .execute(conn)
    .await?;
    Ok(())
}
