//! Slot creation with reconciliation: rows still PENDING when the relay first creates
//! its slot committed before the slot existed, so the slot will never carry them; they
//! are published from an exported snapshot first.
//!
//! Crash-safe by construction: the snapshot comes from a **temporary** slot, which the
//! server drops when the session ends for any reason (kill -9, a Kafka error, a
//! PostgreSQL restart). Only after every PENDING row of the snapshot was acked and
//! marked is the temporary slot copied to the permanent one
//! (`pg_copy_logical_replication_slot`, same consistent point). So a permanent slot
//! exists only once reconciliation is complete; a start that finds none redoes it
//! (resending what was acked but not marked, with the same event ids).
//!
//! Exactly-once: each page is one Kafka transaction with a checkpoint at the consistent
//! point, marked only after it committed; before the permanent slot is made, one more
//! checkpoint at the consistent point replaces any checkpoint a former slot of this
//! source left, so the new slot's stream skips nothing. A crash between a page's
//! commit and its marking sends that page once more at the next reconciliation.

use std::time::Instant;

use pgwire_replication::{ReplicationClient, ReplicationConfig};
use uuid::Uuid;

use super::session::{make_failover_slot, slot_busy_or};
use super::{Pipeline, PipelineError};
use crate::config::PoisonPolicy;
use crate::marker::Marker;
use crate::pgoutput::OutboxRow;
use crate::sink::{CommitMeta, Delivery, Event, Refusal, SendError, Sink};
use crate::source::SourceError;

/// Rows read and published per page of the snapshot.
const PAGE_ROWS: i64 = 2000;

/// The temporary slot's name: the permanent one's, marked (and within 63 characters).
pub fn temporary_slot_name(slot: &str) -> String {
    let base: String = slot.chars().take(58).collect();
    format!("{base}_init")
}

