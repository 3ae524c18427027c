//! Prometheus metrics of the relay: names are constants here, every series is labelled
//! by `source`. Base units throughout (bytes, seconds).

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub const EVENTS_PUBLISHED: &str = "relay_events_published_total";
pub const PUBLISH_FAILURES: &str = "relay_publish_failures_total";
pub const DEAD_LETTERED: &str = "relay_dead_lettered_total";
pub const RECORDS_IN_FLIGHT: &str = "relay_records_in_flight";
pub const BYTES_IN_FLIGHT: &str = "relay_bytes_in_flight";
pub const CONFIRMED_LSN: &str = "relay_confirmed_lsn";
pub const SERVER_WAL_LSN: &str = "relay_server_wal_lsn";
pub const LAG_BYTES: &str = "relay_replication_lag_bytes";
pub const LAG_SECONDS: &str = "relay_replication_lag_seconds";
pub const COMMIT_TO_ACK: &str = "relay_commit_to_ack_seconds";
pub const MARK_BACKLOG: &str = "relay_processed_mark_backlog";
pub const MARKED: &str = "relay_rows_marked_processed_total";
pub const MARK_FAILURES: &str = "relay_mark_failures_total";
pub const RETENTION_DELETED: &str = "relay_retention_deleted_total";
pub const SOURCE_UP: &str = "relay_source_up";
pub const RESTARTS: &str = "relay_source_restarts_total";
pub const RECONCILED: &str = "relay_reconciled_events_total";
pub const STALLED: &str = "relay_stalled";
pub const OLDEST_UNACKED: &str = "relay_oldest_unacked_seconds";
pub const SOURCE_HALTED: &str = "relay_source_halted";
pub const KAFKA_TRANSACTIONS: &str = "relay_kafka_transactions_total";
pub const KAFKA_TRANSACTION_RECORDS: &str = "relay_kafka_transaction_records";
pub const KAFKA_COMMIT_SECONDS: &str = "relay_kafka_transaction_commit_seconds";
pub const PRODUCER_FENCED: &str = "relay_producer_fenced_total";
pub const SKIPPED: &str = "relay_checkpoint_skipped_events_total";
pub const SLOT_RECREATED: &str = "relay_slot_recreated_total";
pub const SLOT_AHEAD: &str = "relay_slot_ahead_total";
pub const PRODUCER_REPLACED: &str = "relay_kafka_producer_replaced_total";
pub const KAFKA_TRANSIENT_ERRORS: &str = "relay_kafka_transient_errors_total";
pub const KAFKA_FATAL_ERRORS: &str = "relay_kafka_fatal_errors_total";
pub const KAFKA_BROKERS: &str = "relay_kafka_brokers";
pub const ORPHANS: &str = "relay_orphans_total";
pub const MESSAGES_IGNORED: &str = "relay_messages_ignored_total";
pub const CAPTURE_MISMATCH: &str = "relay_capture_mismatch_total";

