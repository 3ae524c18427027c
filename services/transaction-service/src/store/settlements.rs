//! The writes of a settled batch: balances and final statuses in one statement.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{FailureReason, TransactionStatus};

/// Moves each transaction to its final status (with its failure reason) and sets each
/// account's new balance, in one statement; returns the time each transaction was
/// settled. For rows locked in this transaction (`transactions::lock_all`,
/// `accounts::lock_balances`). The accounts' check constraint refuses a negative balance.
pub async fn record(
    conn: &mut PgConnection,
    settled: &[(Uuid, TransactionStatus, Option<FailureReason>)],
    balances: &[(Uuid, Decimal)],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let ids: Vec<Uuid> = settled.iter().map(|(id, _, _)| *id).collect();
    let statuses: Vec<&str> = settled.iter().map(|(_, s, _)| s.as_str()).collect();
    let reasons: Vec<Option<&str>> = settled
        .iter()
        .map(|(_, _, r)| r.map(FailureReason::as_str))
        .collect();
    let (accounts, amounts): (Vec<Uuid>, Vec<Decimal>) = balances.iter().copied().unzip();
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "with balances as ( \
             update accounts a set balance = v.balance, updated_at = now() \
             from unnest($4::uuid[], $5::numeric[]) as v (user_id, balance) \
             where a.user_id = v.user_id) \
         update transactions t set status = v.status, failure_reason = v.reason, \
         updated_at = now() \
         from unnest($1::uuid[], $2::text[], $3::text[]) as v (id, status, reason) \
         where t.id = v.id returning t.id, t.updated_at",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&reasons)
    .bind(&accounts)
    .bind(&amounts)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}
