//! The HTTP interface: the router, its middleware, handlers and their DTOs, and the
//! response envelope every answer uses.

mod envelope;
mod error;
mod extract;
mod health;
mod metrics;
pub mod openapi;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use envelope::Envelope;
pub use error::ApiError;

use crate::app::PasswordHasher;
use crate::metrics::Metrics;

/// Largest request body accepted, in bytes; larger ones are answered 413.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub hasher: PasswordHasher,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(pool: PgPool, hasher: PasswordHasher) -> Self {
        Self {
            pool,
            hasher,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// Every route the service serves, with the middleware around them.
///
/// Unknown paths and methods get the same error envelope as everything else, and
/// every request, matched or not, is counted in the metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/users", post(users::create))
        .route("/users/{id}", get(users::get))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::serve))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            metrics::track,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Millis),
                ),
        )
        .with_state(state)
}

/// How long clients are told to wait before retrying a 503.
const RETRY_AFTER: Duration = Duration::from_secs(2);
