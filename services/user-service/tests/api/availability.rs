//! When PostgreSQL cannot be reached the service answers 503 quickly, stays alive,
//! and serves again as soon as the database is back, without a restart.

use std::net::SocketAddr;
use std::time::Duration;

use testkit::TestDb;
use uuid::Uuid;

use crate::helpers::{
    assert_error_envelope, closed_port, pool_to_port, sign_up, spawn_app_with_pool,
    status_and_json, unique_email, DbProxy,
};

const UNAVAILABLE: &str = "the database is unavailable, retry later";

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_503_with_a_clear_message() {
    let db = TestDb::create("users", "users_db").await.unwrap();
    let pool = pool_to_port(closed_port().await, &db, Duration::from_secs(1));
    let app = spawn_app_with_pool(pool).await;

    let response = app.post_user(&sign_up(&unique_email())).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let (status, body) = status_and_json(response).await;
    assert_error_envelope(status, &body, 503);
    assert_eq!(body["message"], UNAVAILABLE);

    let (status, body) =
        status_and_json(app.get(&format!("/users/{}", Uuid::now_v7())).await).await;
    assert_error_envelope(status, &body, 503);
    assert_eq!(body["message"], UNAVAILABLE);

    let (status, body) = status_and_json(app.get("/readyz").await).await;
    assert_error_envelope(status, &body, 503);

    let (status, _) = status_and_json(app.get("/healthz").await).await;
    assert_eq!(
        status, 200,
        "the process is alive even without its database"
    );
}

#[tokio::test]
async fn the_service_recovers_by_itself_when_the_database_returns() {
    let db = TestDb::create("users", "users_db").await.unwrap();
    let stack = db.stack();
    // The stack's host may be a name (`localhost` on the secured stack).
    let postgres: SocketAddr = tokio::net::lookup_host((stack.pg_host.as_str(), stack.pg_port))
        .await
        .unwrap()
        .find(SocketAddr::is_ipv4)
        .unwrap();
    let proxy = DbProxy::start(postgres).await;
    let app = spawn_app_with_pool(pool_to_port(proxy.port, &db, Duration::from_secs(2))).await;

    let (status, _) = status_and_json(app.post_user(&sign_up(&unique_email())).await).await;
    assert_eq!(status, 201, "healthy before the outage");

    proxy.cut().await;
    let (status, body) = status_and_json(app.post_user(&sign_up(&unique_email())).await).await;
    assert_error_envelope(status, &body, 503);
    assert_eq!(body["message"], UNAVAILABLE);
    let (status, _) = status_and_json(app.get("/readyz").await).await;
    assert_eq!(status, 503);

    proxy.restore().await;
    let (status, body) = status_and_json(app.get("/readyz").await).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = status_and_json(app.post_user(&sign_up(&unique_email())).await).await;
    assert_eq!(status, 201, "{body}");

    let mut conn = db.connect().await.unwrap();
    let (users,): (i64,) = sqlx::query_as("select count(*) from users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let (events,): (i64,) = sqlx::query_as("select count(*) from outbox")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (users, events),
        (2, 2),
        "the sign-up during the outage left nothing"
    );
}
