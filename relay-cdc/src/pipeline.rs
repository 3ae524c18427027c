//! One source's pipeline: replication slot → pgoutput decoding → Kafka → PROCESSED
//! marking → LSN confirmation, restarted with backoff after any error.
//!
//! Invariants:
//! - Records are enqueued to the producer in commit order, rows of one transaction in
//!   insert order; per-partition order is kept by the idempotent producer.
//! - A transaction's end LSN is confirmed only after Kafka acked every record of it and
//!   of every transaction before it, and the marker marked them (acks are awaited in
//!   a `FuturesOrdered`, which yields in push order).
//! - Heartbeats (non-transactional logical messages) go through the same ordered queue,
//!   so a quiet outbox on a busy database still lets the slot advance.
//! - After any error the pipeline is rebuilt (new producer, new session) and resumes
//!   from the slot's confirmed position: what was not confirmed is sent again, with the
//!   same event ids.
//! - When the server refuses new connections because it is shutting down, the session
//!   ends at once. A walsender lets the server stop only after its client confirmed
//!   everything it was sent, and rows acked but not yet marked cannot be marked any
//!   more (marking needs a new connection): holding the session would keep a fast
//!   shutdown waiting forever. Nothing is confirmed early; the unconfirmed tail is
//!   replayed and marked after the restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use rdkafka::producer::DeliveryFuture;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::{Settings, SourceSettings};
use crate::marker::{Confirmed, MarkItem, Marker};
use crate::metrics::Metrics;
use crate::pgoutput::{self, Change, OutboxRow, RelationCache};
use crate::publish::{commit_time_rfc3339, CommitMeta, Publisher, Sent, PG_EPOCH_OFFSET_MICROS};
use crate::source::{self, SourceError, HEARTBEAT_PREFIX};

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("replication: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("decoding pgoutput: {0}")]
    Decode(#[from] pgoutput::RowError),
    #[error("kafka refused event {event_id}: {error}")]
    Delivery { event_id: String, error: String },
    #[error("poison record, event {event_id}: {reason} (policy: stop)")]
    Poison { event_id: String, reason: String },
    #[error("the replication stream ended")]
    StreamEnded,
    #[error("slot {0} is held by another session (standby: waiting)")]
    SlotBusy(String),
    #[error("the server is shutting down; ending the replication session so it can stop")]
    ServerGoingAway,
}

impl PipelineError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Source(_) => "source",
            Self::Replication(_) => "replication",
            Self::Kafka(_) | Self::Delivery { .. } => "kafka",
            Self::Decode(_) => "decode",
            Self::Poison { .. } => "poison",
            Self::StreamEnded => "stream_ended",
            Self::SlotBusy(_) => "slot_busy",
            Self::ServerGoingAway => "server_going_away",
        }
    }
}

/// The shared context of a source's task.
#[derive(Clone)]
pub struct SourceTask {
    pub settings: Arc<Settings>,
    pub source: SourceSettings,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
}

/// An acked unit, ready for marking.
struct Acked {
    lsn: Option<Lsn>,
    source_time_micros: i64,
    ids: Vec<Uuid>,
    bytes: usize,
    commit_unix_micros: Option<i64>,
}

type AckFuture = Pin<Box<dyn Future<Output = Result<Acked, PipelineError>> + Send>>;

/// A transaction being read: its records are enqueued, their acks collected.
struct OpenTxn {
    meta: CommitMeta,
    commit_unix_micros: i64,
    deliveries: Vec<(String, DeliveryFuture)>,
    ids: Vec<Uuid>,
    bytes: usize,
}

