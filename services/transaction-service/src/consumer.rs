//! The Kafka consumer: `UserCreated` opens accounts, `TransactionCreated` settles.
//!
//! Delivery is at-least-once, the effect exactly-once:
//! - an offset is stored only after its event's database transaction committed
//!   (`enable.auto.offset.store=false`), and the client commits stored offsets every
//!   second and on close, so a crash redelivers at most the events of the last second;
//!   committing each offset by hand instead queued one commit request per event, and
//!   under load thousands of them waited behind each other (the drill saw 1773 at a
//!   shutdown, which then took over 10 s);
//! - every use case records the event id in the inbox inside its transaction, so the
//!   redelivered event changes nothing.
//!
//! Events are applied one at a time in partition order. A database failure is retried
//! with backoff, its offset not stored, until it succeeds or shutdown is requested: the
//! partition waits rather than skip money movements. A malformed record (no usable
//! `event_id`/`event_type` header, a payload that is not the event's JSON) is logged
//! without its payload, counted, and skipped with its offset stored; retrying it
//! could never succeed.
//!
//! Errors the client reports while polling (broker down, coordinator moving, topic
//! not yet created) are informational: librdkafka reconnects and rejoins by itself.
//! They are counted and logged at most every [`ERROR_LOG_EVERY`], and the next poll
//! follows at once. Pausing after each one would be wrong: during an outage the
//! client queues errors faster than one per pause, and the consumer would spend
//! minutes to hours after the broker is back draining stale errors before it reads a
//! record again (the drill's broker-outage scenario found exactly that).
//!
//! Each record is handled in a span of its own ([`SPAN_TARGET`], `process <topic>`) that
//! continues the trace of the record's `traceparent`/`tracestate` headers: a child of
//! the span that wrote the event, so every line logged while applying it carries the
//! original `trace_id`, and the settlement's own event carries a `traceparent` naming
//! this span. A record without them (or with a malformed one) starts a new trace.
//!
//! A retry that outlasts `max.poll.interval.ms` (5 min) costs the consumer its group
//! membership: storing the offset after the eventual success fails (logged), the
//! group rebalances, and the event comes back once more, where the inbox absorbs it.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use service_telemetry::trace::{self, Carrier, Origin, SPAN_TARGET};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::app::{open_account, settle_transaction};
use crate::config::KafkaSettings;
use crate::domain::events::{self, TRANSACTION_CREATED, USER_CREATED};
use crate::metrics::Metrics;
use crate::store::StoreError;

/// First and longest pause between attempts to apply an event whose database
/// transaction failed.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// The group session timeout (librdkafka's default is 45 s; brokers accept 6 s and
/// up). Heartbeats go every 3 s from librdkafka's own thread.
const SESSION_TIMEOUT_MS: &str = "10000";
/// How often the client commits the stored offsets.
const AUTO_COMMIT_INTERVAL_MS: &str = "1000";
/// Client errors are logged at most this often (with how many came since).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Creates the consumer and subscribes it to both topics. Nothing is read until
/// [`run`] polls it.
pub fn create(settings: &KafkaSettings) -> Result<StreamConsumer, KafkaError> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("client.id", "transaction-service")
        // An offset is stored by hand once its event's database transaction committed;
        // the client commits the stored offsets every second and once more on close.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
        // A new group starts from the beginning: accounts must exist for every user.
        .set("auto.offset.reset", "earliest")
        // Relay in exactly-once mode: an aborted Kafka transaction's records must never move money.
        .set("isolation.level", "read_committed")
        // A member the coordinator has not heard from for this long is dropped. After a
        // broker restart the group still lists the member the consumer was before it
        // rejoined, and the rebalance waits for that ghost until this expires: with the
        // 45 s default, consumption resumed ~45 s after a 30 s outage ended.
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        // Notice topics the relay creates after start-up within seconds, not minutes.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .create()?;
    consumer.subscribe(&[
        &settings.user_events_topic,
        &settings.transaction_events_topic,
    ])?;
    Ok(consumer)
}

