//! The source's replication slot: found at a session's start and held against what the
//! supervisor confirmed before, streamed from, created through a temporary slot (for
//! [`super::reconcile`]), made a failover slot, and advanced to the final position after
//! a session ended.

use std::future::Future;
use std::time::{Duration, Instant};

use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
};

use super::error::PipelineError;
use crate::config::{Capture, Endpoint, SourceSettings};
use crate::metrics::Metrics;
use crate::source::{self, SlotState, SourceError};

/// The slot found at a session's start against what this process confirmed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotFinding {
    /// Where this process left it, or a first start.
    AsLeft,
    /// Gone although progress was confirmed on it: a failover to a server without it.
    Missing,
    /// Behind the confirmed position (a synced copy): the gap is sent again.
    Behind(Lsn),
    /// Ahead of the confirmed position: moved by someone else (`pg_replication_slot_advance`,
    /// a slot recreated at the current position, a promoted standby's synced copy). The
    /// transactions between were never streamed: the session's first audit round finds
    /// their rows still PENDING and publishes them.
    Ahead(Lsn),
}

/// `confirmed_before` is 0/0 when this process confirmed nothing yet.
pub(super) fn slot_finding(state: Option<&SlotState>, confirmed_before: Lsn) -> SlotFinding {
    match state {
        None if confirmed_before.as_u64() > 0 => SlotFinding::Missing,
        Some(st) => match st.confirmed_flush {
            Some(c) if c < confirmed_before => SlotFinding::Behind(c),
            Some(c) if c > confirmed_before && confirmed_before.as_u64() > 0 => {
                SlotFinding::Ahead(c)
            }
            _ => SlotFinding::AsLeft,
        },
        None => SlotFinding::AsLeft,
    }
}

/// The slot's state at a session's start (`None`: there is none, or the server had
/// invalidated it and it was dropped), told apart from what this process confirmed
/// before. A slot another session streams is [`PipelineError::SlotBusy`]. A slot ahead
/// of what this process confirmed is said (ERROR, `relay_slot_ahead_total`) and given
/// back as the `Ahead` positions for the session's first audit round.
pub async fn look_up(
    client: &tokio_postgres::Client,
    source: &SourceSettings,
    primary: &Endpoint,
    confirmed_before: Lsn,
    metrics: &Metrics,
) -> Result<(Option<SlotState>, Option<Ahead>), PipelineError> {
    let name = &source.name;
    let slot = source.slot_name();
    let mut state = source::slot_state(client, &slot).await?;
    let mut ahead = None;
    let unmarked = !source.marks_rows();
    let why = match source.capture {
        Capture::Messages => "capture = \"messages\" (no table)",
        Capture::Table => "marking = \"none\"",
    };
    if let Some(reason) = state.as_ref().and_then(|st| st.invalidated()) {
        if unmarked {
            return Err(PipelineError::SlotLost(format!(
                "slot {slot} was invalidated by the server ({reason}) and {why}: the events it had not delivered cannot be recovered from the database"
            )));
        }
        tracing::warn!(source = %name, slot = %slot, reason = %reason, "slot was invalidated by the server; recreating it");
        source::drop_slot(client, &slot).await?;
        state = None;
    }
    match slot_finding(state.as_ref(), confirmed_before) {
        SlotFinding::Missing if unmarked => {
            return Err(PipelineError::SlotLost(format!(
                "the slot {slot} this relay streamed from (confirmed up to {confirmed_before}) is missing on {primary} and {why}: the events it had not delivered cannot be recovered from the database"
            )));
        }
        SlotFinding::Missing => {
            metrics.slot_recreated.with_label_values(&[name]).inc();
            tracing::error!(
                source = %name, slot = %slot, server = %primary, confirmed_before = %confirmed_before,
                "the slot this relay streamed from is missing on the primary (a failover to a server without a synced slot, or a dropped slot): creating it and publishing every row still PENDING; rows the old slot had not confirmed are sent again, possibly out of commit order across the gap"
            );
        }
        SlotFinding::Behind(slot_confirmed) => {
            tracing::warn!(
                source = %name, slot = %slot, server = %primary,
                slot_confirmed = %slot_confirmed,
                confirmed_before = %confirmed_before,
                "the slot is behind what this relay already confirmed (a synced slot after a failover): the transactions between are sent again, with the same event ids"
            );
        }
        SlotFinding::Ahead(slot_confirmed) => {
            metrics.slot_ahead.with_label_values(&[name]).inc();
            tracing::error!(
                source = %name, slot = %slot, server = %primary,
                slot_confirmed = %slot_confirmed,
                confirmed_before = %confirmed_before,
                "the slot is ahead of what this relay confirmed: someone moved it (pg_replication_slot_advance, a slot recreated at the current position, a promoted standby's synced slot); the transactions between were never published: the audit looks for their rows at once and publishes those still PENDING"
            );
            ahead = Some(Ahead {
                slot: slot_confirmed,
                record: confirmed_before,
                of: Record::Confirmed,
            });
        }
        SlotFinding::AsLeft => {}
    }
    if state.as_ref().is_some_and(|st| st.active) {
        return Err(PipelineError::SlotBusy(slot));
    }
    Ok((state, ahead))
}

