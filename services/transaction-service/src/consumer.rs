//! The Kafka consumer: `UserCreated` opens accounts, `TransactionCreated` settles.
//!
//! Records are applied in **batches**: after each record the consumer waits for, it takes
//! every record the client already holds, up to `CONSUMER_MAX_BATCH` (500), and applies
//! them in one database transaction ([`apply_events`]). Under a trickle a batch is one
//! record and nothing waits for a batch to fill; under load the client prefetches while a
//! batch commits, and batches grow to what arrived meanwhile. Within a batch the records
//! keep the order the client returned them in, which is each partition's order: events
//! of one key (one transaction, one user) apply in order, and each account's transfers
//! apply in the order they were consumed.
//!
//! Delivery is at-least-once, the effect exactly-once:
//! - offsets are stored only after the batch's database transaction committed
//!   (`enable.auto.offset.store=false`; the highest offset per partition), and the
//!   client commits stored offsets every second and on close, so a crash redelivers at
//!   most the last second's batches; committing each offset by hand instead queued one
//!   commit request per event, and under load thousands of them waited behind each
//!   other (the drill saw 1773 at a shutdown, which then took over 10 s);
//! - every event id goes into the inbox inside the batch's transaction, so a
//!   redelivered event changes nothing.
//!
//! A database failure is retried with backoff for the whole batch, no offset stored,
//! until it succeeds or shutdown is requested: the partitions wait rather than skip
//! money movements. A malformed record (no usable `event_id`/`event_type` header, a
//! payload that is not the event's JSON) is logged without its payload, counted, and
//! skipped with its offset stored once its batch committed; retrying it could never
//! succeed.
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
//! the span that wrote the event, so the lines logged for it carry the original
//! `trace_id`, and the settlement's own event carries a `traceparent` naming this span.
//! A record without them (or with a malformed one) starts a new trace. A batch's retry
//! is one line for the batch, outside any record's trace.
//!
//! A retry that outlasts `max.poll.interval.ms` (5 min) costs the consumer its group
//! membership: storing the offsets after the eventual success fails (logged), the
//! group rebalances, and the events come back once more, where the inbox absorbs them.
//!
//! A client that stays out of its group while the cluster is reachable is replaced
//! by a new one ([`stall`] decides when; between batches, like shutdown). Nothing is
//! lost: offsets are stored only for applied batches, what the old client had not
//! committed is redelivered to the new one and absorbed by the inbox.

pub mod stall;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use outbox::Capture;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use service_telemetry::trace::{self, Carrier, Origin, SPAN_TARGET};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{oneshot, watch};
use tracing::field::Empty;
use tracing::Span;
use uuid::Uuid;

use crate::app::apply_events::{self, Applied, Command, Consumed, Outcome};
use crate::app::settle_transaction::Settle;
use crate::config::KafkaSettings;
use crate::domain::events::{self, TRANSACTION_CREATED, USER_CREATED};
use crate::metrics::Metrics;
use crate::store::StoreError;
use stall::{GroupContext, StallWatch, Verdict, STATS_INTERVAL};

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

/// The event consumer's client: its context keeps what the statistics say about the group.
pub type EventConsumer = StreamConsumer<GroupContext>;

/// Creates the consumer and subscribes it to both topics. Nothing is read until
/// [`run`] polls it.
pub fn create(settings: &KafkaSettings) -> Result<EventConsumer, KafkaError> {
    let mut config = ClientConfig::new();
    settings.security.apply(&mut config);
    let consumer: EventConsumer = config
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
        // A metadata answer from a broker that is starting up can leave out every broker,
        // and librdkafka then knows none until it bootstraps again (5 min by default).
        .set("metadata.recovery.rebootstrap.trigger.ms", "10000")
        // The group's state, for the stall watch (served when `run` polls).
        .set(
            "statistics.interval.ms",
            STATS_INTERVAL.as_millis().to_string(),
        )
        .create_with_context(GroupContext::default())?;
    consumer.subscribe(&[
        &settings.user_events_topic,
        &settings.transaction_events_topic,
    ])?;
    Ok(consumer)
}

/// The topics events arrive on, and how many records one batch takes at most.
#[derive(Debug, Clone)]
pub struct Topics {
    pub user_events: String,
    pub transaction_events: String,
    pub max_batch: usize,
}

