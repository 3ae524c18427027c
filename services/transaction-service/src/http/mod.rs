//! The HTTP API: routes, handlers, DTOs and [`ApiError`].

mod balance;
mod error;
mod extract;
mod health;
mod observe;
mod openapi;
mod transactions;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use rdkafka::consumer::StreamConsumer;
use sqlx::PgPool;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use error::{ApiError, ErrorBody, FieldErrors};
pub use extract::BODY_LIMIT_BYTES;
pub use openapi::document as openapi_document;
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

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/transactions", post(transactions::create))
        .route("/api/v1/transactions/{id}", get(transactions::get))
        .route("/api/v1/balance/{userId}", get(balance::get))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            observe::track,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(state)
}
