//! Exactly-once ([`KafkaSink::transactional`]): the producer has a `transactional.id`
//! shared by every relay of the source; `init_transactions` at the start of each
//! session fences older producers with that id and aborts their open transaction.
//!
//! Invariant: a Kafka transaction holds whole PostgreSQL transactions and, last, a
//! checkpoint record (see [`super::checkpoint`]) with the end LSN of the last of them;
//! both become visible together or not at all. It is committed only at a PostgreSQL
//! commit, so a PostgreSQL transaction is never split; the unit deliveries handed out by
//! `end_transaction` resolve only once the commit succeeded.

use crate::format::RecordFormat;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::Lsn;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::checkpoint::Checkpoint;
use super::cluster::ClusterContext;
use super::producer::{error_code, is_fenced, producer_config, ACCESS_CHECK_TIMEOUT};
use super::KafkaSink;
use crate::config::KafkaSettings;
use crate::metrics::Metrics;
use crate::sink::{delivery_from, Delivery, Refusal, SendError};

/// The transactional producer's configuration: the idempotent one, plus the
/// transactional id; a message may wait at most as long as its transaction.
pub fn transactional_config(kafka: &KafkaSettings, source: &str) -> ClientConfig {
    let mut c = producer_config(kafka, source);
    let timeout = kafka.transaction_timeout_ms.to_string();
    c.set(
        "transactional.id",
        format!("{}{source}", kafka.transactional_id_prefix),
    )
    .set("transaction.timeout.ms", &timeout)
    // librdkafka refuses an infinite message timeout with transactions; a message that
    // times out fails its transaction, which is aborted and sent again whole.
    .set("message.timeout.ms", &timeout);
    c
}

/// Why a transactional operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    /// Another producer with the same transactional id took over.
    #[error("fenced by a newer producer with the same transactional id: {0}")]
    Fenced(String),
    /// The brokers refuse the producer itself (TLS, SASL, ACLs).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}

impl TxnError {
    fn from_kafka(what: &str, e: &KafkaError) -> Self {
        if error_code(e).is_some_and(is_fenced) {
            Self::Fenced(format!("{what}: {e}"))
        } else if error_code(e).is_some_and(|c| {
            matches!(
                c,
                RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
            )
        }) {
            Self::Refused(format!("kafka: not authorized: {what}: {e}"))
        } else {
            Self::Other(format!("{what}: {e}"))
        }
    }
}

/// The transactional state of an exactly-once sink.
pub(super) struct Txn {
    checkpoint_topic: String,
    database: String,
    max_records: usize,
    max_age: Duration,
    timeout: Duration,
    /// When the open Kafka transaction began (`None`: none open).
    opened: Option<Instant>,
    /// Records in the open Kafka transaction, and since the last PostgreSQL commit.
    records: usize,
    since_boundary: usize,
    last_end_lsn: Option<Lsn>,
    /// One per PostgreSQL transaction in the open Kafka transaction.
    waiters: Vec<oneshot::Sender<Result<(), Refusal>>>,
    /// A commit or abort runs (on a blocking thread): nothing may be sent meanwhile.
    busy: Arc<AtomicBool>,
    meters: TxnMeters,
}

#[derive(Clone)]
struct TxnMeters {
    committed: prometheus::IntCounter,
    aborted: prometheus::IntCounter,
    records: prometheus::Histogram,
    commit_seconds: prometheus::Histogram,
    /// Commits refused because another producer with our transactional id took over.
    fenced: prometheus::IntCounter,
}

