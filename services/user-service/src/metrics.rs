//! Prometheus metrics: every name is a constant here, and each app instance owns its
//! registry (tests run several apps in one process).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Requests answered, by matched route template, method and status code.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Time from request received to response headers ready, by route, method and status.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";

pub const LABEL_ROUTE: &str = "route";
pub const LABEL_METHOD: &str = "method";
pub const LABEL_STATUS: &str = "status";
/// The `route` label of requests no route matched, so unknown paths cannot blow up
/// the label cardinality.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Latency buckets in seconds; sign-ups spend tens of milliseconds hashing.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The service's metrics and the registry they are exported from.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let labels = [LABEL_ROUTE, LABEL_METHOD, LABEL_STATUS];
        let http_requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS_TOTAL, "HTTP requests answered."),
            &labels,
        )
        .expect("valid counter definition");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_REQUEST_DURATION_SECONDS,
                "Time to answer an HTTP request, in seconds.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &labels,
        )
        .expect("valid histogram definition");
        let registry = Registry::new();
        registry
            .register(Box::new(http_requests.clone()))
            .expect("first registration of http_requests_total");
        registry
            .register(Box::new(http_duration.clone()))
            .expect("first registration of http_request_duration_seconds");
        Self {
            registry,
            http_requests,
            http_duration,
        }
    }

    /// Records one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
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
    fn an_observed_request_shows_in_the_exposition() {
        let m = Metrics::new();
        m.observe_request("/users/{id}", "GET", 200, Duration::from_millis(3));
        let text = m.render();
        assert!(text
            .contains(r#"http_requests_total{method="GET",route="/users/{id}",status="200"} 1"#));
        assert!(text.contains(
            r#"http_request_duration_seconds_count{method="GET",route="/users/{id}",status="200"} 1"#
        ));
    }
}
