//! SQL against users_db as free functions over an executor or a connection, so a use
//! case can run several of them in one transaction. [`StoreError`] (shared with
//! transaction-service) tells "the database cannot be reached" from "this statement
//! failed".

pub mod users;

pub use service_postgres::StoreError;

/// The embedded migrations of `sql/users_db`: the service's own schema. The outbox's
/// (`sql/outbox`) come with `service_postgres::migrated_pool`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/users_db");