impl KafkaSink {
    /// An exactly-once sink: a transactional producer, initialized (which fences any
    /// older producer of this source and aborts its open transaction).
    pub async fn transactional(
        kafka: &KafkaSettings,
        source: &str,
        database: &str,
        format: RecordFormat,
        metrics: &Metrics,
    ) -> Result<Self, TxnError> {
        let mut sink = Self::new(kafka, source, format, metrics)
            .map_err(|e| TxnError::Other(e.to_string()))?;
        let context = ClusterContext::new(metrics, source);
        sink.reachability = context.reachability();
        sink.producer = transactional_config(kafka, source)
            .create_with_context(context)
            .map_err(|e| TxnError::Other(e.to_string()))?;
        // init_transactions would wait out its timeout against brokers that refuse us.
        if let Some(why) = sink.access_refused(ACCESS_CHECK_TIMEOUT).await {
            return Err(TxnError::Refused(why));
        }
        let producer = sink.producer.clone();
        let timeout =
            Duration::from_millis(kafka.transaction_timeout_ms).max(Duration::from_secs(30));
        tokio::task::spawn_blocking(move || producer.init_transactions(timeout))
            .await
            .map_err(|e| TxnError::Other(format!("init_transactions did not finish: {e}")))?
            .map_err(|e| TxnError::from_kafka("init_transactions", &e))?;
        let l = [source];
        sink.txn = Some(Txn {
            checkpoint_topic: kafka.checkpoint_topic.clone(),
            database: database.to_string(),
            max_records: kafka.transaction_max_records,
            max_age: Duration::from_millis(kafka.transaction_max_ms),
            timeout,
            opened: None,
            records: 0,
            since_boundary: 0,
            last_end_lsn: None,
            waiters: Vec::new(),
            busy: Arc::default(),
            meters: TxnMeters {
                committed: metrics
                    .kafka_transactions
                    .with_label_values(&[source, "committed"]),
                aborted: metrics
                    .kafka_transactions
                    .with_label_values(&[source, "aborted"]),
                records: metrics.kafka_transaction_records.with_label_values(&l),
                commit_seconds: metrics.kafka_commit_seconds.with_label_values(&l),
                fenced: metrics.producer_fenced.with_label_values(&l),
            },
        });
        Ok(sink)
    }

    /// Before a record is sent: back-pressure while the previous transaction is being
    /// committed, and a Kafka transaction begun if none is open. Nothing when idempotent.
    pub(super) fn before_send(&mut self) -> Result<(), SendError> {
        let Some(txn) = self.txn.as_mut() else {
            return Ok(());
        };
        if txn.busy.load(Ordering::Acquire) {
            // The previous transaction is still being committed: back-pressure.
            return Err(SendError::Full);
        }
        if txn.opened.is_none() {
            self.producer
                .begin_transaction()
                .map_err(|e| SendError::Fatal(format!("cannot begin a kafka transaction: {e}")))?;
            txn.opened = Some(Instant::now());
        }
        Ok(())
    }

    /// A record went into the open transaction.
    pub(super) fn sent_one(&mut self) {
        if let Some(txn) = self.txn.as_mut() {
            txn.records += 1;
            txn.since_boundary += 1;
        }
    }

    /// See [`crate::sink::Sink::end_transaction`].
    pub(super) fn end_source_transaction(&mut self, end_lsn: Lsn) -> Option<Delivery> {
        let txn = self.txn.as_mut()?;
        txn.opened?;
        txn.since_boundary = 0;
        txn.last_end_lsn = Some(end_lsn);
        let (tx, rx) = oneshot::channel();
        txn.waiters.push(tx);
        let full = txn.records >= txn.max_records
            || txn.opened.is_some_and(|t| t.elapsed() >= txn.max_age);
        if full {
            self.commit_transaction();
        }
        Some(delivery_from(
            rx,
            "the kafka transaction was dropped unfinished",
        ))
    }

    /// See [`crate::sink::Sink::commit_due`].
    pub(super) fn transaction_due(&self) -> Option<Instant> {
        let txn = self.txn.as_ref()?;
        if txn.since_boundary > 0 || txn.waiters.is_empty() {
            return None;
        }
        txn.opened.map(|t| t + txn.max_age)
    }