/// Creates the slot (through a temporary one), publishing the rows left PENDING
/// before it, then starts streaming from the slot's consistent point.
/// How to create the slot on this server.
#[derive(Debug, Clone, Copy)]
pub struct SlotOptions {
    /// `server_version_num`: the replication command's syntax depends on it.
    pub version: i32,
    /// Make it a failover slot (PostgreSQL 17+).
    pub failover: bool,
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

pub async fn create_slot_and_reconcile<S: Sink>(
    p: &Pipeline,
    config: ReplicationConfig,
    options: SlotOptions,
    client: &tokio_postgres::Client,
    sink: &mut S,
    marker: &Marker,
) -> Result<ReplicationClient, PipelineError> {
    let name = &p.source.name;
    let slot = p.source.slot_name();
    if !p.source.create_slot {
        return Err(SourceError::Prerequisite(format!(
            "slot {slot} is missing and create_slot = false"
        ))
        .into());
    }
    let temp = temporary_slot_name(&slot);
    let mut repl = ReplicationClient::connect_gated(config).await?;
    let rows = repl
        .simple_query(&create_temporary_slot_command(&temp, options.version))
        .await
        .map_err(|e| slot_busy_or(e, &slot))?;
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
    let start = pgwire_replication::Lsn::parse(&consistent_point).map_err(|e| {
        SourceError::Prerequisite(format!(
            "unexpected consistent point {consistent_point:?}: {e}"
        ))
    })?;
    tracing::info!(source = %name, slot = %temp, consistent_point = %consistent_point, "reconciling rows left PENDING before the slot");

    let sql = format!(
        // The trace context and headers columns are optional (migration 0005): read
        // through the row's JSON, they are null where the table has none.
        "select id, aggregate_type, aggregate_id, event_type, payload::text, created_at, \
         to_jsonb(o) ->> 'traceparent', to_jsonb(o) ->> 'tracestate', nullif(to_jsonb(o) -> 'headers', 'null')::text \
         from \"{}\".\"{}\" o \
         where status = 'PENDING' and (created_at, id) > ($1, $2) order by created_at, id limit {PAGE_ROWS}",
        p.source.schema, p.source.table
    );
    client
        .batch_execute("begin isolation level repeatable read read only")
        .await
        .map_err(SourceError::from)?;
    client
        .batch_execute(&format!("set transaction snapshot '{snapshot}'"))
        .await
        .map_err(SourceError::from)?;
    // Keyset pagination from before any plausible row (1900-01-01).
    let mut after: (chrono::DateTime<chrono::Utc>, Uuid) = (
        chrono::DateTime::from_timestamp(-2_208_988_800, 0).expect("valid time"),
        Uuid::nil(),
    );
    let mut total = 0usize;
    loop {
        let page = client
            .query(&sql, &[&after.0, &after.1])
            .await
            .map_err(SourceError::from)?;
        let Some(last) = page.last() else { break };
        after = (last.get(5), last.get(0));
        let events: Vec<Event> = page
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                let created_at: chrono::DateTime<chrono::Utc> = r.get(5);
                Event {
                    row: OutboxRow::new(
                        id.to_string(),
                        r.get(1),
                        r.get(2),
                        r.get(3),
                        r.get::<_, String>(4).into_bytes(),
                    )
                    .with_metadata(
                        r.get(6),
                        r.get(7),
                        r.get::<_, Option<String>>(8).as_deref().map(str::as_bytes),
                    ),
                    commit: CommitMeta {
                        lsn: consistent_point.clone(),
                        time: created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    },
                }
            })
            .collect();
        let newest = page
            .iter()
            .map(|r| {
                r.get::<_, chrono::DateTime<chrono::Utc>>(5)
                    .timestamp_micros()
            })
            .max()
            .unwrap_or(0);
        p.status.observe(Some(Instant::now()), None, true, 0);
        // Whatever became of the page, what was acked is marked before anything else.
        let mut page = Page::default();
        let mut published = publish_page(p, sink, &events, &mut page).await;
        if sink.transactional() {
            // Exactly-once: the page is visible (and may be marked) only once committed.
            published = match published {
                Ok(()) if page.refused.is_empty() => commit(sink.checkpoint(start)).await,
                other => {
                    sink.abort("the page was not published whole");
                    other
                }
            };
            if published.is_err() || !page.refused.is_empty() {
                page.acked.clear();
                page.dead.clear();
            }
        }
        p.status.observe(None, Some(Instant::now()), true, 0);
        let mut conn = marker.mark(None, &page.acked, "PROCESSED").await;
        if !page.dead.is_empty() {
            conn = marker.mark(conn, &page.dead, "DEAD_LETTERED").await;
        }
        drop(conn);
        p.status.observe(None, None, true, newest);
        let labels = [name.as_str()];
        p.metrics
            .reconciled
            .with_label_values(&labels)
            .inc_by((page.acked.len() + page.dead.len()) as u64);
        p.metrics
            .events_published
            .with_label_values(&labels)
            .inc_by(page.acked.len() as u64);
        p.metrics
            .dead_lettered
            .with_label_values(&labels)
            .inc_by(page.dead.len() as u64);
        published?;
        if !page.refused.is_empty() {
            // What was acked is marked; the temporary slot goes with this session and
            // the next one reconciles again, trying each refused record alone.
            tracing::warn!(source = %name, records = page.refused.len(), "kafka refused records for good during reconciliation; redoing it, each of them alone");
            let n = page.refused.len();
            p.suspects
                .lock()
                .expect("not poisoned")
                .extend(page.refused.into_iter().map(|id| (id, None)));
            return Err(PipelineError::Replay(n));
        }
        total += events.len();
    }
    client
        .batch_execute("commit")
        .await
        .map_err(SourceError::from)?;
    commit(sink.checkpoint(start)).await?;
    if total > 0 {
        tracing::info!(source = %name, events = total, "published rows left PENDING before the slot existed");
    }
    // Reconciliation is complete: only now does the permanent slot exist.
    client
        .execute(
            "select pg_copy_logical_replication_slot($1, $2, false)",
            &[&temp, &slot],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) {
                PipelineError::SlotBusy(slot.clone())
            } else {
                SourceError::from(e).into()
            }
        })?;
    repl.simple_query(&format!("DROP_REPLICATION_SLOT \"{temp}\""))
        .await?;
    // pg_copy_logical_replication_slot never copies the failover flag: set it now. A
    // failure here leaves a plain slot, which the next session turns into a failover one.
    if options.failover {
        make_failover_slot(&mut repl, &slot).await?;
    }
    tracing::info!(source = %name, slot = %slot, consistent_point = %consistent_point, failover = options.failover, "created slot");
    repl.start().await?;
    repl.wait_started()
        .await
        .map_err(|e| slot_busy_or(e, &slot))?;
    Ok(repl)
}

