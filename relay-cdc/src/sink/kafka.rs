//! The Kafka sink: one idempotent producer per source, the mapping from an outbox row
//! to a record (topic from the aggregate type, key = aggregate id, value = the payload
//! as written, headers naming the event), topic creation, and the classification of
//! Kafka's errors into back-pressure, poison and fatal.
//!
//! Invariant: the producer runs with `enable.idempotence=true`, `acks=all` and an
//! infinite message timeout, so librdkafka never skips a record to deliver a later one.
//! A permanent refusal of one record (too large, invalid, not authorized) is poison and
//! follows `kafka.poison`; any other delivery error is fatal for the pipeline, which
//! restarts from the confirmed LSN.
//!
//! Exactly-once ([`KafkaSink::transactional`]): the producer has a `transactional.id`
//! shared by every relay of the source; `init_transactions` at the start of each
//! session fences older producers with that id and aborts their open transaction. A
//! Kafka transaction holds whole PostgreSQL transactions and, last, a checkpoint record
//! (see [`super::checkpoint`]) with the end LSN of the last of them; both become
//! visible together or not at all. It is committed only at a PostgreSQL commit, so a
//! PostgreSQL transaction is never split; the unit deliveries handed out by
//! `end_transaction` resolve only once the commit succeeded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwire_replication::Lsn;
use tokio::sync::oneshot;
use tokio::time::Instant;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use super::checkpoint::Checkpoint;
use super::cluster::{self, ClusterContext};
use super::{CommitMeta, Delivery, Event, PrepareError, Refusal, SendError, Sink};
use crate::config::KafkaSettings;
use crate::metrics::Metrics;
use crate::pgoutput::OutboxRow;
use outbox::headers;

/// How long a client may fail to get metadata from any broker it knows before it
/// bootstraps again from `bootstrap.servers` (librdkafka's default is 5 min).
pub const REBOOTSTRAP_AFTER_MS: u32 = 10_000;

/// How long the producer may have no broker connection up, while records wait for
/// acks, before the sink asks a new client whether the cluster answers it; and how long
/// between two such checks. Three rebootstrap periods: librdkafka had its chance.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);
/// How long a new session's producer may take to get metadata before the relay asks
/// whether the brokers refused it (TLS, SASL) rather than being away.
pub const ACCESS_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the new client's metadata request may take.
const STUCK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The producer configuration; the safety properties are set last so nothing overrides them.
pub fn producer_config(kafka: &KafkaSettings, source: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", format!("relay-cdc-{source}"))
        // Java clients hash keys with murmur2: keep an aggregate on the partition they would use.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "262144")
        // librdkafka drops brokers a metadata answer leaves out; a broker answering while
        // it starts up can leave out every one, and the client then knows no broker until
        // it bootstraps again, 5 min later by default: records wait, acks never come
        // (seen in the short drill's broker restart: one source stalled on "kafka acks"
        // with 0 brokers known while the other, bootstrapped alike, resumed). 10 s.
        .set(
            "metadata.recovery.rebootstrap.trigger.ms",
            REBOOTSTRAP_AFTER_MS.to_string(),
        )
        // What the cluster does to the producer (retries, brokers down): see `cluster`.
        .set(
            "statistics.interval.ms",
            cluster::STATS_INTERVAL_MS.to_string(),
        );
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        // 0 = never time out: a record waits for the broker rather than being skipped.
        .set("message.timeout.ms", "0");
    c
}

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

/// Errors that mean another producer with our transactional id took over.
pub fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// Kafka error codes that refuse one record for good: sending it again cannot succeed.
pub fn is_permanent_refusal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed
    )
}

/// A client that only asks for metadata: the brokers and the connection properties.
fn probe_config(kafka: &KafkaSettings, source: &str) -> ClientConfig {
    kafka.client_config(&format!("relay-cdc-{source}-probe"))
}

/// Whether a new client gets the cluster's metadata with at least one broker in it.
fn cluster_answers(config: &ClientConfig) -> bool {
    let Ok(client) = config.create::<rdkafka::producer::BaseProducer>() else {
        return false;
    };
    client
        .client()
        .fetch_metadata(None, STUCK_CHECK_TIMEOUT)
        .is_ok_and(|m| !m.brokers().is_empty())
}