    /// See [`crate::sink::Sink::commit`]: the checkpoint record last, then the commit on
    /// a blocking thread; its outcome resolves every waiter of the transaction.
    pub(super) fn commit_transaction(&mut self) {
        let Some(txn) = self.txn.as_mut() else { return };
        if txn.opened.is_none() {
            return;
        }
        if txn.since_boundary > 0 {
            self.abort_transaction("a postgresql transaction was cut short");
            return;
        }
        let Some(lsn) = txn.last_end_lsn else {
            self.abort_transaction("nothing to checkpoint");
            return;
        };
        let value = Checkpoint::new(&self.source, &txn.database, lsn).to_json();
        // Partition 0 always: a reader finds every source's checkpoints there.
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&txn.checkpoint_topic)
            .partition(0)
            .key(self.source.as_str())
            .payload(value.as_bytes());
        // Its delivery is part of the commit: a failed checkpoint fails the commit.
        if let Err((e, _)) = self.producer.send_result(record) {
            self.abort_transaction(&format!("the checkpoint record could not be enqueued: {e}"));
            return;
        }
        let records = txn.records + 1;
        txn.opened = None;
        txn.records = 0;
        let waiters = std::mem::take(&mut txn.waiters);
        let (producer, busy, meters, timeout) = (
            self.producer.clone(),
            txn.busy.clone(),
            txn.meters.clone(),
            txn.timeout,
        );
        let source = self.source.clone();
        busy.store(true, Ordering::Release);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            // rust-rdkafka's commit first flushes, and its flush sleeps in steps of up to
            // 100 ms while the polling thread serves the delivery reports: every commit
            // took ~100 ms. Waiting for the queue to drain here makes that flush a no-op.
            while producer.in_flight_count() > 0 && started.elapsed() < timeout {
                std::thread::sleep(Duration::from_micros(500));
            }
            let outcome = match producer.commit_transaction(timeout) {
                Ok(()) => {
                    meters.committed.inc();
                    meters.records.observe(records as f64);
                    meters
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    Ok(())
                }
                Err(e) => {
                    let err = TxnError::from_kafka("commit", &e);
                    meters.aborted.inc();
                    if matches!(err, TxnError::Fenced(_)) {
                        meters.fenced.inc();
                        tracing::error!(source = %source, error = %e, "fenced: another relay with the same transactional id took over; this kafka transaction never becomes visible");
                    } else {
                        if let Err(e) = producer.abort_transaction(timeout) {
                            tracing::warn!(source = %source, error = %e, "aborting the failed kafka transaction failed");
                        }
                    }
                    Err(match err {
                        TxnError::Fenced(m) => Refusal::Fenced(m),
                        TxnError::Other(m) | TxnError::Refused(m) => {
                            Refusal::Fatal(format!("kafka transaction not committed: {m}"))
                        }
                    })
                }
            };
            busy.store(false, Ordering::Release);
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
        });
    }

    /// See [`crate::sink::Sink::abort`].
    pub(super) fn abort_transaction(&mut self, why: &str) {
        let Some(txn) = self.txn.as_mut() else { return };
        if txn.opened.is_none() {
            return;
        }
        tracing::warn!(source = %self.source, reason = %why, records = txn.records, "aborting the kafka transaction; its records will be sent again");
        txn.opened = None;
        txn.records = 0;
        txn.since_boundary = 0;
        txn.meters.aborted.inc();
        for w in std::mem::take(&mut txn.waiters) {
            let _ = w.send(Err(Refusal::Fatal(format!(
                "kafka transaction aborted: {why}"
            ))));
        }
        let (producer, busy, timeout, source) = (
            self.producer.clone(),
            txn.busy.clone(),
            txn.timeout,
            self.source.clone(),
        );
        busy.store(true, Ordering::Release);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = producer.abort_transaction(timeout) {
                tracing::warn!(source = %source, error = %e, "aborting the kafka transaction failed");
            }
            busy.store(false, Ordering::Release);
        });
    }

    /// See [`crate::sink::Sink::checkpoint`].
    pub(super) fn commit_checkpoint(&mut self, lsn: Lsn) -> Option<Delivery> {
        let txn = self.txn.as_mut()?;
        if txn.opened.is_none() {
            if let Err(e) = self.producer.begin_transaction() {
                return Some(Box::pin(std::future::ready(Err(Refusal::Fatal(format!(
                    "cannot begin a kafka transaction: {e}"
                ))))));
            }
            txn.opened = Some(Instant::now());
        }
        let d = self.end_source_transaction(lsn);
        self.commit_transaction();
        d
    }
}
