//! What every measurement shares: the stack, the binaries, the run's log folder and
//! settings ([`Ctx`], which builds each system's spec), the systems under test
//! ([`System`]), the topics a measurement leaves behind, and the check that the relay
//! ran in its delivery mode.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use testkit::relay::kafka_properties_env;
use testkit::{Delivery, Stack, TestDb};
use tokio_postgres::Client;

use crate::ceiling;
use crate::db;
use crate::debezium::{self, ConnectSpec};
use crate::options::Options;
use crate::polling::PollerSpec;
use crate::progress::progress;
use crate::relay::{self, KafkaTransactions, RelaySpec};

/// Partitions of throughput and latency topics (order runs use one, for a total order).
pub const PARTITIONS: i32 = 3;
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A reader gives up after this long without a record.
pub const READ_IDLE: Duration = Duration::from_secs(60);
/// Debezium's JVM starts in ~10 s on an idle machine; a loaded one gets more.
pub const DEBEZIUM_START_TIMEOUT: Duration = Duration::from_secs(180);

/// What every measurement shares.
pub struct Ctx {
    pub stack: Stack,
    pub relay_bin: PathBuf,
    pub recvlogical: PathBuf,
    pub admin: Client,
    pub log_dir: PathBuf,
    /// Debezium's jars when the plan runs it, or why it cannot run here.
    pub debezium: Option<Result<debezium::Libs, String>>,
    relay_env: Vec<(String, String)>,
    debezium_set: Vec<(String, String)>,
    /// `--kafka-set`: librdkafka properties of both the ingest producer and the relay.
    pub kafka_set: Vec<(String, String)>,
    /// `--baseline-fillfactor`: the outbox table's fillfactor for baseline relays' runs.
    pub baseline_fillfactor: Option<u32>,
    /// Set when a comparison system failed: the log folder stays for a look.
    pub keep_logs: std::sync::atomic::AtomicBool,
    run_id: String,
    topics: std::sync::atomic::AtomicU32,
}

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Relay(Delivery),
    Polling(Duration),
    Debezium,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            System::Relay(Delivery::AtLeastOnce) => f.write_str("relay-cdc"),
            System::Relay(d) => write!(f, "relay-cdc ({d})"),
            System::Polling(d) if d.as_millis() >= 1000 && d.as_millis() % 1000 == 0 => {
                write!(f, "polling {} s", d.as_secs())
            }
            System::Polling(d) => write!(f, "polling {} ms", d.as_millis()),
            System::Debezium => f.write_str("debezium"),
        }
    }
}

impl Ctx {
    pub async fn new(opts: &Options) -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let relay_bin = match &opts.relay_bin {
            Some(p) => p.clone(),
            None => relay::default_bin()?,
        };
        ensure!(
            relay_bin.exists(),
            "no relay binary at {} (build it: cargo build --release -p relay-cdc, or pass --relay-bin)",
            relay_bin.display()
        );
        let recvlogical = opts
            .pg_recvlogical
            .clone()
            .unwrap_or_else(ceiling::find_pg_recvlogical);
        let admin = db::connect(&stack.database_url("postgres"), "relay-bench")
            .await
            .context("is the local stack up (scripts/stack up)?")?;
        let run_id = testkit::unique_suffix()[..8].to_string();
        let log_dir = std::env::temp_dir().join(format!("relay-bench-{run_id}"));
        std::fs::create_dir_all(&log_dir)?;
        let debezium = if opts.debezium {
            let libs = debezium::libs().await;
            if let Err(reason) = &libs {
                progress(format!("debezium is skipped: {reason}"));
            }
            Some(libs)
        } else {
            None
        };
        Ok(Self {
            stack,
            relay_bin,
            recvlogical,
            admin,
            log_dir,
            debezium,
            relay_env: kafka_properties_env(
                opts.kafka_set.iter().map(|(k, v)| (k.as_str(), v.clone())),
            )
            .into_iter()
            .chain(opts.relay_env.iter().cloned())
            .collect(),
            debezium_set: opts.debezium_set.clone(),
            kafka_set: opts.kafka_set.clone(),
            baseline_fillfactor: opts.baseline_fillfactor,
            keep_logs: Default::default(),
            run_id,
            topics: Default::default(),
        })
    }

    /// A topic prefix no other measurement uses; records go to `<prefix>.bench`.
    pub fn topic_prefix(&self) -> (String, String) {
        let n = self
            .topics
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("bench.{}.{n}", self.run_id);
        let topic = format!("{prefix}.bench");
        (prefix, topic)
    }

    /// The relay of one measurement; in exactly-once mode its checkpoint topic
    /// ([`checkpoint_topic`]) and `transactional.id` are that measurement's alone.
    pub fn relay_spec(
        &self,
        db: &TestDb,
        prefix: &str,
        brokers: &str,
        delivery: Delivery,
    ) -> RelaySpec {
        RelaySpec {
            bin: self.relay_bin.clone(),
            brokers: brokers.to_string(),
            topic_template: format!("{prefix}.{{aggregate_type}}"),
            pg_host: self.stack.pg_host.clone(),
            pg_port: self.stack.pg_port,
            // The relay's own role on the secured stack (the admin on the plain one).
            pg_user: self.stack.relay_user.clone(),
            pg_password: self.stack.relay_password.clone(),
            database: db.name.clone(),
            slot: format!("bench_relay_{}", testkit::unique_suffix()),
            delivery,
            checkpoint_topic: checkpoint_topic(prefix),
            transactional_id_prefix: format!("{prefix}."),
            log_dir: self.log_dir.clone(),
            extra_env: self.relay_env.clone(),
        }
    }

    /// Debezium on `db`, reading `slot`, writing `<prefix>.<aggregate_type>`.
    pub fn debezium_spec(
        &self,
        libs: &debezium::Libs,
        db: &TestDb,
        slot: &str,
        prefix: &str,
        brokers: &str,
    ) -> ConnectSpec {
        ConnectSpec {
            libs: libs.clone(),
            brokers: brokers.to_string(),
            pg_host: self.stack.pg_host.clone(),
            pg_port: self.stack.pg_port,
            pg_user: self.stack.pg_user.clone(),
            pg_password: self.stack.pg_password.clone(),
            database: db.name.clone(),
            slot: slot.to_string(),
            topic_prefix: prefix.to_string(),
            dir: self
                .log_dir
                .join(format!("debezium-{}", testkit::unique_suffix())),
            extra: self.debezium_set.clone(),
        }
    }

    pub fn poller_spec(
        &self,
        db: &TestDb,
        topic: &str,
        brokers: &str,
        interval: Duration,
        batch: i64,
    ) -> PollerSpec {
        PollerSpec {
            url: db.url.clone(),
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            interval,
            batch,
        }
    }
}

