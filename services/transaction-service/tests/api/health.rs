//! `/healthz`, `/readyz`, `/metrics`, and graceful shutdown.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_and_readyz_are_ok_when_the_database_and_kafka_are_reachable() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"code": 200, "message": "ready"}));
}

#[tokio::test]
async fn metrics_count_requests_by_matched_route_and_status() {
    let app = spawn_app().await;
    for _ in 0..2 {
        app.get(&format!("/api/v1/transactions/{}", Uuid::now_v7()))
            .await;
    }
    app.get("/no/such/route").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(
            r#"http_requests_total{method="GET",route="/api/v1/transactions/{id}",status="404"} 2"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#));
    assert!(text.contains(
        r#"http_request_duration_seconds_count{method="GET",route="/api/v1/transactions/{id}",status="404"} 2"#
    ));
}

#[tokio::test]
async fn shutting_down_stops_the_server_and_the_consumer_and_commits_what_it_applied() {
    let mut app = spawn_app().await;
    // A burst: the stop must not wait behind one commit request per event.
    app.open_accounts(200).await;
    app.shut_down();
    let server = app.server.take().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("the service stops within 15 s")
        .expect("the service task did not panic");
    assert!(result.is_ok());
    assert!(app.client.get(app.url("/healthz")).send().await.is_err());
    // Closing committed every applied event's offset: nothing to redeliver.
    assert_eq!(
        app.committed_offset(&app.user_topic).await.unwrap(),
        Some(200)
    );
}

#[tokio::test]
async fn methods_outside_the_standard_set_share_one_metrics_label() {
    let app = spawn_app().await;
    for method in ["BREW", "PROPFIND", "X-MINT-A-LABEL"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="OTHER",route="/healthz",status="405"} 3"#),
        "{text}"
    );
    assert!(!text.contains("BREW") && !text.contains("X-MINT"), "{text}");
}
