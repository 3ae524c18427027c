//! `OUTBOX_CAPTURE=messages`: a sign-up writes no outbox row; its `UserCreated` is one
//! transactional logical decoding message of the sign-up's own transaction, which a
//! pgoutput slot (relay-cdc's view) decodes at commit, and a sign-up that fails emits
//! nothing.

use outbox::Capture;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{sign_up, spawn_app_with_capture, status_and_json, unique_email};
use testkit::slot::{Decoded, MessageSlot};

/// The logical decoding messages among `changes`: `(transactional, prefix, content)`.
fn messages(changes: Vec<Decoded>) -> Vec<(bool, String, Vec<u8>)> {
    changes
        .into_iter()
        .filter_map(|c| match c {
            Decoded::Message {
                transactional,
                prefix,
                content,
            } => Some((transactional, prefix, content)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn in_message_mode_a_sign_up_writes_no_outbox_row_and_emits_one_transactional_message() {
    let app = spawn_app_with_capture(Capture::messages()).await;
    let mut slot = MessageSlot::create(app.db.as_ref().unwrap()).await;
    let trace_id = Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");

    let response = app
        .client
        .post(app.url("/users"))
        .header("traceparent", &traceparent)
        .header("tracestate", "congo=t61rcWkgMzE")
        .json(&sign_up(" Grace@Example.com "))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 201, "{body}");
    let id: Uuid = body["data"]["id"].as_str().unwrap().parse().unwrap();

    assert_eq!(
        app.count("outbox").await,
        0,
        "no outbox row in message mode"
    );
    let (created_at, xmin): (chrono::DateTime<chrono::Utc>, String) =
        sqlx::query_as("select created_at, xmin::text from users where id = $1")
            .bind(id)
            .fetch_one(&mut app.db().await)
            .await
            .unwrap();

    let changes = slot.changes().await;
    let begins: Vec<u32> = changes
        .iter()
        .filter_map(|c| match c {
            Decoded::Begin { xid } => Some(*xid),
            _ => None,
        })
        .collect();
    assert_eq!(
        begins,
        [xmin.parse::<u32>().unwrap()],
        "one transaction, the user row's: {changes:?}"
    );
    assert!(
        !changes.contains(&Decoded::Other(b'I')),
        "no outbox insert decoded: {changes:?}"
    );
    let messages = messages(changes);
    assert_eq!(messages.len(), 1, "exactly one message: {messages:?}");
    let (transactional, prefix, content) = &messages[0];
    assert!(transactional, "emitted in the sign-up's transaction");
    assert_eq!(prefix, outbox::message::DEFAULT_PREFIX);

    let event = outbox::message::decode(content).expect("an envelope");
    assert_eq!(event.aggregate_type, "user");
    assert_eq!(event.aggregate_id, id.to_string());
    assert_eq!(event.event_type, "UserCreated");
    assert_eq!(event.id.get_version_num(), 7, "event ids are UUIDv7");
    let traceparent = event.traceparent.expect("the request's trace context");
    assert_eq!(&traceparent[3..35], trace_id, "the caller's trace");
    assert_eq!(event.tracestate, Some("congo=t61rcWkgMzE"));
    assert!(event.headers.is_empty());
    let payload: Value = serde_json::from_slice(event.payload).unwrap();
    let keys: Vec<&String> = payload.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["createdAt", "email", "id"]);
    assert_eq!(payload["id"], id.to_string());
    assert_eq!(payload["email"], "grace@example.com");
    let at: chrono::DateTime<chrono::Utc> = payload["createdAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(at, created_at);
}

#[tokio::test]
async fn in_message_mode_a_failed_sign_up_emits_nothing() {
    let app = spawn_app_with_capture(Capture::Messages {
        prefix: "signups".into(),
    })
    .await;
    let mut slot = MessageSlot::create(app.db.as_ref().unwrap()).await;
    let email = unique_email();
    let (status, _) = status_and_json(app.post_user(&sign_up(&email)).await).await;
    assert_eq!(status, 201);

    // Refused before the event is written: the email is taken.
    let (status, _) = status_and_json(app.post_user(&sign_up(&email)).await).await;
    assert_eq!(status, 409);
    // Refused after the event was written: the commit fails.
    sqlx::raw_sql(
        "create function refuse_commit() returns trigger language plpgsql as $$ \
         begin raise exception 'commit refused by the test'; end $$; \
         create constraint trigger refuse_commit after insert on users \
         deferrable initially deferred for each row execute function refuse_commit();",
    )
    .execute(&mut app.db().await)
    .await
    .unwrap();
    let (status, body) = status_and_json(app.post_user(&sign_up(&unique_email())).await).await;
    assert_eq!(status, 500, "{body}");

    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("outbox").await, 0);
    let messages = messages(slot.changes().await);
    assert_eq!(messages.len(), 1, "the first sign-up's only: {messages:?}");
    let (transactional, prefix, content) = &messages[0];
    assert!(transactional);
    assert_eq!(prefix, "signups");
    let event = outbox::message::decode(content).unwrap();
    let payload: Value = serde_json::from_slice(event.payload).unwrap();
    assert_eq!(payload["email"], email);
}
