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
//!
//! Publishing a page of PENDING rows outside the stream ([`publish_and_mark`]) is shared
//! with the audit, which publishes the rows the slot skipped the same way
//! ([`super::audit`]).

use std::time::Instant;

use pgwire_replication::{ReplicationClient, ReplicationConfig};
use uuid::Uuid;

use super::error::PipelineError;
use super::poison::{self, BeforeSending, Finding, Verdict};
use super::slot::{self, SlotOptions};
use super::Pipeline;
use crate::config::SourceSettings;
use crate::format::PayloadType;
use crate::marker::Marker;
use crate::pgoutput::{self, OutboxRow};
use crate::sink::{CommitMeta, Delivery, Event, Refusal, SendError, Sink};
use crate::source::SourceError;

/// Rows read and published per page of the snapshot.
const PAGE_ROWS: i64 = 2000;

/// Creates the slot (through a temporary one), publishing the rows left PENDING
/// before it, then starts streaming from the slot's consistent point.
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
    let temp = slot::create_temporary(config, &slot, options.version).await?;
    let (start, snapshot) = (temp.consistent_point, temp.snapshot.clone());
    let consistent_point = start.to_string();
    if !p.source.marks_rows() {
        // Nothing in the table tells a row published from one that is not.
        tracing::warn!(source = %name, slot = %slot, consistent_point = %consistent_point, "creating the slot: marking = \"none\", so rows written before it are not published (there is no PENDING state to reconcile); streaming from its consistent point");
        return slot::make_permanent(client, temp, &slot, options, name).await;
    }
    tracing::info!(source = %name, slot = %temp.name, consistent_point = %consistent_point, "reconciling rows left PENDING before the slot");

    let sql = format!(
        "select {} from \"{}\".\"{}\" o \
         where status = 'PENDING' and (created_at, \"{id}\") > ($1, $2) \
         order by created_at, \"{id}\" limit {PAGE_ROWS}",
        row_columns(&p.source),
        p.source.schema,
        p.source.table,
        id = p.source.columns.id,
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
            .map(|r| event_of(r, &consistent_point, &p.source))
            .collect();
        let newest = page
            .iter()
            .map(|r| {
                r.get::<_, chrono::DateTime<chrono::Utc>>(5)
                    .timestamp_micros()
            })
            .max()
            .unwrap_or(0);
        let reconciled = p.metrics.reconciled.with_label_values(&[name]);
        publish_and_mark(p, sink, marker, &events, start, newest, &reconciled).await?;
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
    slot::make_permanent(client, temp, &slot, options, name).await
}

/// The columns [`event_of`] reads, in its order, from `source`'s table aliased `o`: the
/// roles as `[sources.columns]` names them, `created_at`, the trace context and headers
/// columns (optional, migration 0005: read through the row's JSON, null where the table
/// has none), the payload's type, then each further column with its type.
pub(super) fn row_columns(source: &SourceSettings) -> String {
    let c = &source.columns;
    let q = |n: &str| format!("o.\"{n}\"");
    let mut sql = format!(
        "{}, {}::text, {}::text, {}::text, {}::text, o.created_at, \
         to_jsonb(o) ->> 'traceparent', to_jsonb(o) ->> 'tracestate', \
         nullif(to_jsonb(o) -> 'headers', 'null')::text, pg_typeof({})::oid",
        q(&c.id),
        q(&c.aggregate_type),
        q(&c.aggregate_id),
        q(&c.event_type),
        q(&c.payload),
        q(&c.payload),
    );
    for column in c.timestamp.iter().chain(&c.extra) {
        sql.push_str(&format!(
            ", {}::text, pg_typeof({})::oid",
            q(column),
            q(column)
        ));
    }
    sql
}

