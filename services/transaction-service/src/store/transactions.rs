//! The `transactions` table.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, Row};
use uuid::Uuid;

use crate::domain::{Amount, NewTransaction, TransactionStatus};

/// A transaction as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub id: Uuid,
    pub status: TransactionStatus,
    pub amount: Amount,
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Uuid,
    pub description: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'r> FromRow<'r, PgRow> for Transaction {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let decode =
            |column: &str, e: Box<dyn std::error::Error + Send + Sync>| sqlx::Error::ColumnDecode {
                index: column.to_string(),
                source: e,
            };
        let status: String = row.try_get("status")?;
        let amount: Decimal = row.try_get("amount")?;
        Ok(Self {
            id: row.try_get("id")?,
            status: status.parse().map_err(|e| decode("status", Box::new(e)))?,
            amount: Amount::from_decimal(amount).map_err(|e| decode("amount", Box::new(e)))?,
            from_user_id: row.try_get("from_user_id")?,
            to_user_id: row.try_get("to_user_id")?,
            description: row.try_get("description")?,
            failure_reason: row.try_get("failure_reason")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str = "id, status, amount, from_user_id, to_user_id, description, \
                       failure_reason, created_at, updated_at";

/// Inserts `new` as a `PENDING` transaction with id `id` and returns the stored row.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    new: &NewTransaction,
) -> Result<Transaction, sqlx::Error> {
    sqlx::query_as(&format!(
        "insert into transactions (id, amount, from_user_id, to_user_id, description) \
         values ($1, $2, $3, $4, $5) returning {COLUMNS}"
    ))
    .bind(id)
    .bind(new.amount.to_decimal())
    .bind(new.from_user_id)
    .bind(new.to_user_id)
    .bind(new.description.as_ref().map(|d| d.as_str()))
    .fetch_one(conn)
    .await
}

/// The transaction `id`, if any.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Transaction>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from transactions where id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Which of `ids` this transaction's snapshot sees now (no lock).
pub async fn visible(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("select id from transactions where id = any($1)")
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// The transactions of `ids`, locked until the end of the transaction so only one
/// settlement can decide each outcome; absent ones are missing from the result.
///
/// The rows are locked in ascending id order, so batches that share transactions (a
/// rebalance hands the same events to a second consumer) cannot deadlock. A row another
/// settlement changed while this one waited is returned as that one committed it.
pub async fn lock_all(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Transaction>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from transactions where id = any($1) order by id for update"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await
}
