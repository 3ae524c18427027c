//! Statements that write a whole backlog in one transaction, with the relay killed while
//! it streams them: one `INSERT … SELECT generate_series` of 100,000 rows and one `COPY`
//! of 50,000. Debezium lost events sharing one commit LSN after a restart in the middle
//! of such a transaction (debezium/debezium #7531, #4152, #3620): here a transaction is
//! confirmed only whole, so the restart sends it again from its start, with the same
//! event ids, and every event arrives, in order per key.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::Connection;

use super::helpers::{RelaySetup, Source, READY};

/// Events of both transactions; their keys cycle through this many aggregates.
const KEYS: i64 = 10;
const INSERTED: i64 = 100_000;
const COPIED: i64 = 50_000;
/// Room for a debug relay to stream 150,000 events twice and a consumer to read them.
const BULK_WAIT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread")]
async fn a_100k_insert_select_and_a_50k_copy_survive_a_kill_9_mid_stream_complete_and_in_key_order()
{
    let src = Source::new("bulk").await;
    let (cfg, prefix) = RelaySetup::new("bulk");
    let topic = format!("{prefix}.bulk");
    let mut c = src.conn().await;

    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();

    // One transaction each. The sequence number orders the events of one key.
    let mut tx = c.begin().await.unwrap();
    sqlx::query(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         select gen_random_uuid(), 'bulk', 'k' || (g % $1), 'Bulk', jsonb_build_object('seq', g) \
         from generate_series(1, $2) g order by g",
    )
    .bind(KEYS)
    .bind(INSERTED)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut copy = String::new();
    for g in INSERTED + 1..=INSERTED + COPIED {
        copy.push_str(&format!(
            "{}\tbulk\tk{}\tBulk\t{{\"seq\": {g}}}\n",
            uuid::Uuid::new_v4(),
            g % KEYS
        ));
    }
    let mut sink = c
        .copy_in_raw(
            "copy outbox (id, aggregate_type, aggregate_id, event_type, payload) from stdin",
        )
        .await
        .unwrap();
    sink.send(copy.as_bytes()).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), COPIED as u64);

    // kill -9 once the first records of the backlog are in Kafka: inside the first
    // transaction, which the relay confirms (and counts as published) only whole.
    let consumer = testkit::consumer(&src.db.stack().kafka_brokers, &[&topic]).unwrap();
    let before_kill = testkit::read_records(&consumer, 1_000, BULK_WAIT)
        .await
        .unwrap();
    let at_kill = relay
        .metrics()
        .await
        .unwrap()
        .sum("relay_events_published_total", &[])
        .unwrap_or(0.0) as i64;
    relay.kill();
    assert!(
        at_kill < INSERTED + COPIED,
        "the kill came after the whole backlog was confirmed ({at_kill})"
    );
    let mut relay = cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();

    // Every row once by id, and each key's events in sequence order at first sight.
    let expected: Vec<String> = sqlx::query_scalar("select id::text from outbox")
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert_eq!(expected.len() as i64, INSERTED + COPIED);
    let records = [
        before_kill,
        testkit::read_until_ids(&consumer, &expected, BULK_WAIT)
            .await
            .unwrap(),
    ]
    .concat();
    let mut seen = HashSet::new();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut duplicates = 0;
    for r in &records {
        if !seen.insert(r.header("event_id").unwrap().to_string()) {
            duplicates += 1;
            continue;
        }
        let key = r.key.clone().unwrap();
        let seq = r.payload_json()["seq"].as_i64().unwrap();
        let before = last_seq.insert(key.clone(), seq).unwrap_or(0);
        assert!(
            seq > before,
            "key {key}: event {seq} arrived after {before}"
        );
    }
    let expected: HashSet<String> = expected.into_iter().collect();
    assert_eq!(seen, expected, "exactly the committed rows arrive");
    eprintln!(
        "killed with {at_kill} events confirmed; {duplicates} duplicates resent after the restart"
    );
    testkit::wait_for("all rows PROCESSED", BULK_WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    drop(relay);
}
