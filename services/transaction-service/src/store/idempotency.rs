//! The `idempotency_keys` table: the response each `Idempotency-Key` got.
//!
//! Requests are compared by the SHA-256 of their canonical text, computed by
//! PostgreSQL (`sha256()`), so the table never holds request bodies.

use std::time::Duration;

use sqlx::PgConnection;

/// The stored outcome of an earlier request with the same key.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Whether the earlier request had the same canonical text as this one.
    pub same_request: bool,
    pub response_status: u16,
    /// The JSON body exactly as it was sent.
    pub response_body: String,
}

/// The live entry for `key` (younger than `retention`), compared with `request`.
pub async fn find(
    conn: &mut PgConnection,
    key: &str,
    request: &str,
    retention: Duration,
) -> Result<Option<Stored>, sqlx::Error> {
    let row: Option<(bool, i16, String)> = sqlx::query_as(
        "select request_hash = sha256(convert_to($2, 'UTF8')), response_status, response_body \
         from idempotency_keys \
         where key = $1 and created_at >= now() - make_interval(secs => $3)",
    )
    .bind(key)
    .bind(request)
    .bind(retention.as_secs_f64())
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(same_request, status, body)| Stored {
        same_request,
        response_status: u16::try_from(status).unwrap_or(500),
        response_body: body,
    }))
}

/// Deletes the entry for `key` if it is older than `retention`, so the key can name a
/// new request.
pub async fn forget_expired(
    conn: &mut PgConnection,
    key: &str,
    retention: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "delete from idempotency_keys \
         where key = $1 and created_at < now() - make_interval(secs => $2)",
    )
    .bind(key)
    .bind(retention.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the response for `key`; `false` when another request stored one first.
///
/// If a concurrent transaction inserted the same key and has not ended, this waits on
/// the primary key: when that one commits, this returns `false`; when it rolls back,
/// this one's row goes in.
pub async fn save(
    conn: &mut PgConnection,
    key: &str,
    request: &str,
    response_status: u16,
    response_body: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "insert into idempotency_keys (key, request_hash, response_status, response_body) \
         values ($1, sha256(convert_to($2, 'UTF8')), $3, $4) on conflict do nothing",
    )
    .bind(key)
    .bind(request)
    .bind(i16::try_from(response_status).unwrap_or(i16::MAX))
    .bind(response_body)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Deletes up to `limit` entries older than `retention`, skipping rows another
/// transaction holds; returns how many went.
pub async fn purge_expired(
    conn: &mut PgConnection,
    retention: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "delete from idempotency_keys where key in ( \
             select key from idempotency_keys \
             where created_at < now() - make_interval(secs => $1) \
             order by created_at limit $2 for update skip locked)",
    )
    .bind(retention.as_secs_f64())
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
