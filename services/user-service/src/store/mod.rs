//! SQL against users_db as free functions over an executor or a connection, so a use
//! case can run several of them in one transaction. Also: which database errors mean
//! "the database cannot be reached" rather than "this statement failed".

pub mod users;

use sqlx::PgExecutor;

/// The migrations of users_db, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/users_db");

/// Runs `select 1`: succeeds when a connection can be had and the server answers.
pub async fn ping<'e>(executor: impl PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(executor).await?;
    Ok(())
}

/// True when `err` says no usable connection to the database could be had (pool timed
/// out, network failure, server shutting down or refusing connections, database
/// missing) as opposed to a statement that the database rejected.
///
/// Such errors are transient from a client's point of view: the pool opens fresh
/// connections on later requests, so the service recovers without a restart.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-57P03: admin/crash shutdown,
            // cannot connect now; 53300: too many connections; 3D000: no such database.
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "3D000")
        }),
        _ => false,
    }
}
