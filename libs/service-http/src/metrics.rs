//! HTTP request metrics: counted and timed under the matched route template
//! (`/users/{id}`, never the concrete path) and a method from a fixed set, so clients
//! cannot mint label values.

use std::time::{Duration, Instant};

use axum::extract::{Extension, MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Requests answered, by method, matched route template and status code.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Time from request received to response headers ready, by method, route and status.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// The `route` label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const LABELS: [&str; 3] = ["method", "route", "status"];

/// Latency buckets in seconds; sign-ups spend tens of milliseconds hashing.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The two HTTP collectors, and the service's registry they are registered in (which
/// `/metrics` exposes whole).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates the collectors and registers them in `registry`.
    ///
    /// # Panics
    /// When `registry` already holds metrics of these names.
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS_TOTAL, "HTTP requests answered."),
            &LABELS,
        )
        .expect("valid counter definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                HTTP_REQUEST_DURATION_SECONDS,
                "Time to answer an HTTP request, in seconds.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &LABELS,
        )
        .expect("valid histogram definition");
        registry
            .register(Box::new(requests.clone()))
            .expect("first registration of http_requests_total");
        registry
            .register(Box::new(duration.clone()))
            .expect("first registration of http_request_duration_seconds");
        Self {
            registry: registry.clone(),
            requests,
            duration,
        }
    }

    /// The registry these collectors are in: every metric of the service.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one answered request.
    pub fn observe(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [method_label(method), route, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// The middleware: counts and times each request under its route template.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The standard methods by name; anything else as `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// Prometheus metrics
///
/// The text exposition of the service's registry (put in place by [`crate::router`]).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics",
    description = "`http_requests_total` and `http_request_duration_seconds` by route template, method and status, and the service's own metrics.",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.", body = String, content_type = "text/plain"))
)]
pub async fn metrics(Extension(registry): Extension<Registry>) -> Response {
    (
        [(header::CONTENT_TYPE, service_telemetry::content_type())],
        service_telemetry::render(&registry),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observed_request_shows_in_the_exposition() {
        let registry = Registry::new();
        let m = HttpMetrics::register(&registry);
        m.observe(&Method::GET, "/users/{id}", 200, Duration::from_millis(3));
        let text = service_telemetry::render(&registry);
        assert!(text
            .contains(r#"http_requests_total{method="GET",route="/users/{id}",status="200"} 1"#));
        assert!(text.contains(
            r#"http_request_duration_seconds_count{method="GET",route="/users/{id}",status="200"} 1"#
        ));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let registry = Registry::new();
        let m = HttpMetrics::register(&registry);
        for name in ["BREW", "PROPFIND", "X-ANYTHING"] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            m.observe(&method, UNMATCHED_ROUTE, 405, Duration::ZERO);
        }
        let text = service_telemetry::render(&registry);
        assert!(
            text.contains(
                r#"http_requests_total{method="OTHER",route="unmatched",status="405"} 3"#
            ),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
    }
}