/// The topics events arrive on.
#[derive(Debug, Clone)]
pub struct Topics {
    pub user_events: String,
    pub transaction_events: String,
}

/// What a record asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    OpenAccount {
        event_id: Uuid,
        user_id: Uuid,
    },
    Settle {
        event_id: Uuid,
        transaction_id: Uuid,
    },
    /// An event type this service does not act on (e.g. its own `TransactionCompleted`).
    Ignore {
        event_type: String,
    },
}

/// The parts of a record [`decode`] reads.
struct RecordView<'a> {
    topic: &'a str,
    event_id: Option<&'a [u8]>,
    event_type: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
}

/// Why a record cannot be applied; logged and counted, never with the payload.
fn decode(topics: &Topics, record: &RecordView<'_>) -> Result<Event, &'static str> {
    let event_type = record
        .event_type
        .ok_or("missing event_type header")
        .and_then(|v| std::str::from_utf8(v).map_err(|_| "event_type header is not UTF-8"))?;
    let wanted = (record.topic == topics.user_events && event_type == USER_CREATED)
        || (record.topic == topics.transaction_events && event_type == TRANSACTION_CREATED);
    if !wanted {
        return Ok(Event::Ignore {
            event_type: event_type.to_string(),
        });
    }
    let event_id = record
        .event_id
        .ok_or("missing event_id header")
        .and_then(|v| std::str::from_utf8(v).map_err(|_| "event_id header is not UTF-8"))
        .and_then(|v| Uuid::parse_str(v).map_err(|_| "event_id header is not a UUID"))?;
    let payload = record.payload.ok_or("missing payload")?;
    if event_type == USER_CREATED {
        let event: events::UserCreated =
            serde_json::from_slice(payload).map_err(|_| "payload is not a UserCreated")?;
        Ok(Event::OpenAccount {
            event_id,
            user_id: event.id,
        })
    } else {
        let event: events::TransactionCreated =
            serde_json::from_slice(payload).map_err(|_| "payload is not a TransactionCreated")?;
        Ok(Event::Settle {
            event_id,
            transaction_id: event.transaction_id,
        })
    }
}

/// A received record, copied out of the client's buffer so nothing borrows the
/// consumer across awaits.
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    event: Result<Event, &'static str>,
    /// The record's `traceparent`/`tracestate` headers.
    trace: Carrier,
}

impl Received {
    fn new(topics: &Topics, message: &BorrowedMessage<'_>) -> Self {
        let header = |name: &str| {
            message
                .headers()
                .and_then(|hs| hs.iter().find(|h| h.key == name).and_then(|h| h.value))
        };
        let view = RecordView {
            topic: message.topic(),
            event_id: header(outbox::headers::EVENT_ID),
            event_type: header(outbox::headers::EVENT_TYPE),
            payload: message.payload(),
        };
        let headers = message.headers().into_iter().flat_map(|hs| hs.iter());
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            event: decode(topics, &view),
            trace: Carrier::from_headers(headers.map(|h| (h.key, h.value.unwrap_or_default()))),
        }
    }

    /// The span this record is handled in, continuing the trace its headers name.
    fn span(&self) -> Span {
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "event",
            topic = %self.topic,
            partition = self.partition,
            offset = self.offset,
            trace_id = Empty,
            span_id = Empty,
            "otel.kind" = "consumer",
            "otel.name" = format!("process {}", self.topic),
        );
        match trace::continue_trace(&span, &self.trace) {
            Origin::Continued => {}
            Origin::Started => {
                tracing::debug!(parent: &span, "the record carries no trace context; a new trace starts")
            }
            Origin::Ignored => {
                tracing::debug!(parent: &span, "the record's traceparent is malformed; a new trace starts")
            }
        }
        span
    }
}

