//! The HTTP API: routes, handlers and their DTOs, and how this service's errors become
//! [`ApiError`] answers.

mod balance;
mod error;
mod health;
mod openapi;
mod transactions;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use rdkafka::consumer::StreamConsumer;
use sqlx::PgPool;

pub use openapi::document as openapi_document;
pub use service_http::{ApiError, ErrorBody, FieldErrors, BODY_LIMIT_BYTES};
pub use transactions::{CreateTransactionRequest, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

use crate::metrics::Metrics;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Metrics,
    /// The event consumer's client, asked for cluster metadata by `/readyz`.
    pub consumer: Arc<StreamConsumer>,
}

/// Every route of the service, with the shared middleware around them
/// ([`service_http::standard_layers`]).
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/api/v1/transactions", post(transactions::create))
        .route("/api/v1/transactions/{id}", get(transactions::get))
        .route("/api/v1/balance/{userId}", get(balance::get))
        .route("/healthz", get(service_http::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::serve));
    service_http::standard_layers(routes, state.metrics.http.clone()).with_state(state)
}
