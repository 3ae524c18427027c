//! Exactly-once mode against the real PostgreSQL and Kafka: a `read_committed` consumer
//! sees every outbox row once, in commit order, across kill -9 (at random moments under
//! load, after the Kafka commit and before confirmation, in the middle of a large
//! transaction) and a zombie relay that wakes up after a standby took over. Each test
//! owns its database, slot, topics, checkpoint topic and transactional id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use testkit::{read_until_ids, read_until_quiet, Record, RelayProcess};

use crate::helpers::{insert_txn, RelaySetup, Source, READY};
use crate::{assert_commit_order, lsn};

const WAIT: Duration = Duration::from_secs(60);

/// Exactly-once settings with a checkpoint topic and transactional id of this test's own.
pub(crate) fn exactly_once(prefix: &str) -> RelaySetup {
    let (mut cfg, _) = RelaySetup::new(prefix);
    let t = cfg
        .topic_template
        .trim_end_matches(".{aggregate_type}")
        .to_string();
    cfg.extra.extend([
        ("RELAY_KAFKA__DELIVERY".into(), "exactly-once".into()),
        (
            "RELAY_KAFKA__CHECKPOINT_TOPIC".into(),
            format!("{t}.checkpoints"),
        ),
        (
            "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX".into(),
            format!("{t}-"),
        ),
    ]);
    cfg
}

pub(crate) fn topic(cfg: &RelaySetup, aggregate_type: &str) -> String {
    cfg.topic_template
        .replace("{aggregate_type}", aggregate_type)
}

fn checkpoint_topic(cfg: &RelaySetup) -> String {
    cfg.extra
        .iter()
        .find(|(k, _)| k == "RELAY_KAFKA__CHECKPOINT_TOPIC")
        .map(|(_, v)| v.clone())
        .unwrap()
}

