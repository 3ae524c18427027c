//! Prometheus metrics: every name is a constant here, every collector lives in one
//! [`Metrics`] registry per running service (tests run several in one process).

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// HTTP requests served, by method, matched route and status.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// HTTP request latency in seconds, by method, matched route and status.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// Consumed events handled, by event type and outcome (`applied`, `duplicate`,
/// `ignored`, ...).
pub const CONSUMER_EVENTS_PROCESSED_TOTAL: &str = "consumer_events_processed_total";
/// Consumed events that could not be applied and were skipped, by reason
/// (`malformed`, `unknown_transaction`).
pub const CONSUMER_EVENTS_FAILED_TOTAL: &str = "consumer_events_failed_total";
/// Attempts to apply an event that failed on the database and will be retried.
pub const CONSUMER_RETRIES_TOTAL: &str = "consumer_retries_total";
/// Errors the Kafka client reported to the consumer (broker down, topic unknown);
/// the client recovers from them by itself.
pub const CONSUMER_KAFKA_ERRORS_TOTAL: &str = "consumer_kafka_errors_total";

/// The route label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The service's collectors and the registry that exposes them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub events_processed: IntCounterVec,
    pub events_failed: IntCounterVec,
    pub consumer_retries: IntCounter,
    pub kafka_errors: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS_TOTAL, "HTTP requests served."),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_REQUEST_DURATION_SECONDS,
                "HTTP request latency in seconds.",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
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
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(events_processed.clone()),
            Box::new(events_failed.clone()),
            Box::new(consumer_retries.clone()),
            Box::new(kafka_errors.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Self {
            registry,
            http_requests,
            http_duration,
            events_processed,
            events_failed,
            consumer_retries,
            kafka_errors,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        service_telemetry::render(&self.registry)
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
        m.http_requests
            .with_label_values(&["GET", "/healthz", "200"])
            .inc();
        m.events_failed.with_label_values(&["malformed"]).inc();
        m.consumer_retries.inc();
        let text = m.render();
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="/healthz",status="200"} 1"#)
        );
        assert!(text.contains(r#"consumer_events_failed_total{reason="malformed"} 1"#));
        assert!(text.contains("consumer_retries_total 1"));
    }
}
