//! The `inbox` table: ids of consumed events.

use sqlx::PgConnection;
use uuid::Uuid;

/// Records that `event_id` is being handled in the current transaction; `false` when
/// it was handled before (the caller must then change nothing).
///
/// A concurrent transaction recording the same id waits on the primary key until this
/// one ends, then sees the row: the same event never takes effect twice.
pub async fn record(
    conn: &mut PgConnection,
    event_id: Uuid,
    event_type: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "insert into inbox (event_id, event_type) values ($1, $2) on conflict do nothing",
    )
    .bind(event_id)
    .bind(event_type)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