fn error_code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    match e {
        KafkaError::MessageProduction(c) => Some(*c),
        other => other.rdkafka_error_code(),
    }
}

pub struct KafkaSink {
    producer: FutureProducer<ClusterContext>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    source: String,
    topic_template: String,
    topics: HashMap<String, String>,
    /// Topics known to exist (created or found); shared with creation futures.
    ready: Arc<Mutex<HashSet<String>>>,
    create_topics: bool,
    partitions: i32,
    replication_factor: i32,
    dead_letter_topic: String,
    /// Exactly-once only: the open Kafka transaction.
    txn: Option<Txn>,
    /// What a new client for [`Sink::check_stuck`] is made from (brokers and the
    /// user's properties, e.g. security), and when the last check began.
    probe_config: ClientConfig,
    last_stuck_check: Option<Instant>,
    /// The producer's view of its connections (from its client context).
    reachability: cluster::Reachability,
}

/// The transactional state of an exactly-once sink.
struct Txn {
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
    /// An idempotent sink; the producer's cluster errors are counted in `metrics`.
    pub fn new(kafka: &KafkaSettings, source: &str, metrics: &Metrics) -> Result<Self, KafkaError> {
        let admin = kafka.client_config(&format!("relay-cdc-{source}-admin"));
        let context = ClusterContext::new(metrics, source);
        let reachability = context.reachability();
        Ok(Self {
            producer: producer_config(kafka, source).create_with_context(context)?,
            admin: Arc::new(admin.create()?),
            source: source.to_string(),
            topic_template: kafka.topic_template.clone(),
            topics: HashMap::new(),
            ready: Arc::default(),
            create_topics: kafka.create_topics,
            partitions: kafka.topic_partitions,
            replication_factor: kafka.topic_replication_factor,
            dead_letter_topic: kafka.dead_letter_topic.clone(),
            txn: None,
            probe_config: probe_config(kafka, source),
            last_stuck_check: None,
            reachability,
        })
    }

