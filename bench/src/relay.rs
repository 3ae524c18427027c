//! relay-cdc as the system under test: the release binary as a child process,
//! configured only through `RELAY_*` variables (its delivery mode included), with an
//! admin port of its own for `/readyz` and `/metrics`, and its CPU time and memory
//! read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::options::Delivery;
use crate::proc_stats;

/// The `application_name` of every PostgreSQL connection of the relay's one source
/// (`bench`): relay-cdc names them `relay-cdc/<source>`, its replication connection too.
pub const APPLICATION_NAME: &str = "relay-cdc/bench";

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

/// A running relay; killed (SIGKILL) if dropped before [`RelayProcess::terminate`].
pub struct RelayProcess {
    child: Child,
    pid: u32,
    admin: String,
    pub log: PathBuf,
}

impl RelayProcess {
    pub fn spawn(spec: &RelaySpec) -> anyhow::Result<Self> {
        let port = testkit::free_port();
        let log = spec
            .log_dir
            .join(format!("relay-{}.log", testkit::unique_suffix()));
        let mut cmd = Command::new(&spec.bin);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RELAY_")) {
            cmd.env_remove(k);
        }
        let src = "RELAY_SOURCES__BENCH__";
        cmd.arg("run")
            .env("RELAY_KAFKA__BROKERS", &spec.brokers)
            .env("RELAY_KAFKA__TOPIC_TEMPLATE", &spec.topic_template)
            .env("RELAY_ADMIN__LISTEN", format!("127.0.0.1:{port}"))
            // The server learns the confirmed position within 20 ms of the relay's
            // decision (default 1 s), so throughput runs are not rounded up to it.
            .env("RELAY_PIPELINE__STATUS_INTERVAL_MS", "20")
            .env(format!("{src}HOST"), &spec.pg_host)
            .env(format!("{src}PORT"), spec.pg_port.to_string())
            .env(format!("{src}USER"), &spec.pg_user)
            .env(format!("{src}PASSWORD"), &spec.pg_password)
            .env(format!("{src}DATABASE"), &spec.database)
            .env(format!("{src}SLOT"), &spec.slot)
            .env("RELAY_KAFKA__DELIVERY", spec.delivery.setting())
            .env("RUST_LOG", "info,rdkafka=warn")
            .envs(match spec.delivery {
                Delivery::AtLeastOnce => vec![],
                Delivery::ExactlyOnce => vec![
                    ("RELAY_KAFKA__CHECKPOINT_TOPIC", &spec.checkpoint_topic),
                    (
                        "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX",
                        &spec.transactional_id_prefix,
                    ),
                ],
            })
            // The stack's TLS and Kafka security (the secured stack's; none on the plain one).
            .envs(testkit::relay_source_tls_env("bench"))
            .envs(testkit::relay_kafka_env())
            .envs(spec.extra_env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating the relay's log file")?)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        let pid = child.id().context("the relay exited at once")?;
        Ok(Self {
            child,
            pid,
            admin: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until `/readyz` says the source streams.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("relay exited with {status}; log: {}", self.log.display());
            }
            if self.is_ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "relay not ready after {timeout:?}; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One look at `/readyz`.
    pub async fn is_ready(&self) -> bool {
        matches!(reqwest::get(format!("{}/readyz", self.admin)).await, Ok(r) if r.status().is_success())
    }

    /// Fails if the relay exited (it should run until told to stop).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("relay exited with {status}; log: {}", self.log.display());
        }
        Ok(())
    }

    /// One sample of a metric (the sum over its series), if exposed.
    pub async fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        Ok(sum_metric(&self.metrics().await?, name))
    }

    /// The Kafka transactions this process ended (exactly-once), from its `/metrics`.
    pub async fn kafka_transactions(&self) -> anyhow::Result<KafkaTransactions> {
        Ok(KafkaTransactions::from_metrics(&self.metrics().await?))
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.admin))
            .await?
            .text()
            .await?)
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        proc_stats::cpu_seconds(self.pid)
    }

    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        proc_stats::status_bytes(self.pid, "VmHWM")
    }

    pub fn rss(&self) -> anyhow::Result<u64> {
        proc_stats::status_bytes(self.pid, "VmRSS")
    }

    /// SIGTERM, then waits for the exit; a graceful stop exits 0.
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("relay did not exit within 30 s of SIGTERM")??;
        if !exit.success() {
            bail!(
                "relay exited with {exit} after SIGTERM; log: {}",
                self.log.display()
            );
        }
        Ok(())
    }
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
    pub fn from_metrics(text: &str) -> Self {
        let count = |outcome: &str| {
            testkit::sum_series(text, KAFKA_TRANSACTIONS, &format!("outcome=\"{outcome}\""))
                .unwrap_or(0.0) as u64
        };
        let mean = |histogram: &str| {
            let sum = sum_metric(text, &format!("{histogram}_sum"))?;
            let n = sum_metric(text, &format!("{histogram}_count"))?;
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

/// The sum of every series of `name` in Prometheus text.
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    testkit::sum_series(text, name, "")
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
    fn metrics_are_summed_over_series_and_not_confused_with_longer_names() {
        let text = "# HELP x\nrelay_events_published_total{source=\"a\"} 3\n\
                    relay_events_published_total{source=\"b\"} 4\n\
                    relay_events_published_total_extra 100\n";
        assert_eq!(sum_metric(text, "relay_events_published_total"), Some(7.0));
        assert_eq!(sum_metric(text, "relay_source_up"), None);
    }

    #[test]
    fn kafka_transactions_are_read_from_the_counter_and_the_histograms() {
        let text = "relay_kafka_transactions_total{outcome=\"committed\",source=\"bench\"} 40\n\
                    relay_kafka_transactions_total{outcome=\"aborted\",source=\"bench\"} 1\n\
                    relay_kafka_transaction_records_bucket{source=\"bench\",le=\"+Inf\"} 40\n\
                    relay_kafka_transaction_records_sum{source=\"bench\"} 4040\n\
                    relay_kafka_transaction_records_count{source=\"bench\"} 40\n\
                    relay_kafka_transaction_commit_seconds_sum{source=\"bench\"} 0.2\n\
                    relay_kafka_transaction_commit_seconds_count{source=\"bench\"} 40\n";
        let t = KafkaTransactions::from_metrics(text);
        assert_eq!((t.committed, t.aborted), (40, 1));
        assert_eq!(t.mean_records, Some(101.0));
        assert_eq!(t.mean_commit_s, Some(0.005));
    }

    #[test]
    fn an_at_least_once_relay_has_no_kafka_transactions() {
        let text = "relay_kafka_transaction_records_sum{source=\"bench\"} 0\n\
                    relay_kafka_transaction_records_count{source=\"bench\"} 0\n";
        let t = KafkaTransactions::from_metrics(text);
        assert_eq!(
            (t.committed, t.mean_records, t.mean_commit_s),
            (0, None, None)
        );
    }
}
