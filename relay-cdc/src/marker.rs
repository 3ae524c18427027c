//! PROCESSED marking: rows Kafka acked are marked in batches on an ordinary connection
//! of their own, and only then is their transaction's end LSN handed back for
//! confirmation to PostgreSQL.
//!
//! Invariant: a confirmed LSN implies every row before it is in Kafka **and** marked
//! (`PROCESSED`, or `DEAD_LETTERED` for a row that went to the dead-letter topic). So a
//! crash between the ack and the marking replays those rows (same event ids) and
//! marks them then; nothing stays PENDING forever. Marking never delays publishing:
//! it runs beside the stream and only holds back the confirmation.
//!
//! Its connections run with `statement_timeout` and `lock_timeout`: a session holding
//! row locks on PENDING rows makes an attempt fail and retry (counted, logged) instead
//! of waiting without limit; the pipeline's watchdog names the stall "marking".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::stream::{FuturesOrdered, StreamExt};
use pgwire_replication::Lsn;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::config::{PipelineSettings, SourceSettings};
use crate::metrics::Metrics;
use crate::source;

/// A unit handed to the marker, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkItem {
    /// The end LSN to confirm once this item's rows are marked.
    pub lsn: Lsn,
    /// Source time (Unix microseconds) of the WAL this item covers.
    pub source_time_micros: i64,
    /// Rows Kafka acked: marked PROCESSED.
    pub ids: Vec<Uuid>,
    /// Rows sent to the dead-letter topic instead: marked DEAD_LETTERED.
    pub dead: Vec<Uuid>,
    pub bytes: usize,
}

/// Sent back to the pipeline after a batch was marked: the position to confirm and
/// how many in-flight records and bytes that releases.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Confirmed {
    pub lsn: Option<Lsn>,
    pub source_time_micros: i64,
    pub records: usize,
    pub bytes: usize,
}

/// The marker task as the stream loop sees it: items in, confirmations out, and its
/// handle (its end, for any reason, ends the session: confirmations would stop).
pub struct MarkerLink {
    pub tx: Option<mpsc::UnboundedSender<MarkItem>>,
    pub rx: mpsc::UnboundedReceiver<Confirmed>,
    pub task: JoinHandle<()>,
}

/// A batch being marked: resolves to its connection (for reuse) and what it confirms.
type MarkingBatch<'a> = Pin<Box<dyn Future<Output = (Option<MarkConn>, Confirmed)> + Send + 'a>>;

/// A marking connection with its prepared update (the common path, parsed and planned
/// once per connection).
pub struct MarkConn {
    client: Client,
    update: Statement,
}

pub struct Marker {
    pub source: SourceSettings,
    pub pipeline: PipelineSettings,
    pub metrics: Metrics,
    /// Notified when the server refuses connections because it is shutting down: the
    /// pipeline then ends its replication session (see [`crate::pipeline`]).
    pub going_away: Arc<Notify>,
}

impl Marker {
    /// Runs the marker as a task of its own, linked to the stream loop.
    pub fn spawn(self) -> MarkerLink {
        let (tx, items) = mpsc::unbounded_channel();
        let (confirmed, rx) = mpsc::unbounded_channel();
        MarkerLink {
            tx: Some(tx),
            rx,
            task: tokio::spawn(self.run(items, confirmed)),
        }
    }