/// Consumes until `shutdown` turns `true` (or its sender goes away). Shutdown is
/// honoured between events; an event whose database transaction keeps failing is
/// abandoned uncommitted, to be redelivered after a restart. Stored offsets are
/// committed by [`close`].
pub async fn run(
    consumer: Arc<StreamConsumer>,
    pool: PgPool,
    metrics: Metrics,
    topics: Topics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut errors = ErrorLog::default();
    tracing::info!(
        user_events = %topics.user_events,
        transaction_events = %topics.transaction_events,
        "event consumer started"
    );
    loop {
        let received = tokio::select! {
            biased;
            // 1. Shutdown first: stop between events, never in the middle of one.
            _ = stop_requested(&mut shutdown) => break,
            // 2. Then the next record.
            message = consumer.recv() => match message {
                Ok(message) => Received::new(&topics, &message),
                Err(error) => {
                    metrics.kafka_errors.inc();
                    errors.record(&error, Instant::now());
                    // Errors come back without waiting: let other tasks run.
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };

        let span = received.span();
        let trace = trace::context_of(&span);
        let handled = handle(&consumer, &pool, &metrics, &received, trace, &mut shutdown)
            .instrument(span)
            .await;
        if handled.is_break() {
            break;
        }
    }

    tracing::info!("event consumer stopped");
}

/// Applies one received record inside its span and stores its offset; `Break` when
/// shutdown came first and the event stays unapplied.
async fn handle(
    consumer: &StreamConsumer,
    pool: &PgPool,
    metrics: &Metrics,
    received: &Received,
    trace: Option<outbox::TraceContext>,
    shutdown: &mut watch::Receiver<bool>,
) -> ControlFlow<()> {
    match &received.event {
        Err(reason) => {
            tracing::warn!(
                topic = %received.topic,
                partition = received.partition,
                offset = received.offset,
                reason,
                "skipping malformed event"
            );
            metrics
                .events_failed
                .with_label_values(&["malformed"])
                .inc();
        }
        Ok(Event::Ignore { event_type }) => {
            metrics
                .events_processed
                .with_label_values(&[event_type.as_str(), "ignored"])
                .inc();
        }
        Ok(event) => {
            let Some(outcome) =
                apply_until_done(pool, metrics, event, trace.as_ref(), shutdown).await
            else {
                tracing::info!(
                    topic = %received.topic,
                    partition = received.partition,
                    offset = received.offset,
                    "stopping with an event unapplied; it will be redelivered"
                );
                return ControlFlow::Break(());
            };
            let event_type = match event {
                Event::OpenAccount { .. } => USER_CREATED,
                _ => TRANSACTION_CREATED,
            };
            metrics
                .events_processed
                .with_label_values(&[event_type, outcome])
                .inc();
            if outcome == "unknown_transaction" {
                metrics
                    .events_failed
                    .with_label_values(&["unknown_transaction"])
                    .inc();
            }
        }
    }

    // The event's transaction has committed (or there was nothing to apply): the
    // next commit may include it. Fails when the partition was revoked meanwhile;
    // its new owner gets the event again and the inbox absorbs it.
    if let Err(error) = consumer.store_offset(&received.topic, received.partition, received.offset)
    {
        tracing::warn!(error = %error, topic = %received.topic, partition = received.partition, "storing the offset failed; the event may be redelivered");
    }
    ControlFlow::Continue(())
}

/// Closes the consumer (commits the stored offsets, leaves the group), for
/// at most `timeout`. librdkafka's close blocks, and can block for long when the
/// broker is gone or a rebalance is under way, so it runs on a blocking thread and is
/// abandoned at the deadline: whatever was not committed is redelivered after the
/// restart and absorbed by the inbox. `consumer` should be the last handle, or the
/// close happens wherever the last one is dropped.
pub async fn close(consumer: Arc<StreamConsumer>, timeout: Duration) {
    let handles = Arc::strong_count(&consumer);
    if handles > 1 {
        tracing::warn!(
            handles,
            "kafka consumer still shared; it closes when the last handle goes"
        );
    }
    let closing = tokio::task::spawn_blocking(move || drop(consumer));
    match tokio::time::timeout(timeout, closing).await {
        Ok(Ok(())) => tracing::info!("kafka consumer closed"),
        Ok(Err(error)) => tracing::warn!(error = %error, "closing the kafka consumer panicked"),
        Err(_) => tracing::warn!(
            timeout_ms = timeout.as_millis() as u64,
            "kafka consumer did not close in time; events after the last committed offset will be redelivered"
        ),
    }
}

/// Rate-limits the log of client errors: the first one at once, then one line per
/// [`ERROR_LOG_EVERY`] with the count of errors since the last line.
#[derive(Default)]
struct ErrorLog {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    /// Logs `error` when due; `true` when it was logged.
    fn record(&mut self, error: &KafkaError, now: Instant) -> bool {
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= ERROR_LOG_EVERY);
        if !due {
            self.suppressed += 1;
            return false;
        }
        tracing::warn!(
            error = %error,
            similar_since_last_log = self.suppressed,
            "kafka consumer error; the client reconnects by itself"
        );
        self.last_logged = Some(now);
        self.suppressed = 0;
        true
    }
}

/// Applies `event`, retrying database failures with backoff. `None` when shutdown
/// was requested before it succeeded. The result is the outcome's metric label.
async fn apply_until_done(
    pool: &PgPool,
    metrics: &Metrics,
    event: &Event,
    trace: Option<&outbox::TraceContext>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<&'static str> {
    let mut backoff = RETRY_BACKOFF.0;
    let mut attempt: u32 = 1;
    loop {
        match apply(pool, event, trace.cloned()).await {
            Ok(outcome) => return Some(outcome),
            Err(error) => {
                metrics.consumer_retries.inc();
                tracing::warn!(
                    error = %error,
                    attempt,
                    retry_in_ms = backoff.as_millis() as u64,
                    "applying event failed; retrying"
                );
            }
        }
        tokio::select! {
            biased;
            _ = stop_requested(shutdown) => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RETRY_BACKOFF.1);
        attempt += 1;
    }
}

async fn apply(
    pool: &PgPool,
    event: &Event,
    trace: Option<outbox::TraceContext>,
) -> Result<&'static str, StoreError> {
    Ok(match *event {
        Event::OpenAccount { event_id, user_id } => {
            match open_account::execute(pool, event_id, user_id).await? {
                open_account::Outcome::Opened => {
                    tracing::info!(%event_id, %user_id, "account opened");
                    "applied"
                }
                open_account::Outcome::AlreadyOpen => "already_open",
                open_account::Outcome::Duplicate => {
                    tracing::info!(%event_id, "event consumed before; nothing to do");
                    "duplicate"
                }
            }
        }
        Event::Settle {
            event_id,
            transaction_id,
        } => match settle_transaction::execute(pool, event_id, transaction_id, trace).await? {
            settle_transaction::Outcome::Completed => {
                tracing::info!(%event_id, %transaction_id, "transaction completed");
                "applied"
            }
            settle_transaction::Outcome::Failed(reason) => {
                tracing::info!(%event_id, %transaction_id, reason = reason.as_str(), "transaction failed");
                "applied"
            }
            settle_transaction::Outcome::Duplicate => {
                tracing::info!(%event_id, %transaction_id, "event consumed before; nothing to do");
                "duplicate"
            }
            settle_transaction::Outcome::AlreadySettled => "already_settled",
            settle_transaction::Outcome::UnknownTransaction => {
                tracing::warn!(%event_id, %transaction_id, "TransactionCreated for an unknown transaction");
                "unknown_transaction"
            }
        },
        Event::Ignore { .. } => "ignored",
    })
}