/// Waits for a transactional sink's commit (nothing to wait for otherwise).
async fn commit(committed: Option<Delivery>) -> Result<(), PipelineError> {
    match committed {
        None => Ok(()),
        Some(d) => d.await.map_err(|r| match r {
            Refusal::Fenced(why) => PipelineError::Fenced(why),
            other => PipelineError::Delivery(other.to_string()),
        }),
    }
}

/// What became of one page.
#[derive(Default)]
struct Page {
    acked: Vec<Uuid>,
    dead: Vec<Uuid>,
    /// Refused by Kafka for good while other records were in flight: suspects.
    refused: Vec<String>,
}

/// A record sent and not yet answered: its index, delivery, and whether it is a dead
/// letter (and carries the payload).
type InFlight = (usize, Delivery, Option<bool>);

/// Publishes one page and waits for its acks. Poison follows `kafka.poison` as in the
/// stream; a record Kafka refused in an earlier attempt is sent alone, after
/// everything before it was answered, so its refusal is its own.
async fn publish_page<S: Sink>(
    p: &Pipeline,
    sink: &mut S,
    events: &[Event],
    page: &mut Page,
) -> Result<(), PipelineError> {
    let policy = p.settings.kafka.poison;
    let max = p.settings.kafka.max_record_bytes;
    let mut in_flight: Vec<InFlight> = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if let Some(reason) = e.unsendable(max) {
            if policy == PoisonPolicy::Stop {
                // Halting: what was sent before it is answered (and marked) first.
                settle(p, sink, events, std::mem::take(&mut in_flight), page).await?;
            }
            let d = dead_letter(p, sink, e, &reason, false, policy).await?;
            in_flight.push((i, d, Some(false)));
            continue;
        }
        if let Some(f) = sink.prepare(e) {
            f.await
                .map_err(|e| PipelineError::TopicRefused(e.to_string()))?;
        }
        let suspect = p.suspects.lock().expect("not poisoned").remove(&e.row.id);
        if let Some(Some(reason)) = suspect {
            // Known poison (refused alone in a transaction that was aborted for it).
            if policy == PoisonPolicy::Stop {
                settle(p, sink, events, std::mem::take(&mut in_flight), page).await?;
            }
            let d = dead_letter(p, sink, e, &reason, false, policy).await?;
            in_flight.push((i, d, Some(false)));
            continue;
        }
        let suspect = suspect.is_some();
        if suspect {
            settle(p, sink, events, std::mem::take(&mut in_flight), page).await?;
        }
        let d = match send_with_backoff(sink, |s| s.send(e)).await {
            Ok(d) => d,
            Err(SendError::Poison(reason)) => {
                if policy == PoisonPolicy::Stop {
                    settle(p, sink, events, std::mem::take(&mut in_flight), page).await?;
                }
                let d = dead_letter(p, sink, e, &reason, false, policy).await?;
                in_flight.push((i, d, Some(false)));
                continue;
            }
            Err(other) => return Err(PipelineError::Kafka(other.to_string())),
        };
        if !suspect {
            in_flight.push((i, d, None));
            continue;
        }
        // Alone in flight: a refusal now is this record's own.
        match d.await {
            Ok(()) => page.acked.push(uuid_of(e)),
            Err(Refusal::Poison { reason, .. })
                if sink.transactional() && policy == PoisonPolicy::DeadLetter =>
            {
                // The refusal doomed the Kafka transaction: dead-letter it next time.
                p.suspects
                    .lock()
                    .expect("not poisoned")
                    .insert(e.row.id.clone(), Some(reason));
                return Err(PipelineError::Replay(1));
            }
            Err(Refusal::Poison { reason, .. }) => {
                let d = dead_letter(p, sink, e, &reason, true, policy).await?;
                settle(p, sink, events, vec![(i, d, Some(true))], page).await?;
            }
            Err(Refusal::Fatal(why)) => return Err(PipelineError::Delivery(why)),
            Err(Refusal::Fenced(why)) => return Err(PipelineError::Fenced(why)),
        }
    }
    settle(p, sink, events, in_flight, page).await
}