/// All of the relay's series, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub events_published: IntCounterVec,
    pub publish_failures: IntCounterVec,
    /// Logical decoding messages that are not events: another prefix, or not
    /// transactional (the relay's own heartbeats are not counted).
    pub messages_ignored: IntCounterVec,
    /// Events a writer committed in the other capture mode (never published).
    pub capture_mismatch: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub records_in_flight: IntGaugeVec,
    pub bytes_in_flight: IntGaugeVec,
    pub confirmed_lsn: IntGaugeVec,
    pub server_wal_lsn: IntGaugeVec,
    pub lag_bytes: IntGaugeVec,
    /// Seconds between now and the source time of the newest WAL the relay has fully
    /// handled (a commit acked by Kafka, or a heartbeat with nothing in flight).
    pub lag_seconds: prometheus::GaugeVec,
    pub commit_to_ack: HistogramVec,
    pub mark_backlog: IntGaugeVec,
    pub marked: IntCounterVec,
    pub mark_failures: IntCounterVec,
    pub retention_deleted: IntCounterVec,
    pub source_up: IntGaugeVec,
    pub restarts: IntCounterVec,
    pub reconciled: IntCounterVec,
    /// The slot was gone (a failover to a server without it, a drop, an invalidation)
    /// after this process had confirmed progress on it: recreated and reconciled.
    pub slot_recreated: IntCounterVec,
    /// A session found the slot ahead of what this process confirmed on it: moved by
    /// someone else; the session's first audit round publishes what it skipped.
    pub slot_ahead: IntCounterVec,
    /// Sessions ended because the Kafka producer reached no broker while a new client
    /// did (the stuck-producer backstop): the next session has a new producer.
    pub producer_replaced: IntCounterVec,
    /// 1 while the source's watchdog finds a stalled stage (see `pipeline::progress`).
    pub stalled: IntGaugeVec,
    /// Age of the oldest record sent and not yet acked by Kafka (0 when none).
    pub oldest_unacked_seconds: prometheus::GaugeVec,
    /// 1 once the source halted (poison under `stop`, a topic the cluster refuses).
    pub source_halted: IntGaugeVec,
    pub kafka_transactions: IntCounterVec,
    pub kafka_transaction_records: HistogramVec,
    pub kafka_commit_seconds: HistogramVec,
    pub producer_fenced: IntCounterVec,
    pub skipped: IntCounterVec,
    /// Cluster errors the producer retries itself, by kind (see `sink::cluster`).
    pub kafka_transient_errors: IntCounterVec,
    /// Fatal producer errors: the session ends and a new producer resumes.
    pub kafka_fatal_errors: IntCounterVec,
    /// The cluster's brokers as the producer sees them, by state (`up`, `down`).
    pub kafka_brokers: IntGaugeVec,
    /// Rows the audit found skipped by the slot, then published and marked (see
    /// `pipeline::audit`).
    pub orphans: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let src = &["source"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), src).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                LAG_SECONDS,
                "Seconds between now and the newest source time fully published",
            ),
            src,
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        let oldest_unacked_seconds = prometheus::GaugeVec::new(
            Opts::new(
                OLDEST_UNACKED,
                "Seconds since the oldest transaction still waiting for Kafka acks was read",
            ),
            src,
        )
        .expect("valid metric");
        registry
            .register(Box::new(oldest_unacked_seconds.clone()))
            .expect("unique metric");
        let commit_to_ack = HistogramVec::new(
            HistogramOpts::new(
                COMMIT_TO_ACK,
                "Seconds from source commit to the Kafka ack of its last record",
            )
            .buckets(exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
            src,
        )
        .expect("valid metric");
        registry
            .register(Box::new(commit_to_ack.clone()))
            .expect("unique metric");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), src)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let kafka_brokers = IntGaugeVec::new(
            Opts::new(
                KAFKA_BROKERS,
                "Kafka brokers the producer knows, by connection state: up or down",
            ),
            &["source", "state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(kafka_brokers.clone()))
            .expect("unique metric");
        Self {
            kafka_transient_errors: counter(
                KAFKA_TRANSIENT_ERRORS,
                "Kafka cluster errors the producer retries itself: resent records (the leader refused them for now: it moved, too few in-sync replicas), retried requests, timed_out requests, broker (connection) errors",
                &["source", "kind"],
            ),
            kafka_fatal_errors: counter(
                KAFKA_FATAL_ERRORS,
                "Fatal Kafka producer errors: the session ended and a new producer resumed from the confirmed LSN",
                src,
            ),
            kafka_brokers,
            kafka_transactions: counter(
                KAFKA_TRANSACTIONS,
                "Kafka transactions ended (exactly-once), by outcome: committed or aborted",
                &["source", "outcome"],
            ),
            kafka_transaction_records: histogram(
                KAFKA_TRANSACTION_RECORDS,
                "Records (events, dead letters and the checkpoint) per committed Kafka transaction",
                exponential_buckets(1.0, 4.0, 10).expect("valid buckets"),
            ),
            kafka_commit_seconds: histogram(
                KAFKA_COMMIT_SECONDS,
                "Seconds a Kafka transaction commit took (flush + commit)",
                exponential_buckets(0.001, 2.0, 16).expect("valid buckets"),
            ),
            producer_fenced: counter(
                PRODUCER_FENCED,
                "Times this relay's transactional producer was fenced by another with the same transactional id",
                src,
            ),
            skipped: counter(
                SKIPPED,
                "Events not sent again after a restart because the Kafka checkpoint shows them committed",
                src,
            ),
            events_published: counter(EVENTS_PUBLISHED, "Outbox events acked by Kafka", src),
            publish_failures: counter(
                PUBLISH_FAILURES,
                "Records Kafka refused: kind poison (never acceptable) or delivery (pipeline rebuilt)",
                &["source", "kind"],
            ),
            messages_ignored: counter(
                MESSAGES_IGNORED,
                "Logical decoding messages that are not events: reason prefix (another prefix) or non_transactional (an event must commit with its transaction); heartbeats are not counted",
                &["source", "reason"],
            ),
            capture_mismatch: counter(
                CAPTURE_MISMATCH,
                "Events committed in the other capture mode, which this source does not publish: seen rows (outbox inserts under capture = messages) or messages (transactional messages with the prefix under capture = table); a writer and the relay disagree",
                &["source", "seen"],
            ),
            dead_lettered: counter(
                DEAD_LETTERED,
                "Poison records sent to the dead-letter topic",
                src,
            ),
            records_in_flight: gauge(
                RECORDS_IN_FLIGHT,
                "Records produced but not yet acked and marked",
            ),
            bytes_in_flight: gauge(
                BYTES_IN_FLIGHT,
                "Memory charged for records produced but not yet acked and marked (key + payload + a fixed per-record overhead)",
            ),
            confirmed_lsn: gauge(
                CONFIRMED_LSN,
                "LSN confirmed to PostgreSQL (everything before it is in Kafka)",
            ),
            server_wal_lsn: gauge(
                SERVER_WAL_LSN,
                "The source server's current WAL insert position",
            ),
            lag_bytes: gauge(
                LAG_BYTES,
                "Server WAL position minus the slot's confirmed flush position",
            ),
            lag_seconds,
            commit_to_ack,
            mark_backlog: gauge(
                MARK_BACKLOG,
                "Rows acked by Kafka and not yet marked PROCESSED",
            ),
            marked: counter(MARKED, "Outbox rows marked PROCESSED", src),
            mark_failures: counter(
                MARK_FAILURES,
                "Failed PROCESSED-marking attempts (retried)",
                src,
            ),
            retention_deleted: counter(
                RETENTION_DELETED,
                "PROCESSED rows deleted by retention",
                src,
            ),
            source_up: gauge(SOURCE_UP, "1 while the source streams from its slot"),
            restarts: counter(
                RESTARTS,
                "Times the source's pipeline restarted after an error",
                src,
            ),
            reconciled: counter(
                RECONCILED,
                "PENDING rows published when the slot was created",
                src,
            ),
            slot_recreated: counter(
                SLOT_RECREATED,
                "Slots found missing or invalidated after progress had been confirmed on them, then recreated (reconciliation of PENDING rows)",
                src,
            ),
            producer_replaced: counter(
                PRODUCER_REPLACED,
                "Kafka producers replaced because they reached no broker while a new client did (librdkafka lost its brokers): the session ended, the next resumed from the confirmed LSN with a new producer",
                src,
            ),
            slot_ahead: counter(
                SLOT_AHEAD,
                "Sessions that found the slot ahead of what this relay had confirmed on it (moved by someone else); the audit publishes the rows it skipped",
                src,
            ),
            stalled: gauge(
                STALLED,
                "1 while a stage of the source has not moved for pipeline.stall_timeout_ms",
            ),
            oldest_unacked_seconds,
            orphans: counter(
                ORPHANS,
                "PENDING rows the audit found the slot had skipped (committed before a confirmed position), published and marked",
                src,
            ),
            source_halted: gauge(
                SOURCE_HALTED,
                "1 once the source halted and waits for an operator",
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One source's handles on the stream loop's hot path (looked up once per session).
pub struct StreamMeters {
    pub published: prometheus::IntCounter,
    pub dead_lettered: prometheus::IntCounter,
    pub poison: prometheus::IntCounter,
    pub delivery_failures: prometheus::IntCounter,
    pub in_flight: prometheus::IntGauge,
    pub in_flight_bytes: prometheus::IntGauge,
    pub confirmed_lsn: prometheus::IntGauge,
    pub commit_to_ack: prometheus::Histogram,
    pub backlog: prometheus::IntGauge,
    pub skipped: prometheus::IntCounter,
    pub producer_replaced: prometheus::IntCounter,
    pub ignored_prefix: prometheus::IntCounter,
    pub ignored_non_transactional: prometheus::IntCounter,
    pub mismatch_rows: prometheus::IntCounter,
    pub mismatch_messages: prometheus::IntCounter,
}

impl StreamMeters {
    pub fn new(m: &Metrics, source: &str) -> Self {
        let l = [source];
        Self {
            published: m.events_published.with_label_values(&l),
            dead_lettered: m.dead_lettered.with_label_values(&l),
            poison: m.publish_failures.with_label_values(&[source, "poison"]),
            delivery_failures: m.publish_failures.with_label_values(&[source, "delivery"]),
            in_flight: m.records_in_flight.with_label_values(&l),
            in_flight_bytes: m.bytes_in_flight.with_label_values(&l),
            confirmed_lsn: m.confirmed_lsn.with_label_values(&l),
            commit_to_ack: m.commit_to_ack.with_label_values(&l),
            backlog: m.mark_backlog.with_label_values(&l),
            skipped: m.skipped.with_label_values(&l),
            producer_replaced: m.producer_replaced.with_label_values(&l),
            ignored_prefix: m.messages_ignored.with_label_values(&[source, "prefix"]),
            ignored_non_transactional: m
                .messages_ignored
                .with_label_values(&[source, "non_transactional"]),
            mismatch_rows: m.capture_mismatch.with_label_values(&[source, "rows"]),
            mismatch_messages: m.capture_mismatch.with_label_values(&[source, "messages"]),
        }
    }
}
