//! relay-cdc as the system under test: the release binary started through testkit's
//! [`RelayConfig`] (the one launcher of relay-cdc), configured only through `RELAY_*`
//! variables (its delivery mode included), with an admin port of its own for `/readyz`
//! and `/metrics`; its CPU time and memory come from `/proc` through testkit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::ensure;
use testkit::{Delivery, Metrics, RelayConfig, RelayProcess, RelaySource};

/// The `application_name` of every PostgreSQL connection of the relay's one source
/// (`bench`): relay-cdc names them `relay-cdc/<source>`, its replication connection too.
pub const APPLICATION_NAME: &str = "relay-cdc/bench";
/// The relay's one source.
const SOURCE: &str = "bench";
/// How long a relay may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

const KAFKA_TRANSACTIONS: &str = "relay_kafka_transactions_total";
const KAFKA_TRANSACTION_RECORDS: &str = "relay_kafka_transaction_records";
const KAFKA_COMMIT_SECONDS: &str = "relay_kafka_transaction_commit_seconds";

/// Where the relay reads and writes.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    pub bin: PathBuf,
    pub brokers: String,
    pub topic_template: String,
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_password: String,
    pub database: String,
    pub slot: String,
    pub delivery: Delivery,
    /// Exactly-once: the checkpoint topic and `transactional.id` prefix, both of this
    /// measurement alone, so runs never share checkpoints or fence each other.
    pub checkpoint_topic: String,
    pub transactional_id_prefix: String,
    pub log_dir: PathBuf,
    /// Further `RELAY_*` settings, applied last.
    pub extra_env: Vec<(String, String)>,
}

impl RelaySpec {
    /// The relay's settings: the source `bench`, the stack's TLS and Kafka security
    /// (none on the plain stack), the delivery mode, then `extra_env`.
    pub fn config(&self) -> RelayConfig {
        let mut source = RelaySource::on_stack(
            &testkit::Stack::from_env(),
            SOURCE,
            &self.database,
            &self.slot,
        );
        source.host.clone_from(&self.pg_host);
        source.port = self.pg_port;
        source.user.clone_from(&self.pg_user);
        source.password.clone_from(&self.pg_password);
        let config = RelayConfig::new(&self.bin)
            .kafka(&self.brokers, &self.topic_template)
            // The server learns the confirmed position within 20 ms of the relay's
            // decision (default 1 s), so throughput runs are not rounded up to it.
            .set("RELAY_PIPELINE__STATUS_INTERVAL_MS", "20")
            .source(&source)
            .set("RELAY_KAFKA__DELIVERY", self.delivery.as_str());
        let config = match self.delivery {
            Delivery::AtLeastOnce => config,
            Delivery::ExactlyOnce => config
                .set("RELAY_KAFKA__CHECKPOINT_TOPIC", &self.checkpoint_topic)
                .set(
                    "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX",
                    &self.transactional_id_prefix,
                ),
        };
        config
            .envs(testkit::relay_kafka_env())
            .envs(self.extra_env.iter().cloned())
            .log_to(
                self.log_dir
                    .join(format!("relay-{}.log", testkit::unique_suffix())),
            )
    }

    /// Starts the relay; it is SIGKILLed if dropped before [`stop`].
    pub fn spawn(&self) -> anyhow::Result<RelayProcess> {
        self.config().spawn()
    }
}

/// SIGTERM, then waits for the exit; a graceful stop exits 0.
pub async fn stop(relay: RelayProcess) -> anyhow::Result<()> {
    let log = relay.log().to_path_buf();
    let exit = relay.stop(STOP_TIMEOUT).await?;
    ensure!(
        exit.success(),
        "relay exited with {exit} after SIGTERM; log: {}",
        log.display()
    );
    Ok(())
}

/// One sample of a metric (the sum over its series), if exposed.
pub async fn metric(relay: &RelayProcess, name: &str) -> anyhow::Result<Option<f64>> {
    Ok(relay.metrics().await?.sum(name, &[]))
}

/// The Kafka transactions this process ended (exactly-once), from its `/metrics`.
pub async fn kafka_transactions(relay: &RelayProcess) -> anyhow::Result<KafkaTransactions> {
    Ok(KafkaTransactions::from_metrics(&relay.metrics().await?))
}

