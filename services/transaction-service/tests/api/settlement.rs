//! Settlement driven by events: deposits, transfers, duplicates, insufficient funds,
//! and many transfers at once.

use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::json;
use testkit::wait_for;
use uuid::Uuid;

use crate::helpers::{metric_at, spawn_app, spawn_app_partitioned, Sequence, EVENT_TIMEOUT};

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

/// 500 transfers between 10 accounts, created concurrently over HTTP, their events on
/// three partitions, consumed by two instances in two consumer groups: every event is
/// applied twice, in batches that overlap differently, concurrently. Money moves once per
/// transfer, the total stays, no balance goes negative, no batch deadlocks for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_transfers_keep_the_total_and_never_go_negative() {
    let app = Arc::new(spawn_app_partitioned(3).await);
    let users = app.open_accounts(10).await;
    for user in &users {
        app.deposit(*user, json!(100)).await;
    }
    let twin = app.spawn_instance(&format!("{}-twin", app.group_id)).await;

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
                app.relay(app.created_event(id).await).await;
                id
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(500);
    for task in tasks {
        ids.push(task.await.expect("transfer task"));
    }

    // Both instances consumed all 500 (plus the 10 deposits): one applied each event,
    // the other found it applied.
    let outcome = |o: &str| {
        format!(
            r#"consumer_events_processed_total{{event_type="TransactionCreated",outcome="{o}"}}"#
        )
    };
    wait_for(
        "both groups to consume every event",
        EVENT_TIMEOUT,
        || async {
            let mut seen = 0.0;
            for address in [&app.address, &twin.address] {
                for o in ["applied", "duplicate", "already_settled"] {
                    seen += metric_at(&app.client, address, &outcome(o)).await;
                }
            }
            Ok((seen >= 1020.0).then_some(()))
        },
    )
    .await
    .unwrap();
    let mut applied = 0.0;
    for address in [&app.address, &twin.address] {
        applied += metric_at(&app.client, address, &outcome("applied")).await;
    }
    assert_eq!(applied, 510.0);

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
    // The balances are what the completed transfers say, on top of the deposits.
    let moved: Vec<(Uuid, Decimal)> = sqlx::query_as(
        "select u, coalesce(sum(case when t.to_user_id = u then t.amount else -t.amount end), 0) \
         from unnest($1::uuid[]) as u left join transactions t \
           on t.status = 'COMPLETED' and (t.to_user_id = u or t.from_user_id = u) \
         group by u",
    )
    .bind(&users)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let stored: Vec<(Uuid, Decimal)> =
        sqlx::query_as("select user_id, balance from accounts where user_id = any($1)")
            .bind(&users)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let stored: std::collections::HashMap<Uuid, Decimal> = stored.into_iter().collect();
    for (user, net) in moved {
        assert_eq!(stored[&user], net, "{user}");
    }
    twin.stop().await;
}