/// The checkpoint topic of the measurement whose topics start with `prefix`.
fn checkpoint_topic(prefix: &str) -> String {
    format!("{prefix}.checkpoints")
}

/// The topic of Debezium's warm-up record (aggregate type `probe`).
pub fn probe_topic(prefix: &str) -> String {
    format!("{prefix}.probe")
}

/// The topics a measurement leaves behind: its records' and, for an exactly-once
/// relay, its checkpoint topic, for Debezium its warm-up topic.
pub fn topics_of(system: System, prefix: &str, topic: &str) -> Vec<String> {
    match system {
        System::Relay(Delivery::ExactlyOnce) => vec![topic.to_string(), checkpoint_topic(prefix)],
        System::Debezium => vec![topic.to_string(), probe_topic(prefix)],
        _ => vec![topic.to_string()],
    }
}

pub async fn delete_topics(brokers: &str, topics: &[String]) {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    testkit::delete_topics(brokers, &names).await;
}

/// The relay ran in the mode it was given: an exactly-once relay committed Kafka
/// transactions, an at-least-once one none. Aborted transactions (their records are
/// sent again) are reported, not failed.
pub fn check_delivery(
    delivery: Delivery,
    txns: &KafkaTransactions,
    log: &std::path::Path,
) -> anyhow::Result<()> {
    if txns.aborted > 0 {
        progress(format!(
            "warning: relay-cdc aborted {} kafka transactions; log: {}",
            txns.aborted,
            log.display()
        ));
    }
    let transactional = txns.committed > 0;
    ensure!(
        transactional == (delivery == Delivery::ExactlyOnce),
        "relay-cdc ran {delivery} but committed {} kafka transactions; log: {}",
        txns.committed,
        log.display()
    );
    Ok(())
}

/// A comparison system's measurement failed: the run goes on, the table says so, and
/// the run's logs are kept.
pub fn failed(ctx: &Ctx, system: System, e: &anyhow::Error) -> String {
    progress(format!("{system} failed: {e:#}"));
    ctx.keep_logs
        .store(true, std::sync::atomic::Ordering::Relaxed);
    format!("failed: {e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systems_are_named_for_their_interval() {
        assert_eq!(
            System::Relay(Delivery::AtLeastOnce).to_string(),
            "relay-cdc"
        );
        assert_eq!(
            System::Relay(Delivery::ExactlyOnce).to_string(),
            "relay-cdc (exactly-once)"
        );
        assert_eq!(
            System::Polling(Duration::from_secs(1)).to_string(),
            "polling 1 s"
        );
        assert_eq!(
            System::Polling(Duration::from_millis(10)).to_string(),
            "polling 10 ms"
        );
        assert_eq!(
            System::Polling(Duration::from_millis(1500)).to_string(),
            "polling 1500 ms"
        );
    }
}
