//! SQL against transaction_db as free functions. Functions that belong to a use case's
//! transaction take `&mut PgConnection` so the caller decides what commits together.

pub mod accounts;
pub mod idempotency;
pub mod inbox;
pub mod transactions;

/// The embedded migrations of `sql/transaction_db`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/transaction_db");