    /// An exactly-once sink: a transactional producer, initialized (which fences any
    /// older producer of this source and aborts its open transaction).
    pub async fn transactional(
        kafka: &KafkaSettings,
        source: &str,
        database: &str,
        metrics: &Metrics,
    ) -> Result<Self, TxnError> {
        let mut sink =
            Self::new(kafka, source, metrics).map_err(|e| TxnError::Other(e.to_string()))?;
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

    /// Creates the compacted checkpoint topic (one partition) unless it exists.
    pub async fn prepare_checkpoint_topic(&self, topic: &str) -> Result<(), PrepareError> {
        create_topic(
            &self.admin,
            topic,
            1,
            self.replication_factor,
            &[("cleanup.policy", "compact")],
        )
        .await
    }

    /// The topic for an aggregate type, from the configured template.
    pub fn topic_for(&mut self, aggregate_type: &str) -> &str {
        if !self.topics.contains_key(aggregate_type) {
            let t = render_topic(&self.topic_template, aggregate_type, &self.source);
            self.topics.insert(aggregate_type.to_string(), t);
        }
        &self.topics[aggregate_type]
    }

    /// Makes sure `topic` exists; `None` when it is known to.
    pub fn prepare_topic(&self, topic: &str) -> Option<super::Preparing> {
        if !self.create_topics || self.ready.lock().expect("not poisoned").contains(topic) {
            return None;
        }
        let (admin, ready, topic) = (self.admin.clone(), self.ready.clone(), topic.to_string());
        let (partitions, rf) = (self.partitions, self.replication_factor);
        Some(Box::pin(async move {
            create_topic(&admin, &topic, partitions, rf, &[]).await?;
            tracing::debug!(topic = %topic, "topic exists");
            ready.lock().expect("not poisoned").insert(topic);
            Ok(())
        }))
    }

    /// The relay's headers, then the row's own (trace context, `headers` column).
    fn headers(&self, row: &OutboxRow, commit: &CommitMeta) -> OwnedHeaders {
        let mut hs = OwnedHeaders::new_with_capacity(8 + row.headers.len())
            .insert(Header {
                key: headers::EVENT_ID,
                value: Some(&row.id),
            })
            .insert(Header {
                key: headers::EVENT_TYPE,
                value: Some(&row.event_type),
            })
            .insert(Header {
                key: headers::AGGREGATE_TYPE,
                value: Some(&row.aggregate_type),
            })
            .insert(Header {
                key: headers::AGGREGATE_ID,
                value: Some(&row.aggregate_id),
            })
            .insert(Header {
                key: headers::SOURCE,
                value: Some(&self.source),
            })
            .insert(Header {
                key: headers::COMMIT_LSN,
                value: Some(&commit.lsn),
            })
            .insert(Header {
                key: headers::COMMIT_TIME,
                value: Some(&commit.time),
            });
        for (key, value) in &row.headers {
            hs = hs.insert(Header {
                key,
                value: Some(value),
            });
        }
        hs
    }

    fn enqueue(&mut self, record: FutureRecord<'_, str, [u8]>) -> Result<Delivery, SendError> {
        if let Some(txn) = self.txn.as_mut() {
            if txn.busy.load(Ordering::Acquire) {
                // The previous transaction is still being committed: back-pressure.
                return Err(SendError::Full);
            }
            if txn.opened.is_none() {
                self.producer.begin_transaction().map_err(|e| {
                    SendError::Fatal(format!("cannot begin a kafka transaction: {e}"))
                })?;
                txn.opened = Some(Instant::now());
            }
        }
        let result = self.producer.send_result(record);
        if result.is_ok() {
            if let Some(txn) = self.txn.as_mut() {
                txn.records += 1;
                txn.since_boundary += 1;
            }
        }
        match result {
            Ok(f) => Ok(Box::pin(async move {
                match f.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, msg))) => Err(refusal(&e, &msg)),
                    Err(_) => Err(Refusal::Fatal("the producer dropped the record".into())),
                }
            })),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::Full)
            }
            Err((e, _)) if error_code(&e).is_some_and(is_permanent_refusal) => {
                Err(SendError::Poison(e.to_string()))
            }
            Err((e, _)) => Err(SendError::Fatal(e.to_string())),
        }
    }

    /// Asks the cluster for metadata: proves the brokers answer. A failure names what
    /// the brokers refused (TLS, SASL) when they did, not only that they did not answer.
    pub fn probe(&self, timeout: Duration) -> Result<usize, String> {
        match self.producer.client().fetch_metadata(None, timeout) {
            Ok(m) => Ok(m.brokers().len()),
            Err(e) => Err(self.reachability.refused().unwrap_or_else(|| e.to_string())),
        }
    }

    /// Whether the brokers refuse this producer itself (a certificate that does not
    /// verify, SASL credentials they reject, plaintext to a TLS listener): asks for
    /// metadata for up to `timeout`. `None` when they answered, or are only unreachable
    /// (records then wait, as in any outage).
    pub async fn access_refused(&self, timeout: Duration) -> Option<String> {
        let producer = self.producer.clone();
        let answered = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).is_ok()
        })
        .await
        .unwrap_or(false);
        if answered {
            None
        } else {
            self.reachability.refused()
        }
    }
}

impl Sink for KafkaSink {
    fn prepare(&mut self, event: &Event) -> Option<super::Preparing> {
        let topic = self.topic_for(&event.row.aggregate_type).to_string();
        self.prepare_topic(&topic)
    }

    fn prepare_dead_letter(&mut self) -> Option<super::Preparing> {
        let topic = self.dead_letter_topic.clone();
        self.prepare_topic(&topic)
    }

    fn send(&mut self, event: &Event) -> Result<Delivery, SendError> {
        let hs = self.headers(&event.row, &event.commit);
        let topic = self.topic_for(&event.row.aggregate_type).to_string();
        let record = FutureRecord::to(&topic)
            .key(event.row.aggregate_id.as_str())
            .payload(&event.row.payload[..])
            .headers(hs);
        self.enqueue(record)
    }

    fn dead_letter(
        &mut self,
        event: &Event,
        reason: &str,
        with_payload: bool,
    ) -> Result<Delivery, SendError> {
        let hs = self.headers(&event.row, &event.commit).insert(Header {
            key: headers::ERROR,
            value: Some(reason),
        });
        let topic = self.dead_letter_topic.clone();
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
            .key(event.row.aggregate_id.as_str())
            .headers(hs);
        if with_payload {
            record = record.payload(&event.row.payload[..]);
        }
        self.enqueue(record)
    }

    fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(source = %self.source, error = %e, "producer flush did not complete");
        }
    }

    fn end_transaction(&mut self, end_lsn: Lsn) -> Option<Delivery> {
        let txn = self.txn.as_mut()?;
        txn.opened?;
        txn.since_boundary = 0;
        txn.last_end_lsn = Some(end_lsn);
        let (tx, rx) = oneshot::channel();
        txn.waiters.push(tx);
        let full = txn.records >= txn.max_records
            || txn.opened.is_some_and(|t| t.elapsed() >= txn.max_age);
        if full {
            self.commit();
        }
        Some(super::delivery_from(
            rx,
            "the kafka transaction was dropped unfinished",
        ))
    }

    fn commit_due(&self) -> Option<Instant> {
        let txn = self.txn.as_ref()?;
        if txn.since_boundary > 0 || txn.waiters.is_empty() {
            return None;
        }
        txn.opened.map(|t| t + txn.max_age)
    }

    fn commit(&mut self) {
        let Some(txn) = self.txn.as_mut() else { return };
        if txn.opened.is_none() {
            return;
        }
        if txn.since_boundary > 0 {
            self.abort("a postgresql transaction was cut short");
            return;
        }
        let Some(lsn) = txn.last_end_lsn else {
            self.abort("nothing to checkpoint");
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
            self.abort(&format!("the checkpoint record could not be enqueued: {e}"));
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

    fn abort(&mut self, why: &str) {
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

    fn check_stuck(&mut self) -> Option<super::StuckCheck> {
        let unreachable = self.reachability.unreachable_for()?;
        if unreachable < STUCK_AFTER
            || self
                .last_stuck_check
                .is_some_and(|at| at.elapsed() < STUCK_AFTER)
        {
            return None;
        }
        self.last_stuck_check = Some(Instant::now());
        let config = self.probe_config.clone();
        Some(Box::pin(async move {
            let answers = tokio::task::spawn_blocking(move || cluster_answers(&config))
                .await
                .unwrap_or(false);
            answers.then(|| {
                format!(
                    "the producer has had no broker connection for {} s while a new client reaches the cluster (librdkafka lost its brokers and did not bootstrap again)",
                    unreachable.as_secs()
                )
            })
        }))
    }

    fn transactional(&self) -> bool {
        self.txn.is_some()
    }

    fn checkpoint(&mut self, lsn: Lsn) -> Option<Delivery> {
        let txn = self.txn.as_mut()?;
        if txn.opened.is_none() {
            if let Err(e) = self.producer.begin_transaction() {
                return Some(Box::pin(std::future::ready(Err(Refusal::Fatal(format!(
                    "cannot begin a kafka transaction: {e}"
                ))))));
            }
            txn.opened = Some(Instant::now());
        }
        let d = self.end_transaction(lsn);
        self.commit();
        d
    }
}

/// Creates `topic` unless it exists. Refusals an operator must fix are
/// [`PrepareError::Refused`]; an unreachable cluster is [`PrepareError::Transient`].
async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
    config: &[(&str, &str)],
) -> Result<(), PrepareError> {
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let mut new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    for (k, v) in config {
        new = new.set(k, v);
    }
    let results = admin
        .create_topics(&[new], &opts)
        .await
        .map_err(|e| PrepareError::Transient(format!("creating topic {topic}: {e}")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) if is_refused_creation(code) => {
                return Err(PrepareError::Refused(format!(
                    "the cluster refused to create topic {t}: {code}"
                )))
            }
            Err((t, code)) => {
                return Err(PrepareError::Transient(format!(
                    "creating topic {t}: {code}"
                )))
            }
        }
    }
    Ok(())
}

fn is_refused_creation(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidRequest
    )
}

