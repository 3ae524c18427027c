//! The event consumer: accounts from `UserCreated`, malformed records, offsets.

use serde_json::json;
use testkit::wait_for;
use uuid::Uuid;

use crate::helpers::{spawn_app, EVENT_TIMEOUT};

#[tokio::test]
async fn user_created_opens_a_zero_balance_account_once() {
    let app = spawn_app().await;
    let user = Uuid::now_v7();
    let event = app.announce_user(user).await;
    wait_for("the account", EVENT_TIMEOUT, || async {
        Ok(app.balance(user).await)
    })
    .await
    .map(|balance| assert_eq!(balance, "0.00"))
    .unwrap();

    // The same user announced again under another event id: still one account.
    app.announce_user(user).await;
    wait_for("the second announcement", EVENT_TIMEOUT, || async {
        let seen = app
            .metric(r#"consumer_events_processed_total{event_type="UserCreated",outcome="already_open"}"#)
            .await;
        Ok((seen >= 1.0).then_some(()))
    })
    .await
    .unwrap();
    let inboxed: i64 = sqlx::query_scalar("select count(*) from inbox where event_id = $1")
        .bind(event)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(inboxed, 1);
}

#[tokio::test]
async fn a_malformed_event_is_skipped_counted_and_its_offset_committed() {
    let app = spawn_app().await;
    // No headers at all, then a valid header with a payload that is not JSON.
    app.produce(&app.user_topic, "k", b"{\"id\": 1}", &[]).await;
    app.produce(
        &app.user_topic,
        "k",
        b"not json",
        &[
            (outbox::headers::EVENT_ID, &Uuid::now_v7().to_string()),
            (outbox::headers::EVENT_TYPE, "UserCreated"),
        ],
    )
    .await;
    // The consumer moves on to the next record.
    let user = app.open_accounts(1).await[0];
    assert_eq!(app.balance(user).await.as_deref(), Some("0.00"));

    assert_eq!(
        app.metric(r#"consumer_events_failed_total{reason="malformed"}"#)
            .await,
        2.0
    );
    wait_for("offsets to be committed", EVENT_TIMEOUT, || async {
        let committed = app.committed_offset(&app.user_topic).await?;
        Ok((committed == Some(3)).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_service_ignores_its_own_settlement_events() {
    let app = spawn_app().await;
    let user = app.open_accounts(1).await[0];
    let deposit = app.create(&json!({"amount": 3, "toUserId": user})).await;
    app.relay_and_settle(deposit).await;
    // Relay the TransactionCompleted too, as relay-cdc will.
    let events = app.events_of(deposit).await;
    app.relay(events[1].0).await;
    wait_for("the completed event to be seen", EVENT_TIMEOUT, || async {
        let ignored = app
            .metric(r#"consumer_events_processed_total{event_type="TransactionCompleted",outcome="ignored"}"#)
            .await;
        Ok((ignored >= 1.0).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(app.balance(user).await.as_deref(), Some("3.00"));
}