/// A slot's confirmed position ahead of the relay's own record of where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    /// The slot's `confirmed_flush_lsn`.
    pub slot: Lsn,
    /// The relay's record.
    pub record: Lsn,
    pub of: Record,
}

/// Which record of the relay a slot was ahead of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// What this process confirmed on the slot: ahead of it is a contradiction.
    Confirmed,
    /// Exactly-once: the source's checkpoint in Kafka. Heartbeats and transactions
    /// without outbox rows are confirmed without a checkpoint, so ahead of it is not a
    /// contradiction by itself; it is one if rows committed between are still PENDING.
    Checkpoint,
}

impl Record {
    pub fn describe(self) -> &'static str {
        match self {
            Record::Confirmed => "what this relay confirmed",
            Record::Checkpoint => "the kafka checkpoint",
        }
    }
}

/// Exactly-once: the slot ahead of the source's checkpoint in Kafka (`None` without
/// one, or when the slot is not ahead).
pub fn ahead_of_checkpoint(state: Option<&SlotState>, checkpoint: Option<Lsn>) -> Option<Ahead> {
    let slot = state?.confirmed_flush?;
    let record = checkpoint?;
    (slot > record).then_some(Ahead {
        slot,
        record,
        of: Record::Checkpoint,
    })
}

/// The replication connection of a session, to the primary found at its start.
pub fn replication_config(
    source: &SourceSettings,
    primary: &Endpoint,
    status_interval: Duration,
) -> ReplicationConfig {
    ReplicationConfig::new(
        primary.host.clone(),
        source.user.clone(),
        source.password.expose_secret().to_string(),
        source.database.clone(),
        source.slot_name(),
        source.publication.clone(),
    )
    .with_port(primary.port)
    .with_tls(source.tls().replication(&primary.host))
    .with_status_interval(status_interval)
    .with_wakeup_interval(Duration::from_secs(5))
    .with_application_name(format!("relay-cdc/{}", source.name))
}

/// Starts streaming from the slot that exists, from its confirmed position; a slot made
/// before failover slots were on (or on an older server) becomes one first.
pub async fn stream_from(
    config: ReplicationConfig,
    state: &SlotState,
    failover: bool,
    source: &str,
) -> Result<ReplicationClient, PipelineError> {
    let slot = config.slot.clone();
    if failover && state.failover == Some(false) {
        let mut r = ReplicationClient::connect_gated(config).await?;
        make_failover_slot(&mut r, &slot).await?;
        tracing::info!(source = %source, slot = %slot, "the slot is now a failover slot");
        r.start().await?;
        r.wait_started().await.map_err(|e| slot_busy_or(e, &slot))?;
        return Ok(r);
    }
    let mut r = ReplicationClient::connect(config).await?;
    r.wait_started().await.map_err(|e| slot_busy_or(e, &slot))?;
    Ok(r)
}

/// `ALTER_REPLICATION_SLOT … (FAILOVER true)` on a gated replication connection (the
/// slot must not be in use): standbys with `sync_replication_slots` then keep a copy.
pub async fn make_failover_slot(
    repl: &mut ReplicationClient,
    slot: &str,
) -> Result<(), PipelineError> {
    repl.simple_query(&format!(
        "ALTER_REPLICATION_SLOT \"{slot}\" (FAILOVER true)"
    ))
    .await
    .map_err(|e| slot_busy_or(e, slot))?;
    Ok(())
}

