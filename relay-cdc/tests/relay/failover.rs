//! Failover slots (PostgreSQL 17+) and sources that name several servers. What each
//! server version should do is asked of the server itself, so the same tests hold on
//! every version `scripts/pg-matrix` runs.

use testkit::read_until_ids;

use super::helpers::{insert_txn, RelaySetup, Source, READY, STOP};
use super::{relay_cli, WAIT};

/// `server_version_num` of the stack's PostgreSQL.
async fn version_num(src: &Source) -> i32 {
    let mut c = src.conn().await;
    let (v,): (i32,) = sqlx::query_as("select current_setting('server_version_num')::int")
        .fetch_one(&mut c)
        .await
        .unwrap();
    v
}

/// The slot's `failover` flag; `None` before PostgreSQL 17 (no such column).
async fn failover_flag(src: &Source) -> Option<bool> {
    let mut c = src.conn().await;
    let (f,): (Option<bool>,) = sqlx::query_as(
        "select (to_jsonb(s) ->> 'failover')::bool from pg_replication_slots s where slot_name = $1",
    )
    .bind(&src.slot)
    .fetch_one(&mut c)
    .await
    .unwrap();
    f
}

#[tokio::test(flavor = "multi_thread")]
async fn slots_are_failover_slots_where_the_server_supports_them() {
    // `fresh`: the relay creates the slot. `plain`: a slot made before, without failover.
    let fresh = Source::new("fresh").await;
    let plain = Source::new("plain").await;
    let mut c = plain.conn().await;
    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&plain.slot)
        .execute(&mut c)
        .await
        .unwrap();
    let version = version_num(&fresh).await;
    if version >= 170_000 {
        assert_eq!(failover_flag(&plain).await, Some(false));
    }
    // Committed after the slot was made: streamed from it if the relay keeps the slot,
    // reconciled (counted) if it made a new one.
    let ids = insert_txn(&mut c, "acct", "a-1", 3, "before").await;

    let (cfg, prefix) = RelaySetup::new("failover");
    let mut relay = cfg.start(&[&fresh, &plain]);
    relay.wait_ready(READY).await.unwrap();
    let want = (version >= 170_000).then_some(true);
    assert_eq!(failover_flag(&fresh).await, want, "created by the relay");
    assert_eq!(
        failover_flag(&plain).await,
        want,
        "an existing slot is altered"
    );
    // The existing slot was kept (its rows streamed), not recreated (rows reconciled).
    let consumer = testkit::consumer(&cfg.brokers, &[&format!("{prefix}.acct")]).unwrap();
    read_until_ids(&consumer, &ids, WAIT).await.unwrap();
    let metrics = relay.metrics().await.unwrap();
    for m in [
        "relay_reconciled_events_total",
        "relay_slot_recreated_total",
    ] {
        assert_eq!(metrics.get(&plain.series(m)).unwrap_or(0.0), 0.0, "{m}");
    }
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));

    // `check` says what protects a failover; on this lone server nothing does, which is
    // a warning, not a failure.
    let out = relay_cli(&["check"], &fresh.env());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    if version >= 170_000 {
        assert!(
            text.contains("[ ok ] failover slot: the slot is a failover slot"),
            "{text}"
        );
        assert!(
            text.contains("[WARN] synchronized_standby_slots: empty"),
            "{text}"
        );
        assert!(
            text.contains("[WARN] standbys streaming from a physical slot: none"),
            "{text}"
        );
    } else {
        assert!(
            text.contains("[ ok ] failover slot: not before PostgreSQL 17"),
            "{text}"
        );
    }

    // Asking for a failover slot where there are none is refused, by name.
    let mut env = fresh.env();
    env.push(("RELAY_SOURCES__FRESH__FAILOVER_SLOT".into(), "true".into()));
    let out = relay_cli(&["check"], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    if version >= 170_000 {
        assert!(out.status.success(), "{text}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("[FAIL] failover slot: failover_slot = true needs PostgreSQL 17"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_with_several_servers_streams_from_the_writable_one() {
    let src = Source::new("multi").await;
    let stack = testkit::Stack::from_env();
    // Nothing listens on the first one: like a primary that died.
    let dead = testkit::free_port();
    let mut env: Vec<(String, String)> = src
        .env()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("__HOST") && !k.ends_with("__PORT"))
        .collect();
    env.push((
        "RELAY_SOURCES__MULTI__HOSTS".into(),
        format!("127.0.0.1:{dead},{}:{}", stack.pg_host, stack.pg_port),
    ));
    let (mut cfg, prefix) = RelaySetup::new("hosts");
    cfg.extra = env;
    let mut relay = cfg.start(&[]);
    relay.wait_ready(READY).await.unwrap();

    let mut c = src.conn().await;
    let ids = insert_txn(&mut c, "acct", "a-1", 5, "hosts").await;
    let consumer = testkit::consumer(&cfg.brokers, &[&format!("{prefix}.acct")]).unwrap();
    read_until_ids(&consumer, &ids, WAIT).await.unwrap();
    testkit::wait_for("rows marked", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(relay.stop(STOP).await.unwrap().code(), Some(0));

    let out = relay_cli(&["check"], &cfg.extra);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "127.0.0.1:{dead},{}:{}",
            stack.pg_host, stack.pg_port
        )),
        "{text}"
    );
}