/// A delivery error as a [`Refusal`]; poison carries the event back (rebuilt from the
/// refused message) so it can be dead-lettered.
fn refusal(e: &KafkaError, msg: &OwnedMessage) -> Refusal {
    match error_code(e) {
        Some(code) if is_fenced(code) => Refusal::Fenced(format!(
            "kafka refused event {}: {e}",
            header(msg, headers::EVENT_ID)
        )),
        Some(code) if is_permanent_refusal(code) => Refusal::Poison {
            event: Box::new(event_from_message(msg)),
            reason: format!("kafka refused the record: {e}"),
        },
        _ => Refusal::Fatal(format!(
            "kafka refused event {}: {e}",
            header(msg, headers::EVENT_ID)
        )),
    }
}

fn header(msg: &OwnedMessage, name: &str) -> String {
    msg.headers()
        .and_then(|hs| hs.iter().find(|h| h.key == name))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The event a record was made from (its headers, key and payload).
fn event_from_message(msg: &OwnedMessage) -> Event {
    let mut row = OutboxRow::new(
        header(msg, headers::EVENT_ID),
        header(msg, headers::AGGREGATE_TYPE),
        header(msg, headers::AGGREGATE_ID),
        header(msg, headers::EVENT_TYPE),
        msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    );
    // The row's own headers: its trace context and every one the relay does not set.
    let own = |key: &str| {
        key == headers::TRACEPARENT
            || key == headers::TRACESTATE
            || !headers::RESERVED.contains(&key)
    };
    row.headers = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .filter(|h| own(h.key))
                .map(|h| {
                    let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_string(), v.into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    Event {
        row,
        commit: CommitMeta {
            lsn: header(msg, headers::COMMIT_LSN),
            time: header(msg, headers::COMMIT_TIME),
        },
    }
}

fn render_topic(template: &str, aggregate_type: &str, source: &str) -> String {
    template
        .replace("{aggregate_type}", aggregate_type)
        .replace("{source}", source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_come_from_the_template() {
        assert_eq!(
            render_topic("outbox.event.{aggregate_type}", "user", "users_db"),
            "outbox.event.user"
        );
        assert_eq!(
            render_topic("{source}.{aggregate_type}", "transaction", "tx"),
            "tx.transaction"
        );
    }

    #[test]
    fn safety_properties_cannot_be_overridden() {
        let mut kafka: KafkaSettings = toml::from_str("brokers = \"b:1\"").unwrap();
        kafka.properties.insert("acks".into(), "1".into());
        kafka.properties.insert("linger.ms".into(), "20".into());
        let c = producer_config(&kafka, "s");
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("message.timeout.ms"), Some("0"));
        assert_eq!(c.get("linger.ms"), Some("20"));
        // A client that lost every broker bootstraps again within seconds, not minutes.
        assert_eq!(
            c.get("metadata.recovery.rebootstrap.trigger.ms"),
            Some("10000")
        );
    }

    #[test]
    fn size_and_authorization_refusals_are_poison_and_outages_are_not() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(is_permanent_refusal(code), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert!(!is_permanent_refusal(code), "{code:?}");
        }
    }

    #[test]
    fn a_refused_record_comes_back_as_the_event_it_was_made_from() {
        let row = OutboxRow::new(
            "e1".into(),
            "user".into(),
            "u1".into(),
            "UserCreated".into(),
            b"{}".to_vec(),
        )
        .with_metadata(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            Some("k=v".into()),
            Some(br#"{"x-tenant": "t1"}"#),
        );
        assert_eq!(row.headers.len(), 3, "{row:?}");
        let commit = CommitMeta {
            lsn: "0/10".into(),
            time: "2026-12-01T00:00:00.000000Z".into(),
        };
        let kafka: KafkaSettings = toml::from_str("brokers = \"127.0.0.1:1\"").unwrap();
        let sink = KafkaSink::new(&kafka, "s", &Metrics::new()).unwrap();
        let msg = OwnedMessage::new(
            Some(row.payload.clone()),
            Some(b"u1".to_vec()),
            "t".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            0,
            Some(sink.headers(&row, &commit)),
        );
        let r = refusal(
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            &msg,
        );
        let Refusal::Poison { event, reason } = r else {
            panic!("expected poison, got {r:?}")
        };
        assert_eq!(*event, Event { row, commit });
        assert!(reason.contains("too large"), "{reason}");
    }
}
