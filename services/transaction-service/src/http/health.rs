//! `/readyz` (`/healthz`, `/metrics` and `/openapi.json` are service-http's).

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use service_http::docs::Readiness;

use super::{AppState, FieldErrors};

/// The client `/readyz` asks for metadata. A producer that never sends: its own thread
/// serves its events, so nothing piles up between checks.
pub type KafkaProbe = ThreadedProducer<DefaultProducerContext>;

/// Creates the readiness probe's client (the consumer's brokers and security); it
/// connects in the background.
pub fn kafka_probe(kafka: &crate::config::KafkaSettings) -> Result<KafkaProbe, KafkaError> {
    let mut config = ClientConfig::new();
    kafka.security.apply(&mut config);
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", "transaction-service-readyz")
        .create()
}

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: the database and Kafka answer
///
/// 200 when the database answers `select 1` and the Kafka cluster a metadata request,
/// each within 2 s; 503 naming what does not.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", responses(Readiness))]
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
    let probe = state.kafka_probe.clone();
    // fetch_metadata blocks its thread for up to the timeout.
    let check = tokio::task::spawn_blocking(move || {
        probe
            .client()
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
