//! The Kafka sink: one idempotent producer per source ([`KafkaSink`]). What it does is
//! kept in one room per concern:
//!
//! - [`record`]: an outbox row as a Kafka record in the source's format (`native`
//!   through [`outbox::record`], the mapping tests share; `debezium` and `cloudevents`
//!   through [`crate::format`]) and back, for dead-lettering a refused one;
//! - [`producer`]: the producer's configuration, sending, the classification of Kafka's
//!   refusals into back-pressure, poison and fatal, and the checks that the brokers
//!   answer it;
//! - [`transactions`]: exactly-once, a transactional producer and its commits;
//! - [`admin`]: topic creation;
//! - [`cluster`]: what the cluster does to the producer (its client context), and
//!   [`checkpoint`]: the exactly-once checkpoint records.
//!
//! Invariant: the producer runs with `enable.idempotence=true`, `acks=all` and an
//! infinite message timeout, so librdkafka never skips a record to deliver a later one.
//! A permanent refusal of one record (too large, invalid, not authorized) is poison and
//! follows `kafka.poison`; any other delivery error is fatal for the pipeline, which
//! restarts from the confirmed LSN.

pub mod admin;
pub mod checkpoint;
pub mod cluster;
pub mod producer;
pub mod record;
pub mod transactions;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgwire_replication::Lsn;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Header;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::time::Instant;

use self::cluster::ClusterContext;
use super::{Delivery, Event, Preparing, SendError, Sink, StuckCheck};
use crate::config::KafkaSettings;
use crate::format::RecordFormat;
use crate::metrics::Metrics;

pub use self::producer::{
    is_fenced, is_permanent_refusal, producer_config, ACCESS_CHECK_TIMEOUT, REBOOTSTRAP_AFTER_MS,
    STUCK_AFTER,
};
pub use self::transactions::{transactional_config, TxnError};

pub struct KafkaSink {
    producer: FutureProducer<ClusterContext>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    source: String,
    /// How an event becomes a record (the same for both delivery modes).
    format: RecordFormat,
    /// Formatted records larger than this are poison (`kafka.max_record_bytes`).
    max_record_bytes: usize,
    topic_template: String,
    topics: HashMap<String, String>,
    /// Topics known to exist (created or found); shared with creation futures.
    ready: Arc<Mutex<HashSet<String>>>,
    create_topics: bool,
    partitions: i32,
    replication_factor: i32,
    dead_letter_topic: String,
    /// Exactly-once only: the open Kafka transaction.
    txn: Option<transactions::Txn>,
    /// What a new client for [`Sink::check_stuck`] is made from (brokers and the
    /// user's properties, e.g. security), and when the last check began.
    probe_config: ClientConfig,
    last_stuck_check: Option<Instant>,
    /// The producer's view of its connections (from its client context).
    reachability: cluster::Reachability,
}

impl KafkaSink {
    /// An idempotent sink; the producer's cluster errors are counted in `metrics`.
    /// `format` is the source's record format ([`KafkaSettings::record_format`]).
    pub fn new(
        kafka: &KafkaSettings,
        source: &str,
        format: RecordFormat,
        metrics: &Metrics,
    ) -> Result<Self, KafkaError> {
        let admin = kafka.client_config(&format!("relay-cdc-{source}-admin"));
        let context = ClusterContext::new(metrics, source);
        let reachability = context.reachability();
        Ok(Self {
            producer: producer_config(kafka, source).create_with_context(context)?,
            admin: Arc::new(admin.create()?),
            source: source.to_string(),
            format,
            max_record_bytes: kafka.max_record_bytes,
            topic_template: kafka.topic_template.clone(),
            topics: HashMap::new(),
            ready: Arc::default(),
            create_topics: kafka.create_topics,
            partitions: kafka.topic_partitions,
            replication_factor: kafka.topic_replication_factor,
            dead_letter_topic: kafka.dead_letter_topic.clone(),
            txn: None,
            probe_config: producer::probe_config(kafka, source),
            last_stuck_check: None,
            reachability,
        })
    }
}

impl Sink for KafkaSink {
    fn prepare(&mut self, event: &Event) -> Option<Preparing> {
        let topic = match &self.format {
            RecordFormat::Debezium(_) => {
                let input = record::outbox_event(event, &self.source);
                // An event without a topic is poison: `send` says why.
                self.format.topic(&input, &self.topic_template).ok()?
            }
            RecordFormat::Native | RecordFormat::CloudEvents(_) => {
                self.topic_for(&event.row.aggregate_type).to_string()
            }
        };
        self.prepare_topic(&topic)
    }

    fn prepare_dead_letter(&mut self) -> Option<Preparing> {
        let topic = self.dead_letter_topic.clone();
        self.prepare_topic(&topic)
    }

    fn send(&mut self, event: &Event) -> Result<Delivery, SendError> {
        // Native, the default, on the hot path: straight from the row, no `OutboxEvent`.
        let mapped = match &self.format {
            RecordFormat::Native => None,
            RecordFormat::Debezium(router) => {
                Some(router.record(&record::outbox_event(event, &self.source)))
            }
            RecordFormat::CloudEvents(ce) => Some(ce.record(
                &record::outbox_event(event, &self.source),
                &self.topic_template,
            )),
        };
        if let Some(mapped) = mapped {
            return self.send_formatted(event, mapped);
        }
        let hs = record::headers(event, &self.source);
        let topic = self.topic_for(&event.row.aggregate_type).to_string();
        let row = record::row(&event.row);
        let record = FutureRecord::to(&topic)
            .key(row.key())
            .payload(row.value())
            .headers(hs);
        self.enqueue(record, None)
    }

    fn dead_letter(
        &mut self,
        event: &Event,
        reason: &str,
        with_payload: bool,
    ) -> Result<Delivery, SendError> {
        // In the native format whatever the source's: the dead-letter topic is the relay's
        // own, and its records are read back as events (`record::event_from_message`).
        let hs = record::headers(event, &self.source).insert(Header {
            key: outbox::headers::ERROR,
            value: Some(reason),
        });
        let topic = self.dead_letter_topic.clone();
        let row = record::row(&event.row);
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&topic).key(row.key()).headers(hs);
        if with_payload {
            record = record.payload(row.value());
        }
        self.enqueue(record, None)
    }

    fn flush(&self, timeout: Duration) {
        self.flush_producer(timeout);
    }

    fn end_transaction(&mut self, end_lsn: Lsn) -> Option<Delivery> {
        self.end_source_transaction(end_lsn)
    }

    fn commit_due(&self) -> Option<Instant> {
        self.transaction_due()
    }

    fn commit(&mut self) {
        self.commit_transaction();
    }

    fn abort(&mut self, why: &str) {
        self.abort_transaction(why);
    }

    fn check_stuck(&mut self) -> Option<StuckCheck> {
        self.stuck_check()
    }

    fn transactional(&self) -> bool {
        self.txn.is_some()
    }

    fn checkpoint(&mut self, lsn: Lsn) -> Option<Delivery> {
        self.commit_checkpoint(lsn)
    }
}
