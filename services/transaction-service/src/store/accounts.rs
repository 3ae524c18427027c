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

/// Opens a zero-balance account for each of `user_ids`; returns the ones opened now
/// (the others existed already).
pub async fn open_all(
    conn: &mut PgConnection,
    user_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut sorted = user_ids.to_vec();
    sorted.sort_unstable();
    sqlx::query_scalar(
        "insert into accounts (user_id) select * from unnest($1::uuid[]) \
         on conflict do nothing returning user_id",
    )
    .bind(&sorted)
    .fetch_all(conn)
    .await
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

/// Locks the accounts of `user_ids` until the end of the transaction and returns their
/// balances; users without an account are absent from the result.
///
/// The rows are locked in ascending `user_id` order (the sort runs below the lock), so
/// two settlements that share accounts always wait for each other in the same order
/// and cannot deadlock.
///
/// The lock is `FOR NO KEY UPDATE` (the strength of the balance `UPDATE` itself): it
/// excludes every other settlement of the account like `FOR UPDATE` would, but lets a
/// concurrent `POST` insert a transaction that references the account (its foreign key
/// check takes `FOR KEY SHARE`) instead of queueing behind the settlement.
pub async fn lock_balances(
    conn: &mut PgConnection,
    user_ids: &[Uuid],
) -> Result<Vec<(Uuid, Decimal)>, sqlx::Error> {
    sqlx::query_as(
        "select user_id, balance from accounts where user_id = any($1) \
         order by user_id for no key update",
    )
    .bind(user_ids)
    .fetch_all(conn)
    .await
}
