//! The HTTP API: routes, handlers and their DTOs, the success envelope, and how this
//! service's errors become [`ApiError`] answers.

mod envelope;
mod error;
mod health;
pub mod openapi;
mod users;

use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

pub use envelope::Envelope;
pub use service_http::{ApiError, ErrorBody, FieldErrors, BODY_LIMIT_BYTES};

use crate::app::PasswordHasher;
use crate::metrics::Metrics;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub hasher: PasswordHasher,
    pub metrics: Metrics,
}

impl AppState {
    pub fn new(pool: PgPool, hasher: PasswordHasher) -> Self {
        Self {
            pool,
            hasher,
            metrics: Metrics::new(),
        }
    }
}

/// Every route of the service, with the shared middleware around them
/// ([`service_http::standard_layers`]).
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/users", post(users::create))
        .route("/users/{id}", get(users::get))
        .route("/healthz", get(service_http::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::serve));
    service_http::standard_layers(routes, state.metrics.http.clone()).with_state(state)
}
