//! One replication session of one source: preflight (prerequisites, publication, the
//! slot as found), the sink, the start (reconciliation when the slot is new; the rows
//! the last session's audit found the slot had skipped), the stream loop
//! ([`super::streamer`]) with the audit beside it ([`super::audit`]), and teardown.
//!
//! Teardown keeps the confirmation invariant: after a shutdown or a poison record under
//! `stop`, what the loop confirmed is made to reach the server
//! ([`slot::persist_final_position`]); after an error, nothing more is confirmed and
//! the unconfirmed tail is sent again by the next session.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient};
use tokio::sync::{oneshot, Notify};

use super::audit::{self, Found};
use super::error::PipelineError;
use super::slot::{self, SlotOptions};
use super::stream::Limits;
use super::streamer::{StreamConfig, Streamer};
use super::{housekeeping, reconcile, Pipeline};
use crate::config::{Delivery as DeliveryMode, PoisonPolicy};
use crate::marker::{Marker, MarkerLink};
use crate::sink::checkpoint;
use crate::sink::kafka::{KafkaSink, TxnError, ACCESS_CHECK_TIMEOUT};
use crate::sink::{PrepareError, Sink};
use crate::source::{self, SourceError};
use crate::status::State;

/// One session against the real PostgreSQL and Kafka: returns `Ok` after a shutdown.
///
/// `confirmed` is what the supervisor's sessions confirmed before (0/0: nothing yet);
/// it is updated with what this one confirms. `orphans` are rows an audit found the
/// slot had skipped: published (and taken) before this session streams.
pub async fn run(
    p: &Pipeline,
    confirmed: &mut Lsn,
    orphans: &mut Option<Found>,
) -> Result<(), PipelineError> {
    let name = p.source.name.clone();
    let slot = p.source.slot_name();
    // The writable primary among the source's servers: after a failover, the promoted one.
    let primary = source::find_primary(&p.source).await?;
    let client = source::connect(&p.source).await?;
    source::require(&client, &p.source).await?;
    source::ensure_publication(&client, &p.source).await?;
    let version = source::version_num(&client).await?;
    let failover = source::wants_failover(p.source.failover_slot, version)
        .map_err(SourceError::Prerequisite)?;
    let (state, ahead) =
        slot::look_up(&client, &p.source, &primary, *confirmed, &p.metrics).await?;

    let mut sink = kafka_sink(p).await?;
    // Exactly-once: where Kafka's committed checkpoint says this source is. Read after
    // init_transactions, which aborted whatever an older producer left open.
    let skip_before = match (p.settings.kafka.delivery, &state) {
        (DeliveryMode::ExactlyOnce, Some(_)) => read_checkpoint(p, &client).await?,
        _ => None,
    };
    let ahead = ahead.or_else(|| {
        let a = slot::ahead_of_checkpoint(state.as_ref(), skip_before)?;
        tracing::info!(source = %name, slot = %slot, slot_confirmed = %a.slot, checkpoint = %a.record, "the slot is past the kafka checkpoint (heartbeats and transactions without outbox rows are confirmed without one); the audit's first round tells whether it skipped rows");
        Some(a)
    });
    if p.settings.kafka.poison == PoisonPolicy::DeadLetter {
        if let Some(f) = sink.prepare_dead_letter() {
            f.await.map_err(prepare_error)?;
        }
    }
    let going_away = Arc::new(Notify::new());
    let marker = Marker {
        source: p.source.clone(),
        pipeline: p.settings.pipeline.clone(),
        metrics: p.metrics.clone(),
        going_away: going_away.clone(),
    };

    // Rows the last session's audit found the slot had skipped. Without a slot,
    // reconciliation publishes every PENDING row, these too.
    if let (Some(found), Some(st)) = (orphans.as_ref(), &state) {
        p.status.set_state(State::Reconciling);
        // Exactly-once: the pages' checkpoint skips nothing the slot still carries.
        let checkpoint = st.confirmed_flush.max(skip_before).unwrap_or_default();
        audit::publish_orphans(p, &client, &mut sink, &marker, found, checkpoint).await?;
    }
    *orphans = None;

    let config =
        slot::replication_config(&p.source, &primary, p.settings.pipeline.status_interval());
    let mut repl = match &state {
        Some(st) => slot::stream_from(config, st, failover, &name).await?,
        None => {
            p.status.set_state(State::Reconciling);
            let options = SlotOptions { version, failover };
            reconcile::create_slot_and_reconcile(p, config, options, &client, &mut sink, &marker)
                .await?
        }
    };
    drop(client);
    tracing::info!(source = %name, slot = %slot, "streaming");
    p.status.set_state(State::Streaming);

    let _housekeeping = housekeeping::beside_session(
        &p.source,
        &p.settings.pipeline,
        &p.metrics,
        &p.status,
        &going_away,
    );
    let cfg = StreamConfig {
        source: name.clone(),
        limits: Limits {
            max_records: p.settings.pipeline.max_in_flight_records,
            max_bytes: p.settings.pipeline.max_in_flight_bytes,
            max_record_bytes: p.settings.kafka.max_record_bytes,
        },
        poison: p.settings.kafka.poison,
        shutdown_timeout: p.settings.pipeline.shutdown_timeout(),
        skip_before,
        capture: p.source.capture,
        table: p.source.outbox_table(),
        message_prefix: p.source.message_prefix.clone(),
    };
    let mut streamer = Streamer::new(
        cfg,
        &mut repl,
        &mut sink,
        marker.spawn(),
        p.status.clone(),
        &p.metrics,
        p.suspects.clone(),
    );
    let (found_tx, found_rx) = oneshot::channel();
    streamer.audited_by(found_rx);
    let _audit = audit::beside_session(p, streamer.confirmed_watch(), found_tx, ahead);
    let result = streamer.run(p.shutdown.clone(), &going_away).await;
    let confirmed_now = streamer.confirmed();
    let marker = streamer.into_marker();
    if let Some(lsn) = confirmed_now {
        *confirmed = lsn;
    }
    teardown(p, &result, repl, sink, marker, confirmed_now).await;
    result
}