/// A replication error that says another session holds (or just made) the slot is
/// [`PipelineError::SlotBusy`]: the standby's wait, not a failure.
pub fn slot_busy_or(e: PgWireError, slot: &str) -> PipelineError {
    let text = e.to_string();
    if text.contains("55006")
        || text.contains("is active for PID")
        || text.contains("42710")
        || text.contains("already exists")
    {
        PipelineError::SlotBusy(slot.to_string())
    } else {
        e.into()
    }
}

/// How to create the slot on this server.
#[derive(Debug, Clone, Copy)]
pub struct SlotOptions {
    /// `server_version_num`: the replication command's syntax depends on it.
    pub version: i32,
    /// Make it a failover slot (PostgreSQL 17+).
    pub failover: bool,
}

/// The temporary slot's name: the permanent one's, marked (and within 63 characters).
pub fn temporary_slot_name(slot: &str) -> String {
    let base: String = slot.chars().take(58).collect();
    format!("{base}_init")
}

/// `CREATE_REPLICATION_SLOT` of the temporary slot with an exported snapshot: the
/// parenthesised options came with PostgreSQL 15; 14 knows only the older keywords.
pub fn create_temporary_slot_command(temp: &str, version: i32) -> String {
    if version < 150_000 {
        format!("CREATE_REPLICATION_SLOT \"{temp}\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT")
    } else {
        format!("CREATE_REPLICATION_SLOT \"{temp}\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')")
    }
}

/// A temporary slot and the snapshot it exported, held by the gated replication
/// connection that made it: the server drops the slot when that connection ends, for
/// any reason.
pub struct TemporarySlot {
    pub repl: ReplicationClient,
    pub name: String,
    /// Where the slot's stream starts: everything committed before is in the snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot: String,
}

/// Creates the temporary slot of `slot`, with an exported snapshot.
pub async fn create_temporary(
    config: ReplicationConfig,
    slot: &str,
    version: i32,
) -> Result<TemporarySlot, PipelineError> {
    let name = temporary_slot_name(slot);
    let mut repl = ReplicationClient::connect_gated(config).await?;
    let rows = repl
        .simple_query(&create_temporary_slot_command(&name, version))
        .await
        .map_err(|e| slot_busy_or(e, slot))?;
    let text = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i).cloned().flatten())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let (consistent_point, snapshot) = (text(1), text(2));
    if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(
            SourceError::Prerequisite(format!("unexpected snapshot name {snapshot:?}")).into(),
        );
    }
    let consistent_point = Lsn::parse(&consistent_point).map_err(|e| {
        SourceError::Prerequisite(format!(
            "unexpected consistent point {consistent_point:?}: {e}"
        ))
    })?;
    Ok(TemporarySlot {
        repl,
        name,
        consistent_point,
        snapshot,
    })
}

/// Copies the temporary slot to the permanent `slot` (same consistent point), drops the
/// temporary one, sets the failover flag, and starts streaming from the new slot.
pub async fn make_permanent(
    client: &tokio_postgres::Client,
    temp: TemporarySlot,
    slot: &str,
    options: SlotOptions,
    source: &str,
) -> Result<ReplicationClient, PipelineError> {
    let TemporarySlot {
        mut repl,
        name,
        consistent_point,
        ..
    } = temp;
    client
        .execute(
            "select pg_copy_logical_replication_slot($1, $2, false)",
            &[&name, &slot],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) {
                PipelineError::SlotBusy(slot.to_string())
            } else {
                SourceError::from(e).into()
            }
        })?;
    repl.simple_query(&format!("DROP_REPLICATION_SLOT \"{name}\""))
        .await?;
    // pg_copy_logical_replication_slot never copies the failover flag: set it now. A
    // failure here leaves a plain slot, which the next session turns into a failover one.
    if options.failover {
        make_failover_slot(&mut repl, slot).await?;
    }
    tracing::info!(source = %source, slot = %slot, consistent_point = %consistent_point, failover = options.failover, "created slot");
    repl.start().await?;
    repl.wait_started()
        .await
        .map_err(|e| slot_busy_or(e, slot))?;
    Ok(repl)
}

