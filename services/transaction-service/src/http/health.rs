//! `/readyz` and `/metrics` (`/healthz` is [`service_http::healthz`]).

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use rdkafka::consumer::Consumer;

use super::{AppState, FieldErrors};

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /readyz`: 200 when the database answers `select 1` and the Kafka cluster
/// answers a metadata request; 503 naming what does not.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (database, kafka) = tokio::join!(
        service_postgres::check_ready(&state.pool, CHECK_TIMEOUT),
        kafka_ready(&state)
    );
    let mut failures = FieldErrors::new();
    if let Err(reason) = database {
        failures.insert("database".into(), reason.into());
    }
    if let Err(reason) = kafka {
        failures.insert("kafka".into(), reason.into());
    }
    service_http::readiness(failures)
}

async fn kafka_ready(state: &AppState) -> Result<(), &'static str> {
    let consumer = state.consumer.clone();
    // fetch_metadata blocks its thread for up to the timeout.
    let check = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, CHECK_TIMEOUT)
            .map(|metadata| metadata.brokers().len())
    });
    match check.await {
        Ok(Ok(brokers)) if brokers > 0 => Ok(()),
        Ok(Ok(_)) => Err("no brokers"),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness: kafka unreachable");
            Err("unreachable")
        }
        Err(_) => Err("check failed"),
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    service_http::exposition(state.metrics.registry())
}
