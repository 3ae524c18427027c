//! What both HTTP services share at their HTTP edge, so that a reader who knows one
//! knows the other:
//!
//! - [`ApiError`] and its body [`ErrorBody`] (`{"code", "message", "errors"?}`): every
//!   error answer; 5xx are logged with their cause and say nothing of it to clients;
//! - [`JsonBody`]: a JSON request body (content type, size limit, syntax);
//! - [`parse_uuid`]: the one spelling of ids the APIs accept;
//! - [`HttpMetrics`] and [`track`]: requests counted and timed by route template, with
//!   bounded label values;
//! - [`router`]: the routes every service has (`/healthz`, `/metrics`,
//!   `/openapi.json`) and the body limit, metrics, request tracing and 404/405
//!   fallbacks around a service's own; [`docs`]: answers several operations share, for
//!   the generated OpenAPI documents;
//! - [`request_span`], [`RequestTrace`]: W3C Trace Context per request (the caller's
//!   trace continued, its context for the outbox rows, `traceresponse` on answers);
//! - [`healthz`] and [`readiness`]: the probes' answers;
//! - [`run_main`], [`Listener`] and [`shutdown_signal`]: how a service binary starts,
//!   serves and stops.

mod binary;
mod body;
pub mod docs;
mod error;
mod ids;
mod metrics;
mod probes;
mod trace;

use axum::body::Bytes;
use axum::extract::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use binary::{
    run_main, shutdown_signal, BinaryError, BindError, Listener, Shutdown, ShutdownSignal,
};
pub use body::{JsonBody, BODY_LIMIT_BYTES};
pub use error::{ApiError, Cause, ErrorBody, FieldErrors, RETRY_AFTER};
pub use ids::{parse_uuid, path_uuid, uuid_schema, UUID_PATTERN};
pub use metrics::{
    metrics, track, HttpMetrics, HTTP_REQUESTS_TOTAL, HTTP_REQUEST_DURATION_SECONDS,
    UNMATCHED_ROUTE,
};
pub use probes::{healthz, readiness, Message};
pub use trace::{document_headers, request_span, RequestTrace};

/// A service's router: its own `api` plus the routes every service has
/// ([`healthz`], [`metrics`] over the registry `metrics` are in, [`openapi`] serving
/// the document generated from all of them), and what every service puts around them: the
/// [`BODY_LIMIT_BYTES`] limit, request metrics (every request, matched or not), a
/// tracing span per request continuing the caller's W3C trace ([`request_span`],
/// [`RequestTrace`], `traceresponse`; the trace headers are declared on every
/// operation of the document), and the error envelope for unknown paths (404) and
/// methods (405).
pub fn router<S>(api: OpenApiRouter<S>, metrics: HttpMetrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let (routes, mut document) = api
        .routes(routes!(probes::healthz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi))
        .split_for_parts();
    document_headers(&mut document);
    let document = Document(Bytes::from(
        serde_json::to_vec(&document).expect("an OpenAPI document serialises"),
    ));
    routes
        .layer(Extension(document))
        .layer(Extension(metrics.registry().clone()))
        .fallback(|| async { ApiError::NotFound("route not found".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn_with_state(metrics, track))
        .layer(axum::middleware::from_fn(trace::propagate))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Millis),
                ),
        )
}

/// This document
///
/// The service's OpenAPI document, generated from its handlers (put in place by
/// [`router`]).
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object))
)]
pub async fn openapi(Extension(Document(json)): Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// The serialised OpenAPI document [`openapi`] serves.
#[derive(Debug, Clone)]
pub struct Document(Bytes);
