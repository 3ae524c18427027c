//! `POST /users`: the user row and its outbox event commit together or not at all.

use serde_json::{json, Value};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::helpers::{sign_up, spawn_app, status_and_json, unique_email, PASSWORD};

#[tokio::test]
async fn creating_a_user_commits_one_user_row_and_one_outbox_row_together() {
    let app = spawn_app().await;

    let response = app.post_user(&sign_up("  Ada.Lovelace@Example.COM ")).await;
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = status_and_json(response).await;

    assert_eq!(status, 201, "{body}");
    assert_eq!(body["code"], 201);
    assert_eq!(body["message"], "user created successfully");
    let id: Uuid = body["data"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        body["data"].as_object().unwrap().len(),
        1,
        "data is just the id"
    );
    assert_eq!(location.as_deref(), Some(format!("/users/{id}").as_str()));

    let mut db = app.db().await;
    let users: Vec<(Uuid, String, String, String)> =
        sqlx::query_as("select id, email, password_hash, xmin::text from users")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(users.len(), 1);
    let (user_id, email, hash, user_xid) = &users[0];
    assert_eq!(*user_id, id);
    assert_eq!(
        email, "ada.lovelace@example.com",
        "stored trimmed and lower-cased"
    );
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(PASSWORD));

    let events: Vec<(String, String, String, Value, String, String)> = sqlx::query_as(
        "select aggregate_type, aggregate_id, event_type, payload, status, xmin::text from outbox",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(events.len(), 1);
    let (aggregate_type, aggregate_id, event_type, payload, event_status, event_xid) = &events[0];
    assert_eq!(aggregate_type, "user");
    assert_eq!(aggregate_id, &id.to_string());
    assert_eq!(event_type, "UserCreated");
    assert_eq!(event_status, "PENDING");
    assert_eq!(
        user_xid, event_xid,
        "both rows were written by the same transaction"
    );

    let created_at: (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("select created_at from users")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let payload_keys: Vec<&String> = payload.as_object().unwrap().keys().collect();
    assert_eq!(payload_keys, ["createdAt", "email", "id"]);
    assert_eq!(payload["id"], id.to_string());
    assert_eq!(payload["email"], "ada.lovelace@example.com");
    let payload_created_at: chrono::DateTime<chrono::Utc> =
        payload["createdAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(payload_created_at, created_at.0);

    let payload_text = payload.to_string();
    assert!(!payload_text.contains(PASSWORD));
    assert!(!payload_text.contains("argon2"));
    assert!(!payload_text.to_lowercase().contains("password"));
}

#[tokio::test]
async fn a_failing_outbox_insert_rolls_back_the_user_and_answers_a_generic_500() {
    let app = spawn_app().await;
    sqlx::raw_sql(
        "create function refuse_outbox_insert() returns trigger language plpgsql as $$ \
         begin raise exception 'outbox insert refused by the test'; end $$; \
         create trigger refuse_outbox_insert before insert on outbox \
         for each row execute function refuse_outbox_insert();",
    )
    .execute(&mut app.db().await)
    .await
    .unwrap();

    let (status, body) = status_and_json(app.post_user(&sign_up(&unique_email())).await).await;

    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"code": 500, "message": "internal server error"}),
        "nothing about the cause reaches the client"
    );
    assert_eq!(
        app.count("users").await,
        0,
        "the user insert was rolled back"
    );
    assert_eq!(app.count("outbox").await, 0);
}

#[tokio::test]
async fn twenty_concurrent_sign_ups_with_one_email_create_exactly_one_user_and_one_event() {
    let app = std::sync::Arc::new(spawn_app().await);
    let local = format!("race-{}", testkit::unique_suffix());

    let mut requests = JoinSet::new();
    for i in 0..20 {
        // The same address spelled 20 ways: case and surrounding whitespace vary.
        let spelling = match i % 4 {
            0 => format!("{local}@example.com"),
            1 => format!("  {}@EXAMPLE.com", local.to_uppercase()),
            2 => format!("{local}@Example.Com\t"),
            _ => format!(" {}@example.COM ", local.to_uppercase()),
        };
        let app = std::sync::Arc::clone(&app);
        requests
            .spawn(async move { status_and_json(app.post_user(&sign_up(&spelling)).await).await });
    }
    let mut created = 0;
    let mut conflicts = 0;
    while let Some(result) = requests.join_next().await {
        let (status, body) = result.unwrap();
        match status {
            201 => created += 1,
            409 => {
                conflicts += 1;
                assert_eq!(
                    body,
                    json!({
                        "code": 409,
                        "message": "email is already registered",
                        "errors": {"email": "is already registered"}
                    })
                );
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }

    assert_eq!((created, conflicts), (1, 19));
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}
