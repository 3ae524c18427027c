//! `OUTBOX_CAPTURE=messages:<prefix>`: accepting and settling a transaction write no
//! outbox row; each event is one transactional logical decoding message of the state
//! change's own transaction, which a pgoutput slot (relay-cdc's view) decodes at commit,
//! and a request that fails emits nothing.

use outbox::Capture;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app_with, TestApp};
use testkit::slot::{Decoded, MessageSlot};

const PREFIX: &str = "ledger";

async fn spawn_in_message_mode() -> TestApp {
    spawn_app_with(|s| {
        s.capture = Capture::Messages {
            prefix: PREFIX.into(),
        }
    })
    .await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// The transactional messages of `changes` with the test's prefix, decoded: `(event id,
/// event type, aggregate id, payload)`. Fails on any other message.
fn events(changes: &[Decoded]) -> Vec<(Uuid, String, String, Value)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Decoded::Message {
                transactional,
                prefix,
                content,
            } => {
                assert!(transactional, "emitted in the state change's transaction");
                assert_eq!(prefix, PREFIX);
                let e = outbox::message::decode(content).expect("an envelope");
                assert_eq!(e.aggregate_type, "transaction");
                let payload = serde_json::from_slice(e.payload).expect("JSON payload");
                Some((
                    e.id,
                    e.event_type.to_string(),
                    e.aggregate_id.to_string(),
                    payload,
                ))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn in_message_mode_accepting_and_settling_a_transaction_emit_one_message_each_and_no_row() {
    let app = spawn_in_message_mode().await;
    let alice = app.open_accounts(1).await[0];
    let mut slot = MessageSlot::create(&app.db).await;
    let trace_id = Uuid::new_v4().simple().to_string();

    let response = app
        .client
        .post(app.url("/api/v1/transactions"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&json!({"amount": 100, "toUserId": alice, "description": "salary"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id: Uuid = body["transactionId"].as_str().unwrap().parse().unwrap();
    assert_eq!(count(&app, "select count(*) from outbox").await, 0);

    let xmin: String = sqlx::query_scalar("select xmin::text from transactions where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let changes = slot.changes().await;
    assert!(
        changes.contains(&Decoded::Begin {
            xid: xmin.parse().unwrap()
        }),
        "the transaction row's transaction: {changes:?}"
    );
    assert!(!changes.contains(&Decoded::Other(b'I')), "{changes:?}");
    let created = events(&changes);
    assert_eq!(created.len(), 1, "exactly one message: {changes:?}");
    let (created_id, event_type, aggregate_id, payload) = &created[0];
    assert_eq!(event_type, "TransactionCreated");
    assert_eq!(aggregate_id, &id.to_string());
    assert_eq!(payload["transactionId"], id.to_string());
    assert_eq!(payload["amount"], "100.00");
    assert_eq!(payload["fromUserId"], Value::Null);
    assert_eq!(payload["toUserId"], alice.to_string());
    assert_eq!(payload["description"], "salary");
    let envelope = changes
        .iter()
        .find_map(|c| match c {
            Decoded::Message { content, .. } => Some(content),
            _ => None,
        })
        .unwrap();
    let record = app.record_of_envelope(envelope);
    let traceparent = record
        .headers
        .iter()
        .find(|(n, _)| n == outbox::headers::TRACEPARENT)
        .map(|(_, v)| v.clone())
        .expect("the request's trace context");
    assert_eq!(&traceparent[3..35], trace_id);

    // relay-cdc would publish the message as this record: the consumer settles it and
    // writes the settlement's event as a message too.
    app.publish(&record).await;
    let settled = app.settled(id).await;
    assert_eq!(settled["status"], "COMPLETED", "{settled}");
    assert_eq!(app.balance(alice).await.as_deref(), Some("100.00"));

    assert_eq!(count(&app, "select count(*) from outbox").await, 0);
    let changes = slot.changes().await;
    assert!(!changes.contains(&Decoded::Other(b'I')), "{changes:?}");
    let completed = events(&changes);
    assert_eq!(completed.len(), 1, "exactly one message: {changes:?}");
    let (completed_id, event_type, aggregate_id, payload) = &completed[0];
    assert_ne!(completed_id, created_id);
    assert_eq!(event_type, "TransactionCompleted");
    assert_eq!(aggregate_id, &id.to_string());
    assert_eq!(payload["status"], "COMPLETED");
    assert_eq!(payload["amount"], "100.00");
    assert_eq!(payload["toUserId"], alice.to_string());
}

#[tokio::test]
async fn in_message_mode_a_refused_or_replayed_request_emits_nothing() {
    let app = spawn_in_message_mode().await;
    let alice = app.open_accounts(1).await[0];
    let mut slot = MessageSlot::create(&app.db).await;
    let key = Uuid::new_v4().to_string();
    let deposit = json!({"amount": 5, "toUserId": alice});

    let first = app.post_transaction_with_key(&deposit, &key).await;
    assert_eq!(first.status(), 202);
    let body: Value = first.json().await.unwrap();
    let id = body["transactionId"].as_str().unwrap().to_string();

    // Answered from the stored response: nothing written.
    let again = app.post_transaction_with_key(&deposit, &key).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    // Refused before the event is written: no such account.
    let unknown = app
        .post_transaction(&json!({"amount": 5, "toUserId": Uuid::now_v7()}))
        .await;
    assert_eq!(unknown.status(), 422);
    // Refused after the event was written: storing the idempotency key fails.
    sqlx::raw_sql(
        "create function refuse_key() returns trigger language plpgsql as $$ \
         begin raise exception 'idempotency key refused by the test'; end $$; \
         create trigger refuse_key before insert on idempotency_keys \
         for each row execute function refuse_key();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let failed = app
        .post_transaction_with_key(&deposit, &Uuid::new_v4().to_string())
        .await;
    assert_eq!(failed.status(), 500);

    assert_eq!(count(&app, "select count(*) from transactions").await, 1);
    assert_eq!(count(&app, "select count(*) from outbox").await, 0);
    let emitted = events(&slot.changes().await);
    assert_eq!(emitted.len(), 1, "the first request's only: {emitted:?}");
    assert_eq!(emitted[0].1, "TransactionCreated");
    assert_eq!(emitted[0].2, id);
}