impl SourceTask {
    /// Runs the source until shutdown, restarting after errors with backoff.
    pub async fn run(mut self) {
        let name = self.source.name.clone();
        let up = self.metrics.source_up.with_label_values(&[&name]);
        let mut backoff = Duration::from_millis(250);
        loop {
            let started = Instant::now();
            let result = self.run_once().await;
            up.set(0);
            match result {
                Ok(()) => {
                    tracing::info!(source = %name, "source stopped");
                    return;
                }
                Err(e @ PipelineError::Poison { .. }) => {
                    // Halted, not retried: resending would only duplicate what came before it.
                    tracing::error!(source = %name, error = %e, "source halted; publish the row elsewhere or set kafka.poison = \"dead-letter\", then restart");
                    let _ = self.shutdown.wait_for(|s| *s).await;
                    return;
                }
                Err(PipelineError::SlotBusy(slot)) => {
                    tracing::info!(source = %name, slot = %slot, "slot in use by another relay; standing by");
                }
                Err(e) => {
                    self.metrics.restarts.with_label_values(&[&name]).inc();
                    tracing::error!(source = %name, error = %e, kind = e.kind(), "pipeline failed; resuming from the confirmed LSN");
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(250);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => {}
            }
            if *self.shutdown.borrow() {
                return;
            }
            backoff = (backoff * 2).min(self.settings.pipeline.max_backoff());
        }
    }

    fn replication_config(&self) -> ReplicationConfig {
        let s = &self.source;
        ReplicationConfig::new(
            s.host.clone(),
            s.user.clone(),
            s.password.clone(),
            s.database.clone(),
            s.slot_name(),
            s.publication.clone(),
        )
        .with_port(s.port)
        .with_tls(TlsConfig::disabled())
        .with_status_interval(self.settings.pipeline.status_interval())
        .with_wakeup_interval(Duration::from_secs(5))
        .with_application_name(format!("relay-cdc/{}", s.name))
    }

    async fn run_once(&mut self) -> Result<(), PipelineError> {
        let name = self.source.name.clone();
        let slot = self.source.slot_name();
        let client = source::connect(&self.source).await?;
        source::require(&client, &self.source).await?;
        source::ensure_publication(&client, &self.source).await?;

        let mut state = source::slot_state(&client, &slot).await?;
        if state
            .as_ref()
            .is_some_and(|st| st.wal_status.as_deref() == Some("lost"))
        {
            tracing::warn!(source = %name, slot = %slot, "slot was invalidated by the server; recreating it");
            source::drop_slot(&client, &slot).await?;
            state = None;
        }
        if state.as_ref().is_some_and(|st| st.active) {
            return Err(PipelineError::SlotBusy(slot));
        }

        let mut publisher = Publisher::new(&self.settings.kafka, &name)?;
        let (mark_tx, mark_rx) = mpsc::unbounded_channel();
        let (confirmed_tx, mut confirmed_rx) = mpsc::unbounded_channel();
        let going_away = Arc::new(Notify::new());
        let marker = Marker {
            source: self.source.clone(),
            pipeline: self.settings.pipeline.clone(),
            metrics: self.metrics.clone(),
            going_away: going_away.clone(),
        };
        let mut marker_task = AbortOnDrop(tokio::spawn(marker.run(mark_rx, confirmed_tx)));

        let mut repl = match state {
            Some(_) => {
                let mut r = ReplicationClient::connect(self.replication_config()).await?;
                r.wait_started().await.map_err(|e| slot_busy_or(e, &slot))?;
                r
            }
            None => {
                self.create_slot_and_reconcile(&client, &mut publisher, &mark_tx)
                    .await?
            }
        };
        tracing::info!(source = %name, slot = %slot, "streaming");
        self.metrics.source_up.with_label_values(&[&name]).set(1);

        let last_handled = Arc::new(AtomicI64::new(now_unix_micros()));
        let _housekeeping = AbortOnDrop(tokio::spawn(housekeeping(
            self.source.clone(),
            self.settings.pipeline.heartbeat_interval(),
            self.metrics.clone(),
            last_handled.clone(),
            going_away.clone(),
        )));
        drop(client);

        let result = self
            .stream(
                &mut repl,
                &mut publisher,
                &mark_tx,
                &mut confirmed_rx,
                &last_handled,
                &going_away,
            )
            .await;
        match result {
            // Shutdown, or a poison record under the `stop` policy: everything before it
            // was acked and handed to the marker; let it finish and confirm, then stop.
            Ok(()) | Err(PipelineError::Poison { .. }) => {
                drop(mark_tx);
                let mut final_lsn = None;
                let wait = tokio::time::timeout(self.settings.pipeline.shutdown_timeout(), async {
                    while let Some(c) = confirmed_rx.recv().await {
                        if c.lsn.is_some() {
                            final_lsn = c.lsn;
                        }
                    }
                })
                .await;
                if wait.is_err() {
                    tracing::warn!(source = %name, "marker did not finish in time; the last batch will be replayed");
                }
                drop(marker_task);
                repl.stop();
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(Some(_)) = repl.recv().await {}
                })
                .await;
                publisher.flush(Duration::from_secs(5));
                let confirmed = final_lsn.or(self.last_confirmed(&repl));
                if let Some(lsn) = confirmed {
                    self.persist_final_position(&slot, lsn).await;
                }
                result
            }
            Err(e) => {
                repl.abort();
                // Rows Kafka acked are still marked PROCESSED (briefly bounded); their
                // LSN stays unconfirmed, so they are resent after the restart anyway.
                drop(mark_tx);
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut marker_task.0).await;
                Err(e)
            }
        }
    }

    fn last_confirmed(&self, repl: &ReplicationClient) -> Option<Lsn> {
        let l = repl.metrics().last_applied_lsn();
        (!l.is_zero()).then_some(l)
    }

    /// Makes the final confirmed position reach the server once the session ended.
    async fn persist_final_position(&self, slot: &str, lsn: Lsn) {
        let name = &self.source.name;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = async {
                let c = source::connect(&self.source).await?;
                match source::slot_state(&c, slot).await? {
                    Some(st) if st.active => Ok(false),
                    _ => source::advance_slot(&c, slot, lsn).await.map(|_| true),
                }
            };
            match attempt.await {
                Ok(true) => {
                    tracing::info!(source = %name, lsn = %lsn, "final position confirmed");
                    self.metrics
                        .confirmed_lsn
                        .with_label_values(&[name])
                        .set(lsn.as_u64() as i64);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "could not persist the final position")
                }
            }
            if Instant::now() > deadline {
                tracing::warn!(source = %name, lsn = %lsn, "gave up persisting the final position; it will be replayed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates the slot with an exported snapshot and, inside that snapshot, publishes
    /// the rows still PENDING: they committed before the slot existed, so the slot will
    /// never carry them. Then starts streaming from the slot's consistent point.
    async fn create_slot_and_reconcile(
        &self,
        client: &tokio_postgres::Client,
        publisher: &mut Publisher,
        mark_tx: &mpsc::UnboundedSender<MarkItem>,
    ) -> Result<ReplicationClient, PipelineError> {
        let name = &self.source.name;
        let slot = self.source.slot_name();
        if !self.source.create_slot {
            return Err(SourceError::Prerequisite(format!(
                "slot {slot} is missing and create_slot = false"
            ))
            .into());
        }
        let mut repl = ReplicationClient::connect_gated(self.replication_config()).await?;
        let rows = repl
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT \"{slot}\" LOGICAL pgoutput (SNAPSHOT 'export')"
            ))
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
            return Err(SourceError::Prerequisite(format!(
                "unexpected snapshot name {snapshot:?}"
            ))
            .into());
        }
        tracing::info!(source = %name, slot = %slot, consistent_point = %consistent_point, "created slot");

        // Read PENDING rows as of the slot's creation, page by page.
        let sql = format!(
            "select id, aggregate_type, aggregate_id, event_type, payload::text, created_at \
             from \"{}\".\"{}\" \
             where status = 'PENDING' and (created_at, id) > ($1, $2) order by created_at, id limit 2000",
            self.source.schema, self.source.table
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
            if page.is_empty() {
                break;
            }
            let mut deliveries = Vec::with_capacity(page.len());
            let mut ids = Vec::with_capacity(page.len());
            let mut bytes = 0;
            let mut newest = 0i64;
            for r in &page {
                let id: Uuid = r.get(0);
                let created_at: chrono::DateTime<chrono::Utc> = r.get(5);
                let created_micros = created_at.timestamp_micros();
                let row = OutboxRow {
                    id: id.to_string(),
                    aggregate_type: r.get(1),
                    aggregate_id: r.get(2),
                    event_type: r.get(3),
                    payload: r.get::<_, String>(4).into_bytes(),
                };
                let meta = CommitMeta {
                    lsn: consistent_point.clone(),
                    time: created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                };
                bytes += row.payload.len();
                newest = newest.max(created_micros);
                match publisher.send(&row, &meta).await? {
                    Sent::Record(f) => deliveries.push((row.id.clone(), f)),
                    Sent::Poison { reason } => {
                        return Err(PipelineError::Poison {
                            event_id: row.id,
                            reason,
                        })
                    }
                }
                ids.push(id);
            }
            let last = page.last().expect("page is not empty");
            after = (last.get(5), last.get(0));
            let n = ids.len();
            let acked = await_deliveries(
                deliveries,
                Acked {
                    lsn: None,
                    source_time_micros: newest,
                    ids,
                    bytes,
                    commit_unix_micros: None,
                },
            )
            .await?;
            self.metrics
                .reconciled
                .with_label_values(&[name])
                .inc_by(n as u64);
            self.metrics
                .events_published
                .with_label_values(&[name])
                .inc_by(n as u64);
            let _ = mark_tx.send(MarkItem {
                lsn: acked.lsn,
                source_time_micros: acked.source_time_micros,
                ids: acked.ids,
                bytes: acked.bytes,
            });
            total += n;
        }
        client
            .batch_execute("commit")
            .await
            .map_err(SourceError::from)?;
        if total > 0 {
            tracing::info!(source = %name, events = total, "published rows left PENDING before the slot existed");
        }
        repl.start().await?;
        repl.wait_started()
            .await
            .map_err(|e| slot_busy_or(e, &slot))?;
        Ok(repl)
    }

    /// The streaming loop. Returns `Ok` on shutdown after draining outstanding acks.
    async fn stream(
        &mut self,
        repl: &mut ReplicationClient,
        publisher: &mut Publisher,
        mark_tx: &mpsc::UnboundedSender<MarkItem>,
        confirmed_rx: &mut mpsc::UnboundedReceiver<Confirmed>,
        last_handled: &AtomicI64,
        going_away: &Notify,
    ) -> Result<(), PipelineError> {
        let name = self.source.name.clone();
        let labels = [name.as_str()];
        let m = &self.metrics;
        let (published, in_flight, in_flight_bytes, confirmed_lsn, commit_to_ack, backlog) = (
            m.events_published.with_label_values(&labels),
            m.records_in_flight.with_label_values(&labels),
            m.bytes_in_flight.with_label_values(&labels),
            m.confirmed_lsn.with_label_values(&labels),
            m.commit_to_ack.with_label_values(&labels),
            m.mark_backlog.with_label_values(&labels),
        );
        backlog.set(0);
        let max_records = self.settings.pipeline.max_in_flight_records as i64;
        let max_bytes = self.settings.pipeline.max_in_flight_bytes as i64;
        let (mut records, mut bytes) = (0i64, 0i64);
        in_flight.set(0);
        in_flight_bytes.set(0);

        let mut relations = RelationCache::default();
        let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
        let mut txn: Option<OpenTxn> = None;
        let mut shutdown = self.shutdown.clone();

        loop {
            // The bounds apply between transactions: a transaction confirms only as a
            // whole, so one larger than the bound must still be read to its commit.
            let room = (records < max_records && bytes < max_bytes) || txn.is_some();
            tokio::select! {
                biased;
                // 1. Shutdown first: stop reading, drain what was sent.
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return self.drain(&mut acks, mark_tx, &published).await;
                    }
                }
                // 2. The server is shutting down: end the session so it can (module docs).
                _ = going_away.notified() => return Err(PipelineError::ServerGoingAway),
                // 3. Acks, in commit order: hand them to the marker.
                Some(acked) = acks.next(), if !acks.is_empty() => {
                    let acked = acked?;
                    published.inc_by(acked.ids.len() as u64);
                    backlog.add(acked.ids.len() as i64);
                    if let Some(t) = acked.commit_unix_micros {
                        commit_to_ack.observe((now_unix_micros() - t).max(0) as f64 / 1e6);
                    }
                    let _ = mark_tx.send(MarkItem {
                        lsn: acked.lsn,
                        source_time_micros: acked.source_time_micros,
                        ids: acked.ids,
                        bytes: acked.bytes,
                    });
                }
                // 4. Marked batches: confirm their position to PostgreSQL.
                Some(done) = confirmed_rx.recv() => {
                    records -= done.records as i64;
                    backlog.sub(done.records as i64);
                    bytes -= done.bytes as i64;
                    in_flight.set(records);
                    in_flight_bytes.set(bytes);
                    if let Some(lsn) = done.lsn {
                        repl.update_applied_lsn(lsn);
                        confirmed_lsn.set(lsn.as_u64() as i64);
                    }
                    if done.source_time_micros > 0 {
                        last_handled.fetch_max(done.source_time_micros, Ordering::Relaxed);
                    }
                }
                // 5. New WAL, only while in-flight records and bytes are under their bounds.
                ev = repl.recv(), if room => {
                    let Some(ev) = ev? else { return Err(PipelineError::StreamEnded) };
                    match ev {
                        ReplicationEvent::Begin { final_lsn, commit_time_micros, .. } => {
                            txn = Some(OpenTxn {
                                meta: CommitMeta { lsn: final_lsn.to_string(), time: commit_time_rfc3339(commit_time_micros) },
                                commit_unix_micros: commit_time_micros + PG_EPOCH_OFFSET_MICROS,
                                deliveries: Vec::new(),
                                ids: Vec::new(),
                                bytes: 0,
                            });
                        }
                        ReplicationEvent::XLogData { data, .. } => {
                            match pgoutput::decode(&data).map_err(pgoutput::RowError::from)? {
                                Change::Relation(rel) => relations.learn(rel),
                                Change::Insert { relation, values } => {
                                    let Some(open) = txn.as_mut() else {
                                        return Err(PipelineError::Decode(pgoutput::DecodeError::Empty.into()));
                                    };
                                    let row = relations.outbox_row(relation, values)?;
                                    let id = Uuid::parse_str(&row.id).map_err(|_| pgoutput::RowError::NotText("id"))?;
                                    let size = row.payload.len() + row.aggregate_id.len();
                                    match publisher.send(&row, &open.meta).await? {
                                        Sent::Record(f) => open.deliveries.push((row.id, f)),
                                        Sent::Poison { reason } => {
                                            m.publish_failures.with_label_values(&[&name, "poison"]).inc();
                                            // What came before the poison is published: let it be marked.
                                            self.drain(&mut acks, mark_tx, &published).await?;
                                            return Err(PipelineError::Poison { event_id: row.id, reason });
                                        }
                                    }
                                    open.ids.push(id);
                                    open.bytes += size;
                                    records += 1;
                                    bytes += size as i64;
                                    in_flight.set(records);
                                    in_flight_bytes.set(bytes);
                                }
                                Change::Other(_) => {}
                            }
                        }
                        ReplicationEvent::Commit { end_lsn, .. } => {
                            if let Some(open) = txn.take() {
                                let fut = await_deliveries(open.deliveries, Acked {
                                    lsn: Some(end_lsn),
                                    source_time_micros: open.commit_unix_micros,
                                    ids: open.ids,
                                    bytes: open.bytes,
                                    commit_unix_micros: Some(open.commit_unix_micros),
                                });
                                let failures = m.publish_failures.with_label_values(&[&name, "delivery"]);
                                acks.push_back(Box::pin(async move {
                                    let r = fut.await;
                                    if r.is_err() {
                                        failures.inc();
                                    }
                                    r
                                }));
                            }
                        }
                        ReplicationEvent::Message { prefix, content, lsn, transactional: false } if prefix == HEARTBEAT_PREFIX => {
                            // Not inside a transaction by construction; it orders after
                            // everything received before it.
                            if txn.is_none() {
                                let t = std::str::from_utf8(&content).ok().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
                                acks.push_back(Box::pin(std::future::ready(Ok(Acked {
                                    lsn: Some(lsn),
                                    source_time_micros: t,
                                    ids: Vec::new(),
                                    bytes: 0,
                                    commit_unix_micros: None,
                                }))));
                            }
                        }
                        ReplicationEvent::Message { .. } | ReplicationEvent::KeepAlive { .. } => {}
                        ReplicationEvent::StoppedAt { .. } => return Err(PipelineError::StreamEnded),
                    }
                }
            }
        }
    }

    /// On shutdown: wait (bounded) for outstanding acks and hand them to the marker.
    async fn drain(
        &self,
        acks: &mut FuturesOrdered<AckFuture>,
        mark_tx: &mpsc::UnboundedSender<MarkItem>,
        published: &prometheus::IntCounter,
    ) -> Result<(), PipelineError> {
        let name = &self.source.name;
        let pending = acks.len();
        let drained = tokio::time::timeout(self.settings.pipeline.shutdown_timeout(), async {
            while let Some(acked) = acks.next().await {
                let acked = acked?;
                published.inc_by(acked.ids.len() as u64);
                let _ = mark_tx.send(MarkItem {
                    lsn: acked.lsn,
                    source_time_micros: acked.source_time_micros,
                    ids: acked.ids,
                    bytes: acked.bytes,
                });
            }
            Ok::<_, PipelineError>(())
        })
        .await;
        match drained {
            Ok(r) => r?,
            Err(_) => {
                tracing::warn!(source = %name, transactions = acks.len(), "acks still outstanding at shutdown; they will be replayed")
            }
        }
        tracing::info!(source = %name, transactions = pending, "drained in-flight transactions");
        Ok(())
    }
}

