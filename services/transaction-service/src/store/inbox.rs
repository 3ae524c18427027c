//! The `inbox` table: ids of consumed events.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

/// Records that each `(event id, event type)` is being handled in the current
/// transaction; returns the ids recorded now. An id missing from the result was handled
/// before (or is given twice): the caller must change nothing for it.
///
/// A concurrent transaction recording one of the ids waits on the primary key until this
/// one ends, then sees the row: the same event never takes effect twice. The ids are
/// inserted in ascending order, so two batches that share ids wait for each other in
/// that order and cannot deadlock.
pub async fn record_all(
    conn: &mut PgConnection,
    events: &[(Uuid, &str)],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut sorted: Vec<(Uuid, &str)> = events.to_vec();
    sorted.sort_unstable_by_key(|(id, _)| *id);
    let (ids, types): (Vec<Uuid>, Vec<&str>) = sorted.into_iter().unzip();
    let recorded: Vec<Uuid> = sqlx::query_scalar(
        "insert into inbox (event_id, event_type) \
         select * from unnest($1::uuid[], $2::text[]) \
         on conflict do nothing returning event_id",
    )
    .bind(&ids)
    .bind(&types)
    .fetch_all(conn)
    .await?;
    Ok(recorded.into_iter().collect())
}
