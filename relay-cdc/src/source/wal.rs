//! Slots and WAL positions: a slot as the server shows it, failover slots where the
//! server has them, heartbeats, and the exact advance of a slot to the final confirmed
//! position on shutdown.

use pgwire_replication::Lsn;
use tokio_postgres::Client;

use super::{SourceError, HEARTBEAT_PREFIX};

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub plugin: String,
    pub active: bool,
    pub confirmed_flush: Option<Lsn>,
    /// `lost` when the server invalidated the slot (WAL it needed was removed).
    pub wal_status: Option<String>,
    /// PostgreSQL 17+: a failover slot (standbys may sync it); `None` before 17.
    pub failover: Option<bool>,
    /// PostgreSQL 17+, on a standby: a copy synced from the primary.
    pub synced: Option<bool>,
    /// A temporary slot; a synced one stays temporary (and is dropped at promotion)
    /// until the standby has caught up with it ("sync-ready").
    pub temporary: bool,
    /// PostgreSQL 17+: why the server invalidated the slot (`wal_removed`,
    /// `idle_timeout` on 18, `rows_removed`, ...); `None` while it is valid.
    pub invalidation_reason: Option<String>,
}

impl SlotState {
    /// The server invalidated the slot: it can never stream again and must be recreated.
    pub fn invalidated(&self) -> Option<String> {
        if let Some(r) = &self.invalidation_reason {
            return Some(r.clone());
        }
        (self.wal_status.as_deref() == Some("lost")).then(|| "wal_status = lost".to_string())
    }
}

/// The first PostgreSQL version (`server_version_num`) with failover slots.
pub const FAILOVER_SLOTS_SINCE: i32 = 170_000;

/// Whether the slot should be a failover slot on a server of `version_num`, given the
/// `failover_slot` setting (unset: wherever supported).
pub fn wants_failover(setting: Option<bool>, version_num: i32) -> Result<bool, String> {
    match setting {
        None => Ok(version_num >= FAILOVER_SLOTS_SINCE),
        Some(false) => Ok(false),
        Some(true) if version_num >= FAILOVER_SLOTS_SINCE => Ok(true),
        Some(true) => Err(format!(
            "failover_slot = true needs PostgreSQL 17 or newer (server_version_num {version_num})"
        )),
    }
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SourceError> {
    // Through to_jsonb so that columns newer servers add (failover, synced: 17) read as
    // null on older ones, with one statement for all versions.
    let row = client
        .query_opt(
            "select coalesce(plugin::text, ''), active, confirmed_flush_lsn::text, wal_status, \
                    (to_jsonb(s) ->> 'failover')::bool, (to_jsonb(s) ->> 'synced')::bool, temporary, \
                    to_jsonb(s) ->> 'invalidation_reason' \
             from pg_replication_slots s where slot_name = $1 and database = current_database()",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| SlotState {
        plugin: r.get(0),
        active: r.get(1),
        confirmed_flush: r
            .get::<_, Option<String>>(2)
            .and_then(|s| Lsn::parse(&s).ok()),
        wal_status: r.get(3),
        failover: r.get(4),
        synced: r.get(5),
        temporary: r.get(6),
        invalidation_reason: r.get(7),
    }))
}

/// The server's `server_version_num`.
pub async fn version_num(client: &Client) -> Result<i32, SourceError> {
    Ok(client
        .query_one("select current_setting('server_version_num')::int", &[])
        .await?
        .get(0))
}

pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), SourceError> {
    client
        .execute("select pg_drop_replication_slot($1)", &[&slot])
        .await?;
    Ok(())
}

/// The server's current WAL insert position.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, SourceError> {
    let s: String = client
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    Lsn::parse(&s).map_err(|e| {
        SourceError::Prerequisite(format!("server returned an unreadable LSN {s:?}: {e}"))
    })
}

/// Writes a non-transactional logical message carrying the current time in
/// microseconds since the Unix epoch. It reaches the relay at once (not tied to a
/// transaction), which keeps lag in seconds truthful and the slot moving when idle.
pub async fn emit_heartbeat(client: &Client) -> Result<(), SourceError> {
    client
        .execute(
            "select pg_logical_emit_message(false, $1, (extract(epoch from clock_timestamp()) * 1000000)::bigint::text)",
            &[&HEARTBEAT_PREFIX],
        )
        .await?;
    Ok(())
}

/// Moves the slot's confirmed position to `lsn` if it is behind. Used on shutdown,
/// once the replication session has ended: pgwire-replication 0.5 sends CopyDone
/// without a last status update, so without this the final acks would be replayed.
pub async fn advance_slot(client: &Client, slot: &str, lsn: Lsn) -> Result<bool, SourceError> {
    let Some(state) = slot_state(client, slot).await? else {
        return Ok(false);
    };
    if state.confirmed_flush.is_some_and(|c| c >= lsn) {
        return Ok(false);
    }
    client
        .execute(
            "select pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&slot, &lsn.to_string()],
        )
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(wal_status: Option<&str>, reason: Option<&str>) -> SlotState {
        SlotState {
            plugin: "pgoutput".into(),
            active: false,
            confirmed_flush: None,
            wal_status: wal_status.map(str::to_string),
            failover: None,
            synced: None,
            temporary: false,
            invalidation_reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn a_slot_is_invalidated_by_lost_wal_or_any_reason_the_server_gives() {
        assert_eq!(slot(Some("reserved"), None).invalidated(), None);
        assert_eq!(
            slot(Some("lost"), None).invalidated().as_deref(),
            Some("wal_status = lost")
        );
        // PostgreSQL 18's idle timeout leaves wal_status alone and names the reason.
        assert_eq!(
            slot(Some("reserved"), Some("idle_timeout"))
                .invalidated()
                .as_deref(),
            Some("idle_timeout")
        );
    }

    #[test]
    fn failover_slots_are_on_where_supported_and_refused_where_not() {
        assert_eq!(wants_failover(None, 170_011), Ok(true));
        assert_eq!(wants_failover(None, 150_019), Ok(false));
        assert_eq!(wants_failover(Some(false), 180_006), Ok(false));
        assert_eq!(wants_failover(Some(true), 170_000), Ok(true));
        let err = wants_failover(Some(true), 160_015).unwrap_err();
        assert!(err.contains("PostgreSQL 17"), "{err}");
    }
}
