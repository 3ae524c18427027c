//! The HTTP API: routes, handlers and their DTOs, the success envelope, and how this
//! service's errors become [`ApiError`] answers.

mod envelope;
mod error;
mod health;
pub mod openapi;
mod users;

use axum::Router;
use outbox::Capture;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// How sign-ups write their event (`OUTBOX_CAPTURE`).
    pub capture: Capture,
}

impl AppState {
    pub fn new(pool: PgPool, hasher: PasswordHasher, capture: Capture) -> Self {
        Self {
            pool,
            hasher,
            metrics: Metrics::new(),
            capture,
        }
    }
}

/// The service's own routes, each registered for the router and the OpenAPI document
/// at once ([`service_http::router`] adds `/healthz`, `/metrics`, `/openapi.json`).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(users::create))
        .routes(routes!(users::get))
        .routes(routes!(health::readyz))
}

/// [`api`] with what every service adds ([`service_http::router`]).
pub fn router(state: AppState) -> Router {
    service_http::router(api(), state.metrics.http.clone()).with_state(state)
}