/// The event of an outbox row read with [`row_columns`], mapped as the stream maps the
/// same row ([`crate::pgoutput`]); `commit_lsn` stands for the commit position the
/// row's record names (the stream's is not known here). A payload the decoder could
/// not read makes the row poison.
pub(super) fn event_of(
    r: &tokio_postgres::Row,
    commit_lsn: &str,
    source: &SourceSettings,
) -> Event {
    let id: Uuid = r.get(0);
    let created_at: chrono::DateTime<chrono::Utc> = r.get(5);
    let mut row = OutboxRow::new(id.to_string(), r.get(1), r.get(2), r.get(3), Vec::new())
        .with_metadata(
            r.get(6),
            r.get(7),
            r.get::<_, Option<String>>(8).as_deref().map(str::as_bytes),
        );
    let payload: Option<String> = r.get(4);
    let payload_oid: u32 = r.get(9);
    match pgoutput::payload_type(payload_oid) {
        Some(ty) => row.payload_type = ty,
        None => {
            row.unsendable = Some(format!(
                "payload column {} has type oid {payload_oid}: relay-cdc reads jsonb, json, text, varchar or bytea",
                source.columns.payload
            ))
        }
    }
    match payload {
        None => row.payload_null = true,
        Some(text) if row.payload_type == PayloadType::Bytea => {
            match pgoutput::bytea_hex(text.as_bytes()) {
                Ok(bytes) => row.payload = bytes,
                Err(why) => {
                    row.unsendable = Some(format!("column {}: {why}", source.columns.payload))
                }
            }
        }
        Some(text) => row.payload = text.into_bytes(),
    }
    let c = &source.columns;
    for (i, name) in c.timestamp.iter().chain(&c.extra).enumerate() {
        let cell = pgoutput::cell(r.get(11 + 2 * i), r.get(10 + 2 * i));
        if c.timestamp.as_ref() == Some(name) {
            row.time = pgoutput::cell_time(&cell);
        }
        row.columns.push((name.clone(), cell));
    }
    Event {
        row,
        commit: CommitMeta {
            lsn: commit_lsn.to_string(),
            time: created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        },
    }
}