/// Waits for every record in flight, in order, and files each answer in `page`.
async fn settle<S: Sink>(
    p: &Pipeline,
    sink: &mut S,
    events: &[Event],
    in_flight: Vec<InFlight>,
    page: &mut Page,
) -> Result<(), PipelineError> {
    let policy = p.settings.kafka.poison;
    for (i, d, dead) in in_flight {
        let e = &events[i];
        match (d.await, dead) {
            (Ok(()), None) => page.acked.push(uuid_of(e)),
            (Ok(()), Some(_)) => page.dead.push(uuid_of(e)),
            (Err(Refusal::Poison { .. }), None) => page.refused.push(e.row.id.clone()),
            (Err(Refusal::Poison { reason, .. }), Some(true)) => {
                // The dead-letter topic refused the payload: send it without.
                dead_letter(p, sink, e, &reason, false, policy)
                    .await?
                    .await
                    .map_err(|r| poison_error(e, &r.to_string()))?;
                page.dead.push(uuid_of(e));
            }
            (Err(r @ Refusal::Poison { .. }), Some(false)) => {
                return Err(poison_error(e, &r.to_string()))
            }
            (Err(Refusal::Fatal(why)), _) => return Err(PipelineError::Delivery(why)),
            (Err(Refusal::Fenced(why)), _) => return Err(PipelineError::Fenced(why)),
        }
    }
    Ok(())
}

fn uuid_of(e: &Event) -> Uuid {
    Uuid::parse_str(&e.row.id).expect("the outbox id column is a uuid")
}

async fn dead_letter<S: Sink>(
    p: &Pipeline,
    sink: &mut S,
    e: &Event,
    reason: &str,
    with_payload: bool,
    policy: PoisonPolicy,
) -> Result<Delivery, PipelineError> {
    p.metrics
        .publish_failures
        .with_label_values(&[&p.source.name, "poison"])
        .inc();
    if policy == PoisonPolicy::Stop {
        return Err(poison_error(e, reason));
    }
    tracing::warn!(source = %p.source.name, event_id = %e.row.id, reason = %reason, "poison record: sending it to the dead-letter topic");
    send_with_backoff(sink, |s| s.dead_letter(e, reason, with_payload))
        .await
        .map_err(|err| {
            poison_error(
                e,
                &format!("{reason}; the dead-letter topic refused it: {err}"),
            )
        })
}

fn poison_error(e: &Event, reason: &str) -> PipelineError {
    PipelineError::Poison {
        event_id: e.row.id.clone(),
        reason: reason.to_string(),
    }
}

/// Sends, waiting out back-pressure (reconciliation runs before the stream loop).
async fn send_with_backoff<S: Sink>(
    sink: &mut S,
    mut send: impl FnMut(&mut S) -> Result<Delivery, SendError>,
) -> Result<Delivery, SendError> {
    loop {
        match send(sink) {
            Err(SendError::Full) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
