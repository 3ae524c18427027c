//! Probes and Prometheus metrics.

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{sign_up, spawn_app, status_and_json, unique_email};

#[tokio::test]
async fn healthz_and_readyz_answer_200_when_the_database_is_up() {
    let app = spawn_app().await;
    let (status, body) = status_and_json(app.get("/healthz").await).await;
    assert_eq!(
        (status, body),
        (200, json!({"code": 200, "message": "alive"}))
    );
    let (status, body) = status_and_json(app.get("/readyz").await).await;
    assert_eq!(
        (status, body),
        (200, json!({"code": 200, "message": "ready"}))
    );
}

#[tokio::test]
async fn metrics_count_and_time_requests_by_route_template_method_and_status() {
    let app = spawn_app().await;
    let (_, created) = status_and_json(app.post_user(&sign_up(&unique_email())).await).await;
    let id = created["data"]["id"].as_str().unwrap();
    app.get(&format!("/users/{id}")).await;
    app.get(&format!("/users/{}", Uuid::now_v7())).await;
    app.get("/no/such/route").await;

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();

    for line in [
        r#"http_requests_total{method="POST",route="/users",status="201"} 1"#,
        r#"http_requests_total{method="GET",route="/users/{id}",status="200"} 1"#,
        r#"http_requests_total{method="GET",route="/users/{id}",status="404"} 1"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"http_request_duration_seconds_count{method="POST",route="/users",status="201"} 1"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/users/{id}",status="200",le="+Inf"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert!(!text.contains(id), "concrete paths never become labels");
}
