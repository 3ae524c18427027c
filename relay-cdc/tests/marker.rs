//! The PROCESSED marker against the real PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::Lsn;
use relay_cdc::config::{PipelineSettings, SourceSettings};
use relay_cdc::marker::{MarkItem, Marker};
use relay_cdc::metrics::Metrics;
use tokio::sync::{mpsc, Notify};

fn source_for(db: &testkit::TestDb) -> SourceSettings {
    let stack = db.stack();
    toml::from_str(&format!(
        "name = \"marker\"\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword = \"{}\"\ndatabase = \"{}\"",
        stack.pg_host, stack.pg_port, stack.pg_user, stack.pg_password, db.name
    ))
    .unwrap()
}

async fn insert_rows(db: &testkit::TestDb, n: usize) -> Vec<uuid::Uuid> {
    let mut c = db.connect().await.unwrap();
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         select id, 'user', 'u1', 'UserCreated', '{}' from unnest($1::uuid[]) as id",
    )
    .bind(&ids)
    .execute(&mut c)
    .await
    .unwrap();
    ids
}

/// While items keep coming, the next batch gathers for a whole interval; the batches
/// taken before it must be marked and confirmed meanwhile, not when it closes.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_confirmed_within_its_interval_while_the_next_one_gathers() {
    let db = testkit::TestDb::create("marker", "users_db").await.unwrap();
    let ids = insert_rows(&db, 60).await;
    let pipeline = PipelineSettings {
        mark_interval_ms: 1000,
        ..PipelineSettings::default()
    };
    let (items_tx, items_rx) = mpsc::unbounded_channel();
    let (confirmed_tx, mut confirmed_rx) = mpsc::unbounded_channel();
    let marker = Marker {
        source: source_for(&db),
        pipeline,
        metrics: Metrics::new(),
        going_away: Arc::new(Notify::new()),
    };
    let task = tokio::spawn(marker.run(items_rx, confirmed_tx));
    // One item every 50 ms for 3 s: there is always a batch gathering.
    let feeder = tokio::spawn(async move {
        for (i, id) in ids.into_iter().enumerate() {
            let _ = items_tx.send(MarkItem {
                lsn: Lsn::from_u64(0x100 + i as u64),
                source_time_micros: 0,
                ids: vec![id],
                dead: vec![],
                bytes: 2,
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let start = tokio::time::Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(10), confirmed_rx.recv())
        .await
        .expect("a confirmation")
        .unwrap();
    let took = start.elapsed();
    assert!(first.lsn.is_some());
    // The first batch closes after 1 s; marking it takes milliseconds. Without the
    // fix it waited for the next batch to close too (2 s): stay clear of that, and
    // leave room for a loaded machine.
    assert!(
        took < Duration::from_millis(1900),
        "the first batch was confirmed only after {took:?}"
    );
    feeder.await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// Kafka can ack a row before the committing session made it visible to others (the
/// slot sees the commit when its WAL is flushed): the marker must not confirm until it
/// could actually mark the row. An open transaction stands in for that moment here.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_not_yet_visible_when_marked_is_marked_once_it_is_and_only_then_confirmed() {
    let db = testkit::TestDb::create("marker", "users_db").await.unwrap();
    let stack = db.stack().clone();
    let source: SourceSettings = toml::from_str(&format!(
        "name = \"marker\"\nhost = \"{}\"\nport = {}\nuser = \"{}\"\npassword = \"{}\"\ndatabase = \"{}\"",
        stack.pg_host, stack.pg_port, stack.pg_user, stack.pg_password, db.name
    ))
    .unwrap();

    let mut writer = db.connect().await.unwrap();
    let id = uuid::Uuid::now_v7();
    sqlx::query("begin").execute(&mut writer).await.unwrap();
    sqlx::query(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         values ($1, 'user', 'u1', 'UserCreated', '{}')",
    )
    .bind(id)
    .execute(&mut writer)
    .await
    .unwrap();

    let (items_tx, items_rx) = mpsc::unbounded_channel();
    let (confirmed_tx, mut confirmed_rx) = mpsc::unbounded_channel();
    let marker = Marker {
        source,
        pipeline: PipelineSettings::default(),
        metrics: Metrics::new(),
        going_away: Arc::new(Notify::new()),
    };
    let task = tokio::spawn(marker.run(items_rx, confirmed_tx));
    items_tx
        .send(MarkItem {
            lsn: Lsn::from_u64(0x100),
            source_time_micros: 0,
            ids: vec![id],
            dead: vec![],
            bytes: 2,
        })
        .unwrap();

    // Not visible yet: nothing may be confirmed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        confirmed_rx.try_recv().is_err(),
        "confirmed a row it could not mark"
    );

    sqlx::query("commit").execute(&mut writer).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), confirmed_rx.recv())
        .await
        .expect("confirmed once the row is visible")
        .unwrap();
    assert_eq!(done.lsn, Some(Lsn::from_u64(0x100)));
    let (status,): (String,) = sqlx::query_as("select status from outbox where id = $1")
        .bind(id)
        .fetch_one(&mut writer)
        .await
        .unwrap();
    assert_eq!(status, "PROCESSED");

    drop(items_tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// A row sent to the dead-letter topic is settled as DEAD_LETTERED, the rest of its
/// batch as PROCESSED, and the batch confirms like any other.
#[tokio::test(flavor = "multi_thread")]
async fn dead_lettered_rows_get_their_own_status() {
    let db = testkit::TestDb::create("marker", "users_db").await.unwrap();
    let ids = insert_rows(&db, 3).await;
    let (items_tx, items_rx) = mpsc::unbounded_channel();
    let (confirmed_tx, mut confirmed_rx) = mpsc::unbounded_channel();
    let marker = Marker {
        source: source_for(&db),
        pipeline: PipelineSettings::default(),
        metrics: Metrics::new(),
        going_away: Arc::new(Notify::new()),
    };
    let task = tokio::spawn(marker.run(items_rx, confirmed_tx));
    items_tx
        .send(MarkItem {
            lsn: Lsn::from_u64(0x200),
            source_time_micros: 0,
            ids: vec![ids[0], ids[2]],
            dead: vec![ids[1]],
            bytes: 6,
        })
        .unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), confirmed_rx.recv())
        .await
        .expect("the batch is confirmed")
        .unwrap();
    assert_eq!((done.lsn, done.records), (Some(Lsn::from_u64(0x200)), 3));
    let mut c = db.connect().await.unwrap();
    let rows: Vec<(uuid::Uuid, String, bool)> =
        sqlx::query_as("select id, status, processed_at is not null from outbox")
            .fetch_all(&mut c)
            .await
            .unwrap();
    for (id, status, settled_at) in rows {
        let want = if id == ids[1] {
            "DEAD_LETTERED"
        } else {
            "PROCESSED"
        };
        assert_eq!((status.as_str(), settled_at), (want, true), "row {id}");
    }
    drop(items_tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