/// Resolves once shutdown is requested or the sender is gone.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            user_events: "users".into(),
            transaction_events: "transactions".into(),
        }
    }

    const ID: &str = "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11";

    fn view<'a>(
        topic: &'a str,
        event_id: Option<&'a str>,
        event_type: Option<&'a str>,
        payload: Option<&'a str>,
    ) -> RecordView<'a> {
        RecordView {
            topic,
            event_id: event_id.map(str::as_bytes),
            event_type: event_type.map(str::as_bytes),
            payload: payload.map(str::as_bytes),
        }
    }

    #[test]
    fn client_errors_are_logged_once_per_interval() {
        let error =
            KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
        let start = Instant::now();
        let mut log = ErrorLog::default();
        assert!(log.record(&error, start));
        assert!(!log.record(&error, start + Duration::from_secs(1)));
        assert!(!log.record(&error, start + ERROR_LOG_EVERY - Duration::from_millis(1)));
        assert_eq!(log.suppressed, 2);
        assert!(log.record(&error, start + ERROR_LOG_EVERY));
        assert_eq!(log.suppressed, 0);
    }

    #[test]
    fn user_created_on_the_user_topic_opens_an_account() {
        let payload =
            format!(r#"{{"id":"{ID}","email":"a@b.c","createdAt":"2026-01-01T00:00:00Z"}}"#);
        let event = decode(
            &topics(),
            &view("users", Some(ID), Some(USER_CREATED), Some(&payload)),
        );
        assert_eq!(
            event,
            Ok(Event::OpenAccount {
                event_id: ID.parse().unwrap(),
                user_id: ID.parse().unwrap()
            })
        );
    }

    #[test]
    fn transaction_created_on_the_transaction_topic_settles() {
        let payload = format!(
            r#"{{"transactionId":"{ID}","amount":"1.00","fromUserId":null,"toUserId":"{ID}","description":null,"createdAt":"2026-01-01T00:00:00Z"}}"#
        );
        let event = decode(
            &topics(),
            &view(
                "transactions",
                Some(ID),
                Some(TRANSACTION_CREATED),
                Some(&payload),
            ),
        );
        assert!(matches!(event, Ok(Event::Settle { .. })));
    }

    #[test]
    fn other_event_types_are_ignored() {
        let event = decode(
            &topics(),
            &view(
                "transactions",
                Some(ID),
                Some("TransactionCompleted"),
                Some("{}"),
            ),
        );
        assert_eq!(
            event,
            Ok(Event::Ignore {
                event_type: "TransactionCompleted".into()
            })
        );
        // A UserCreated on the wrong topic is not acted on either.
        let event = decode(
            &topics(),
            &view("transactions", Some(ID), Some(USER_CREATED), None),
        );
        assert!(matches!(event, Ok(Event::Ignore { .. })));
    }

    #[test]
    fn records_without_usable_headers_or_payload_are_malformed() {
        let t = topics();
        assert_eq!(
            decode(&t, &view("users", Some(ID), None, Some("{}"))),
            Err("missing event_type header")
        );
        assert_eq!(
            decode(&t, &view("users", None, Some(USER_CREATED), Some("{}"))),
            Err("missing event_id header")
        );
        assert_eq!(
            decode(
                &t,
                &view("users", Some("42"), Some(USER_CREATED), Some("{}"))
            ),
            Err("event_id header is not a UUID")
        );
        assert_eq!(
            decode(&t, &view("users", Some(ID), Some(USER_CREATED), None)),
            Err("missing payload")
        );
        assert_eq!(
            decode(
                &t,
                &view("users", Some(ID), Some(USER_CREATED), Some("not json"))
            ),
            Err("payload is not a UserCreated")
        );
        assert_eq!(
            decode(
                &t,
                &view(
                    "transactions",
                    Some(ID),
                    Some(TRANSACTION_CREATED),
                    Some(r#"{"transactionId":"x"}"#)
                )
            ),
            Err("payload is not a TransactionCreated")
        );
    }
}
