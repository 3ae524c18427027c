//! The audit: closes the loop between the outbox table and the slot. The relay streams
//! what the slot carries; whatever the slot skips (moved by
//! `pg_replication_slot_advance` while the relay was stopped, a publication that lost
//! the table for a while, a decoding bug) would otherwise stay PENDING forever while
//! everything looks healthy. The table is the ground truth, so the audit checks the
//! slot against it and publishes what the slot skipped.
//!
//! A round as the session starts streaming, then every `pipeline.audit_interval_ms` (0:
//! off) beside it, on a connection of its own:
//! 1. **One statement** notes the ids of PENDING rows created more than
//!    `pipeline.audit_grace_ms` ago (oldest first by `(created_at, id)`, at most
//!    `pipeline.audit_max_rows`) and writes a heartbeat with
//!    `pg_logical_emit_message(false, HEARTBEAT_PREFIX, …)`, which returns the
//!    message's LSN L ([`note`]).
//! 2. When the session's confirmed position reaches L, a second query asks which of the
//!    noted rows are still PENDING: those are orphans ([`orphans`], the rule).
//! 3. Orphans end the session with [`PipelineError::Orphans`]; the supervisor starts
//!    the next one at once, which first publishes exactly those rows (fetched by id,
//!    still PENDING, in `(created_at, id)` order) through reconciliation's path and
//!    marks them ([`publish_orphans`]), then streams. Their event ids are their row ids,
//!    as always: consumers deduplicate them as after any re-send.
//!
//! Why a row in flight is never taken for an orphan:
//! - **Visibility ⇒ its commit record is before L.** A statement reads one snapshot,
//!   taken before it runs; a transaction becomes visible to snapshots only after its
//!   commit record is in the WAL; the message is written while the statement runs. So
//!   every noted row committed before L, and logical decoding hands its transaction to
//!   the slot's reader before the message at L.
//! - **Confirmation ⇒ acked and marked.** The session confirms a position only after
//!   Kafka acked and the marker marked every unit before it ([`super::progress`]), and
//!   the marker's update has committed by then. So once the session confirmed ≥ L,
//!   every row the slot carried before L is PROCESSED, or DEAD_LETTERED (not PENDING:
//!   never an orphan), and the second query sees it.
//! - Hence a noted row still PENDING then committed before L and was never carried by
//!   the slot: skipped.
//! - **Only the session that wrote L judges by it.** Its confirmed position comes from a
//!   `watch` fed where its streamer confirms (state, never a metric read back). A
//!   session that ends before confirming L drops the round; the next session's audit
//!   starts a new one.
//!
//! The grace keeps rows most likely still in flight out of a round: they would only make
//! it wait longer, never make it wrong. While a round waits for L (a Kafka outage, a
//! backlog), no other round starts. The first round of a session has no grace: rows
//! committed just before a start are the ones a slot moved while the relay was down
//! skipped, and finding them then takes seconds, not an interval.
//!
//! A slot found ahead of the relay's own record at the session's start
//! ([`super::slot::Ahead`]: of what this process confirmed, or exactly-once of the
//! checkpoint in Kafka) is judged by that first round: orphans then are an ERROR naming
//! both positions.
//!
//! Cost per round: the two queries. The first walks the `(created_at, id)` index from the
//! oldest row until it has `audit_max_rows` PENDING rows older than the grace, so it also
//! reads the PROCESSED rows older than those (retention keeps them few); the second looks
//! the noted ids up by primary key.
//!
//! Exactly-once: each page of orphans is one Kafka transaction committed with a
//! checkpoint at the slot's position (or the checkpoint found, if later), which skips
//! nothing the slot still carries. An orphan's record names L as its `commit_lsn` (its
//! transaction committed before; the stream never told where).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgwire_replication::Lsn;
use tokio::sync::{oneshot, watch};
use tokio_postgres::Client;
use uuid::Uuid;