/// A consumer that also sees records of open and aborted transactions.
fn uncommitted(brokers: &str, topics: &[&str]) -> StreamConsumer {
    let c: StreamConsumer = testkit::kafka_config(brokers)
        .set(
            "group.id",
            format!("eos-uncommitted-{}", uuid::Uuid::new_v4()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();
    c.subscribe(topics).unwrap();
    c
}

/// Everything a `read_committed` consumer gets: every expected id, then 3 s of quiet.
pub(crate) async fn read_committed(brokers: &str, topic: &str, expected: &[String]) -> Vec<Record> {
    let consumer = testkit::consumer(brokers, &[topic]).unwrap();
    let mut records = read_until_ids(&consumer, expected, WAIT).await.unwrap();
    records.extend(
        read_until_quiet(&consumer, Duration::from_secs(3))
            .await
            .unwrap(),
    );
    records
}

/// Every expected id exactly once, nothing else, each partition in commit order.
pub(crate) fn assert_exactly_once(records: &[Record], expected: &[String]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in records {
        *seen.entry(r.header("event_id").unwrap()).or_default() += 1;
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "{} events seen more than once by read_committed, e.g. {:?}",
        dupes.len(),
        dupes.iter().take(3).collect::<Vec<_>>()
    );
    let missing = expected
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .count();
    assert_eq!(missing, 0, "events lost");
    assert_eq!(seen.len(), expected.len(), "only written events arrive");
    assert_commit_order(records);
}

/// The last committed checkpoint of `source` (its end LSN as a number).
async fn last_checkpoint(brokers: &str, topic: &str, source: &str) -> u64 {
    let consumer = testkit::consumer(brokers, &[topic]).unwrap();
    let records = read_until_quiet(&consumer, Duration::from_secs(3))
        .await
        .unwrap();
    let last = records
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(source))
        .expect("a checkpoint for the source");
    let v: serde_json::Value = serde_json::from_slice(last.payload.as_deref().unwrap()).unwrap();
    let s = v["end_lsn"].as_str().unwrap();
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

pub(crate) async fn metric(relay: &RelayProcess, key: &str) -> f64 {
    relay.metrics().await.unwrap().get(key).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_under_load_delivers_every_event_exactly_once() {
    let src = Source::new("eos_kill").await;
    let cfg = exactly_once("eos-kill");
    let brokers = cfg.brokers.clone();
    let topic = topic(&cfg, "evt");
    // The slot exists before the load starts: reconciliation keeps no insert order
    // within a transaction (see relay-cdc/README), and this test checks it.
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
                let ids = insert_txn(&mut c, "evt", &format!("k{}", i % 5), 10, "load").await;
                written.lock().unwrap().extend(ids);
                i += 1;
            }
        })
    };
    // Kill after a pseudo-random share of each round's progress, three times.
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
    testkit::wait_for("all rows PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    // The checkpoint topic holds the position after the last event.
    let newest = records.iter().map(lsn).max().unwrap();
    let checkpoint = last_checkpoint(&brokers, &checkpoint_topic(&cfg), &src.name).await;
    assert!(
        checkpoint > newest,
        "checkpoint {checkpoint:x} ≤ newest commit {newest:x}"
    );
    let committed = format!(
        "relay_kafka_transactions_total{{outcome=\"committed\",source=\"{}\"}}",
        src.name
    );
    assert!(metric(&relay, &committed).await > 0.0, "{committed}");
    eprintln!(
        "{} events, {} transactions of 10",
        expected.len(),
        expected.len() / 10
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_the_kafka_commit_and_before_confirmation_publishes_nothing_twice() {
    let src = Source::new("eos_commit").await;
    let mut cfg = exactly_once("eos-commit");
    let topic = topic(&cfg, "evt");
    // Marking (and so confirmation) waits a minute: Kafka commits, the slot stays behind.
    cfg.extra.extend([
        ("RELAY_PIPELINE__MARK_INTERVAL_MS".into(), "60000".into()),
        ("RELAY_PIPELINE__MARK_BATCH_SIZE".into(), "1000000".into()),
    ]);
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let ready = relay.probe("/readyz").await.unwrap();
    assert_eq!(ready.body["delivery"], "exactly-once", "{:?}", ready.body);
    let mut c = src.conn().await;
    let mut expected = Vec::new();
    for i in 0..20 {
        expected.extend(insert_txn(&mut c, "evt", &format!("k{}", i % 3), 25, "before").await);
    }
    let consumer = testkit::consumer(&cfg.brokers, &[&topic]).unwrap();
    let committed = read_until_ids(&consumer, &expected, WAIT).await.unwrap();
    let oldest = committed.iter().map(lsn).min().unwrap();
    assert!(
        src.confirmed_lsn().await <= oldest,
        "nothing of it confirmed yet"
    );
    assert_eq!(src.count("PENDING").await, 500, "nothing marked yet");
    relay.kill();

    cfg.extra.truncate(cfg.extra.len() - 2);
    let relay = cfg.start(&[&src]);
    let after = insert_txn(&mut c, "evt", "k0", 25, "after").await;
    testkit::wait_for("all rows PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    let all = [expected.clone(), after].concat();
    let records = read_committed(&cfg.brokers, &topic, &all).await;
    assert_exactly_once(&records, &all);
    assert_eq!(
        metric(&relay, &src.series("relay_checkpoint_skipped_events_total")).await,
        500.0,
        "what Kafka had committed was marked and confirmed, not sent again"
    );
    // `status` shows the mode and where the checkpoint is.
    let env = [src.env(), cfg.extra.clone()].concat();
    let out = crate::relay_cli(&["status"], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("delivery: exactly-once")
            && text.contains("eos_commit")
            && text.contains("committed through"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20000_row_transaction_is_one_kafka_transaction_and_an_aborted_one_is_never_visible() {
    let src = Source::new("eos_big").await;
    let mut cfg = exactly_once("eos-big");
    let topic = topic(&cfg, "evt");
    // The first relay holds its Kafka transaction open for 15 s: killed within them, it
    // leaves all 20,000 records in Kafka, uncommitted.
    let mut holding = RelaySetup {
        brokers: cfg.brokers.clone(),
        topic_template: cfg.topic_template.clone(),
        extra: cfg.extra.clone(),
    };
    holding.extra.extend([
        ("RELAY_KAFKA__TRANSACTION_MAX_MS".into(), "15000".into()),
        (
            "RELAY_KAFKA__TRANSACTION_MAX_RECORDS".into(),
            "1000000".into(),
        ),
    ]);
    let mut relay = holding.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    let expected = insert_txn(&mut c, "evt", "k", 20_000, "big").await;
    let peek = uncommitted(&cfg.brokers, &[&topic]);
    read_until_ids(&peek, &expected, WAIT).await.unwrap();
    relay.kill();
    // Smaller than the transaction: a PostgreSQL transaction is never split anyway.
    cfg.extra
        .push(("RELAY_KAFKA__TRANSACTION_MAX_RECORDS".into(), "1000".into()));
    let relay = cfg.start(&[&src]);
    let records = read_committed(&cfg.brokers, &topic, &expected).await;
    assert_exactly_once(&records, &expected);
    // read_uncommitted saw the aborted copy, then the committed one.
    let again = read_until_ids(&peek, &expected, WAIT).await.unwrap();
    assert!(again.len() >= 20_000, "{}", again.len());

    // One committed Kafka transaction holds all 20,000 records (+ its checkpoint): the
    // histogram's only transaction above 16,384 records.
    let m = relay.metrics().await.unwrap();
    let count = m
        .get(&format!(
            "relay_kafka_transaction_records_count{{source=\"{}\"}}",
            src.name
        ))
        .unwrap();
    assert_eq!(
        count
            - m.bucket(
                "relay_kafka_transaction_records",
                &[("source", &src.name)],
                16384.0
            )
            .unwrap(),
        1.0,
        "exactly one transaction above 16,384 records"
    );
    let sum = m
        .get(&format!(
            "relay_kafka_transaction_records_sum{{source=\"{}\"}}",
            src.name
        ))
        .unwrap();
    assert!(sum >= 20_001.0, "{sum}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zombie_relay_that_wakes_after_the_standby_took_over_is_fenced() {
    let src = Source::new("eos_zombie").await;
    let mut cfg = exactly_once("eos-zombie");
    let topic = topic(&cfg, "evt");
    // The zombie keeps its Kafka transaction open long enough to be caught with it.
    let mut zombie_cfg = RelaySetup {
        brokers: cfg.brokers.clone(),
        topic_template: cfg.topic_template.clone(),
        extra: cfg.extra.clone(),
    };
    zombie_cfg.extra.extend([
        ("RELAY_KAFKA__TRANSACTION_MAX_MS".into(), "15000".into()),
        (
            "RELAY_KAFKA__TRANSACTION_MAX_RECORDS".into(),
            "1000000".into(),
        ),
    ]);
    let mut zombie = zombie_cfg.start(&[&src]);
    zombie.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    let first = insert_txn(&mut c, "evt", "k", 50, "first").await;
    let inserted = std::time::Instant::now();
    let peek = uncommitted(&cfg.brokers, &[&topic]);
    read_until_ids(&peek, &first, WAIT).await.unwrap();

    // Frozen with its transaction open; its walsender is ended as wal_sender_timeout would.
    let pid = zombie.pid();
    testkit::proc::signal(pid, "STOP").unwrap();
    // Behind the relay's back: as the admin (on the secured stack the tables' owner may
    // not end another role's session).
    let mut admin = src.db.connect_admin().await.unwrap();
    sqlx::query(
        "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1",
    )
    .bind(&src.slot)
    .execute(&mut admin)
    .await
    .unwrap();
    testkit::wait_for("the slot released", WAIT, || async {
        Ok(src.slots().await.iter().all(|s| !s.2).then_some(()))
    })
    .await
    .unwrap();
    cfg.extra
        .push(("RELAY_KAFKA__TRANSACTION_MAX_MS".into(), "100".into()));
    let mut standby = cfg.start(&[&src]);
    standby.wait_ready(READY).await.unwrap();
    let second = insert_txn(&mut c, "evt", "k", 50, "second").await;
    let expected = [first, second].concat();
    let records = read_committed(&cfg.brokers, &topic, &expected).await;

    // Awake again once its commit is due (it cannot be observed while it is stopped, so
    // this waits out the 15 s bound): the commit is refused, and nothing of it shows.
    tokio::time::sleep(Duration::from_secs(16).saturating_sub(inserted.elapsed())).await;
    testkit::proc::signal(pid, "CONT").unwrap();
    let fenced = src.series("relay_producer_fenced_total");
    testkit::wait_for("the zombie fenced", WAIT, || async {
        Ok((metric(&zombie, &fenced).await >= 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- zombie log ---\n{}", zombie.log_tail(40)));
    let more = read_until_quiet(
        &testkit::consumer(&cfg.brokers, &[&topic]).unwrap(),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(more.len(), records.len(), "the zombie made nothing visible");
    assert_exactly_once(&more, &expected);
    assert!(zombie.log_tail(200).contains("fenced"));
    drop(standby);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_reads_its_checkpoint_promptly_while_another_source_keeps_committing() {
    let (quiet, busy) = (
        Source::new("eos_quiet").await,
        Source::new("eos_busy").await,
    );
    let cfg = exactly_once("eos-shared");
    let topic = topic(&cfg, "evt");
    let mut busy_relay = cfg.start(&[&busy]);
    busy_relay.wait_ready(READY).await.unwrap();
    let mut quiet_relay = cfg.start(&[&quiet]);
    quiet_relay.wait_ready(READY).await.unwrap();
    let mut c = quiet.conn().await;
    let first = insert_txn(&mut c, "evt", "q", 10, "first").await;
    let consumer = testkit::consumer(&cfg.brokers, &[&topic]).unwrap();
    read_until_ids(&consumer, &first, WAIT).await.unwrap();
    quiet_relay.kill();

    // The other source keeps a Kafka transaction open nearly all the time on the
    // shared checkpoint topic while the quiet one restarts and reads its checkpoint.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut b = busy.conn().await;
    let writer = tokio::spawn(async move {
        while !*stop_rx.borrow_and_update() {
            insert_txn(&mut b, "evt", "b", 5, "load").await;
        }
    });
    let published = busy.series("relay_events_published_total");
    let before = metric(&busy_relay, &published).await;
    testkit::wait_for("the busy source publishing", WAIT, || async {
        Ok((metric(&busy_relay, &published).await > before + 100.0).then_some(()))
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut quiet_relay = cfg.start(&[&quiet]);
    quiet_relay.wait_ready(READY).await.unwrap();
    let took = started.elapsed();
    stop_tx.send(true).unwrap();
    writer.await.unwrap();
    assert!(
        took < Duration::from_secs(10),
        "ready after {took:?}\n{}",
        quiet_relay.log_tail(20)
    );
    assert!(quiet_relay
        .log_tail(50)
        .contains("resuming after the kafka checkpoint"));
}
