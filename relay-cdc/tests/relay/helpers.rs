//! The real relay binary against the local stack: a fresh database, a slot and topics of
//! the test's own, and the relay started through testkit's [`RelayConfig`] as a
//! [`RelayProcess`] that can be stopped or killed.

use std::time::Duration;

use sqlx::PgConnection;
use testkit::{
    relay_kafka_env, unique_suffix, RelayConfig, RelayProcess, RelaySource, Stack, TestDb,
};

pub struct Source {
    pub name: String,
    pub db: TestDb,
    pub slot: String,
}

impl Source {
    pub async fn new(name: &str) -> Source {
        let db = TestDb::create("relay", "users_db").await.unwrap();
        Source {
            name: name.to_string(),
            slot: format!("relay_t_{}", unique_suffix()),
            db,
        }
    }

    pub async fn conn(&self) -> PgConnection {
        self.db.connect().await.unwrap()
    }

    /// The relay's settings for this source: as the relay's own role, with the stack's
    /// TLS (libpq's `PGSSLMODE`/`PGSSLROOTCERT` on the secured stack).
    pub fn env(&self) -> Vec<(String, String)> {
        RelaySource::on_stack(self.db.stack(), &self.name, &self.db.name, &self.slot).env()
    }

    /// The slot's confirmed_flush_lsn as a number (0 when the slot does not exist).
    pub async fn confirmed_lsn(&self) -> u64 {
        let mut c = self.conn().await;
        let r: Option<(i64,)> = sqlx::query_as(
            "select (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint from pg_replication_slots where slot_name = $1",
        )
        .bind(&self.slot)
        .fetch_optional(&mut c)
        .await
        .unwrap();
        r.map(|(v,)| v as u64).unwrap_or(0)
    }

    pub async fn current_lsn(&self) -> u64 {
        let mut c = self.conn().await;
        let (v,): (i64,) = sqlx::query_as("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            .fetch_one(&mut c)
            .await
            .unwrap();
        v as u64
    }

    /// The status of one outbox row (`PENDING`, `PROCESSED`, ...).
    pub async fn status_of(&self, id: &str) -> String {
        let mut c = self.conn().await;
        let (s,): (String,) = sqlx::query_as("select status from outbox where id = $1::uuid")
            .bind(id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        s
    }

    /// Replication slots on this source's database: (name, temporary, active).
    pub async fn slots(&self) -> Vec<(String, bool, bool)> {
        let mut c = self.conn().await;
        sqlx::query_as(
            "select slot_name::text, temporary, active from pg_replication_slots \
             where database = current_database() order by slot_name",
        )
        .fetch_all(&mut c)
        .await
        .unwrap()
    }

    /// This source's series of `metric`, as [`testkit::Metrics::get`] takes it.
    pub fn series(&self, metric: &str) -> String {
        format!("{metric}{{source=\"{}\"}}", self.name)
    }

    pub async fn count(&self, status: &str) -> i64 {
        let mut c = self.conn().await;
        let (n,): (i64,) = sqlx::query_as("select count(*) from outbox where status = $1")
            .bind(status)
            .fetch_one(&mut c)
            .await
            .unwrap();
        n
    }
}

/// Loses `src`'s slot under `relay`, which must be streaming with nothing written
/// since `written_up_to` unconfirmed, and checks that the source halts instead of
/// recreating the slot (a source without status marking, or in message capture): the
/// halt on `/healthz` with a reason naming the missing slot, `relay_source_halted` 1, the
/// kind `slot_lost` in the log, and no slot of that name afterwards. Returns the reason.
pub async fn lose_the_slot_and_expect_a_halt(
    relay: &mut RelayProcess,
    src: &Source,
    written_up_to: u64,
    wait: Duration,
) -> String {
    testkit::wait_for("the relay confirmed a position", wait, || async {
        Ok((src.confirmed_lsn().await >= written_up_to).then_some(()))
    })
    .await
    .unwrap();
    // As a failover to a server without it would lose it: end its walsender, then drop it
    // before the relay reconnects.
    testkit::wait_for("the slot dropped", wait, || async {
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
        .wait_health("the source halted", wait, |h| {
            h.source(&src.name)["state"] == "halted"
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; the relay's log ends:\n{}", relay.log_tail(40)));
    let reason = h.source(&src.name)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("is missing"),
        "the halt names the lost slot: {reason:?}"
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
    reason
}

/// Inserts `rows` outbox rows in one transaction; returns their ids in insert order.
pub async fn insert_txn(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    rows: usize,
    tag: &str,
) -> Vec<String> {
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         select gen_random_uuid(), $1, $2, 'TestEvent', jsonb_build_object('tag', $3::text, 'seq', g) \
         from generate_series(1, $4) g order by g returning id",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(tag)
    .bind(rows as i32)
    .fetch_all(conn)
    .await
    .unwrap();
    ids.into_iter().map(|(i,)| i.to_string()).collect()
}

/// How long a relay may take to stream after its start.
pub const READY: Duration = Duration::from_secs(60);
/// How long a relay may take to exit after SIGTERM.
pub const STOP: Duration = Duration::from_secs(60);

/// relay-cdc as this build made it.
fn relay_cdc() -> RelayConfig {
    RelayConfig::new(env!("CARGO_BIN_EXE_relay-cdc"))
}

/// What a test sets for its relays: where they write, and further settings (an empty
/// value unsets one the harness sets).
#[derive(Debug, Clone)]
pub struct RelaySetup {
    pub brokers: String,
    pub topic_template: String,
    pub extra: Vec<(String, String)>,
}

impl RelaySetup {
    /// Topics `t.<prefix>.<unique>.<aggregate_type>` on the stack's broker; also returns
    /// the topics' common prefix.
    pub fn new(prefix: &str) -> (RelaySetup, String) {
        let stack = Stack::from_env();
        let t = format!("t.{prefix}.{}", unique_suffix());
        (
            RelaySetup {
                brokers: stack.kafka_brokers,
                topic_template: format!("{t}.{{aggregate_type}}"),
                extra: vec![],
            },
            t,
        )
    }

    /// The relay binary of this build with the stack's Kafka security and `env`; what
    /// the one-shot commands (`check`, `status`) run with.
    pub fn cli(env: &[(String, String)]) -> RelayConfig {
        relay_cdc()
            .set("RUST_LOG", "")
            .set("RELAY_KAFKA__BROKERS", Stack::from_env().kafka_brokers)
            .envs(relay_kafka_env())
            .envs(env.iter().cloned())
    }

    /// The relay over `sources`, with short intervals so tests see positions confirmed,
    /// heartbeats written and retries made within a second.
    pub fn config(&self, sources: &[&Source]) -> RelayConfig {
        sources
            .iter()
            .fold(relay_cdc(), |c, s| c.envs(s.env()))
            .kafka(&self.brokers, &self.topic_template)
            .set("RELAY_PIPELINE__STATUS_INTERVAL_MS", "200")
            .set("RELAY_PIPELINE__HEARTBEAT_INTERVAL_MS", "500")
            .set("RELAY_PIPELINE__MAX_BACKOFF_MS", "1000")
            .set("RUST_LOG", "info,relay_cdc=debug")
            .envs(relay_kafka_env())
            .envs(self.extra.iter().cloned())
    }

    /// Starts the relay over `sources` (see [`RelaySetup::config`]).
    pub fn start(&self, sources: &[&Source]) -> RelayProcess {
        self.config(sources).spawn().expect("relay binary starts")
    }
}
