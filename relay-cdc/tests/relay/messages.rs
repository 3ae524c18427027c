//! `capture = "messages"`: events as transactional logical decoding messages (libs/outbox's
//! envelope, `pg_logical_emit_message(true, 'outbox', ...)` in the writer's transaction),
//! no table. Commit order, a rollback never seen, kill -9 at-least-once and exactly-once,
//! and a lost slot that halts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use testkit::{read_until_quiet, Record};

use crate::exactly_once::{assert_exactly_once, exactly_once, metric, read_committed, topic};
use crate::helpers::{lose_the_slot_and_expect_a_halt, RelaySetup, Source, READY, STOP};
use crate::{assert_lossless_after_kill, relay_cli};

const WAIT: Duration = Duration::from_secs(90);

/// The relay's settings for a source in message capture.
fn message_capture(src: &Source) -> Vec<(String, String)> {
    let mut env = src.env();
    env.push((
        format!("RELAY_SOURCES__{}__CAPTURE", src.name.to_ascii_uppercase()),
        "messages".into(),
    ));
    env
}

/// Emits `n` events in one transaction, as libs/outbox's message mode writes them (one
/// statement, in order); returns their ids.
async fn emit_txn(c: &mut PgConnection, key: &str, n: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut envelopes = Vec::with_capacity(n);
    for seq in 1..=n {
        let id = uuid::Uuid::now_v7();
        let event = outbox::NewEvent::new(
            "evt",
            key,
            "TestEvent",
            &serde_json::json!({"tag": tag, "seq": seq, "note": "ünïcödé ✓"}),
        )
        .unwrap();
        envelopes.push(outbox::message::encode(id, &event).unwrap());
        ids.push(id.to_string());
    }
    let mut tx = c.begin().await.unwrap();
    sqlx::query(
        "select pg_logical_emit_message(true, 'outbox', m) \
         from unnest($1::bytea[]) with ordinality as e (m, n) order by n",
    )
    .bind(&envelopes)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_arrive_in_commit_order_never_from_a_rollback_and_through_a_kill_9() {
    let src = Source::new("msgs").await;
    let (mut cfg, prefix) = RelaySetup::new("msgs");
    cfg.extra = message_capture(&src);
    let topic = format!("{prefix}.evt");
    let mut c = src.conn().await;
    let mut expected = Vec::new();

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    for i in 0..20 {
        expected.extend(emit_txn(&mut c, &format!("k{}", i % 3), 20, "phase1").await);
    }
    // A rolled-back transaction's message, and one written outside any transaction:
    // neither is an event.
    let mut tx = c.begin().await.unwrap();
    let rolled_back = uuid::Uuid::now_v7();
    let event = outbox::NewEvent::new("evt", "k0", "TestEvent", &serde_json::json!({})).unwrap();
    sqlx::query("select pg_logical_emit_message(true, 'outbox', $1)")
        .bind(outbox::message::encode(rolled_back, &event).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let loose = uuid::Uuid::now_v7();
    sqlx::query("select pg_logical_emit_message(false, 'outbox', $1)")
        .bind(outbox::message::encode(loose, &event).unwrap())
        .execute(&mut c)
        .await
        .unwrap();
    let confirmed_before_kill = src.confirmed_lsn().await;
    relay.kill();
    for i in 0..20 {
        expected.extend(emit_txn(&mut c, &format!("k{}", i % 3), 20, "phase2").await);
    }
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    for i in 0..10 {
        expected.extend(emit_txn(&mut c, &format!("k{}", i % 3), 20, "phase3").await);
    }

    let consumer = testkit::consumer(&src.db.stack().kafka_brokers, &[&topic]).unwrap();
    let records = testkit::read_until_ids(&consumer, &expected, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}; the relay's log ends:\n{}", relay.log_tail(40)));
    let records: Vec<Record> = [
        records,
        read_until_quiet(&consumer, Duration::from_secs(3))
            .await
            .unwrap(),
    ]
    .concat();
    let seen = assert_lossless_after_kill(&records, &expected, confirmed_before_kill);
    for never in [rolled_back, loose] {
        assert!(!seen.contains(&never.to_string()));
    }
    // The same record a row gives: key, the relay's headers, the payload as written.
    let r = &records[0];
    assert_eq!(r.header("event_type"), Some("TestEvent"));
    assert_eq!(r.header("aggregate_type"), Some("evt"));
    assert!(
        r.key.as_deref().is_some_and(|k| k.starts_with('k')),
        "{r:?}"
    );
    assert_eq!(r.payload_json()["note"], "ünïcödé ✓");
    // No table was involved; the loose message was counted, not published.
    assert_eq!(src.count("PENDING").await + src.count("PROCESSED").await, 0);
    let m = relay.metrics().await.unwrap();
    let loose_counted =
        m.get("relay_messages_ignored_total{reason=\"non_transactional\",source=\"msgs\"}");
    // Counted by the relay that read it: the killed one, or this one if it was unconfirmed.
    assert!(
        loose_counted.is_none() || loose_counted >= Some(1.0),
        "{loose_counted:?}"
    );
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));

    let out = relay_cli(&["check"], &message_capture(&src));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("capture = \"messages\"") && text.contains("PostgreSQL 14+"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_under_kill_9_at_random_moments_arrive_exactly_once() {
    let src = Source::new("msg_eos").await;
    let mut cfg = exactly_once("msg-eos");
    cfg.extra.extend(message_capture(&src));
    let brokers = cfg.brokers.clone();
    let topic = topic(&cfg, "evt");
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let written = Arc::new(Mutex::new(Vec::<String>::new()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let written = written.clone();
        let mut c = src.conn().await;
        tokio::spawn(async move {
            let mut i = 0;
            while !*stop_rx.borrow_and_update() {
                let ids = emit_txn(&mut c, &format!("k{}", i % 5), 10, "load").await;
                written.lock().unwrap().extend(ids);
                i += 1;
            }
        })
    };
    let seed = uuid::Uuid::new_v4().as_u128();
    let published = src.series("relay_events_published_total");
    for round in 0..3u32 {
        let at = 200.0 + ((seed >> (round * 8)) % 1500) as f64;
        testkit::wait_for("progress before the kill", WAIT, || async {
            Ok((metric(&relay, &published).await >= at).then_some(()))
        })
        .await
        .unwrap();
        relay.kill();
        relay = cfg.start(&[&src]);
        relay.wait_ready(READY).await.unwrap();
    }
    stop_tx.send(true).unwrap();
    writer.await.unwrap();
    let expected = written.lock().unwrap().clone();
    let records = read_committed(&brokers, &topic, &expected).await;
    assert_exactly_once(&records, &expected);
    eprintln!("{} events in message capture, exactly once", expected.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_slot_halts_message_capture_instead_of_starting_at_the_current_position() {
    let src = Source::new("msglost").await;
    let (mut cfg, _prefix) = RelaySetup::new("msglost");
    cfg.extra = message_capture(&src);
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    emit_txn(&mut c, "k", 5, "before").await;
    let end = src.current_lsn().await;
    let reason = lose_the_slot_and_expect_a_halt(&mut relay, &src, end, WAIT).await;
    assert!(
        reason.contains("capture = \"messages\""),
        "the halt says why the slot is not recreated: {reason:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_is_not_an_envelope_is_dead_lettered_and_the_events_after_it_flow() {
    let src = Source::new("msgpoison").await;
    let (mut cfg, prefix) = RelaySetup::new("msgpoison");
    let brokers = src.db.stack().kafka_brokers.clone();
    let topic = format!("{prefix}.evt");
    let dlq = format!("{prefix}.dead-letter");
    cfg.extra = message_capture(&src);
    cfg.extra.extend([
        ("RELAY_KAFKA__POISON".into(), "dead-letter".into()),
        ("RELAY_KAFKA__DEAD_LETTER_TOPIC".into(), dlq.clone()),
    ]);
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    let before = emit_txn(&mut c, "k", 2, "before").await;
    // A writer that is not libs/outbox, with the prefix but no envelope.
    let mut tx = c.begin().await.unwrap();
    sqlx::query("select pg_logical_emit_message(true, 'outbox', 'not an envelope')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let after = emit_txn(&mut c, "k", 2, "after").await;

    let dead_consumer = testkit::consumer(&brokers, &[&dlq]).unwrap();
    let dead = testkit::read_records(&dead_consumer, 1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}; the relay's log ends:\n{}", relay.log_tail(40)));
    let error = dead[0].header("error").unwrap_or_default();
    assert!(error.contains("not an outbox envelope"), "{error:?}");
    // Refused by the relay's own rules before sending: dead-lettered without a payload,
    // as such rows are (the error header says why).
    assert_eq!(dead[0].payload, None);
    let consumer = testkit::consumer(&brokers, &[&topic]).unwrap();
    let expected = [before, after].concat();
    let records = testkit::read_until_ids(&consumer, &expected, WAIT)
        .await
        .unwrap();
    let got: Vec<&str> = records
        .iter()
        .map(|r| r.header("event_id").unwrap())
        .collect();
    assert_eq!(got, expected, "the events around it, in order");
    let m = relay.metrics().await.unwrap();
    assert_eq!(m.get(&src.series("relay_dead_lettered_total")), Some(1.0));
}