    /// Runs until `items` closes, then flushes what it holds and returns.
    ///
    /// Up to `pipeline.mark_connections` batches are marked at once, each on a
    /// connection of its own; their confirmations are sent in the order the batches
    /// were taken, so a position is never confirmed before every row before it is marked.
    pub async fn run(
        self,
        mut items: mpsc::UnboundedReceiver<MarkItem>,
        confirmed: mpsc::UnboundedSender<Confirmed>,
    ) {
        let mut idle: Vec<Option<MarkConn>> = (0..self.pipeline.mark_connections.max(1))
            .map(|_| None)
            .collect();
        let mut marking: FuturesOrdered<MarkingBatch<'_>> = FuturesOrdered::new();
        let this = &self;
        let mut open = true;
        while open || !marking.is_empty() {
            tokio::select! {
                biased;
                // 1. A batch is marked: confirm it (in order) and free its connection.
                Some(finished) = marking.next(), if !marking.is_empty() => {
                    if !release(&mut idle, &confirmed, finished) {
                        return;
                    }
                }
                // 2. A new batch while a connection is free: gather until it is full or
                //    the interval passed.
                item = items.recv(), if open && !idle.is_empty() => {
                    let Some(first) = item else {
                        open = false;
                        continue;
                    };
                    let mut batch = Batch::default();
                    let mut done = Confirmed::default();
                    add(&mut batch, &mut done, first);
                    let deadline = tokio::time::Instant::now() + self.pipeline.mark_interval();
                    while batch.rows() < self.pipeline.mark_batch_size {
                        tokio::select! {
                            biased;
                            // Batches already taken keep going while this one gathers:
                            // a future in `marking` only progresses when polled.
                            Some(finished) = marking.next(), if !marking.is_empty() => {
                                if !release(&mut idle, &confirmed, finished) {
                                    return;
                                }
                            }
                            item = tokio::time::timeout_at(deadline, items.recv()) => match item {
                                Ok(Some(i)) => add(&mut batch, &mut done, i),
                                Ok(None) => {
                                    open = false;
                                    break;
                                }
                                Err(_) => break,
                            },
                        }
                    }
                    let client = idle.pop().expect("a free connection");
                    marking.push_back(Box::pin(async move {
                        let client = this.mark_batch(client, &batch).await;
                        (client, done)
                    }));
                }
            }
        }
    }

    /// Marks a batch: acked rows PROCESSED, dead-lettered rows DEAD_LETTERED.
    /// Under `marking = "none"` nothing is written: the batch only keeps the
    /// confirmations in commit order.
    async fn mark_batch(&self, client: Option<MarkConn>, batch: &Batch) -> Option<MarkConn> {
        if !self.source.marks_rows() {
            return client;
        }
        let client = if batch.ids.is_empty() {
            client
        } else {
            self.mark(client, &batch.ids, "PROCESSED").await
        };
        if batch.dead.is_empty() {
            client
        } else {
            self.mark(client, &batch.dead, "DEAD_LETTERED").await
        }
    }

