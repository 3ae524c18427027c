//! The use cases. Each file owns one database transaction from `begin` to `commit`,
//! and every event it emits is an outbox row inside that transaction.

pub mod create_transaction;
pub mod open_account;
pub mod settle_transaction;

/// A database failure, split by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (no connection, pool exhausted, server going
    /// away). Worth retrying later; HTTP answers 503.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug or a broken invariant. HTTP answers 500.
    #[error("database error: {0}")]
    Failed(#[source] sqlx::Error),
}

impl StoreError {
    /// For errors while acquiring a connection or opening a transaction: whatever the
    /// error says, the database was not usable.
    pub fn unavailable(error: sqlx::Error) -> Self {
        Self::Unavailable(error)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if service_postgres::is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Failed(error)
        }
    }
}