/// Waits for every delivery of one unit; the first refusal fails the unit.
async fn await_deliveries(
    deliveries: Vec<(String, DeliveryFuture)>,
    acked: Acked,
) -> Result<Acked, PipelineError> {
    for (event_id, f) in deliveries {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(PipelineError::Delivery {
                    event_id,
                    error: e.to_string(),
                })
            }
            Err(_) => {
                return Err(PipelineError::Delivery {
                    event_id,
                    error: "producer dropped the record".into(),
                })
            }
        }
    }
    Ok(acked)
}

fn slot_busy_or(e: pgwire_replication::PgWireError, slot: &str) -> PipelineError {
    let text = e.to_string();
    if text.contains("55006") || text.contains("is active for PID") {
        PipelineError::SlotBusy(slot.to_string())
    } else {
        e.into()
    }
}

pub fn now_unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Heartbeats and lag gauges for one source, on an ordinary connection.
async fn housekeeping(
    source: SourceSettings,
    every: Duration,
    metrics: Metrics,
    last_handled: Arc<AtomicI64>,
    going_away: Arc<Notify>,
) {
    let name = source.name.clone();
    let labels = [name.as_str()];
    let slot = source.slot_name();
    let mut client = None;
    let mut tick = tokio::time::interval(every.min(Duration::from_secs(1)));
    let mut last_beat = Instant::now() - every;
    loop {
        tick.tick().await;
        let lag_s = (now_unix_micros() - last_handled.load(Ordering::Relaxed)).max(0) as f64 / 1e6;
        metrics.lag_seconds.with_label_values(&labels).set(lag_s);
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            client = match source::connect(&source).await {
                Ok(c) => Some(c),
                Err(e) => {
                    if e.server_going_away() {
                        going_away.notify_one();
                    }
                    None
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        if last_beat.elapsed() >= every {
            last_beat = Instant::now();
            if let Err(e) = source::emit_heartbeat(c).await {
                tracing::debug!(source = %name, error = %e, "heartbeat failed");
            }
        }
        if let (Ok(wal), Ok(Some(st))) = (
            source::current_wal_lsn(c).await,
            source::slot_state(c, &slot).await,
        ) {
            metrics
                .server_wal_lsn
                .with_label_values(&labels)
                .set(wal.as_u64() as i64);
            if let Some(confirmed) = st.confirmed_flush {
                metrics
                    .lag_bytes
                    .with_label_values(&labels)
                    .set(wal.as_u64().saturating_sub(confirmed.as_u64()) as i64);
            }
        }
    }
}

/// Aborts a spawned task when dropped, so a failed pipeline leaves nothing running.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
