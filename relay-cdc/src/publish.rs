//! The Kafka side: one idempotent producer per source and the mapping from an outbox
//! row to a record (topic from the aggregate type, key = aggregate id, value = the
//! payload as written, headers naming the event).
//!
//! Invariant: a record counts as published only when its delivery future resolved
//! `Ok`. The producer runs with `enable.idempotence=true`, `acks=all` and an infinite
//! message timeout, so librdkafka never skips a record to deliver a later one; any
//! delivery error is fatal for the pipeline, which restarts from the confirmed LSN.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use crate::config::{KafkaSettings, PoisonPolicy};
use crate::pgoutput::OutboxRow;
use outbox::headers;

/// Where a record's source transaction committed; shared by all its records.
#[derive(Debug, Clone)]
pub struct CommitMeta {
    pub lsn: String,
    pub time: String,
}

/// What happened to a row handed to [`Publisher::send`].
pub enum Sent {
    /// Enqueued; resolves when the broker acked (or refused) it.
    Record(DeliveryFuture),
    /// Kafka can never take it; the policy says stop the source.
    Poison { reason: String },
}

pub struct Publisher {
    producer: FutureProducer,
    source: String,
    topic_template: String,
    topics: HashMap<String, String>,
    max_record_bytes: usize,
    poison: PoisonPolicy,
    dead_letter_topic: String,
}

/// The producer configuration; the safety properties are set last so nothing overrides them.
pub fn producer_config(kafka: &KafkaSettings, source: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", format!("relay-cdc-{source}"))
        // Java clients hash keys with murmur2: keep an aggregate on the partition they would use.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "262144");
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

impl Publisher {
    pub fn new(kafka: &KafkaSettings, source: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: producer_config(kafka, source).create()?,
            source: source.to_string(),
            topic_template: kafka.topic_template.clone(),
            topics: HashMap::new(),
            max_record_bytes: kafka.max_record_bytes,
            poison: kafka.poison,
            dead_letter_topic: kafka.dead_letter_topic.clone(),
        })
    }

    /// The topic for an aggregate type, from the configured template.
    pub fn topic_for(&mut self, aggregate_type: &str) -> &str {
        if !self.topics.contains_key(aggregate_type) {
            let t = render_topic(&self.topic_template, aggregate_type, &self.source);
            self.topics.insert(aggregate_type.to_string(), t);
        }
        &self.topics[aggregate_type]
    }

    /// Enqueues one outbox row. Waits while the producer queue is full (back-pressure,
    /// not failure). A record too large for Kafka is poison: dead-lettered or refused
    /// per the configured policy.
    pub async fn send(&mut self, row: &OutboxRow, commit: &CommitMeta) -> Result<Sent, KafkaError> {
        let size = row.payload.len() + row.aggregate_id.len();
        if size > self.max_record_bytes {
            let reason = format!(
                "record of {size} bytes exceeds kafka.max_record_bytes ({})",
                self.max_record_bytes
            );
            return match self.poison {
                PoisonPolicy::Stop => Ok(Sent::Poison { reason }),
                PoisonPolicy::DeadLetter => {
                    let topic = self.dead_letter_topic.clone();
                    let hs = self.headers(row, commit).insert(Header {
                        key: headers::ERROR,
                        value: Some(&reason),
                    });
                    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
                        .key(row.aggregate_id.as_str())
                        .headers(hs);
                    self.enqueue(record).await.map(Sent::Record)
                }
            };
        }
        let hs = self.headers(row, commit);
        let topic = self.topic_for(&row.aggregate_type).to_string();
        let record = FutureRecord::to(&topic)
            .key(row.aggregate_id.as_str())
            .payload(&row.payload[..])
            .headers(hs);
        self.enqueue(record).await.map(Sent::Record)
    }

    fn headers(&self, row: &OutboxRow, commit: &CommitMeta) -> OwnedHeaders {
        OwnedHeaders::new_with_capacity(8)
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
            })
    }

    async fn enqueue<'a>(
        &self,
        mut record: FutureRecord<'a, str, [u8]>,
    ) -> Result<DeliveryFuture, KafkaError> {
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for everything enqueued to be delivered.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(source = %self.source, error = %e, "producer flush did not complete");
        }
    }

    /// Asks the cluster for metadata: proves the brokers answer.
    pub fn probe(&self, timeout: Duration) -> Result<usize, KafkaError> {
        Ok(self
            .producer
            .client()
            .fetch_metadata(None, timeout)?
            .brokers()
            .len())
    }
}

fn render_topic(template: &str, aggregate_type: &str, source: &str) -> String {
    template
        .replace("{aggregate_type}", aggregate_type)
        .replace("{source}", source)
}

/// PostgreSQL timestamps count microseconds from 2000-01-01; this converts to Unix time.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// RFC 3339 (UTC, microseconds) of a PostgreSQL commit timestamp.
pub fn commit_time_rfc3339(pg_micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(pg_micros + PG_EPOCH_OFFSET_MICROS)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
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
    fn commit_times_convert_from_the_postgres_epoch() {
        assert_eq!(commit_time_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(
            commit_time_rfc3339(1_500_000),
            "2000-01-01T00:00:01.500000Z"
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
    }
}
