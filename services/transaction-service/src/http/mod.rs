//! The HTTP API: routes, handlers and their DTOs, and how this service's errors become
//! [`ApiError`] answers.

mod balance;
mod error;
mod health;
mod openapi;
mod transactions;

use std::sync::Arc;

use axum::Router;
use outbox::Capture;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use health::{kafka_probe, KafkaProbe};
pub use service_http::{ApiError, ErrorBody, FieldErrors, BODY_LIMIT_BYTES};
pub use transactions::{CreateTransactionRequest, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

use crate::metrics::Metrics;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Metrics,
    /// A Kafka client of its own for `/readyz`'s metadata request: the event consumer's
    /// client belongs to the consumer, which may replace it.
    pub kafka_probe: Arc<KafkaProbe>,
    /// How accepted transactions write their event (`OUTBOX_CAPTURE`).
    pub capture: Capture,
}

/// The service's own routes, each registered for the router and the OpenAPI document
/// at once ([`service_http::router`] adds `/healthz`, `/metrics`, `/openapi.json`).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(transactions::create))
        .routes(routes!(transactions::get))
        .routes(routes!(balance::get))
        .routes(routes!(health::readyz))
}

/// [`api`] with what every service adds ([`service_http::router`]).
pub fn router(state: AppState) -> Router {
    service_http::router(api(), state.metrics.http.clone()).with_state(state)
}
