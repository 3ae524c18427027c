//! Prometheus metrics: the registry each app instance owns (tests run several apps in
//! one process). The HTTP metrics are [`service_http::HttpMetrics`]; their names are
//! [`service_http::HTTP_REQUESTS_TOTAL`] and
//! [`service_http::HTTP_REQUEST_DURATION_SECONDS`].

use prometheus::Registry;
use service_http::HttpMetrics;

/// The service's metrics and the registry they are exported from.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http = HttpMetrics::register(&registry);
        Self { registry, http }
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