impl Topics {
    fn of(settings: &KafkaSettings) -> Self {
        Self {
            user_events: settings.user_events_topic.clone(),
            transaction_events: settings.transaction_events_topic.clone(),
            max_batch: settings.max_batch,
        }
    }
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
/// honoured between batches; a batch whose database transaction keeps failing is
/// abandoned uncommitted, to be redelivered after a restart. Between batches the stall
/// watch may replace the client with a new one made from `settings`. The events a batch
/// emits are written the way `capture` says. Returns the client it ended with: [`close`]
/// commits its stored offsets.
pub async fn run(
    consumer: Arc<EventConsumer>,
    settings: KafkaSettings,
    pool: PgPool,
    capture: Capture,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> Arc<EventConsumer> {
    let topics = Topics::of(&settings);
    let mut consumer = consumer;
    let mut errors = ErrorLog::default();
    let mut store = Store {
        pool,
        capture,
        conn: None,
    };
    let mut stall = StallWatch::new(settings.stall_timeout);
    let mut check = tokio::time::interval(STATS_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        user_events = %topics.user_events,
        transaction_events = %topics.transaction_events,
        max_batch = topics.max_batch,
        stall_timeout_s = settings.stall_timeout.as_secs(),
        "event consumer started"
    );
    loop {
        let first = tokio::select! {
            biased;
            // 1. Shutdown first: stop between batches, never in the middle of one.
            _ = stop_requested(&mut shutdown) => break,
            // 2. Then the stall watch, also between batches.
            _ = check.tick() => None,
            // 3. Then wait for the next record.
            message = consumer.recv() => match message {
                Ok(message) => Some(Received::new(&topics, &message)),
                Err(error) => {
                    metrics.kafka_errors.inc();
                    errors.record(&error, Instant::now());
                    // Errors come back without waiting: let other tasks run.
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };
        let Some(first) = first else {
            consumer = watch_group(consumer, &settings, &metrics, &mut stall);
            continue;
        };
        let batch = take_ready(&consumer, &topics, &metrics, &mut errors, first);
        if handle_batch(&consumer, &mut store, &metrics, &batch, &mut shutdown)
            .await
            .is_break()
        {
            break;
        }
    }

    tracing::info!("event consumer stopped");
    consumer
}

/// Looks at the group's latest statistics; replaces a stalled client with a new one
/// (the old one closes on a blocking thread: its close may wait on the coordinator it
/// could not reach). Keeps the old client when a new one cannot be made.
fn watch_group(
    consumer: Arc<EventConsumer>,
    settings: &KafkaSettings,
    metrics: &Metrics,
    stall: &mut StallWatch,
) -> Arc<EventConsumer> {
    let snapshot = consumer.context().snapshot();
    metrics
        .group_joined
        .set(i64::from(snapshot.as_ref().is_some_and(|s| s.joined())));
    let Verdict::Stalled(out_for) = stall.observe(snapshot.as_ref(), Instant::now()) else {
        return consumer;
    };
    let snapshot = snapshot.expect("a stall is seen in statistics");
    let fresh = match create(settings) {
        Ok(fresh) => Arc::new(fresh),
        Err(error) => {
            tracing::error!(error = %error, "cannot create a kafka consumer to replace the stalled one");
            return consumer;
        }
    };
    stall.rebuilt();
    metrics.consumer_rebuilds.inc();
    tracing::warn!(
        group = %settings.group_id,
        out_of_group_s = out_for.as_secs(),
        group_state = %snapshot.state,
        join_state = %snapshot.join_state,
        brokers_up = snapshot.brokers_up,
        next_rebuild_after_s = stall.timeout().as_secs(),
        "the kafka consumer stayed out of its group while a broker was up; replacing it with a new client"
    );
    let closed = close_detached(consumer, "kafka-consumer-replaced");
    tokio::spawn(async move {
        if closed.await.is_ok() {
            tracing::info!("the replaced kafka consumer closed");
        }
    });
    fresh
}

/// `first`, then every record the client already holds, up to `max_batch` in all;
/// never waits. Client errors met on the way are counted and logged as in [`run`].
fn take_ready(
    consumer: &EventConsumer,
    topics: &Topics,
    metrics: &Metrics,
    errors: &mut ErrorLog,
    first: Received,
) -> Vec<Received> {
    let mut batch = vec![first];
    let mut stream = consumer.stream();
    // Bounded by polls, not records, so a burst of errors cannot hold the batch open.
    for _ in 1..topics.max_batch {
        // `recv` and the stream are cancellation safe: a record is only taken when the
        // poll returns it.
        match stream.next().now_or_never() {
            Some(Some(Ok(message))) => batch.push(Received::new(topics, &message)),
            Some(Some(Err(error))) => {
                metrics.kafka_errors.inc();
                errors.record(&error, Instant::now());
            }
            Some(None) | None => break,
        }
    }
    batch
}

/// Applies one batch and stores its offsets; `Break` when shutdown came first and the
/// batch stays unapplied.
async fn handle_batch(
    consumer: &EventConsumer,
    store: &mut Store,
    metrics: &Metrics,
    batch: &[Received],
    shutdown: &mut watch::Receiver<bool>,
) -> ControlFlow<()> {
    let spans: Vec<Span> = batch.iter().map(Received::span).collect();
    // The records to apply, by their index in the batch.
    let mut applied_at: Vec<usize> = Vec::with_capacity(batch.len());
    let mut consumed: Vec<Consumed> = Vec::with_capacity(batch.len());
    for (i, (received, span)) in batch.iter().zip(&spans).enumerate() {
        let (event_id, command) = match &received.event {
            Err(reason) => {
                let _in_span = span.enter();
                tracing::warn!(
                    topic = %received.topic,
                    partition = received.partition,
                    offset = received.offset,
                    reason,
                    "skipping malformed event"
                );
                continue;
            }
            Ok(Event::Ignore { .. }) => continue,
            Ok(Event::OpenAccount { event_id, user_id }) => {
                (*event_id, Command::OpenAccount { user_id: *user_id })
            }
            Ok(Event::Settle {
                event_id,
                transaction_id,
            }) => (
                *event_id,
                Command::Settle(Settle {
                    transaction_id: *transaction_id,
                    trace: trace::context_of(span),
                }),
            ),
        };
        applied_at.push(i);
        consumed.push(Consumed { event_id, command });
    }

    let started = Instant::now();
    let Some(applied) = apply_until_done(store, metrics, &consumed, shutdown).await else {
        tracing::info!(
            events = batch.len(),
            "stopping with a batch unapplied; it will be redelivered"
        );
        return ControlFlow::Break(());
    };
    metrics
        .batch_duration
        .observe(started.elapsed().as_secs_f64());
    metrics.batch_events.observe(batch.len() as f64);
    metrics
        .visibility_wait
        .inc_by(applied.visibility_wait.as_secs_f64());

    let mut outcomes = applied_at.into_iter().zip(&consumed).zip(applied.outcomes);
    for (i, (received, span)) in batch.iter().zip(&spans).enumerate() {
        match &received.event {
            Err(_) => metrics
                .events_failed
                .with_label_values(&["malformed"])
                .inc(),
            Ok(Event::Ignore { event_type }) => metrics
                .events_processed
                .with_label_values(&[event_type.as_str(), "ignored"])
                .inc(),
            Ok(_) => {
                let ((at, event), outcome) = outcomes.next().expect("one outcome per event");
                debug_assert_eq!(at, i);
                span.in_scope(|| report(metrics, event, outcome));
            }
        }
    }

    // The batch's transaction has committed: the next commit may include its offsets.
    // Storing fails when a partition was revoked meanwhile; its new owner gets the
    // events again and the inbox absorbs them.
    let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for r in batch {
        let offset = last.entry((&r.topic, r.partition)).or_insert(r.offset);
        *offset = (*offset).max(r.offset);
    }
    for ((topic, partition), offset) in last {
        if let Err(error) = consumer.store_offset(topic, partition, offset) {
            tracing::warn!(error = %error, topic, partition, "storing the offset failed; the events may be redelivered");
        }
    }
    ControlFlow::Continue(())
}

/// Logs and counts what applying `event` did, inside the record's span.
fn report(metrics: &Metrics, event: &Consumed, outcome: Outcome) {
    let event_id = event.event_id;
    let label = match (&event.command, outcome) {
        (Command::OpenAccount { user_id }, Outcome::Opened) => {
            tracing::info!(%event_id, %user_id, "account opened");
            "applied"
        }
        (Command::Settle(s), Outcome::Completed) => {
            let transaction_id = s.transaction_id;
            tracing::info!(%event_id, %transaction_id, "transaction completed");
            "applied"
        }
        (Command::Settle(s), Outcome::Failed(reason)) => {
            let transaction_id = s.transaction_id;
            tracing::info!(%event_id, %transaction_id, reason = reason.as_str(), "transaction failed");
            "applied"
        }
        (_, Outcome::Duplicate) => {
            tracing::info!(%event_id, "event consumed before; nothing to do");
            "duplicate"
        }
        (Command::Settle(s), Outcome::UnknownTransaction) => {
            let transaction_id = s.transaction_id;
            tracing::warn!(%event_id, %transaction_id, "TransactionCreated for an unknown transaction");
            metrics
                .events_failed
                .with_label_values(&["unknown_transaction"])
                .inc();
            "unknown_transaction"
        }
        (_, Outcome::AlreadyOpen) => "already_open",
        (_, Outcome::AlreadySettled) => "already_settled",
        (_, outcome) => {
            tracing::error!(%event_id, ?outcome, "an outcome that does not fit the event");
            "mismatched"
        }
    };
    metrics
        .events_processed
        .with_label_values(&[event.command.event_type(), label])
        .inc();
}

/// Closes the consumer (commits the stored offsets, leaves the group), for
/// at most `timeout`. librdkafka's close blocks, and can block for long when the
/// broker is gone or a rebalance is under way, so it runs on a thread of its own and is
/// abandoned at the deadline: whatever was not committed is redelivered after the
/// restart and absorbed by the inbox. `consumer` should be the last handle, or the
/// close happens wherever the last one is dropped.
pub async fn close(consumer: Arc<EventConsumer>, timeout: Duration) {
    let handles = Arc::strong_count(&consumer);
    if handles > 1 {
        tracing::warn!(
            handles,
            "kafka consumer still shared; it closes when the last handle goes"
        );
    }
    let closing = close_detached(consumer, "kafka-consumer-close");
    match tokio::time::timeout(timeout, closing).await {
        Ok(Ok(())) => tracing::info!("kafka consumer closed"),
        Ok(Err(_)) => tracing::warn!("closing the kafka consumer ended without closing it (panicked)"),
        Err(_) => tracing::warn!(
            timeout_ms = timeout.as_millis() as u64,
            "kafka consumer did not close in time; events after the last committed offset will be redelivered"
        ),
    }
}

/// Drops `consumer` (librdkafka's close) on a detached thread; the receiver answers
/// when it is closed. Not a blocking task of the runtime: the runtime's shutdown waits
/// for those, and a close against a broker that is gone never returns (a test's
/// runtime hung there after its broker was dropped). A detached thread ends with the
/// process.
fn close_detached(consumer: Arc<EventConsumer>, name: &str) -> oneshot::Receiver<()> {
    let (closed, answer) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(error) = spawned {
        // The closure (and the consumer with it) is gone with the error: dropped here.
        tracing::warn!(error = %error, "no thread for closing a kafka consumer; it was closed in place");
    }
    answer
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

/// The consumer's database connection, from its own pool: held from one batch to the
/// next (no acquire or release round trips per batch), dropped after any failure so the
/// retry runs on a fresh one.
struct Store {
    pool: PgPool,
    /// How the batches' events are written (`OUTBOX_CAPTURE`).
    capture: Capture,
    conn: Option<PoolConnection<Postgres>>,
}

impl Store {
    async fn apply(&mut self, events: &[Consumed]) -> Result<Applied, StoreError> {
        if self.conn.is_none() {
            let conn = self.pool.acquire().await.map_err(StoreError::unavailable)?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("acquired above");
        let applied = apply_events::execute(conn, &self.capture, events).await;
        if applied.is_err() {
            self.conn = None;
        }
        applied
    }
}

/// Applies `events` in one database transaction, retrying failures with backoff.
/// `None` when shutdown was requested before it succeeded.
async fn apply_until_done(
    store: &mut Store,
    metrics: &Metrics,
    events: &[Consumed],
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Applied> {
    let mut delays = retry_delays();
    let mut attempt: u32 = 1;
    loop {
        let backoff = match store.apply(events).await {
            Ok(applied) => return Some(applied),
            Err(error) => {
                let backoff = delays.next().expect("retries without a limit");
                metrics.consumer_retries.inc();
                let cause = std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::warn!(
                    error = %error,
                    cause,
                    events = events.len(),
                    attempt,
                    retry_in_ms = backoff.as_millis() as u64,
                    "applying a batch of events failed; retrying"
                );
                backoff
            }
        };
        tokio::select! {
            biased;
            _ = stop_requested(shutdown) => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        attempt += 1;
    }
}

/// The pauses between attempts: [`RETRY_BACKOFF`]'s first, doubled each time up to its
/// longest, without end.
fn retry_delays() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_factor(2.0)
        .with_min_delay(RETRY_BACKOFF.0)
        .with_max_delay(RETRY_BACKOFF.1)
        .without_max_times()
        .build()
}

/// Resolves once shutdown is requested or the sender is gone.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_batches_are_retried_after_pauses_doubling_from_100_ms_to_5_s() {
        let ms: Vec<u128> = retry_delays().take(9).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    fn topics() -> Topics {
        Topics {
            user_events: "users".into(),
            transaction_events: "transactions".into(),
            max_batch: 10,
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
