//! The polling baseline: the outbox worker relay-cdc replaces. Each round opens a
//! transaction, locks the oldest PENDING rows (`FOR UPDATE SKIP LOCKED`), publishes
//! them with an idempotent producer and waits for every ack, marks them PROCESSED and
//! commits; when it finds nothing it sleeps for its interval.
//!
//! It orders by `created_at`, which is `now()` of the writing transaction, i.e. its
//! *start*: a transaction that began first but committed last is published first when
//! a round sees both, and cannot be seen at all before it commits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::db::connect;
use crate::kafka;

/// Application name of the worker's connection (its backend is measured).
pub const POLLER_APP: &str = "relay-bench-poller";

#[derive(Debug, Clone)]
pub struct PollerSpec {
    pub url: String,
    pub brokers: String,
    pub topic: String,
    pub interval: Duration,
    pub batch: i64,
}

/// What the worker did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PollStats {
    pub rounds: u64,
    pub empty_rounds: u64,
    pub published: u64,
}

/// A running worker.
pub struct Poller {
    stop: watch::Sender<bool>,
    published: Arc<AtomicU64>,
    task: JoinHandle<anyhow::Result<PollStats>>,
}

impl Poller {
    pub async fn start(spec: PollerSpec) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let published = Arc::new(AtomicU64::new(0));
        let client = connect(&spec.url, POLLER_APP).await?;
        let producer = kafka::producer(&spec.brokers)?;
        let task = tokio::spawn(work(spec, client, producer, stop_rx, published.clone()));
        Ok(Self {
            stop,
            published,
            task,
        })
    }

    /// Rows published and marked so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Fails if the worker stopped on an error.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        if self.task.is_finished() {
            bail!("the polling worker stopped early");
        }
        Ok(())
    }

    /// Stops after the current round and returns what it did.
    pub async fn stop(self) -> anyhow::Result<PollStats> {
        let _ = self.stop.send(true);
        self.task.await.context("polling worker panicked")?
    }
}

async fn work(
    spec: PollerSpec,
    mut client: tokio_postgres::Client,
    producer: rdkafka::producer::FutureProducer,
    mut stop: watch::Receiver<bool>,
    published: Arc<AtomicU64>,
) -> anyhow::Result<PollStats> {
    let select = client
        .prepare(
            "select id, aggregate_type, aggregate_id, event_type, payload::text, created_at \
             from outbox where status = 'PENDING' \
             order by created_at, id for update skip locked limit $1",
        )
        .await?;
    let update = client
        .prepare("update outbox set status = 'PROCESSED', processed_at = now() where id = any($1)")
        .await?;
    let mut stats = PollStats::default();
    while !*stop.borrow() {
        stats.rounds += 1;
        let tx = client.transaction().await?;
        let rows = tx.query(&select, &[&spec.batch]).await?;
        if rows.is_empty() {
            tx.commit().await?;
            stats.empty_rounds += 1;
            tokio::select! {
                _ = tokio::time::sleep(spec.interval) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut deliveries = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: uuid::Uuid = r.get(0);
            let (agg_type, agg_id, event_type, payload): (&str, &str, &str, &str) =
                (r.get(1), r.get(2), r.get(3), r.get(4));
            let created_at: chrono::DateTime<chrono::Utc> = r.get(5);
            let id_text = id.to_string();
            // The poller never learns commit times: created_at (the writing
            // transaction's start) is the closest it has.
            let commit_time = created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: "event_id",
                    value: Some(&id_text),
                })
                .insert(Header {
                    key: "event_type",
                    value: Some(event_type),
                })
                .insert(Header {
                    key: "aggregate_type",
                    value: Some(agg_type),
                })
                .insert(Header {
                    key: "commit_time",
                    value: Some(&commit_time),
                });
            let mut record = FutureRecord::to(&spec.topic)
                .key(agg_id)
                .payload(payload)
                .headers(headers);
            let delivery = loop {
                match producer.send_result(record) {
                    Ok(f) => break f,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            };
            deliveries.push(delivery);
            ids.push(id);
        }
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => bail!("kafka refused a record: {e}"),
                Err(_) => bail!("the producer dropped a record"),
            }
        }
        tx.execute(&update, &[&ids]).await?;
        tx.commit().await?;
        stats.published += ids.len() as u64;
        published.fetch_add(ids.len() as u64, Ordering::Relaxed);
    }
    Ok(stats)
}