pub use super::error::Found;
use super::error::PipelineError;
use super::housekeeping::Tasks;
use super::reconcile;
use super::slot::Ahead;
use super::Pipeline;
use crate::config::SourceSettings;
use crate::marker::Marker;
use crate::sink::{Event, Sink};
use crate::source::{self, SourceError, HEARTBEAT_PREFIX};
use crate::status::{AuditResult, SourceStatus};

/// Orphans fetched and published per page.
const PAGE_ROWS: usize = 2000;

/// What a round noted in its one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The LSN of the heartbeat written in the same statement.
    pub lsn: Lsn,
    /// PENDING rows older than the grace: (id, created_at), oldest first.
    pub noted: Vec<(Uuid, DateTime<Utc>)>,
}

/// The rule. Given the rows a round noted PENDING, those still PENDING after, the
/// position the session has confirmed and the round's LSN: `None` while the verdict
/// must wait (nothing or less than the round's LSN confirmed), else the noted rows
/// still PENDING, in the order they were noted: the slot skipped them.
pub fn orphans<Id: Clone + Eq + Hash>(
    noted: &[Id],
    still_pending: &[Id],
    confirmed: Option<Lsn>,
    round_lsn: Lsn,
) -> Option<Vec<Id>> {
    if confirmed.is_none_or(|c| c < round_lsn) {
        return None;
    }
    let pending: HashSet<&Id> = still_pending.iter().collect();
    Some(
        noted
            .iter()
            .filter(|id| pending.contains(id))
            .cloned()
            .collect(),
    )
}

/// The round's statement: notes PENDING rows older than `grace` (at most `max_rows`,
/// oldest first) and writes a heartbeat, in one snapshot; see the module's doc for why
/// it must be one statement.
pub async fn note(
    client: &Client,
    s: &SourceSettings,
    grace: Duration,
    max_rows: usize,
) -> Result<Round, SourceError> {
    // Identifiers are validated by config (letters, digits, _): safe to quote. The
    // message's content is a heartbeat's, so the stream treats it as one.
    let sql = format!(
        "with noted as (select \"{id}\" as id, created_at from \"{s}\".\"{t}\" \
         where status = 'PENDING' and created_at < now() - make_interval(secs => $2) \
         order by created_at, \"{id}\" limit $3) \
         select coalesce((select array_agg(id order by created_at, id) from noted), '{{}}'), \
         coalesce((select array_agg(created_at order by created_at, id) from noted), '{{}}'), \
         pg_logical_emit_message(false, $1, (extract(epoch from clock_timestamp()) * 1000000)::bigint::text)::text",
        s = s.schema,
        t = s.table,
        id = s.columns.id,
    );
    let row = client
        .query_one(
            &sql,
            &[&HEARTBEAT_PREFIX, &grace.as_secs_f64(), &(max_rows as i64)],
        )
        .await?;
    let ids: Vec<Uuid> = row.get(0);
    let created: Vec<DateTime<Utc>> = row.get(1);
    let lsn: String = row.get(2);
    let lsn = Lsn::parse(&lsn).map_err(|e| {
        SourceError::Prerequisite(format!("server returned an unreadable LSN {lsn:?}: {e}"))
    })?;
    Ok(Round {
        lsn,
        noted: ids.into_iter().zip(created).collect(),
    })
}

