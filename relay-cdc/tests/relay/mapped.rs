//! A table of another shape than the relay's: Debezium's documented outbox table
//! (`aggregatetype`, `aggregateid`, `type`, a `text` payload, no status column), its rows
//! deleted in the writer's own transaction, streamed through `[sources.columns]` with
//! `marking = "none"`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use testkit::{read_until_quiet, Record};

use crate::helpers::{RelaySetup, Source, READY, STOP};
use crate::{assert_commit_order, lsn, relay_cli};

const WAIT: Duration = Duration::from_secs(90);

/// A source whose database has Debezium's outbox table and an insert-only publication
/// on it (the relay's role owns neither, so it cannot create them itself).
async fn debezium_source(name: &str) -> (Source, Vec<(String, String)>) {
    let src = Source::new(name).await;
    let mut c = src.conn().await;
    sqlx::raw_sql(
        "create table outboxevent (id uuid primary key, aggregatetype varchar(255) not null, \
         aggregateid varchar(255) not null, type varchar(255) not null, payload text); \
         create publication dbz_pub for table outboxevent with (publish = 'insert')",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let upper = name.to_ascii_uppercase();
    let mut env = src.env();
    for (key, value) in [
        ("TABLE", "outboxevent"),
        ("PUBLICATION", "dbz_pub"),
        ("MARKING", "none"),
        ("COLUMNS__AGGREGATE_TYPE", "aggregatetype"),
        ("COLUMNS__AGGREGATE_ID", "aggregateid"),
        ("COLUMNS__EVENT_TYPE", "type"),
    ] {
        env.push((format!("RELAY_SOURCES__{upper}__{key}"), value.to_string()));
    }
    (src, env)
}

/// Writes `rows` events in one transaction the way Debezium's outbox pattern does:
/// insert, then delete in the same transaction (the WAL keeps the inserts). Returns
/// their ids in insert order.
async fn write_and_delete(c: &mut PgConnection, key: &str, rows: i32, tag: &str) -> Vec<String> {
    let mut tx = c.begin().await.unwrap();
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "insert into outboxevent (id, aggregatetype, aggregateid, type, payload) \
         select gen_random_uuid(), 'evt', $1, 'TestEvent', \
                json_build_object('tag', $2::text, 'seq', g, 'note', 'ünïcödé ✓')::text \
         from generate_series(1, $3) g order by g returning id",
    )
    .bind(key)
    .bind(tag)
    .bind(rows)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let ids: Vec<uuid::Uuid> = ids.into_iter().map(|(i,)| i).collect();
    sqlx::query("delete from outboxevent where id = any($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    ids.iter().map(uuid::Uuid::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debezium_shaped_table_without_status_streams_in_commit_order_through_a_kill_9() {
    let (src, env) = debezium_source("dbz").await;
    let (mut cfg, prefix) = RelaySetup::new("dbz");
    cfg.extra = env.clone();
    let topic = format!("{prefix}.evt");
    let mut c = src.conn().await;
    let mut expected = Vec::new();

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    for i in 0..20 {
        expected.extend(write_and_delete(&mut c, &format!("k{}", i % 3), 20, "phase1").await);
    }
    // A transaction that rolls back is never published.
    let mut tx = c.begin().await.unwrap();
    let rolled_back: (uuid::Uuid,) = sqlx::query_as(
        "insert into outboxevent (id, aggregatetype, aggregateid, type, payload) \
         values (gen_random_uuid(), 'evt', 'k0', 'TestEvent', '{\"tag\": \"rolled back\"}') returning id",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // Killed with its events in flight, more written while it is down.
    let confirmed_before_kill = src.confirmed_lsn().await;
    relay.kill();
    for i in 0..20 {
        expected.extend(write_and_delete(&mut c, &format!("k{}", i % 3), 20, "phase2").await);
    }
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    for i in 0..10 {
        expected.extend(write_and_delete(&mut c, &format!("k{}", i % 3), 20, "phase3").await);
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
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &records {
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
    assert!(!seen.contains_key(rolled_back.0.to_string().as_str()));
    // The mapped columns are the record: key, event type, the text payload as written.
    let r = &records[0];
    assert_eq!(r.header("event_type"), Some("TestEvent"));
    assert!(
        r.key.as_deref().is_some_and(|k| k.starts_with('k')),
        "{r:?}"
    );
    assert_eq!(r.payload_json()["note"], "ünïcödé ✓");
    // A duplicate may only be an event the slot had not confirmed before the kill.
    let mut dupes = 0;
    for r in &records {
        if seen[r.header("event_id").unwrap()] > 1 {
            dupes += 1;
            assert!(
                lsn(r) >= confirmed_before_kill,
                "event {} at {} was confirmed, yet sent twice",
                r.header("event_id").unwrap(),
                r.header("commit_lsn").unwrap()
            );
        }
    }
    eprintln!("duplicate deliveries: {dupes}");
    let mut first = HashSet::new();
    let unique: Vec<Record> = records
        .into_iter()
        .filter(|r| first.insert(r.header("event_id").unwrap().to_string()))
        .collect();
    assert_commit_order(&unique);

    // Nothing was written back: the table is as the writers left it (empty), and the
    // slot moved past every transaction.
    let (left,): (i64,) = sqlx::query_as("select count(*) from outboxevent")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let end = src.current_lsn().await;
    testkit::wait_for("the slot confirmed past the last write", WAIT, || async {
        Ok((src.confirmed_lsn().await >= end).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));

    // `check` says what the relay gives up without a status column.
    let out = relay_cli(&["check"], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("marking = \"none\"") && text.contains("no reconciliation"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_slot_halts_a_source_without_status_marking_instead_of_skipping_events() {
    let (src, env) = debezium_source("dbzlost").await;
    let (mut cfg, _prefix) = RelaySetup::new("dbzlost");
    cfg.extra = env;
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    write_and_delete(&mut c, "k", 5, "before").await;
    let end = src.current_lsn().await;
    testkit::wait_for("the relay confirmed a position", WAIT, || async {
        Ok((src.confirmed_lsn().await >= end).then_some(()))
    })
    .await
    .unwrap();

    // The slot is dropped under the relay (as a failover to a server without it would
    // lose it): end its walsender, then drop it before the relay reconnects.
    testkit::wait_for("the slot dropped", WAIT, || async {
        let mut admin = src.conn().await;
        sqlx::query(
            "select pg_terminate_backend(active_pid, 5000) from pg_replication_slots \
             where slot_name = $1 and active",
        )
        .bind(&src.slot)
        .execute(&mut admin)
        .await?;
        let dropped = sqlx::query("select pg_drop_replication_slot($1)")
            .bind(&src.slot)
            .execute(&mut admin)
            .await
            .is_ok();
        Ok(dropped.then_some(()))
    })
    .await
    .unwrap();

    let h = relay
        .wait_health("the source halted", WAIT, |h| {
            h.source("dbzlost")["state"] == "halted"
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; the relay's log ends:\n{}", relay.log_tail(40)));
    let reason = h.source("dbzlost")["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("is missing") && reason.contains("marking = \"none\""),
        "the halt names the lost slot and why it is not recreated: {reason:?}"
    );
    let m = relay.metrics().await.unwrap();
    assert_eq!(m.get(&src.series("relay_source_halted")), Some(1.0));
    assert!(
        !src.slots().await.iter().any(|(s, _, _)| *s == src.slot),
        "the relay did not recreate the slot at the current position"
    );
    assert!(
        relay.log_tail(200).contains("slot_lost"),
        "the halt is logged with its kind"
    );
}