/// Publishes one page of PENDING rows outside the stream (reconciliation, the audit's
/// orphans) and marks what Kafka took, whatever became of the rest: PROCESSED, or
/// DEAD_LETTERED under `kafka.poison = "dead-letter"`. Exactly-once: the page is one
/// Kafka transaction committed with a checkpoint at `checkpoint`, marked only once
/// committed. `settled` counts the rows published or dead-lettered. Records Kafka
/// refused for good while others were in flight end the session with
/// [`PipelineError::Replay`]: the next one tries each alone.
pub(super) async fn publish_and_mark<S: Sink>(
    p: &Pipeline,
    sink: &mut S,
    marker: &Marker,
    events: &[Event],
    checkpoint: pgwire_replication::Lsn,
    newest_micros: i64,
    settled: &prometheus::IntCounter,
) -> Result<(), PipelineError> {
    let name = &p.source.name;
    p.status.observe(Some(Instant::now()), None, true, 0);
    // Whatever became of the page, what was acked is marked before anything else.
    let mut page = Page::default();
    let mut published = publish_page(p, sink, events, &mut page).await;
    if sink.transactional() {
        // Exactly-once: the page is visible (and may be marked) only once committed.
        published = match published {
            Ok(()) if page.refused.is_empty() => commit(sink.checkpoint(checkpoint)).await,
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
    p.status.observe(None, None, true, newest_micros);
    let labels = [name.as_str()];
    settled.inc_by((page.acked.len() + page.dead.len()) as u64);
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
        // What was acked is marked; the next session publishes the rest again, trying
        // each refused record alone.
        tracing::warn!(source = %name, records = page.refused.len(), "kafka refused records for good while publishing PENDING rows; redoing it, each of them alone");
        let n = page.refused.len();
        p.suspects.suspect(page.refused);
        return Err(PipelineError::Replay(n));
    }
    Ok(())
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

/// Publishes one page and waits for its acks. Poison follows the one rule of
/// [`poison`], as in the stream; a record Kafka refused in an earlier attempt is sent
/// alone, after everything before it was answered, so its refusal is its own.
async fn publish_page<S: Sink>(
    p: &Pipeline,
    sink: &mut S,
    events: &[Event],
    page: &mut Page,
) -> Result<(), PipelineError> {
    let max = p.settings.kafka.max_record_bytes;
    let mut in_flight: Vec<InFlight> = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let alone = match poison::before_sending(e.unsendable(max), p.suspects.of(&e.row.id)) {
            BeforeSending::Poison(reason) => {
                // Known poison is dead-lettered now: no longer a suspect.
                p.suspects.answered(&e.row.id);
                let found = Finding::BeforeSending;
                if let Some(d) =
                    poisoned(p, sink, events, i, found, reason, &mut in_flight, page).await?
                {
                    in_flight.push(d);
                }
                continue;
            }
            BeforeSending::SendAlone => {
                p.suspects.answered(&e.row.id);
                true
            }
            BeforeSending::Send => false,
        };
        if let Some(f) = sink.prepare(e) {
            f.await
                .map_err(|e| PipelineError::TopicRefused(e.to_string()))?;
        }
        if alone {
            settle(p, sink, events, std::mem::take(&mut in_flight), page).await?;
        }
        let d = match send_with_backoff(sink, |s| s.send(e)).await {
            Ok(d) => d,
            Err(SendError::Poison(reason)) => {
                let found = Finding::BeforeSending;
                if let Some(d) =
                    poisoned(p, sink, events, i, found, reason, &mut in_flight, page).await?
                {
                    in_flight.push(d);
                }
                continue;
            }
            Err(other) => return Err(PipelineError::Kafka(other.to_string())),
        };
        if !alone {
            in_flight.push((i, d, None));
            continue;
        }
        // Alone in flight: a refusal now is this record's own.
        match d.await {
            Ok(()) => page.acked.push(uuid_of(e)),
            Err(Refusal::Poison { reason, .. }) => {
                let found = Finding::Alone;
                if let Some(d) =
                    poisoned(p, sink, events, i, found, reason, &mut in_flight, page).await?
                {
                    settle(p, sink, events, vec![d], page).await?;
                }
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
    for (i, d, dead) in in_flight {
        let e = &events[i];
        match (d.await, dead) {
            (Ok(()), None) => page.acked.push(uuid_of(e)),
            (Ok(()), Some(_)) => page.dead.push(uuid_of(e)),
            (Err(Refusal::Poison { reason, .. }), found) => {
                let found = match found {
                    None => Finding::InBatch,
                    Some(with_payload) => Finding::DeadLetterRefused {
                        with_payload,
                        by_kafka: true,
                    },
                };
                let mut none = Vec::new();
                let again = Box::pin(poisoned(p, sink, events, i, found, reason, &mut none, page));
                if let Some(d) = again.await? {
                    Box::pin(settle(p, sink, events, vec![d], page)).await?;
                }
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

/// Acts on what the poison rule says of record `i`, found as `finding`: its dead
/// letter, sent (to be settled), or nothing more to wait for (a suspect, filed in
/// `page`), or the error that ends reconciliation. A halt under `stop` (or for a
/// missing ACL) first settles what was sent before the record.
#[allow(clippy::too_many_arguments)]
async fn poisoned<S: Sink>(
    p: &Pipeline,
    sink: &mut S,
    events: &[Event],
    i: usize,
    finding: Finding,
    reason: String,
    in_flight: &mut Vec<InFlight>,
    page: &mut Page,
) -> Result<Option<InFlight>, PipelineError> {
    let e = &events[i];
    let verdict = poison::judge(
        p.settings.kafka.poison,
        sink.transactional(),
        finding,
        &reason,
    );
    if verdict.counts() {
        p.metrics
            .publish_failures
            .with_label_values(&[&p.source.name, "poison"])
            .inc();
    }
    if let Some(halt) = verdict.halts(&e.row.id, &reason) {
        if verdict != Verdict::Halt {
            // Halting: what was sent before it is answered (and marked) first.
            Box::pin(settle(p, sink, events, std::mem::take(in_flight), page)).await?;
        }
        return Err(halt);
    }
    match verdict {
        Verdict::DeadLetter { .. } | Verdict::ShrinkDeadLetter => {
            let with_payload = verdict == Verdict::DeadLetter { with_payload: true };
            tracing::warn!(source = %p.source.name, event_id = %e.row.id, reason = %reason, with_payload, "poison record: sending it to the dead-letter topic");
            match send_with_backoff(sink, |s| s.dead_letter(e, &reason, with_payload)).await {
                Ok(d) => Ok(Some((i, d, Some(with_payload)))),
                Err(SendError::Poison(why)) => {
                    let found = Finding::DeadLetterRefused {
                        with_payload,
                        by_kafka: false,
                    };
                    Box::pin(poisoned(p, sink, events, i, found, why, in_flight, page)).await
                }
                Err(other) => Err(PipelineError::Kafka(other.to_string())),
            }
        }
        Verdict::TryAlone => {
            page.refused.push(e.row.id.clone());
            Ok(None)
        }
        Verdict::RememberAndReplay => {
            // The refusal doomed the Kafka transaction: dead-letter it next time.
            p.suspects.know(&e.row.id, &reason);
            Err(PipelineError::Replay(1))
        }
        Verdict::AccessRefused | Verdict::Stop | Verdict::Halt => {
            unreachable!("halting verdicts returned above")
        }
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