/// Of `ids`, those still PENDING.
pub async fn still_pending(
    client: &Client,
    s: &SourceSettings,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, SourceError> {
    let sql = format!(
        "select id from \"{}\".\"{}\" where id = any($1) and status = 'PENDING'",
        s.schema, s.table
    );
    let ids = ids.to_vec();
    let rows = client.query(&sql, &[&ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The audit beside one streaming session (nothing when `audit_interval_ms = 0`):
/// `confirmed` is the session's confirmed position; a finding goes to `found`, which
/// ends the session. `ahead`: the slot was ahead of the relay's record at the start.
pub fn beside_session(
    p: &Pipeline,
    confirmed: watch::Receiver<Option<Lsn>>,
    found: oneshot::Sender<Found>,
    ahead: Option<Ahead>,
) -> Tasks {
    let Some(every) = p.settings.pipeline.audit_interval() else {
        return Tasks::new(vec![]);
    };
    // Without a status column nothing is PENDING: there is nothing to compare.
    if !p.source.marks_rows() {
        return Tasks::new(vec![]);
    }
    let auditor = Auditor {
        source: p.source.clone(),
        grace: p.settings.pipeline.audit_grace(),
        max_rows: p.settings.pipeline.audit_max_rows,
        status: p.status.clone(),
        ahead,
    };
    Tasks::new(vec![tokio::spawn(auditor.run(every, confirmed, found))])
}

struct Auditor {
    source: SourceSettings,
    grace: Duration,
    max_rows: usize,
    status: Arc<SourceStatus>,
    ahead: Option<Ahead>,
}

/// How a round ended.
enum Verdict {
    Clean(usize),
    Found(Found, usize),
    /// The session ended before it confirmed the round's LSN: no verdict.
    Dropped,
}

impl Auditor {
    /// Rounds until one finds orphans or the session ends.
    async fn run(
        self,
        every: Duration,
        mut confirmed: watch::Receiver<Option<Lsn>>,
        found: oneshot::Sender<Found>,
    ) {
        let name = &self.source.name;
        // The first tick is at once: the session's first round.
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client: Option<Client> = None;
        let mut first = true;
        loop {
            tick.tick().await;
            if client.as_ref().is_none_or(Client::is_closed) {
                match source::connect(&self.source).await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        tracing::debug!(source = %name, error = %e, "audit cannot connect; next round");
                        continue;
                    }
                }
            }
            let c = client.as_ref().expect("connected above");
            let grace = if first { Duration::ZERO } else { self.grace };
            let ahead = if first { self.ahead } else { None };
            first = false;
            let verdict = match self.round(c, &mut confirmed, grace).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "audit round failed; next round");
                    client = None;
                    continue;
                }
            };
            let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            match verdict {
                Verdict::Dropped => return,
                Verdict::Clean(checked) => {
                    tracing::debug!(source = %name, checked, "audit: no row skipped by the slot");
                    self.status.audited(AuditResult {
                        at,
                        checked,
                        orphans: 0,
                    });
                }
                Verdict::Found(f, checked) => {
                    if let Some(a) = ahead {
                        tracing::error!(
                            source = %name,
                            orphans = f.ids.len(),
                            slot_confirmed = %a.slot,
                            record = %a.record,
                            record_is = a.of.describe(),
                            oldest_age_seconds = f.oldest_age.as_secs(),
                            "the slot was ahead of {} at the session's start and skipped committed rows: publishing them in a new session",
                            a.of.describe()
                        );
                    } else {
                        tracing::warn!(
                            source = %name,
                            orphans = f.ids.len(),
                            checked,
                            oldest_age_seconds = f.oldest_age.as_secs(),
                            round_lsn = %f.round_lsn,
                            "audit: PENDING rows committed before a confirmed position were skipped by the slot (moved slot? publication change?); publishing them in a new session"
                        );
                    }
                    self.status.audited(AuditResult {
                        at,
                        checked,
                        orphans: f.ids.len(),
                    });
                    // The session may have ended meanwhile: the next one audits again.
                    let _ = found.send(f);
                    return;
                }
            }
        }
    }

    async fn round(
        &self,
        c: &Client,
        confirmed: &mut watch::Receiver<Option<Lsn>>,
        grace: Duration,
    ) -> Result<Verdict, SourceError> {
        let round = note(c, &self.source, grace, self.max_rows).await?;
        if round.noted.is_empty() {
            return Ok(Verdict::Clean(0));
        }
        let reached = match confirmed
            .wait_for(|c| c.is_some_and(|c| c >= round.lsn))
            .await
        {
            Ok(c) => *c,
            Err(_) => return Ok(Verdict::Dropped),
        };
        let noted: Vec<Uuid> = round.noted.iter().map(|(id, _)| *id).collect();
        let pending = still_pending(c, &self.source, &noted).await?;
        let Some(found) = orphans(&noted, &pending, reached, round.lsn) else {
            return Ok(Verdict::Dropped);
        };
        let checked = noted.len();
        let Some(first) = found.first() else {
            return Ok(Verdict::Clean(checked));
        };
        let oldest = round
            .noted
            .iter()
            .find(|(id, _)| id == first)
            .map(|(_, t)| (Utc::now() - *t).to_std().unwrap_or_default())
            .unwrap_or_default();
        Ok(Verdict::Found(
            Found {
                ids: found,
                round_lsn: round.lsn,
                oldest_age: oldest,
            },
            checked,
        ))
    }
}

