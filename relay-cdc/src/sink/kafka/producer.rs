//! The producer: its configuration (the safety properties set last), sending a record,
//! the classification of Kafka's refusals, and the checks that the brokers answer it.
//!
//! A refused record is back-pressure (`QueueFull`: wait and send again), poison (Kafka
//! can never take it: too large, invalid, not authorized for its topic; it follows
//! `kafka.poison`), fenced (another producer with our transactional id took over) or
//! fatal (anything else: the pipeline rebuilds the producer and resumes from the
//! confirmed LSN). Nothing is skipped silently.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{OwnedMessage, ToBytes};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::ClientConfig;
use tokio::time::Instant;

use super::record::{event_from_message, header};
use super::{cluster, KafkaSink};
use crate::config::KafkaSettings;
use crate::sink::{Delivery, Event, Refusal, SendError, StuckCheck};
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
    if let Some((k, v)) = kafka.sasl_password_property() {
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

pub(super) fn error_code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    match e {
        KafkaError::MessageProduction(c) => Some(*c),
        other => other.rdkafka_error_code(),
    }
}

/// A delivery error as a [`Refusal`]; poison carries the event back so it can be
/// dead-lettered: `origin` when the record came with it (a non-native format), else
/// rebuilt from the refused message.
pub(super) fn refusal(e: &KafkaError, msg: &OwnedMessage, origin: Option<Box<Event>>) -> Refusal {
    let id = match &origin {
        Some(event) => event.row.id.clone(),
        None => header(msg, headers::EVENT_ID),
    };
    match error_code(e) {
        Some(code) if is_fenced(code) => Refusal::Fenced(format!("kafka refused event {id}: {e}")),
        Some(code) if is_permanent_refusal(code) => Refusal::Poison {
            event: origin.unwrap_or_else(|| Box::new(event_from_message(msg))),
            reason: format!("kafka refused the record: {e}"),
        },
        _ => Refusal::Fatal(format!("kafka refused event {id}: {e}")),
    }
}

/// A client that only asks for metadata: the brokers and the connection properties.
pub(super) fn probe_config(kafka: &KafkaSettings, source: &str) -> ClientConfig {
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

impl KafkaSink {
    /// Hands `record` to the producer (in the open Kafka transaction, exactly-once);
    /// the delivery resolves when Kafka acked or refused it. `origin`: the event the
    /// record was made from, when the record cannot be read back into it.
    pub(super) fn enqueue<K: ToBytes + ?Sized>(
        &mut self,
        record: FutureRecord<'_, K, [u8]>,
        origin: Option<Box<Event>>,
    ) -> Result<Delivery, SendError> {
        self.before_send()?;
        let result = self.producer.send_result(record);
        if result.is_ok() {
            self.sent_one();
        }
        match result {
            Ok(f) => Ok(Box::pin(async move {
                match f.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, msg))) => Err(refusal(&e, &msg, origin)),
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

    pub(super) fn flush_producer(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(source = %self.source, error = %e, "producer flush did not complete");
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

    /// See [`crate::sink::Sink::check_stuck`]: after [`STUCK_AFTER`] without a broker
    /// connection up, at most once per that period, a new client asks the cluster.
    pub(super) fn stuck_check(&mut self) -> Option<StuckCheck> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn every_client_gets_the_sasl_password_held_apart_from_the_properties() {
        let mut kafka: KafkaSettings = toml::from_str("brokers = \"b:1\"").unwrap();
        kafka
            .properties
            .insert("sasl.username".into(), "relay".into());
        kafka.sasl_password = Some(String::from("hunter2").into());
        for c in [producer_config(&kafka, "s"), probe_config(&kafka, "s")] {
            assert_eq!(c.get("sasl.username"), Some("relay"));
            assert_eq!(c.get("sasl.password"), Some("hunter2"));
        }
        assert!(!format!("{kafka:?}").contains("hunter2"));
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
}
