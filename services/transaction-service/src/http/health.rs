//! `/healthz`, `/readyz` and `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::consumer::Consumer;
use serde_json::json;

use super::error::{ErrorBody, FieldErrors};
use super::AppState;

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The process is up and serving HTTP (touches neither the database nor Kafka).
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"code": 200, "message": "alive"}))
}

/// 200 when the database answers a query and the Kafka cluster answers a metadata
/// request; 503 naming what does not.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (database, kafka) = tokio::join!(database_ready(&state), kafka_ready(&state));
    let mut errors = FieldErrors::new();
    if let Err(reason) = database {
        errors.insert("database".into(), reason);
    }
    if let Err(reason) = kafka {
        errors.insert("kafka".into(), reason);
    }
    if errors.is_empty() {
        Json(json!({"code": 200, "message": "ready"})).into_response()
    } else {
        let body = ErrorBody {
            code: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            message: "not ready".into(),
            errors: Some(errors),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn database_ready(state: &AppState) -> Result<(), String> {
    let check = async {
        let mut conn = state.pool.acquire().await?;
        sqlx::query("select 1").execute(&mut *conn).await
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness: database unreachable");
            Err("unreachable".into())
        }
        Err(_) => Err("timed out".into()),
    }
}

async fn kafka_ready(state: &AppState) -> Result<(), String> {
    let consumer = state.consumer.clone();
    // fetch_metadata blocks its thread for up to the timeout.
    let check = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, CHECK_TIMEOUT)
            .map(|metadata| metadata.brokers().len())
    });
    match check.await {
        Ok(Ok(brokers)) if brokers > 0 => Ok(()),
        Ok(Ok(_)) => Err("no brokers".into()),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness: kafka unreachable");
            Err("unreachable".into())
        }
        Err(_) => Err("check failed".into()),
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, service_telemetry::content_type())],
        state.metrics.render(),
    )
}
