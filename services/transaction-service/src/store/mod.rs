//! SQL against transaction_db as free functions. Functions that belong to a use case's
//! transaction take `&mut PgConnection` so the caller decides what commits together.
//! [`StoreError`] (shared with user-service) tells "the database cannot be reached"
//! from "this statement failed".

pub mod accounts;
pub mod idempotency;
pub mod inbox;
pub mod settlements;
pub mod transactions;

pub use service_postgres::StoreError;

/// A failed [`outbox::write_all`] as a [`StoreError`]: a database error as any other; an
/// event that breaks a rule of the outbox (refused before anything was written, in
/// message mode) as [`StoreError::Failed`], as the outbox table's checks refuse it in
/// table mode.
pub fn outbox_error(error: outbox::WriteError) -> StoreError {
    match error {
        outbox::WriteError::Database(error) => error.into(),
        outbox::WriteError::Event { source, .. } => {
            StoreError::Failed(sqlx::Error::Encode(Box::new(source)))
        }
    }
}

/// The embedded migrations of `sql/transaction_db`: the service's own schema. The outbox's
/// (`sql/outbox`) come with `service_postgres::migrated_pool`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/transaction_db");