/// The Kafka sink of a session, its access checked and the topics it needs before any
/// record (the checkpoint topic under exactly-once) prepared.
async fn kafka_sink(p: &Pipeline) -> Result<KafkaSink, PipelineError> {
    let name = &p.source.name;
    // Validated at load: an error here is a configuration made without `Settings::load`.
    let format = p
        .settings
        .kafka
        .record_format(&p.source)
        .map_err(|e| PipelineError::Kafka(e.to_string()))?;
    match p.settings.kafka.delivery {
        DeliveryMode::AtLeastOnce => {
            let sink = KafkaSink::new(&p.settings.kafka, name, format, &p.metrics)
                .map_err(|e| PipelineError::Kafka(e.to_string()))?;
            // Brokers that refuse the relay (TLS, SASL) halt it by name, before it
            // streams records that could only wait.
            if let Some(why) = sink.access_refused(ACCESS_CHECK_TIMEOUT).await {
                return Err(PipelineError::AccessRefused(why));
            }
            Ok(sink)
        }
        DeliveryMode::ExactlyOnce => {
            let sink = KafkaSink::transactional(
                &p.settings.kafka,
                name,
                &p.source.database,
                format,
                &p.metrics,
            )
            .await
            .map_err(|e| match e {
                TxnError::Fenced(why) => PipelineError::Fenced(why),
                TxnError::Refused(why) => PipelineError::AccessRefused(why),
                TxnError::Other(why) => PipelineError::Kafka(why),
            })?;
            // Before any transaction: the producer would otherwise auto-create it, not compacted.
            sink.prepare_checkpoint_topic(&p.settings.kafka.checkpoint_topic)
                .await
                .map_err(prepare_error)?;
            Ok(sink)
        }
    }
}

fn prepare_error(e: PrepareError) -> PipelineError {
    match e {
        PrepareError::Refused(why) => PipelineError::TopicRefused(why),
        PrepareError::Transient(why) => PipelineError::Kafka(why),
    }
}

/// Ends the session. After a shutdown, or a poison record under `stop`, or a replay, or
/// the audit's finding, what came before was confirmed: the stream ends and the last position is made to
/// reach the server. After any other error the stream is dropped at once.
async fn teardown(
    p: &Pipeline,
    result: &Result<(), PipelineError>,
    mut repl: ReplicationClient,
    sink: KafkaSink,
    marker: MarkerLink,
    confirmed: Option<Lsn>,
) {
    let name = &p.source.name;
    match result {
        Ok(())
        | Err(
            PipelineError::Poison { .. } | PipelineError::Replay(_) | PipelineError::Orphans(_),
        ) => {
            repl.stop();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(Some(_)) = repl.recv().await {}
            })
            .await;
            sink.flush(Duration::from_secs(5));
            if let Some(lsn) = confirmed {
                if slot::persist_final_position(&p.source, &p.source.slot_name(), lsn).await {
                    p.metrics
                        .confirmed_lsn
                        .with_label_values(&[name])
                        .set(lsn.as_u64() as i64);
                }
            }
        }
        Err(e) => {
            // Said before teardown, so a teardown that hangs cannot hide it.
            tracing::error!(source = %name, error = %e, kind = e.kind(), "pipeline failed; tearing the session down");
            repl.abort();
            // Rows Kafka acked are still marked PROCESSED (briefly bounded); their LSN
            // stays unconfirmed, so they are resent after the restart anyway.
            let MarkerLink { tx, task, .. } = marker;
            drop(tx);
            // A handle already polled to its end (the marker stopped) must not be polled again.
            if !task.is_finished() {
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
        }
    }
}

/// Reads the source's last committed checkpoint (the topic exists by then) and
/// checks it against the server: a checkpoint past the server's WAL belongs to another
/// database or a restored one, and skipping by it would lose events.
async fn read_checkpoint(
    p: &Pipeline,
    client: &tokio_postgres::Client,
) -> Result<Option<Lsn>, PipelineError> {
    let name = &p.source.name;
    let kafka = &p.settings.kafka;
    let (settings, source) = (kafka.clone(), name.clone());
    let found = tokio::task::spawn_blocking(move || {
        checkpoint::read_last(&settings, &source, Duration::from_secs(30))
    })
    .await
    .map_err(|e| PipelineError::Kafka(format!("reading the checkpoint did not finish: {e}")))?
    .map_err(PipelineError::Kafka)?;
    let Some(c) = found else {
        tracing::info!(source = %name, topic = %kafka.checkpoint_topic, "no kafka checkpoint for this source yet");
        return Ok(None);
    };
    let Some(lsn) = c.lsn() else {
        return Err(PipelineError::CheckpointAhead(format!(
            "the checkpoint of source {name} holds an unreadable LSN {:?}",
            c.end_lsn
        )));
    };
    let server = source::current_wal_lsn(client).await?;
    if lsn > server || c.database != p.source.database {
        return Err(PipelineError::CheckpointAhead(format!(
            "the kafka checkpoint of source {name} (database {}, end LSN {lsn}) does not belong to this server (database {}, WAL at {server})",
            c.database, p.source.database
        )));
    }
    tracing::info!(source = %name, checkpoint = %lsn, written_at = %c.written_at, "resuming after the kafka checkpoint: transactions before it are marked, not sent again");
    Ok(Some(lsn))
}
