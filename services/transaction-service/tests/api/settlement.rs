//! Settlement driven by events: deposits, transfers, duplicates, insufficient funds,
//! and many transfers at once.

use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::json;
use testkit::wait_for;
use transaction_service::app::settle_transaction;
use uuid::Uuid;

use crate::helpers::{spawn_app, Sequence, EVENT_TIMEOUT};

#[tokio::test]
async fn a_deposit_then_a_transfer_settle_through_kafka_and_emit_their_events() {
    let app = spawn_app().await;
    let users = app.open_accounts(2).await;
    let (alice, bob) = (users[0], users[1]);
    assert_eq!(app.balance(alice).await.as_deref(), Some("0.00"));
    assert_eq!(app.balance(bob).await.as_deref(), Some("0.00"));

    // A deposit: no fromUserId.
    let deposit = app
        .create(&json!({"amount": 100, "toUserId": alice, "description": "salary"}))
        .await;
    let pending = app.transaction(deposit).await;
    assert_eq!(pending["status"], "PENDING");
    assert_eq!(pending["amount"], "100.00");
    assert_eq!(pending["fromUserId"], serde_json::Value::Null);
    let events = app.events_of(deposit).await;
    assert_eq!(events.len(), 1);
    let (created_id, event_type, payload) = &events[0];
    assert_eq!(event_type, "TransactionCreated");
    assert_eq!(payload["transactionId"], deposit.to_string());
    assert_eq!(payload["amount"], "100.00");
    assert_eq!(payload["fromUserId"], serde_json::Value::Null);
    assert_eq!(payload["toUserId"], alice.to_string());
    assert_eq!(payload["description"], "salary");

    app.relay(*created_id).await;
    let settled = app.settled(deposit).await;
    assert_eq!(settled["status"], "COMPLETED", "{settled}");
    assert_eq!(settled["failureReason"], serde_json::Value::Null);
    assert_eq!(app.balance(alice).await.as_deref(), Some("100.00"));

    // A transfer.
    let transfer = app
        .create(
            &json!({"amount": 30.25, "fromUserId": alice, "toUserId": bob, "description": "rent"}),
        )
        .await;
    assert_eq!(app.transaction(transfer).await["status"], "PENDING");
    let settled = app.relay_and_settle(transfer).await;
    assert_eq!(settled["status"], "COMPLETED", "{settled}");
    assert_eq!(app.balance(alice).await.as_deref(), Some("69.75"));
    assert_eq!(app.balance(bob).await.as_deref(), Some("30.25"));

    // Each transaction emitted Created then Completed, keyed by its id.
    for (id, from, to, amount) in [
        (deposit, None, alice, "100.00"),
        (transfer, Some(alice), bob, "30.25"),
    ] {
        let events = app.events_of(id).await;
        let types: Vec<&str> = events.iter().map(|(_, t, _)| t.as_str()).collect();
        assert_eq!(types, ["TransactionCreated", "TransactionCompleted"]);
        let completed = &events[1].2;
        assert_eq!(completed["transactionId"], id.to_string());
        assert_eq!(completed["status"], "COMPLETED");
        assert_eq!(completed["amount"], amount);
        assert_eq!(completed["fromUserId"], json!(from));
        assert_eq!(completed["toUserId"], to.to_string());
        assert!(completed.get("failureReason").is_none());
    }
}

