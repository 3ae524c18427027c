//! A table of another shape than the relay's: Debezium's documented outbox table
//! (`aggregatetype`, `aggregateid`, `type`, a `text` payload, no status column), its rows
//! deleted in the writer's own transaction, streamed through `[sources.columns]` with
//! `marking = "none"`.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use testkit::{read_until_quiet, Record};

use crate::helpers::{lose_the_slot_and_expect_a_halt, RelaySetup, Source, READY, STOP};
use crate::{assert_lossless_after_kill, relay_cli};

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
    let seen = assert_lossless_after_kill(&records, &expected, confirmed_before_kill);
    assert!(!seen.contains(&rolled_back.0.to_string()));
    // The mapped columns are the record: key, event type, the text payload as written.
    let r = &records[0];
    assert_eq!(r.header("event_type"), Some("TestEvent"));
    assert!(
        r.key.as_deref().is_some_and(|k| k.starts_with('k')),
        "{r:?}"
    );
    assert_eq!(r.payload_json()["note"], "ünïcödé ✓");

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
    let reason = lose_the_slot_and_expect_a_halt(&mut relay, &src, end, WAIT).await;
    assert!(
        reason.contains("marking = \"none\""),
        "the halt says why the slot is not recreated: {reason:?}"
    );
}
