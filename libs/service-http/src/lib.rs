//! What both HTTP services share at their HTTP edge, so that a reader who knows one
//! knows the other:
//!
//! - [`ApiError`] and its body [`ErrorBody`] (`{"code", "message", "errors"?}`): every
//!   error answer; 5xx are logged with their cause and say nothing of it to clients;
//! - [`JsonBody`]: a JSON request body (content type, size limit, syntax);
//! - [`parse_uuid`]: the one spelling of ids the APIs accept;
//! - [`HttpMetrics`] and [`track`]: requests counted and timed by route template, with
//!   bounded label values;
//! - [`standard_layers`]: body limit, metrics, request tracing and the 404/405
//!   fallbacks around a service's routes;
//! - [`healthz`] and [`readiness`]: the probes' answers;
//! - [`run_main`], [`Listener`] and [`shutdown_signal`]: how a service binary starts,
//!   serves and stops.

mod binary;
mod body;
mod error;
mod ids;
mod metrics;
mod probes;

use axum::Router;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use binary::{
    run_main, shutdown_signal, BinaryError, BindError, Listener, Shutdown, ShutdownSignal,
};
pub use body::{JsonBody, BODY_LIMIT_BYTES};
pub use error::{ApiError, Cause, ErrorBody, FieldErrors, RETRY_AFTER};
pub use ids::{parse_uuid, path_uuid};
pub use metrics::{
    exposition, track, HttpMetrics, HTTP_REQUESTS_TOTAL, HTTP_REQUEST_DURATION_SECONDS,
    UNMATCHED_ROUTE,
};
pub use probes::{healthz, readiness};

/// `routes` with what every service puts around them: the [`BODY_LIMIT_BYTES`] limit,
/// request metrics (every request, matched or not), a tracing span per request, and
/// the error envelope for unknown paths (404) and methods (405).
pub fn standard_layers<S>(routes: Router<S>, metrics: HttpMetrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes
        .fallback(|| async { ApiError::NotFound("route not found".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn_with_state(metrics, track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Millis),
                ),
        )
}
