//! relay-cdc against the real PostgreSQL and the real Kafka broker.

mod audit;
mod bulk;
mod exactly_once;
mod failover;
mod faults;
mod formats;
mod helpers;
mod mapped;
mod messages;
mod secured;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use helpers::{insert_txn, RelaySetup, Source, READY, STOP};
use testkit::{read_records, read_until_quiet, Record};

const WAIT: Duration = Duration::from_secs(60);

fn lsn(r: &Record) -> u64 {
    let s = r.header("commit_lsn").expect("commit_lsn header");
    let (hi, lo) = s.split_once('/').expect("X/Y");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn seq(r: &Record) -> i64 {
    r.payload_json()["seq"].as_i64().unwrap()
}

/// Within each partition, records must follow commit order, then insert order.
fn assert_commit_order(records: &[Record]) {
    let mut by_partition: HashMap<(String, i32), Vec<&Record>> = HashMap::new();
    for r in records {
        by_partition
            .entry((r.topic.clone(), r.partition))
            .or_default()
            .push(r);
    }
    for recs in by_partition.values() {
        for w in recs.windows(2) {
            assert!(
                (lsn(w[0]), seq(w[0])) < (lsn(w[1]), seq(w[1])),
                "out of order at offsets {} and {}",
                w[0].offset,
                w[1].offset
            );
        }
    }
}

/// What a kill -9 may leave, and no more: every `expected` event arrived and nothing
/// else did; a duplicate only at or after `resent_from` (the position the slot had
/// confirmed before the kill); each partition in commit order once de-duplicated.
/// Returns the event ids seen.
fn assert_lossless_after_kill(
    records: &[Record],
    expected: &[String],
    resent_from: u64,
) -> HashSet<String> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in records {
        *seen.entry(r.header("event_id").unwrap()).or_default() += 1;
    }
    let missing = expected
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .count();
    assert_eq!(missing, 0, "{missing} events lost");
    assert_eq!(
        seen.len(),
        expected.len(),
        "only events that were written arrive"
    );
    let mut dupes = 0;
    for r in records {
        if seen[r.header("event_id").unwrap()] > 1 {
            dupes += 1;
            assert!(
                lsn(r) >= resent_from,
                "event {} at {} was confirmed, yet sent twice",
                r.header("event_id").unwrap(),
                r.header("commit_lsn").unwrap()
            );
        }
    }
    eprintln!("duplicate deliveries: {dupes}");
    let mut first = HashSet::new();
    let unique: Vec<Record> = records
        .iter()
        .filter(|r| first.insert(r.header("event_id").unwrap().to_string()))
        .cloned()
        .collect();
    assert_commit_order(&unique);
    first
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_events_in_100_transactions_arrive_complete_in_commit_order() {
    let src = Source::new("orders").await;
    let (cfg, prefix) = RelaySetup::new("bulk");
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();

    let mut conn = src.conn().await;
    let mut expected = Vec::new();
    for t in 0..100 {
        expected.extend(
            insert_txn(
                &mut conn,
                "order",
                &format!("agg-{}", t % 7),
                100,
                &format!("t{t}"),
            )
            .await,
        );
    }
    let topic = format!("{prefix}.order");
    let consumer = testkit::consumer(&src.db.stack().kafka_brokers, &[&topic]).unwrap();
    let records = read_records(&consumer, expected.len(), WAIT).await.unwrap();

    let got: HashSet<&str> = records
        .iter()
        .map(|r| r.header("event_id").unwrap())
        .collect();
    assert_eq!(got.len(), expected.len(), "no duplicates on a clean run");
    assert!(
        expected.iter().all(|id| got.contains(id.as_str())),
        "every event arrived"
    );
    assert_commit_order(&records);
    let r = &records[0];
    assert_eq!(r.topic, topic);
    assert!(r.key.as_deref().unwrap().starts_with("agg-"));
    assert_eq!(r.header("event_type"), Some("TestEvent"));
    assert_eq!(r.header("aggregate_type"), Some("order"));
    assert_eq!(r.header("aggregate_id"), r.key.as_deref());
    assert_eq!(r.header("source"), Some("orders"));
    assert!(r.header("commit_time").unwrap().ends_with('Z'));
    assert!(r.payload_json()["tag"].as_str().unwrap().starts_with('t'));

    // Rows turn PROCESSED, and the slot confirms past the last commit.
    let end = src.current_lsn().await;
    testkit::wait_for("all rows PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    testkit::wait_for("slot confirmed past the last commit", WAIT, || async {
        Ok((src.confirmed_lsn().await >= end).then_some(()))
    })
    .await
    .unwrap();
    let m = relay.metrics().await.unwrap();
    assert_eq!(
        m.get("relay_events_published_total{source=\"orders\"}"),
        Some(10_000.0)
    );
    assert!(m
        .get("relay_replication_lag_bytes{source=\"orders\"}")
        .is_some());
    assert!(m
        .get("relay_replication_lag_seconds{source=\"orders\"}")
        .is_some());
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn interleaved_transactions_are_published_in_commit_order() {
    let src = Source::new("ledger").await;
    let (cfg, prefix) = RelaySetup::new("interleave");
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();

    let mut c1 = src.conn().await;
    let mut c2 = src.conn().await;
    sqlx::query("begin").execute(&mut c1).await.unwrap();
    let t1 = insert_txn(&mut c1, "acct", "same-key", 1, "T1").await;
    sqlx::query("begin").execute(&mut c2).await.unwrap();
    let t2 = insert_txn(&mut c2, "acct", "same-key", 1, "T2").await;
    sqlx::query("commit").execute(&mut c2).await.unwrap();
    sqlx::query("commit").execute(&mut c1).await.unwrap();

    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.acct")]).unwrap();
    let records = read_records(&consumer, 2, WAIT).await.unwrap();
    let order: Vec<&str> = records
        .iter()
        .map(|r| r.header("event_id").unwrap())
        .collect();
    assert_eq!(
        order,
        vec![t2[0].as_str(), t1[0].as_str()],
        "T2 committed first, so it is published first"
    );
    assert!(lsn(&records[0]) < lsn(&records[1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_transaction_produces_nothing() {
    let src = Source::new("users").await;
    let (cfg, prefix) = RelaySetup::new("rollback");
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();

    let mut c = src.conn().await;
    sqlx::query("begin").execute(&mut c).await.unwrap();
    let rolled_back = insert_txn(&mut c, "user", "u1", 5, "rolled-back").await;
    sqlx::query("rollback").execute(&mut c).await.unwrap();
    let committed = insert_txn(&mut c, "user", "u1", 1, "committed").await;

    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.user")]).unwrap();
    let first = read_records(&consumer, 1, WAIT).await.unwrap();
    let rest = read_until_quiet(&consumer, Duration::from_secs(2))
        .await
        .unwrap();
    let ids: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|r| r.header("event_id").unwrap())
        .collect();
    assert_eq!(ids, vec![committed[0].as_str()]);
    assert!(rolled_back.iter().all(|id| !ids.contains(&id.as_str())));
}

/// Inserts one outbox row with a trace context and headers of its own; returns its id.
async fn insert_traced(c: &mut sqlx::PgConnection, traceparent: &str, tag: &str) -> String {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload, \
         traceparent, tracestate, headers) \
         values ($1, 'user', 'u1', 'Traced', $2, $3, 'vendor=x', $4)",
    )
    .bind(id)
    .bind(serde_json::json!({ "tag": tag }))
    .bind(traceparent)
    .bind(serde_json::json!({ "x-tenant": "acme", "x-tag": tag }))
    .execute(c)
    .await
    .unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rows_trace_context_and_own_headers_reach_its_record_streamed_or_reconciled() {
    const TP1: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TP2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let src = Source::new("traced").await;
    let mut c = src.conn().await;
    // Written before the relay ever ran: published by reconciliation.
    let early = insert_traced(&mut c, TP1, "reconciled").await;
    let (cfg, prefix) = RelaySetup::new("traced");
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let late = insert_traced(&mut c, TP2, "streamed").await;
    // A row without them carries none.
    let plain = insert_txn(&mut c, "user", "u1", 1, "plain").await;

    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.user")]).unwrap();
    let records = read_records(&consumer, 3, WAIT).await.unwrap();
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r.header("event_id") == Some(id))
            .unwrap_or_else(|| panic!("no record for {id}"))
    };
    for (id, tp, tag) in [(&early, TP1, "reconciled"), (&late, TP2, "streamed")] {
        let r = by_id(id);
        assert_eq!(r.header("traceparent"), Some(tp), "{tag}");
        assert_eq!(r.header("tracestate"), Some("vendor=x"), "{tag}");
        assert_eq!(r.header("x-tenant"), Some("acme"), "{tag}");
        assert_eq!(r.header("x-tag"), Some(tag), "{tag}");
        assert_eq!(r.header("event_type"), Some("Traced"));
    }
    let p = by_id(&plain[0]);
    assert_eq!(
        (p.header("traceparent"), p.header("x-tenant")),
        (None, None)
    );
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_written_before_the_relay_ever_ran_are_published_on_first_start() {
    let src = Source::new("late").await;
    let mut c = src.conn().await;
    let mut before = Vec::new();
    for i in 0..5 {
        before.extend(insert_txn(&mut c, "user", &format!("u{i}"), 20, "before").await);
    }
    let (cfg, prefix) = RelaySetup::new("late");
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let after = insert_txn(&mut c, "user", "u0", 3, "after").await;

    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.user")]).unwrap();
    let records = read_records(&consumer, before.len() + after.len(), WAIT)
        .await
        .unwrap();
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.header("event_id").unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "reconciliation and streaming do not overlap"
    );
    assert!(before
        .iter()
        .chain(&after)
        .all(|id| unique.contains(id.as_str())));
    // On the shared key u0, the reconciled rows come before the streamed ones.
    let u0: Vec<&str> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some("u0"))
        .map(|r| r.payload_json()["tag"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .iter()
        .map(|s| if s == "before" { "before" } else { "after" })
        .collect();
    assert_eq!(u0.iter().position(|t| *t == "after"), Some(20));
    testkit::wait_for("all rows PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    // Reconciled rows are not counted in flight: the gauges settle at zero, not below.
    testkit::wait_for("in-flight and backlog gauges at zero", WAIT, || async {
        let m = relay.metrics().await.unwrap();
        let at_zero = |k: &str| m.get(&format!("{k}{{source=\"late\"}}")) == Some(0.0);
        Ok(
            (at_zero("relay_records_in_flight") && at_zero("relay_processed_mark_backlog"))
                .then_some(()),
        )
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_sources_in_one_process_with_a_schema_change_mid_stream() {
    let a = Source::new("alpha").await;
    let b = Source::new("beta").await;
    let (cfg, prefix) = RelaySetup::new("two");
    let mut relay = cfg.start(&[&a, &b]);
    relay.wait_ready(READY).await.unwrap();

    let mut ca = a.conn().await;
    let mut cb = b.conn().await;
    let mut ids = insert_txn(&mut ca, "thing", "k", 2, "a-before").await;
    ids.extend(insert_txn(&mut cb, "thing", "k", 2, "b").await);
    sqlx::query("alter table outbox add column trace_id text default 'trace'")
        .execute(&mut ca)
        .await
        .unwrap();
    ids.extend(insert_txn(&mut ca, "thing", "k", 2, "a-after").await);

    let consumer =
        testkit::consumer(&a.db.stack().kafka_brokers, &[&format!("{prefix}.thing")]).unwrap();
    let records = read_records(&consumer, 6, WAIT).await.unwrap();
    let got: HashSet<&str> = records
        .iter()
        .map(|r| r.header("event_id").unwrap())
        .collect();
    assert!(ids.iter().all(|id| got.contains(id.as_str())));
    let sources: HashSet<&str> = records
        .iter()
        .map(|r| r.header("source").unwrap())
        .collect();
    assert_eq!(sources, HashSet::from(["alpha", "beta"]));
    for s in [&a, &b] {
        testkit::wait_for("rows PROCESSED", WAIT, || async {
            Ok((s.count("PENDING").await == 0).then_some(()))
        })
        .await
        .unwrap();
    }
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_graceful_and_kill_9_lose_nothing_and_resend_only_unconfirmed_events() {
    let src = Source::new("restart").await;
    let (cfg, prefix) = RelaySetup::new("restart");
    let topic = format!("{prefix}.evt");
    let mut expected = Vec::new();
    let mut c = src.conn().await;

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    for i in 0..20 {
        expected.extend(insert_txn(&mut c, "evt", &format!("k{}", i % 3), 50, "phase1").await);
    }
    // Graceful stop while events are in flight: exit 0, final position confirmed.
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
    let confirmed_after_term = src.confirmed_lsn().await;

    for i in 0..20 {
        expected.extend(insert_txn(&mut c, "evt", &format!("k{}", i % 3), 50, "phase2").await);
    }
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    for i in 0..20 {
        expected.extend(insert_txn(&mut c, "evt", &format!("k{}", i % 3), 50, "phase3").await);
    }
    let confirmed_before_kill = src.confirmed_lsn().await;
    relay.kill();
    for i in 0..20 {
        expected.extend(insert_txn(&mut c, "evt", &format!("k{}", i % 3), 50, "phase4").await);
    }
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();

    let consumer = testkit::consumer(&src.db.stack().kafka_brokers, &[&topic]).unwrap();
    let records = testkit::read_until_ids(&consumer, &expected, WAIT)
        .await
        .unwrap();
    let records = [
        records,
        read_until_quiet(&consumer, Duration::from_secs(3))
            .await
            .unwrap(),
    ]
    .concat();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *seen.entry(r.header("event_id").unwrap()).or_default() += 1;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    assert!(missing.is_empty(), "{} events lost", missing.len());
    assert_eq!(
        seen.len(),
        expected.len(),
        "only events that were written arrive"
    );
    // A duplicate may only be an event the slot had not confirmed when its relay stopped.
    assert!(confirmed_after_term > 0);
    let mut dupes = 0;
    for r in &records {
        if seen[r.header("event_id").unwrap()] > 1 {
            dupes += 1;
            let floor = if r.payload_json()["tag"] == "phase1" {
                confirmed_after_term
            } else {
                confirmed_before_kill
            };
            assert!(
                lsn(r) >= floor,
                "event {} at {} was confirmed, yet sent twice",
                r.header("event_id").unwrap(),
                r.header("commit_lsn").unwrap()
            );
        }
    }
    eprintln!("duplicate deliveries: {dupes}");
    // Deduplicated by event id, each partition still follows commit order.
    let mut first = HashSet::new();
    let unique: Vec<Record> = records
        .into_iter()
        .filter(|r| first.insert(r.header("event_id").unwrap().to_string()))
        .collect();
    assert_commit_order(&unique);
    testkit::wait_for("all rows PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    drop(relay);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_broker_down_nothing_is_confirmed_or_lost_and_publishing_resumes() {
    let kafka = testkit::PrivateKafka::start().await.unwrap();
    let src = Source::new("outage").await;
    let (mut cfg, prefix) = RelaySetup::new("outage");
    cfg.brokers = kafka.brokers.clone();
    // No heartbeats: with nothing in flight they would (rightly) advance the slot, and
    // this test wants every movement of the slot to come from a transaction.
    cfg.extra = vec![(
        "RELAY_PIPELINE__HEARTBEAT_INTERVAL_MS".into(),
        "3600000".into(),
    )];
    let topic = format!("{prefix}.evt");
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;

    let mut expected = insert_txn(&mut c, "evt", "k", 10, "before").await;
    let consumer = testkit::consumer(&kafka.brokers, &[&topic]).unwrap();
    read_records(&consumer, expected.len(), WAIT).await.unwrap();
    testkit::wait_for("first batch PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();

    // The server holds the relay's last confirmation for the first batch.
    testkit::wait_for("the first batch confirmed to the server", WAIT, || async {
        let m = relay.metrics().await.unwrap();
        let sent = m
            .get("relay_confirmed_lsn{source=\"outage\"}")
            .unwrap_or(-1.0);
        Ok((sent > 0.0 && src.confirmed_lsn().await as f64 == sent).then_some(()))
    })
    .await
    .unwrap();

    kafka.stop().await.unwrap();
    let confirmed = src.confirmed_lsn().await;
    for i in 0..50 {
        expected.extend(insert_txn(&mut c, "evt", &format!("k{}", i % 5), 10, "during").await);
    }
    // The relay has read them and holds them in flight...
    testkit::wait_for("records in flight", WAIT, || async {
        let m = relay.metrics().await?;
        Ok((m.sum("relay_records_in_flight", &[]) > Some(0.0)).then_some(()))
    })
    .await
    .unwrap();
    // ...and over several heartbeat and status intervals confirms none of them.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            src.confirmed_lsn().await,
            confirmed,
            "slot moved while Kafka was down"
        );
    }
    assert_eq!(src.count("PENDING").await, 500);
    // The producer's view of the cluster says why: its broker is down and requests fail.
    testkit::wait_for("the broker reported down", WAIT, || async {
        let m = relay.metrics().await.unwrap();
        let down = m.get("relay_kafka_brokers{source=\"outage\",state=\"down\"}");
        let errors = m.get("relay_kafka_transient_errors_total{kind=\"broker\",source=\"outage\"}");
        Ok((down >= Some(1.0) && errors > Some(0.0)).then_some(()))
    })
    .await
    .unwrap();

    kafka.resume().await.unwrap();
    // The consumer may re-read from the start after the broker restart: wait for ids, not counts.
    testkit::read_until_ids(&consumer, &expected[10..], WAIT)
        .await
        .unwrap();
    // Rows are marked and the slot moved past where it stood during the outage.
    testkit::wait_for("slot confirmed past the outage", WAIT, || async {
        let moved = src.confirmed_lsn().await > confirmed;
        Ok((moved && src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    testkit::wait_for("the broker reported up again", WAIT, || async {
        let m = relay.metrics().await.unwrap();
        let state = |s: &str| {
            m.get(&format!(
                "relay_kafka_brokers{{source=\"outage\",state=\"{s}\"}}"
            ))
        };
        Ok((state("down") == Some(0.0) && state("up") >= Some(1.0)).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        relay
            .metrics()
            .await
            .unwrap()
            .get("relay_kafka_fatal_errors_total{source=\"outage\"}"),
        Some(0.0),
        "an outage is not a fatal producer error"
    );
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

fn relay_cli(args: &[&str], env: &[(String, String)]) -> std::process::Output {
    RelaySetup::cli(env).output(args).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_on_a_ready_source_and_names_what_is_missing_otherwise() {
    let ready = Source::new("ready").await;
    let out = relay_cli(&["check"], &ready.env());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("wal_level = logical") && text.contains("metadata: 1 broker"),
        "{text}"
    );

    let bare = testkit::TestDb::create_empty("relay").await.unwrap();
    let mut env = ready.env();
    for (k, v) in env.iter_mut() {
        if k.ends_with("__DATABASE") {
            *v = bare.name.clone();
        }
    }
    let out = relay_cli(&["check"], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("[FAIL]") && text.contains("does not exist"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_exits_non_zero_naming_the_key() {
    let src = Source::new("cfg").await;
    let mut env = src.env();
    env.push(("RELAY_PIPELINE__MARK_BATCH_SIZE".into(), "0".into()));
    let out = relay_cli(&["run"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pipeline.mark_batch_size"));

    let out = relay_cli(&["run", "--config", "/nonexistent/relay.toml"], &src.env());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/relay.toml"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_slot_its_confirmed_lsn_and_lag() {
    let src = Source::new("stat").await;
    let out = relay_cli(&["status"], &src.env());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("(no slot)"), "{text}");

    let (cfg, _) = RelaySetup::new("status");
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let out = relay_cli(&["status"], &src.env());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("stat "))
        .expect("a line for the source");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], src.slot);
    assert_eq!(cols[2], "yes", "{text}");
    assert!(cols[3].contains('/'), "{text}");
    assert!(cols[4].parse::<i64>().is_ok(), "{text}");
}

async fn insert_big(conn: &mut sqlx::PgConnection, bytes: usize) -> String {
    let (id,): (uuid::Uuid,) = sqlx::query_as(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         values (gen_random_uuid(), 'evt', 'k', 'Big', jsonb_build_object('blob', repeat('x', $1))) returning id",
    )
    .bind(bytes as i32)
    .fetch_one(conn)
    .await
    .unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_goes_to_the_dead_letter_topic_and_the_stream_goes_on() {
    let src = Source::new("dlq").await;
    let (mut cfg, prefix) = RelaySetup::new("dlq");
    let dlq = format!("{prefix}.dead-letter");
    cfg.extra = vec![
        ("RELAY_KAFKA__MAX_RECORD_BYTES".into(), "2000".into()),
        ("RELAY_KAFKA__POISON".into(), "dead-letter".into()),
        ("RELAY_KAFKA__DEAD_LETTER_TOPIC".into(), dlq.clone()),
    ];
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    let big = insert_big(&mut c, 5000).await;
    let after = insert_txn(&mut c, "evt", "k", 1, "after").await;

    let brokers = src.db.stack().kafka_brokers.clone();
    let dead = read_records(&testkit::consumer(&brokers, &[&dlq]).unwrap(), 1, WAIT)
        .await
        .unwrap();
    assert_eq!(dead[0].header("event_id"), Some(big.as_str()));
    assert!(dead[0].header("error").unwrap().contains("exceeds"));
    let main = read_records(
        &testkit::consumer(&brokers, &[&format!("{prefix}.evt")]).unwrap(),
        1,
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(main[0].header("event_id"), Some(after[0].as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_a_poison_record_stops_its_source_and_nothing_after_it_is_published() {
    let src = Source::new("poison").await;
    let (mut cfg, prefix) = RelaySetup::new("poison");
    cfg.extra = vec![("RELAY_KAFKA__MAX_RECORD_BYTES".into(), "2000".into())];
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    let before = insert_txn(&mut c, "evt", "k", 1, "before").await;
    insert_big(&mut c, 5000).await;
    insert_txn(&mut c, "evt", "k", 1, "after").await;

    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.evt")]).unwrap();
    let first = read_records(&consumer, 1, WAIT).await.unwrap();
    assert_eq!(first[0].header("event_id"), Some(before[0].as_str()));
    testkit::wait_for("the poison failure counted", WAIT, || async {
        let m = relay.metrics().await?;
        let key = "relay_publish_failures_total{kind=\"poison\",source=\"poison\"}";
        Ok(m.get(key).is_some().then_some(()))
    })
    .await
    .unwrap();
    // The source halts: what came before the poison is confirmed and marked, nothing after it passes.
    let rest = read_until_quiet(&consumer, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(rest.is_empty(), "{} records after the poison", rest.len());
    assert_eq!(src.count("PROCESSED").await, 1);
    assert_eq!(
        src.count("PENDING").await,
        2,
        "the poison row and the one after it wait"
    );
    let ready = relay.probe("/readyz").await.unwrap();
    assert_eq!(ready.status, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_relay_takes_over_when_the_active_one_dies() {
    let src = Source::new("ha").await;
    let (cfg, prefix) = RelaySetup::new("ha");
    let mut active = cfg.start(&[&src]);
    active.wait_ready(READY).await.unwrap();
    let standby = cfg.start(&[&src]);
    let mut c = src.conn().await;
    insert_txn(&mut c, "evt", "k", 5, "one").await;
    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.evt")]).unwrap();
    let first = read_records(&consumer, 5, WAIT).await.unwrap();
    let ready = reqwest::get(format!("{}/readyz", standby.admin())).await;
    assert!(
        ready.map(|r| r.status() == 503).unwrap_or(true),
        "the standby does not stream while the slot is held"
    );
    // Let the active relay mark and confirm the first batch: what it confirmed is never
    // resent, what it had not would be, so the kill must not land in between.
    let first_commit = first.iter().map(lsn).max().unwrap();
    testkit::wait_for("the first batch PROCESSED and confirmed", WAIT, || async {
        let done = src.count("PENDING").await == 0 && src.confirmed_lsn().await > first_commit;
        Ok(done.then_some(()))
    })
    .await
    .unwrap();

    active.kill();
    let expected = insert_txn(&mut c, "evt", "k", 5, "two").await;
    let mut standby = standby;
    standby.wait_ready(READY).await.unwrap();
    // The standby publishes the second batch (a resent first batch is allowed, not required).
    if let Err(error) = testkit::read_until_ids(&consumer, &expected, WAIT).await {
        // Say where the events stopped: published or not, marked or not, the standby's log.
        let published = standby
            .metrics()
            .await
            .unwrap()
            .series("relay_events_published_total");
        panic!(
            "{error:#}\nstandby metrics: {published:?}\nPENDING {} PROCESSED {}\n--- standby log ---\n{}",
            src.count("PENDING").await,
            src.count("PROCESSED").await,
            std::fs::read_to_string(standby.log()).unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_processed_rows_older_than_configured() {
    let src = Source::new("keep").await;
    let (mut cfg, _) = RelaySetup::new("keep");
    cfg.extra = vec![("RELAY_PIPELINE__RETENTION_SECONDS".into(), "1".into())];
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    insert_txn(&mut c, "evt", "k", 30, "old").await;
    testkit::wait_for("processed rows deleted and counted", WAIT, || async {
        let left = src.count("PROCESSED").await + src.count("PENDING").await;
        let deleted = relay
            .metrics()
            .await
            .unwrap()
            .get("relay_retention_deleted_total{source=\"keep\"}");
        Ok((left == 0 && deleted == Some(30.0)).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_larger_than_the_in_flight_bound_still_flows() {
    let src = Source::new("big").await;
    let (mut cfg, prefix) = RelaySetup::new("big");
    cfg.extra = vec![("RELAY_PIPELINE__MAX_IN_FLIGHT_RECORDS".into(), "50".into())];
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    let mut ids = insert_txn(&mut c, "evt", "k", 500, "huge").await;
    ids.extend(insert_txn(&mut c, "evt", "k", 10, "next").await);
    let consumer =
        testkit::consumer(&src.db.stack().kafka_brokers, &[&format!("{prefix}.evt")]).unwrap();
    testkit::read_until_ids(&consumer, &ids, WAIT)
        .await
        .unwrap();
}
