//! Prometheus metrics: every name of this service's own metrics is a constant here,
//! every collector lives in one [`Metrics`] registry per running service (tests run
//! several in one process). The HTTP metrics are [`service_http::HttpMetrics`]; their
//! names are [`service_http::HTTP_REQUESTS_TOTAL`] and
//! [`service_http::HTTP_REQUEST_DURATION_SECONDS`].

use prometheus::{
    Counter, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use service_http::HttpMetrics;

/// Consumed events handled, by event type and outcome (`applied`, `duplicate`,
/// `ignored`, ...).
pub const CONSUMER_EVENTS_PROCESSED_TOTAL: &str = "consumer_events_processed_total";
/// Consumed events that could not be applied and were skipped, by reason
/// (`malformed`, `unknown_transaction`).
pub const CONSUMER_EVENTS_FAILED_TOTAL: &str = "consumer_events_failed_total";
/// Attempts to apply an event that failed on the database and will be retried.
pub const CONSUMER_RETRIES_TOTAL: &str = "consumer_retries_total";
/// Records per batch the consumer applied in one database transaction.
pub const CONSUMER_BATCH_EVENTS: &str = "consumer_batch_events";
/// How long applying one batch took, retries included.
pub const CONSUMER_BATCH_DURATION_SECONDS: &str = "consumer_batch_duration_seconds";
/// Time batches spent waiting for a transaction row their event announced to become
/// visible (relay-cdc can publish a commit a moment before other sessions see it).
pub const CONSUMER_VISIBILITY_WAIT_SECONDS_TOTAL: &str = "consumer_visibility_wait_seconds_total";
/// Errors the Kafka client reported to the consumer (broker down, topic unknown);
/// the client recovers from them by itself.
pub const CONSUMER_KAFKA_ERRORS_TOTAL: &str = "consumer_kafka_errors_total";

/// Kafka clients of the consumer replaced because they stayed out of their group while
/// a broker was reachable (see `consumer::stall`).
pub const CONSUMER_REBUILDS_TOTAL: &str = "consumer_rebuilds_total";
/// 1 while the consumer is in its group with its assignment (librdkafka's statistics,
/// every 5 s), 0 otherwise.
pub const CONSUMER_GROUP_JOINED: &str = "consumer_group_joined";

/// The service's collectors and the registry that exposes them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub events_processed: IntCounterVec,
    pub events_failed: IntCounterVec,
    pub consumer_retries: IntCounter,
    pub kafka_errors: IntCounter,
    pub batch_events: Histogram,
    pub batch_duration: Histogram,
    pub visibility_wait: Counter,
    pub consumer_rebuilds: IntCounter,
    pub group_joined: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http = HttpMetrics::register(&registry);
        let events_processed = IntCounterVec::new(
            Opts::new(CONSUMER_EVENTS_PROCESSED_TOTAL, "Consumed events handled."),
            &["event_type", "outcome"],
        )
        .expect("valid metric");
        let events_failed = IntCounterVec::new(
            Opts::new(
                CONSUMER_EVENTS_FAILED_TOTAL,
                "Consumed events skipped because they could not be applied.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let consumer_retries = IntCounter::new(
            CONSUMER_RETRIES_TOTAL,
            "Failed attempts to apply a consumed event that will be retried.",
        )
        .expect("valid metric");
        let kafka_errors = IntCounter::new(
            CONSUMER_KAFKA_ERRORS_TOTAL,
            "Errors the Kafka client reported to the event consumer.",
        )
        .expect("valid metric");
        let batch_events = Histogram::with_opts(
            HistogramOpts::new(
                CONSUMER_BATCH_EVENTS,
                "Records per batch applied in one database transaction.",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                10000.0,
            ]),
        )
        .expect("valid metric");
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                CONSUMER_BATCH_DURATION_SECONDS,
                "Time to apply one batch of records, retries included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let visibility_wait = Counter::new(
            CONSUMER_VISIBILITY_WAIT_SECONDS_TOTAL,
            "Time batches waited for announced transaction rows to become visible.",
        )
        .expect("valid metric");
        let consumer_rebuilds = IntCounter::new(
            CONSUMER_REBUILDS_TOTAL,
            "Kafka clients of the consumer replaced because they stayed out of their group.",
        )
        .expect("valid metric");
        let group_joined = IntGauge::new(
            CONSUMER_GROUP_JOINED,
            "1 while the consumer is in its group with its assignment.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(events_processed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events_failed.clone()),
            Box::new(consumer_retries.clone()),
            Box::new(kafka_errors.clone()),
            Box::new(batch_events.clone()),
            Box::new(batch_duration.clone()),
            Box::new(visibility_wait.clone()),
            Box::new(consumer_rebuilds.clone()),
            Box::new(group_joined.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Self {
            registry,
            http,
            events_processed,
            events_failed,
            consumer_retries,
            kafka_errors,
            batch_events,
            batch_duration,
            visibility_wait,
            consumer_rebuilds,
            group_joined,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_use_the_declared_names() {
        let m = Metrics::new();
        m.events_failed.with_label_values(&["malformed"]).inc();
        m.consumer_retries.inc();
        let text = service_telemetry::render(m.registry());
        assert!(text.contains(r#"consumer_events_failed_total{reason="malformed"} 1"#));
        assert!(text.contains("consumer_retries_total 1"));
    }
}