#[tokio::test]
async fn the_same_transaction_created_delivered_twice_moves_money_once() {
    let app = spawn_app().await;
    let alice = app.open_accounts(1).await[0];
    let deposit = app
        .create(&json!({"amount": "42.50", "toUserId": alice}))
        .await;
    let event = app.created_event(deposit).await;

    app.relay(event).await;
    app.relay(event).await;
    assert_eq!(app.settled(deposit).await["status"], "COMPLETED");
    wait_for("the duplicate to be consumed", EVENT_TIMEOUT, || async {
        let duplicates = app
            .metric(r#"consumer_events_processed_total{event_type="TransactionCreated",outcome="duplicate"}"#)
            .await;
        Ok((duplicates >= 1.0).then_some(()))
    })
    .await
    .unwrap();

    assert_eq!(app.balance(alice).await.as_deref(), Some("42.50"));
    let types: Vec<String> = app
        .events_of(deposit)
        .await
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(types, ["TransactionCreated", "TransactionCompleted"]);
    let inboxed: i64 = sqlx::query_scalar("select count(*) from inbox where event_id = $1")
        .bind(event)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(inboxed, 1);
}

#[tokio::test]
async fn a_transfer_beyond_the_balance_fails_with_insufficient_funds_and_moves_nothing() {
    let app = spawn_app().await;
    let users = app.open_accounts(2).await;
    let (alice, bob) = (users[0], users[1]);
    app.deposit(alice, json!(10)).await;

    let transfer = app
        .create(&json!({"amount": 10.01, "fromUserId": alice, "toUserId": bob}))
        .await;
    let settled = app.relay_and_settle(transfer).await;
    assert_eq!(settled["status"], "FAILED");
    assert_eq!(settled["failureReason"], "INSUFFICIENT_FUNDS");
    assert_eq!(app.balance(alice).await.as_deref(), Some("10.00"));
    assert_eq!(app.balance(bob).await.as_deref(), Some("0.00"));

    let events = app.events_of(transfer).await;
    let (_, event_type, payload) = events.last().unwrap();
    assert_eq!(event_type, "TransactionFailed");
    assert_eq!(payload["status"], "FAILED");
    assert_eq!(payload["failureReason"], "INSUFFICIENT_FUNDS");
    assert_eq!(payload["transactionId"], transfer.to_string());
}

/// Transfers are created over HTTP and settled by calling the settlement use case
/// directly, all at once, so that settlements really contend for the same accounts
/// (the Kafka consumer applies events one at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_transfers_keep_the_total_and_never_go_negative() {
    let app = Arc::new(spawn_app().await);
    let users = app.open_accounts(10).await;
    for user in &users {
        app.deposit(*user, json!(100)).await;
    }

    let mut sequence = Sequence::new(0x5eed_cafe);
    let transfers: Vec<(Uuid, Uuid, String)> = (0..500)
        .map(|_| {
            let from = users[sequence.below(10) as usize];
            let to = loop {
                let to = users[sequence.below(10) as usize];
                if to != from {
                    break to;
                }
            };
            let cents = 1 + sequence.below(6_000);
            (from, to, format!("{}.{:02}", cents / 100, cents % 100))
        })
        .collect();

    let tasks: Vec<_> = transfers
        .into_iter()
        .map(|(from, to, amount)| {
            let app = app.clone();
            tokio::spawn(async move {
                let id = app
                    .create(&json!({"amount": amount, "fromUserId": from, "toUserId": to}))
                    .await;
                let event = app.created_event(id).await;
                settle_transaction::execute(&app.pool, event, id, None)
                    .await
                    .expect("settlement commits");
                id
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(500);
    for task in tasks {
        ids.push(task.await.expect("transfer task"));
    }

    let balances: Vec<Decimal> =
        sqlx::query_scalar("select balance from accounts where user_id = any($1)")
            .bind(&users)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(balances.len(), 10);
    assert_eq!(balances.iter().sum::<Decimal>(), Decimal::new(100_000, 2));
    assert!(balances.iter().all(|b| *b >= Decimal::ZERO), "{balances:?}");

    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "select status, count(*) from transactions where id = any($1) group by status order by status",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let settled: i64 = statuses
        .iter()
        .filter(|(s, _)| s == "COMPLETED" || s == "FAILED")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(settled, 500, "{statuses:?}");

    // One settlement event per transfer, of the type its status says.
    let mismatched: i64 = sqlx::query_scalar(
        "select count(*) from transactions t where t.id = any($1) and 1 <> ( \
             select count(*) from outbox o where o.aggregate_id = t.id::text \
             and o.event_type = case t.status when 'COMPLETED' then 'TransactionCompleted' \
                                              else 'TransactionFailed' end)",
    )
    .bind(&ids)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(mismatched, 0);
}

/// relay-cdc can publish a commit a moment before this service's snapshots see it (the
/// WAL is flushed before the committing session leaves the proc array): settlement must
/// wait for the row instead of calling the transaction unknown and dropping the event.
#[tokio::test]
async fn a_transaction_not_yet_visible_when_its_event_arrives_is_settled_once_it_is() {
    let app = spawn_app().await;
    let user = app.open_accounts(1).await[0];
    let (id, event) = (Uuid::now_v7(), Uuid::now_v7());
    let mut writer = app.pool.begin().await.unwrap();
    sqlx::query("insert into transactions (id, amount, to_user_id) values ($1, 12.50, $2)")
        .bind(id)
        .bind(user)
        .execute(&mut *writer)
        .await
        .unwrap();
    let pool = app.pool.clone();
    let settle =
        tokio::spawn(async move { settle_transaction::execute(&pool, event, id, None).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    writer.commit().await.unwrap();
    let outcome = settle.await.unwrap().expect("settlement commits");
    assert_eq!(outcome, settle_transaction::Outcome::Completed);
    assert_eq!(app.balance(user).await.as_deref(), Some("12.50"));
}