/// Makes the final confirmed position reach the server once the session ended:
/// pgwire-replication 0.5 ends a session with CopyDone but without a last status
/// update, so without this the final acks would be replayed after every restart.
pub async fn persist_final_position(source: &SourceSettings, slot: &str, lsn: Lsn) -> bool {
    let name = &source.name;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let c = source::connect(source).await?;
            match source::slot_state(&c, slot).await? {
                Some(st) if st.active => Ok(false),
                _ => source::advance_slot(&c, slot, lsn).await.map(|_| true),
            }
        };
        match attempt.await {
            Ok(true) => {
                tracing::info!(source = %name, lsn = %lsn, "final position confirmed");
                return true;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "could not persist the final position")
            }
        }
        if Instant::now() > deadline {
            tracing::warn!(source = %name, lsn = %lsn, "gave up persisting the final position; it will be replayed");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The replication stream as the loop sees it: events in, confirmed positions out.
pub trait Wal: Send {
    fn recv(
        &mut self,
    ) -> impl Future<Output = Result<Option<ReplicationEvent>, PgWireError>> + Send;
    /// Reports `lsn` as flushed at the next status interval.
    fn confirm(&mut self, lsn: Lsn);
}

impl Wal for ReplicationClient {
    fn recv(
        &mut self,
    ) -> impl Future<Output = Result<Option<ReplicationEvent>, PgWireError>> + Send {
        ReplicationClient::recv(self)
    }

    fn confirm(&mut self, lsn: Lsn) {
        self.update_applied_lsn(lsn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_lagging_slot_is_told_apart_from_a_first_start() {
        let at = |lsn: Option<u64>| SlotState {
            plugin: "pgoutput".into(),
            active: false,
            confirmed_flush: lsn.map(Lsn::from_u64),
            wal_status: None,
            failover: None,
            synced: None,
            temporary: false,
            invalidation_reason: None,
        };
        let zero = Lsn::from_u64(0);
        let before = Lsn::from_u64(0x5000);
        assert_eq!(slot_finding(None, zero), SlotFinding::AsLeft, "first start");
        assert_eq!(slot_finding(None, before), SlotFinding::Missing);
        assert_eq!(
            slot_finding(Some(&at(Some(0x4000))), before),
            SlotFinding::Behind(Lsn::from_u64(0x4000))
        );
        assert_eq!(
            slot_finding(Some(&at(Some(0x5000))), before),
            SlotFinding::AsLeft
        );
        assert_eq!(
            slot_finding(Some(&at(Some(0x4000))), zero),
            SlotFinding::AsLeft,
            "nothing confirmed yet: no record to be ahead of"
        );
        assert_eq!(
            slot_finding(Some(&at(Some(0x6000))), before),
            SlotFinding::Ahead(Lsn::from_u64(0x6000)),
            "moved past what this process confirmed"
        );
        assert_eq!(slot_finding(Some(&at(None)), before), SlotFinding::AsLeft);
    }

    #[test]
    fn a_slot_past_the_kafka_checkpoint_is_reported_with_both_positions() {
        let at = |lsn: u64| SlotState {
            plugin: "pgoutput".into(),
            active: false,
            confirmed_flush: Some(Lsn::from_u64(lsn)),
            wal_status: None,
            failover: None,
            synced: None,
            temporary: false,
            invalidation_reason: None,
        };
        let checkpoint = Some(Lsn::from_u64(0x5000));
        assert_eq!(
            ahead_of_checkpoint(Some(&at(0x7000)), checkpoint),
            Some(Ahead {
                slot: Lsn::from_u64(0x7000),
                record: Lsn::from_u64(0x5000),
                of: Record::Checkpoint
            })
        );
        assert_eq!(ahead_of_checkpoint(Some(&at(0x5000)), checkpoint), None);
        assert_eq!(ahead_of_checkpoint(Some(&at(0x4000)), checkpoint), None);
        assert_eq!(ahead_of_checkpoint(Some(&at(0x7000)), None), None);
        assert_eq!(ahead_of_checkpoint(None, checkpoint), None);
    }

    #[test]
    fn the_temporary_slot_is_created_in_the_servers_own_syntax() {
        assert_eq!(
            create_temporary_slot_command("s_init", 140_023),
            "CREATE_REPLICATION_SLOT \"s_init\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        for v in [150_019, 170_011, 180_006] {
            assert!(
                create_temporary_slot_command("s_init", v).ends_with("(SNAPSHOT 'export')"),
                "{v}"
            );
        }
    }

    #[test]
    fn the_temporary_slot_name_is_marked_and_fits_postgres_limit() {
        assert_eq!(temporary_slot_name("relay_users_db"), "relay_users_db_init");
        let long = "s".repeat(63);
        assert_eq!(temporary_slot_name(&long).len(), 63);
    }
}