/// Publishes the rows an audit found, before the session streams: fetched by id and
/// still PENDING, in `(created_at, id)` order, sent and marked as reconciliation sends
/// and marks its pages (poison rule, dead letters, exactly-once transactions with a
/// checkpoint at `checkpoint`). Counted in `relay_orphans_total`. Returns how many rows
/// were still PENDING.
pub async fn publish_orphans<S: Sink>(
    p: &Pipeline,
    client: &Client,
    sink: &mut S,
    marker: &Marker,
    found: &Found,
    checkpoint: Lsn,
) -> Result<usize, PipelineError> {
    let name = &p.source.name;
    let sql = format!(
        "select {} from \"{}\".\"{}\" o \
         where \"{id}\" = any($1) and status = 'PENDING' order by created_at, \"{id}\"",
        reconcile::row_columns(&p.source),
        p.source.schema,
        p.source.table,
        id = p.source.columns.id,
    );
    let counter = p.metrics.orphans.with_label_values(&[name]);
    let commit_lsn = found.round_lsn.to_string();
    let mut total = 0;
    // The ids are in (created_at, id) order, so pages in order keep it.
    for ids in found.ids.chunks(PAGE_ROWS) {
        let ids = ids.to_vec();
        let rows = client
            .query(&sql, &[&ids])
            .await
            .map_err(SourceError::from)?;
        if rows.is_empty() {
            continue;
        }
        let events: Vec<Event> = rows
            .iter()
            .map(|r| reconcile::event_of(r, &commit_lsn, &p.source))
            .collect();
        reconcile::publish_and_mark(p, sink, marker, &events, checkpoint, 0, &counter).await?;
        total += events.len();
    }
    tracing::info!(source = %name, events = total, found = found.ids.len(), "published the rows the slot skipped");
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(v: u64) -> Option<Lsn> {
        Some(Lsn::from_u64(v))
    }

    #[test]
    fn no_verdict_before_the_session_confirmed_the_rounds_position() {
        let noted = ["a", "b"];
        assert_eq!(orphans(&noted, &noted, None, Lsn::from_u64(0x200)), None);
        assert_eq!(
            orphans(&noted, &noted, lsn(0x1ff), Lsn::from_u64(0x200)),
            None,
            "a row still in flight before the round's heartbeat is not an orphan"
        );
    }

    #[test]
    fn noted_rows_still_pending_once_the_position_is_confirmed_are_orphans_in_noted_order() {
        let noted = ["old", "mid", "new"];
        // "mid" was streamed and marked meanwhile; the order of the second query is
        // irrelevant.
        let still = ["new", "old"];
        assert_eq!(
            orphans(&noted, &still, lsn(0x200), Lsn::from_u64(0x200)),
            Some(vec!["old", "new"])
        );
        assert_eq!(
            orphans(&noted, &still, lsn(0x900), Lsn::from_u64(0x200)),
            Some(vec!["old", "new"]),
            "a later confirmation covers the round too"
        );
    }

    #[test]
    fn rows_marked_or_dead_lettered_meanwhile_leave_nothing_to_publish() {
        let noted = ["a", "b"];
        assert_eq!(
            orphans(&noted, &[], lsn(0x200), Lsn::from_u64(0x100)),
            Some(vec![])
        );
    }

    #[test]
    fn only_noted_rows_can_be_orphans() {
        // A row PENDING now but not noted (younger than the grace, or committed after
        // the round's snapshot) may be in flight: never judged by this round.
        assert_eq!(
            orphans(&["a"], &["a", "young"], lsn(0x200), Lsn::from_u64(0x100)),
            Some(vec!["a"])
        );
    }
}