/// Kafka transactions of one relay process, as its metrics count them since it started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KafkaTransactions {
    pub committed: u64,
    pub aborted: u64,
    /// Mean records per committed transaction: events, dead letters and the
    /// checkpoint record (`relay_kafka_transaction_records`).
    pub mean_records: Option<f64>,
    /// Mean seconds a commit took, flush included (`relay_kafka_transaction_commit_seconds`).
    pub mean_commit_s: Option<f64>,
}

impl KafkaTransactions {
    pub fn from_metrics(m: &Metrics) -> Self {
        let count = |outcome: &str| {
            m.sum(KAFKA_TRANSACTIONS, &[("outcome", outcome)])
                .unwrap_or(0.0) as u64
        };
        let mean = |histogram: &str| {
            let sum = m.sum(&format!("{histogram}_sum"), &[])?;
            let n = m.sum(&format!("{histogram}_count"), &[])?;
            (n > 0.0).then(|| sum / n)
        };
        Self {
            committed: count("committed"),
            aborted: count("aborted"),
            mean_records: mean(KAFKA_TRANSACTION_RECORDS),
            mean_commit_s: mean(KAFKA_COMMIT_SECONDS),
        }
    }
}

/// The relay binary: `--relay-bin`, else `relay-cdc` next to this executable.
pub fn default_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().unwrap_or(Path::new("."));
    Ok(dir.join("relay-cdc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_transactions_are_read_from_the_counter_and_the_histograms() {
        let text = "relay_kafka_transactions_total{outcome=\"committed\",source=\"bench\"} 40\n\
                    relay_kafka_transactions_total{outcome=\"aborted\",source=\"bench\"} 1\n\
                    relay_kafka_transaction_records_bucket{source=\"bench\",le=\"+Inf\"} 40\n\
                    relay_kafka_transaction_records_sum{source=\"bench\"} 4040\n\
                    relay_kafka_transaction_records_count{source=\"bench\"} 40\n\
                    relay_kafka_transaction_commit_seconds_sum{source=\"bench\"} 0.2\n\
                    relay_kafka_transaction_commit_seconds_count{source=\"bench\"} 40\n";
        let t = KafkaTransactions::from_metrics(&Metrics::parse(text));
        assert_eq!((t.committed, t.aborted), (40, 1));
        assert_eq!(t.mean_records, Some(101.0));
        assert_eq!(t.mean_commit_s, Some(0.005));
    }

    #[test]
    fn an_at_least_once_relay_has_no_kafka_transactions() {
        let text = "relay_kafka_transaction_records_sum{source=\"bench\"} 0\n\
                    relay_kafka_transaction_records_count{source=\"bench\"} 0\n";
        let t = KafkaTransactions::from_metrics(&Metrics::parse(text));
        assert_eq!(
            (t.committed, t.mean_records, t.mean_commit_s),
            (0, None, None)
        );
    }

    #[test]
    fn the_relay_gets_its_source_delivery_and_extra_settings_last() {
        let spec = RelaySpec {
            bin: "/bin/relay-cdc".into(),
            brokers: "b:9092".into(),
            topic_template: "p.{aggregate_type}".into(),
            pg_host: "h".into(),
            pg_port: 5,
            pg_user: "u".into(),
            pg_password: "pw".into(),
            database: "d".into(),
            slot: "s".into(),
            delivery: Delivery::ExactlyOnce,
            checkpoint_topic: "p.checkpoints".into(),
            transactional_id_prefix: "p.".into(),
            log_dir: std::env::temp_dir(),
            extra_env: vec![("RELAY_PIPELINE__STATUS_INTERVAL_MS".into(), "7".into())],
        };
        let c = spec.config();
        assert_eq!(c.setting("RELAY_SOURCES__BENCH__HOST"), Some("h"));
        assert_eq!(c.setting("RELAY_SOURCES__BENCH__SLOT"), Some("s"));
        assert_eq!(c.setting("RELAY_KAFKA__DELIVERY"), Some("exactly-once"));
        assert_eq!(
            c.setting("RELAY_KAFKA__CHECKPOINT_TOPIC"),
            Some("p.checkpoints")
        );
        assert_eq!(c.setting("RELAY_PIPELINE__STATUS_INTERVAL_MS"), Some("7"));
    }
}
