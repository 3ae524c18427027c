//! A consumer that stays out of its group while the broker is up gets a new Kafka
//! client, and nothing announced meanwhile is lost.
//!
//! The stall is made with the real broker: a second member joins the service's group
//! and then never polls again, so it cannot answer the next rebalance; a third member
//! starts that rebalance. The coordinator then waits for the silent member (up to its
//! session timeout), and the service's consumer sits in `wait-join` with the broker up,
//! as the drill once saw it sit after a broker restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use testkit::wait_for;
use uuid::Uuid;

use crate::helpers::{logs, spawn_app_with, TestApp, EVENT_TIMEOUT};

/// The service's stall timeout in this test (the smallest the configuration accepts).
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the silent member's session lasts: far beyond the test's waits, so only
/// its close ends the stall.
const SILENT_SESSION_MS: &str = "120000";

/// Notes when the member got its (possibly empty) assignment.
#[derive(Default)]
struct Assigned(AtomicBool);

impl ClientContext for Assigned {}

impl ConsumerContext for Assigned {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Assign(_)) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// A member of the service's group on its topics.
fn member(app: &TestApp, name: &str) -> BaseConsumer<Assigned> {
    let consumer: BaseConsumer<Assigned> = testkit::kafka_config(&app.brokers)
        .set("group.id", &app.group_id)
        .set("client.id", name)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", SILENT_SESSION_MS)
        .set("max.poll.interval.ms", "300000")
        .create_with_context(Assigned::default())
        .expect("a member");
    consumer
        .subscribe(&[&app.user_topic, &app.transaction_topic])
        .expect("subscribed");
    consumer
}

/// Drops a member on a blocking thread: rdkafka's drop polls until the member has
/// left the group.
async fn leave(member: BaseConsumer<Assigned>) {
    tokio::task::spawn_blocking(move || drop(member))
        .await
        .expect("the member leaves");
}

/// Waits until the service's gauge says its consumer is in its group.
async fn group_joined(app: &TestApp, what: &str) {
    wait_for(what, EVENT_TIMEOUT, || async {
        Ok((app.metric(JOINED).await == 1.0).then_some(()))
    })
    .await
    .unwrap();
}

const JOINED: &str = "consumer_group_joined";

#[tokio::test]
async fn a_consumer_out_of_its_group_while_the_broker_is_up_gets_a_new_client_and_loses_nothing() {
    let app = spawn_app_with(|s| s.kafka.stall_timeout = STALL_TIMEOUT).await;
    app.open_accounts(1).await;
    group_joined(&app, "the consumer to report its group joined").await;
    assert_eq!(app.metric("consumer_rebuilds_total").await, 0.0);

    // The silent member: polled until it has joined, then never again.
    let silent = Arc::new(member(&app, "silent"));
    let polled = silent.clone();
    tokio::task::spawn_blocking(move || {
        while !polled.context().0.load(Ordering::SeqCst) {
            polled.poll(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    let silent = Arc::into_inner(silent).expect("the only handle");
    // The member that starts the rebalance the silent one cannot answer.
    let trigger = member(&app, "trigger");

    wait_for(
        "the stalled client to be replaced",
        EVENT_TIMEOUT * 2,
        || async { Ok((app.metric("consumer_rebuilds_total").await >= 1.0).then_some(())) },
    )
    .await
    .unwrap();
    assert_eq!(app.metric(JOINED).await, 0.0, "the gauge shows the stall");
    // An account announced during the stall: no member holds a partition until the
    // silent one is gone.
    let user = Uuid::now_v7();
    app.announce_user(user).await;
    let line = logs()
        .lines()
        .into_iter()
        .find(|l| {
            l["level"] == "WARN"
                && l["group"] == app.group_id.as_str()
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("stayed out of its group"))
        })
        .expect("a warning names the group");
    assert!(line["out_of_group_s"].as_u64().unwrap() >= STALL_TIMEOUT.as_secs());
    assert_eq!(line["join_state"], "wait-join", "{line}");

    assert_eq!(
        app.balance(user).await,
        None,
        "nothing is applied during the stall"
    );

    // The stall ends: the new client joins and applies what was announced meanwhile.
    leave(silent).await;
    leave(trigger).await;
    wait_for(
        "the account announced during the stall",
        EVENT_TIMEOUT,
        || async { Ok(app.balance(user).await) },
    )
    .await
    .map(|balance| assert_eq!(balance, "0.00"))
    .unwrap();
    group_joined(&app, "the gauge to show the group joined again").await;
}