    /// Marks `ids` with `status` (`PROCESSED` or `DEAD_LETTERED`), retrying (with
    /// reconnects) until it succeeds.
    ///
    /// A commit reaches the slot as soon as its WAL record is flushed, a moment before
    /// the committing session lets other snapshots see its rows. Kafka can ack and this
    /// update can run inside that moment (a descheduled backend on a busy machine):
    /// the update then skips rows it cannot see yet, and confirming would leave them
    /// PENDING forever. The common path is a prepared update whose count must equal the
    /// number of ids; when it falls short (rows not visible yet, or marked already by
    /// an earlier session) a second statement returns the ids it could not see at all
    /// (neither marked now nor there already), and those are retried until visible.
    pub async fn mark(
        &self,
        mut client: Option<MarkConn>,
        ids: &[Uuid],
        status: &'static str,
    ) -> Option<MarkConn> {
        let name = &self.source.name;
        let update = format!(
            "update \"{s}\".\"{t}\" set status = $2, processed_at = now() \
             where \"{id}\" = any($1) and status = 'PENDING'",
            s = self.source.schema,
            t = self.source.table,
            id = self.source.columns.id,
        );
        let sql = format!(
            "with marked as (update \"{s}\".\"{t}\" set status = '{status}', processed_at = now() \
             where \"{id}\" = any($1) and status = 'PENDING' returning \"{id}\" as id) \
             select (select count(*) from marked), \
             coalesce((select array_agg(u.id) from unnest($1::uuid[]) as u(id) \
             where u.id not in (select id from marked) \
             and not exists (select 1 from \"{s}\".\"{t}\" o where o.\"{id}\" = u.id)), '{{}}')",
            s = self.source.schema,
            t = self.source.table,
            id = self.source.columns.id,
        );
        let mut ids = ids.to_vec();
        let mut unseen_since: Option<std::time::Instant> = None;
        // 100 ms doubling up to `pipeline.max_backoff_ms`, for connecting and marking alike.
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.pipeline.max_backoff())
            .without_max_times()
            .build();
        loop {
            if client.as_ref().is_none_or(|c| c.client.is_closed()) {
                let connected = async {
                    let c = source::connect_marker(&self.source, &self.pipeline).await?;
                    let update = c
                        .prepare_typed(&update, &[Type::UUID_ARRAY, Type::TEXT])
                        .await
                        .map_err(source::SourceError::from)?;
                    Ok::<_, source::SourceError>(MarkConn { client: c, update })
                };
                match connected.await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        if e.server_going_away() {
                            self.going_away.notify_one();
                        }
                        tracing::warn!(source = %name, error = %e, "marker cannot connect; retrying");
                        self.metrics.mark_failures.with_label_values(&[name]).inc();
                        tokio::time::sleep(
                            backoff.next().expect("a backoff without a limit of tries"),
                        )
                        .await;
                        continue;
                    }
                }
            }
            let c = client.as_ref().expect("connected above");
            let marked = match c.client.execute(&c.update, &[&ids, &status]).await {
                Ok(n) if n as usize == ids.len() => {
                    self.metrics.marked.with_label_values(&[name]).inc_by(n);
                    return client;
                }
                Ok(n) => {
                    self.metrics.marked.with_label_values(&[name]).inc_by(n);
                    c.client.query_one(&sql, &[&ids]).await
                }
                Err(e) => Err(e),
            };
            match marked {
                Ok(row) => {
                    let n: i64 = row.get(0);
                    let unseen: Vec<Uuid> = row.get(1);
                    self.metrics
                        .marked
                        .with_label_values(&[name])
                        .inc_by(n as u64);
                    if unseen.is_empty() {
                        return client;
                    }
                    // Visibility follows the commit within moments; a row still unseen
                    // after this long was deleted (retention) or never existed.
                    let since = *unseen_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > UNSEEN_BOUND {
                        tracing::error!(source = %name, rows = unseen.len(), "acked rows are not in the outbox table; leaving them");
                        return client;
                    }
                    ids = unseen;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    tracing::warn!(source = %name, rows = ids.len(), error = %source::pg_reason(&e), "marking PROCESSED failed; retrying");
                    self.metrics.mark_failures.with_label_values(&[name]).inc();
                    client = None;
                    tokio::time::sleep(backoff.next().expect("a backoff without a limit of tries"))
                        .await;
                }
            }
        }
    }
}

/// How long the marker waits for an acked row to become visible before it gives up on it.
const UNSEEN_BOUND: Duration = Duration::from_secs(10);

/// A batch is marked: frees its connection and hands its confirmation back (batches
/// finish in the order they were taken). `false` once the pipeline stopped listening.
fn release(
    idle: &mut Vec<Option<MarkConn>>,
    confirmed: &mpsc::UnboundedSender<Confirmed>,
    (client, done): (Option<MarkConn>, Confirmed),
) -> bool {
    idle.push(client);
    confirmed.send(done).is_ok()
}

/// The rows of one batch, by the status they get.
#[derive(Default)]
struct Batch {
    ids: Vec<Uuid>,
    dead: Vec<Uuid>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.ids.len() + self.dead.len()
    }
}

fn add(batch: &mut Batch, done: &mut Confirmed, item: MarkItem) {
    batch.ids.extend(item.ids.iter().copied());
    batch.dead.extend(item.dead.iter().copied());
    done.records += item.ids.len() + item.dead.len();
    done.bytes += item.bytes;
    done.lsn = Some(item.lsn).max(done.lsn);
    done.source_time_micros = done.source_time_micros.max(item.source_time_micros);
}
