//! The audit against the real PostgreSQL and Kafka: rows the slot skipped (a slot moved
//! while the relay was stopped, a publication that lost the outbox table for a while)
//! are found and published, with their own ids, and marked PROCESSED.

use std::collections::HashSet;
use std::time::Duration;

use super::helpers::{insert_txn, RelaySetup, Source, READY, STOP};
use super::WAIT;

/// A relay over the test's topics whose audit runs every second with a short grace.
fn audited(prefix: &str) -> (RelaySetup, String) {
    let (mut cfg, prefix) = RelaySetup::new(prefix);
    cfg.extra = vec![
        ("RELAY_PIPELINE__AUDIT_INTERVAL_MS".into(), "1000".into()),
        ("RELAY_PIPELINE__AUDIT_GRACE_MS".into(), "200".into()),
    ];
    (cfg, prefix)
}

async fn all_processed(src: &Source) {
    testkit::wait_for("all rows PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_advanced_past_committed_rows_while_the_relay_was_stopped_loses_nothing() {
    let src = Source::new("moved").await;
    let (cfg, prefix) = audited("moved");
    let topic = format!("{prefix}.evt");
    let mut c = src.conn().await;
    let consumer = testkit::consumer(&src.db.stack().kafka_brokers, &[&topic]).unwrap();

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let streamed = insert_txn(&mut c, "evt", "k", 5, "streamed").await;
    testkit::read_until_ids(&consumer, &streamed, WAIT)
        .await
        .unwrap();
    all_processed(&src).await;
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));

    // While the relay is stopped, 1,000 rows commit and the slot is moved past them.
    let mut skipped = Vec::new();
    for i in 0..10 {
        skipped.extend(insert_txn(&mut c, "evt", &format!("k{i}"), 100, "skipped").await);
    }
    let before = src.confirmed_lsn().await;
    let mut admin = src.db.connect_admin().await.unwrap();
    sqlx::query("select pg_replication_slot_advance($1, pg_current_wal_lsn())")
        .bind(&src.slot)
        .execute(&mut admin)
        .await
        .unwrap();
    assert!(src.confirmed_lsn().await > before, "the slot moved");

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let after = insert_txn(&mut c, "evt", "k", 3, "after").await;
    let expected = [skipped.clone(), after].concat();
    if let Err(e) = testkit::read_until_ids(&consumer, &expected, WAIT).await {
        panic!(
            "{e:#}\nPENDING {}\n--- relay log ---\n{}",
            src.count("PENDING").await,
            relay.log_tail(80)
        );
    }
    all_processed(&src).await;
    testkit::wait_for("the orphans counted", WAIT, || async {
        let m = relay.metrics().await?;
        Ok((m.get(&src.series("relay_orphans_total")) == Some(1000.0)).then_some(()))
    })
    .await
    .unwrap();
    // A later round finds nothing left: /healthz shows it, and the source is healthy.
    testkit::wait_for("a clean audit round on /healthz", WAIT, || async {
        let h = relay.probe("/healthz").await;
        let clean = h.as_ref().is_some_and(|h| {
            h.status == 200
                && h.source(&src.name)["audit"]["orphans"] == 0
                && h.source(&src.name)["audit"]["at"].is_string()
        });
        Ok(clean.then_some(()))
    })
    .await
    .unwrap();
    // Counted once each: published by one session, not found again by later rounds.
    let m = relay.metrics().await.unwrap();
    assert_eq!(m.get(&src.series("relay_orphans_total")), Some(1000.0));
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_committed_while_the_publication_lost_the_outbox_table_are_published() {
    let src = Source::new("unpub").await;
    let (cfg, prefix) = audited("unpub");
    let topic = format!("{prefix}.evt");
    let mut c = src.conn().await;
    let mut admin = src.db.connect_admin().await.unwrap();
    let consumer = testkit::consumer(&src.db.stack().kafka_brokers, &[&topic]).unwrap();

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let before = insert_txn(&mut c, "evt", "k", 5, "before").await;
    testkit::read_until_ids(&consumer, &before, WAIT)
        .await
        .unwrap();

    // The table leaves the publication: its inserts no longer reach the slot's reader,
    // while heartbeats move the slot past them.
    sqlx::query("alter publication outbox_pub drop table outbox")
        .execute(&mut admin)
        .await
        .unwrap();
    let mut lost = Vec::new();
    for i in 0..10 {
        lost.extend(insert_txn(&mut c, "evt", &format!("k{i}"), 20, "unpublished").await);
    }
    // A round of the audit finds them while the table is out of the publication (the
    // session that then starts finds the publication without the table and retries, so
    // no further round runs until it is back: a round that ran while the writes were
    // still going found only some; the rest are found once sessions start again).
    let name = src.name.clone();
    relay
        .wait_health("the audit finding unpublished rows", WAIT, |h| {
            h.source(&name)["audit"]["orphans"].as_u64() > Some(0)
        })
        .await
        .unwrap();
    sqlx::query("alter publication outbox_pub add table outbox")
        .execute(&mut admin)
        .await
        .unwrap();
    let after = insert_txn(&mut c, "evt", "k", 5, "after").await;

    let expected = [lost.clone(), after].concat();
    let records = match testkit::read_until_ids(&consumer, &expected, WAIT).await {
        Ok(r) => r,
        Err(e) => panic!(
            "{e:#}\nPENDING {}\n--- relay log ---\n{}",
            src.count("PENDING").await,
            relay.log_tail(80)
        ),
    };
    let got: HashSet<&str> = records
        .iter()
        .map(|r| r.header("event_id").unwrap())
        .collect();
    assert!(lost.iter().all(|id| got.contains(id.as_str())));
    all_processed(&src).await;
    let orphans = relay
        .metrics()
        .await
        .unwrap()
        .get(&src.series("relay_orphans_total"))
        .unwrap_or(0.0);
    assert!(
        orphans >= lost.len() as f64,
        "the unpublished rows were published by the audit: {orphans}"
    );
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn under_exactly_once_the_rows_a_moved_slot_skipped_arrive_once_and_a_restart_resends_nothing(
) {
    let src = Source::new("moved_eos").await;
    let (mut cfg, prefix) = audited("moved_eos");
    cfg.extra.extend([
        ("RELAY_KAFKA__DELIVERY".into(), "exactly-once".into()),
        (
            "RELAY_KAFKA__CHECKPOINT_TOPIC".into(),
            format!("{prefix}.checkpoints"),
        ),
        (
            "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX".into(),
            format!("{prefix}-"),
        ),
    ]);
    let topic = format!("{prefix}.evt");
    let mut c = src.conn().await;
    // librdkafka's default isolation level: read_committed.
    let consumer = testkit::consumer(&src.db.stack().kafka_brokers, &[&topic]).unwrap();

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut expected = insert_txn(&mut c, "evt", "k", 5, "streamed").await;
    all_processed(&src).await;
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));

    let mut skipped = Vec::new();
    for i in 0..3 {
        skipped.extend(insert_txn(&mut c, "evt", &format!("k{i}"), 100, "skipped").await);
    }
    let mut admin = src.db.connect_admin().await.unwrap();
    sqlx::query("select pg_replication_slot_advance($1, pg_current_wal_lsn())")
        .bind(&src.slot)
        .execute(&mut admin)
        .await
        .unwrap();
    expected.extend(skipped.iter().cloned());

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    expected.extend(insert_txn(&mut c, "evt", "k", 3, "after").await);
    all_processed(&src).await;
    testkit::wait_for("the orphans counted", WAIT, || async {
        let m = relay.metrics().await?;
        Ok((m.get(&src.series("relay_orphans_total")) == Some(300.0)).then_some(()))
    })
    .await
    .unwrap();
    // A restart reads the checkpoint the orphans' transactions left: nothing is resent.
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    expected.extend(insert_txn(&mut c, "evt", "k", 2, "last").await);

    let mut records = match testkit::read_until_ids(&consumer, &expected, WAIT).await {
        Ok(r) => r,
        Err(e) => panic!(
            "{e:#}\nPENDING {}\n--- relay log ---\n{}",
            src.count("PENDING").await,
            relay.log_tail(80)
        ),
    };
    records.extend(
        testkit::read_until_quiet(&consumer, Duration::from_secs(3))
            .await
            .unwrap(),
    );
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for r in &records {
        *seen.entry(r.header("event_id").unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(seen.len(), expected.len());
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

/// A slot moved while this relay's session was away (a failover tool advancing it, a
/// promoted standby's copy ahead): the next session finds it ahead of what the process
/// confirmed, says so by name, and its first audit round publishes what was skipped
/// at once. The periodic rounds are ten minutes apart here, so only that first round
/// can deliver the rows within the wait.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_moved_during_a_reconnect_is_named_and_its_rows_published_at_once() {
    let src = Source::new("ahead").await;
    let (mut cfg, prefix) = RelaySetup::new("ahead");
    cfg.extra = vec![
        ("RELAY_PIPELINE__AUDIT_INTERVAL_MS".into(), "600000".into()),
        // No heartbeats: what the relay confirmed stays what the server holds.
        (
            "RELAY_PIPELINE__HEARTBEAT_INTERVAL_MS".into(),
            "3600000".into(),
        ),
    ];
    let topic = format!("{prefix}.evt");
    let mut c = src.conn().await;
    let mut admin = src.db.connect_admin().await.unwrap();
    let consumer = testkit::consumer(&src.db.stack().kafka_brokers, &[&topic]).unwrap();

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let streamed = insert_txn(&mut c, "evt", "k", 5, "streamed").await;
    testkit::read_until_ids(&consumer, &streamed, WAIT)
        .await
        .unwrap();
    all_processed(&src).await;
    testkit::wait_for("the relay's confirmation on the server", WAIT, || async {
        let m = relay.metrics().await?;
        let sent = m.get(&src.series("relay_confirmed_lsn")).unwrap_or(-1.0);
        Ok((sent > 0.0 && src.confirmed_lsn().await as f64 == sent).then_some(()))
    })
    .await
    .unwrap();

    // The relay is kept out of its database (its reconnects fail) while rows commit and
    // the slot is moved past them. The test's own two connections there stay.
    let own = backend_pid(&mut c).await;
    let admin_pid = backend_pid(&mut admin).await;
    // A database cannot close itself: from the server's maintenance database.
    let mut outside =
        <sqlx::PgConnection as sqlx::Connection>::connect(&src.db.stack().database_url("postgres"))
            .await
            .unwrap();
    let allow = |yes: bool| format!("alter database \"{}\" allow_connections {yes}", src.db.name);
    sqlx::query(&allow(false))
        .execute(&mut outside)
        .await
        .unwrap();
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = $1 and pid <> all($2)",
    )
    .bind(&src.db.name)
    .bind(vec![own, admin_pid])
    .execute(&mut outside)
    .await
    .unwrap();
    // (Source's helpers would open connections to the closed database.)
    let released = tokio::time::Instant::now() + WAIT;
    while slot_at(&mut outside, &src.slot).await.0 {
        assert!(
            tokio::time::Instant::now() < released,
            "the slot was not released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut skipped = Vec::new();
    for i in 0..3 {
        skipped.extend(insert_txn(&mut c, "evt", &format!("k{i}"), 100, "skipped").await);
    }
    let before = slot_at(&mut outside, &src.slot).await.1;
    sqlx::query("select pg_replication_slot_advance($1, pg_current_wal_lsn())")
        .bind(&src.slot)
        .execute(&mut admin)
        .await
        .unwrap();
    let moved_to = slot_at(&mut outside, &src.slot).await.1;
    assert!(moved_to > before, "the slot moved");
    sqlx::query(&allow(true))
        .execute(&mut outside)
        .await
        .unwrap();

    if let Err(e) = testkit::read_until_ids(&consumer, &skipped, WAIT).await {
        panic!(
            "{e:#}\nPENDING {}\n--- relay log ---\n{}",
            src.count("PENDING").await,
            relay.log_tail(80)
        );
    }
    all_processed(&src).await;
    let m = relay.metrics().await.unwrap();
    assert_eq!(m.get(&src.series("relay_slot_ahead_total")), Some(1.0));
    assert_eq!(m.get(&src.series("relay_orphans_total")), Some(300.0));
    // The ERROR names both positions: the slot's, and what the relay had confirmed
    // (its log is JSON when not on a terminal).
    let log = relay.log_tail(400);
    let field = |name: &str, lsn: u64| format!("\"{name}\":\"{}\"", pg_lsn(lsn));
    let named = log.lines().any(|l| {
        l.contains("\"level\":\"ERROR\"")
            && l.contains("the slot is ahead of what this relay confirmed")
            && l.contains(&field("slot_confirmed", moved_to))
            && l.contains(&field("confirmed_before", before))
    });
    assert!(named, "no ERROR naming both positions in:\n{log}");
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));
}

/// Whether the slot is active, and its confirmed position.
async fn slot_at(conn: &mut sqlx::PgConnection, slot: &str) -> (bool, u64) {
    let (active, lsn): (bool, i64) = sqlx::query_as(
        "select active, (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint \
         from pg_replication_slots where slot_name = $1",
    )
    .bind(slot)
    .fetch_one(conn)
    .await
    .unwrap();
    (active, lsn as u64)
}

async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// An LSN as PostgreSQL and the relay print it.
fn pg_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}
