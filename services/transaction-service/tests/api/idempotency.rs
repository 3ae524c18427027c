//! `Idempotency-Key`: replay, conflict, concurrency, expiry.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test]
async fn a_repeated_request_with_the_same_key_replays_the_first_response() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let key = Uuid::new_v4().to_string();

    let first = app
        .post_transaction_with_key(&json!({"amount": 100, "toUserId": to}), &key)
        .await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = first.text().await.unwrap();

    // The same request, written differently (100.00 is 100), is the same request.
    let again = app
        .post_transaction_with_key(&json!({"toUserId": to, "amount": "100.00"}), &key)
        .await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["content-type"], "application/json");
    // Byte for byte.
    assert_eq!(again.text().await.unwrap(), first);

    assert_eq!(count(&app, "select count(*) from transactions").await, 1);
    assert_eq!(count(&app, "select count(*) from outbox").await, 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_rejected_with_422() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let key = "order-42";
    let first = app
        .post_transaction_with_key(&json!({"amount": 100, "toUserId": to}), key)
        .await;
    assert_eq!(first.status(), 202);

    let other = app
        .post_transaction_with_key(&json!({"amount": 101, "toUserId": to}), key)
        .await;
    assert_eq!(other.status(), 422);
    let body: Value = other.json().await.unwrap();
    assert_eq!(body["code"], 422);
    assert_eq!(
        body["errors"]["Idempotency-Key"],
        "already used for a different request"
    );
    assert_eq!(count(&app, "select count(*) from transactions").await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_the_same_key_create_one_transaction() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let key = Uuid::new_v4().to_string();
    let body = json!({"amount": 7.5, "toUserId": to});

    let responses =
        futures::future::join_all((0..20).map(|_| app.post_transaction_with_key(&body, &key)))
            .await;
    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["transactionId"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(count(&app, "select count(*) from transactions").await, 1);
    assert_eq!(count(&app, "select count(*) from outbox").await, 1);
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_rejected_with_400() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    for key in ["", "has space", &"k".repeat(256)] {
        let response = app
            .post_transaction_with_key(&json!({"amount": 1, "toUserId": to}), key)
            .await;
        assert_eq!(response.status(), 400, "key {key:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["errors"]["Idempotency-Key"].is_string(), "{body}");
    }
    assert_eq!(count(&app, "select count(*) from transactions").await, 0);
}

#[tokio::test]
async fn keys_older_than_a_day_expire_and_are_purged() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let first = app
        .post_transaction_with_key(&json!({"amount": 1, "toUserId": to}), "reused")
        .await;
    assert_eq!(first.status(), 202);
    sqlx::raw_sql(
        "insert into idempotency_keys (key, request_hash, response_status, response_body) \
           values ('forgotten', '\\x00', 202, '{}'); \
         update idempotency_keys set created_at = now() - interval '25 hours'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    // After 24 hours the key names a new request...
    let second = app
        .post_transaction_with_key(&json!({"amount": 2, "toUserId": to}), "reused")
        .await;
    assert_eq!(second.status(), 202);
    assert!(second.headers().get("idempotent-replayed").is_none());
    assert_eq!(count(&app, "select count(*) from transactions").await, 2);
    // ...and expired keys of other requests are purged along the way.
    let keys: Vec<String> = sqlx::query_scalar("select key from idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, ["reused"]);
}