/// Events apply in the order they are consumed, also inside one batch: a transfer
/// consumed before the deposit that would fund it fails, one consumed after succeeds
/// (whatever the order of their ids or their kinds).
#[tokio::test]
async fn events_of_one_batch_apply_in_the_order_they_were_consumed() {
    let mut app = spawn_app().await;
    let users = app.open_accounts(2).await;
    let (alice, bob) = (users[0], users[1]);
    let older = app
        .create(&json!({"amount": 10, "fromUserId": alice, "toUserId": bob}))
        .await;
    let deposit = app.create(&json!({"amount": 10, "toUserId": alice})).await;
    let newer = app
        .create(&json!({"amount": 10, "fromUserId": alice, "toUserId": bob}))
        .await;
    let consumed = [newer, deposit, older];
    let mut records = Vec::new();
    for id in consumed {
        records.push(app.record_of(app.created_event(id).await).await);
    }
    // The service stops; the three records wait on the topic and come back as one batch.
    app.shut_down();
    app.server.take().unwrap().await.unwrap().unwrap();
    for record in &records {
        app.publish(record).await;
    }
    let instance = app.spawn_instance(&app.group_id).await;

    let status = |id| {
        let (pool, id) = (app.pool.clone(), id);
        async move {
            sqlx::query_scalar::<_, String>("select status from transactions where id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
        }
    };
    wait_for("the three to settle", EVENT_TIMEOUT, || async {
        let s = status(older).await?;
        Ok((s != "PENDING").then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(status(newer).await.unwrap(), "FAILED");
    assert_eq!(status(deposit).await.unwrap(), "COMPLETED");
    assert_eq!(status(older).await.unwrap(), "COMPLETED");
    let balances: Vec<Decimal> = sqlx::query_scalar(
        "select balance from accounts where user_id = any($1) order by user_id = $2",
    )
    .bind([alice, bob])
    .bind(bob)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(balances, [Decimal::ZERO, Decimal::new(1000, 2)]);
    // The settlement events went to the outbox in the same order.
    let order: Vec<String> = sqlx::query_scalar(
        "select aggregate_id from outbox where event_type in ('TransactionCompleted', 'TransactionFailed') \
         order by id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(order, consumed.map(|id| id.to_string()));
    instance.stop().await;
}

/// A backlog is applied in batches, not one record per database transaction.
#[tokio::test]
async fn a_backlog_is_applied_in_batches() {
    let mut app = spawn_app().await;
    app.shut_down();
    app.server.take().unwrap().await.unwrap().unwrap();
    let users: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
    futures::future::join_all(users.iter().map(|u| app.announce_user(*u))).await;
    let instance = app.spawn_instance(&app.group_id).await;
    wait_for("the 200 accounts", EVENT_TIMEOUT, || async {
        let open: i64 = sqlx::query_scalar("select count(*) from accounts where user_id = any($1)")
            .bind(&users)
            .fetch_one(&app.pool)
            .await?;
        Ok((open == 200).then_some(()))
    })
    .await
    .unwrap();
    let records = metric_at(&app.client, &instance.address, "consumer_batch_events_sum").await;
    let batches = metric_at(
        &app.client,
        &instance.address,
        "consumer_batch_events_count",
    )
    .await;
    assert_eq!(records, 200.0);
    assert!(batches < 20.0, "200 records took {batches} batches");
    instance.stop().await;
}

/// relay-cdc can publish a commit a moment before this service's snapshots see it (the
/// WAL is flushed before the committing session leaves the proc array): settlement must
/// wait for the row instead of calling the transaction unknown and dropping the event.
#[tokio::test]
async fn a_transaction_not_yet_visible_when_its_event_arrives_is_settled_once_it_is() {
    let app = spawn_app().await;
    let user = app.open_accounts(1).await[0];
    let id = Uuid::now_v7();
    let mut writer = app.pool.begin().await.unwrap();
    sqlx::query("insert into transactions (id, amount, to_user_id) values ($1, 12.50, $2)")
        .bind(id)
        .bind(user)
        .execute(&mut *writer)
        .await
        .unwrap();
    app.announce_deposit(id, user, "12.50").await;
    // The consumer has looked for the row and not found it: it waits in its transaction.
    wait_for(
        "the consumer to look for the row",
        EVENT_TIMEOUT,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where datname = current_database() \
             and application_name = 'transaction-service-consumer' and state = 'idle in transaction' \
             and query like 'select id from transactions where id = any%'",
            )
            .fetch_one(&app.pool)
            .await?;
            Ok((waiting > 0).then_some(()))
        },
    )
    .await
    .unwrap();
    writer.commit().await.unwrap();
    assert_eq!(app.settled(id).await["status"], "COMPLETED");
    assert_eq!(app.balance(user).await.as_deref(), Some("12.50"));
}

/// A `TransactionCreated` for a transaction this database never had is recorded and
/// counted once the visibility grace is over; the records behind it are applied.
#[tokio::test]
async fn an_event_for_an_unknown_transaction_is_counted_and_passed() {
    let app = spawn_app().await;
    let user = app.open_accounts(1).await[0];
    app.announce_deposit(Uuid::now_v7(), user, "1.00").await;
    let deposit = app.create(&json!({"amount": 2, "toUserId": user})).await;
    assert_eq!(app.relay_and_settle(deposit).await["status"], "COMPLETED");
    assert_eq!(
        app.metric(r#"consumer_events_failed_total{reason="unknown_transaction"}"#)
            .await,
        1.0
    );
    assert_eq!(app.balance(user).await.as_deref(), Some("2.00"));
}
