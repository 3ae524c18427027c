//! SQL against users_db as free functions over an executor or a connection, so a use
//! case can run several of them in one transaction. [`is_unavailable`] (shared with
//! transaction-service) tells "the database cannot be reached" from "this statement
//! failed".

pub mod users;

use sqlx::PgExecutor;

/// The migrations of users_db, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/users_db");

/// Runs `select 1`: succeeds when a connection can be had and the server answers.
pub async fn ping<'e>(executor: impl PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(executor).await?;
    Ok(())
}

pub use service_postgres::is_unavailable;
