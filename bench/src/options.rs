//! Command-line knobs and the plan they resolve to.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use testkit::Delivery;

use crate::capture::Capture;
use crate::load::Rate;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "relay-bench",
    about = "Measures relay-cdc against pg_recvlogical (the ceiling) and a polling outbox worker, \
             on the local stack, and prints markdown tables"
)]
pub struct Options {
    /// Tiny sizes for a smoke run: every table row, in seconds rather than minutes.
    #[arg(long)]
    pub quick: bool,
    /// The full throughput matrix: rows per transaction {1, 10, 1000} × payload {100 B, 1 KiB, 16 KiB}.
    #[arg(long)]
    pub full: bool,
    /// Rows per transaction of the throughput workloads (with --payload: their cross product).
    #[arg(long, value_delimiter = ',')]
    pub rows_per_txn: Vec<u32>,
    /// Payload sizes in bytes of the throughput workloads.
    #[arg(long, value_delimiter = ',')]
    pub payload: Vec<usize>,
    /// Rows per throughput workload (default 300000, so start-up costs vanish; --quick 2000).
    #[arg(long)]
    pub rows: Option<u64>,
    /// Caps a workload's payload volume (rows × payload) in MiB.
    #[arg(long, default_value_t = 128)]
    pub max_mib: u64,
    /// Offered rates of the latency runs, 1-row transactions: events/s, or `max`.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<Rate>,
    /// Seconds each latency run offers load (default 5; --quick 2).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Connections of the latency load generator.
    #[arg(long, default_value_t = 8)]
    pub generator_connections: usize,
    /// Intervals of the polling baseline in milliseconds (documented, aggressive).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10])]
    pub poll_interval_ms: Vec<u64>,
    /// Rows the polling worker locks and publishes per round.
    #[arg(long, default_value_t = 1000)]
    pub poll_batch: i64,
    /// Interleaved transaction pairs of the commit-order run (default 200; --quick 10).
    #[arg(long)]
    pub pairs: Option<u64>,
    /// Delivery modes of relay-cdc: every relay measurement is made once per mode, one
    /// after another, and the tables show a relay row per mode.
    #[arg(long, value_delimiter = ',', default_values_t = [Delivery::AtLeastOnce])]
    pub delivery: Vec<Delivery>,
    /// How the writers hand events to the relay: outbox rows (`table`) or logical decoding
    /// messages (`messages`). Every relay throughput workload and the settle part run once
    /// per mode, one after another, each on its own database and topics.
    #[arg(long, value_delimiter = ',', default_values_t = [Capture::Table])]
    pub capture: Vec<Capture>,
    /// Which parts to run.
    #[arg(long, value_delimiter = ',', default_values_t = [Part::Throughput, Part::Latency, Part::Order])]
    pub only: Vec<Part>,
    /// Also run Debezium (Kafka Connect standalone + the PostgreSQL connector + the Outbox
    /// Event Router) on every throughput workload and latency rate. Needs Java 17+ and,
    /// on first use, Maven to fetch its jars; without them its rows say why they were skipped.
    #[arg(long)]
    pub debezium: bool,
    /// Extra Debezium settings for experiments, e.g. `--debezium-set poll.interval.ms=50`
    /// (connector) or `--debezium-set worker.producer.batch.size=65536` (worker, without
    /// `worker.`); repeatable, applied last, printed with the tables.
    #[arg(long, value_parser = parse_property)]
    pub debezium_set: Vec<(String, String)>,
    /// Also measure relay memory through a broker outage (starts a private broker; slow).
    #[arg(long)]
    pub outage: bool,
    /// Length of the broker outage in seconds.
    #[arg(long, default_value_t = 60)]
    pub outage_secs: u64,
    /// Kafka brokers to compare: 1 (the shared broker only), or 3 to also measure the
    /// relay on a private cluster of three brokers (replication 3, min.insync.replicas
    /// 2), each throughput workload and latency rate on one broker and then on three
    /// (the `kafka-cluster` part, added to `--only`'s).
    #[arg(long, default_value_t = 1)]
    pub kafka_nodes: u8,
    /// `--only settle`: transaction-service binary under test (default: next to this
    /// executable, as `scripts/bench` builds it).
    #[arg(long)]
    pub transaction_service_bin: Option<PathBuf>,
    /// `--only settle`: further transaction-service binaries measured beside it, e.g. one
    /// built from an earlier commit (`label=path` or a path); repeatable.
    #[arg(long)]
    pub settle_baseline: Vec<String>,
    /// `--only settle`: accounts the transfers move money between.
    #[arg(long, default_value_t = 200)]
    pub settle_accounts: usize,
    /// `--only settle`: paced transfer rates per second, before the closed-loop run.
    #[arg(long, value_delimiter = ',', default_values_t = [500])]
    pub settle_rates: Vec<u32>,
    /// `--only settle`: concurrent clients of the closed-loop run (the highest rate).
    #[arg(long, default_value_t = 32)]
    pub settle_clients: usize,
    /// `--only settle`: seconds of load per phase.
    #[arg(long, default_value_t = 20)]
    pub settle_seconds: u64,
    /// `--only settle`: transfers POSTed with the relay stopped, then settled once it
    /// restarts (settlement's own rate, not bounded by the POST rate); 0 skips the phase.
    #[arg(long, default_value_t = 20_000)]
    pub settle_backlog: usize,
    /// Extra librdkafka producer settings for experiments, e.g. `--kafka-set linger.ms=20`:
    /// applied to the Kafka ingest producer and to relay-cdc (its `kafka.properties`), so
    /// both sides of that comparison change together; repeatable.
    #[arg(long, value_parser = parse_property)]
    pub kafka_set: Vec<(String, String)>,
    /// Extra relay settings for experiments, e.g. `--relay-env RELAY_PIPELINE__MARK_BATCH_SIZE=5000`
    /// (repeatable; printed with the tables).
    #[arg(long, value_parser = parse_env_pair)]
    pub relay_env: Vec<(String, String)>,
    /// The relay binary (default: relay-cdc next to this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// Throughput: further relay-cdc binaries measured beside `--relay-bin` on every
    /// workload and delivery mode, one after the other in the same run, e.g. one built
    /// from an earlier commit (`label=path` or a path); repeatable. The table gains a
    /// `relay-cdc binary` column and each baseline's rows/s as a ratio to this build's.
    #[arg(long)]
    pub relay_baseline: Vec<String>,
    /// Throughput: the outbox table's fillfactor in the `--relay-baseline` measurements'
    /// databases (this build's keep the migrations' own), so that a table layout is
    /// measured side by side: `--relay-baseline ff80=<this relay-cdc> --baseline-fillfactor 80`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=100))]
    pub baseline_fillfactor: Option<u32>,
    /// pg_recvlogical (default: the newest under /usr/lib/postgresql, else PATH).
    #[arg(long)]
    pub pg_recvlogical: Option<PathBuf>,
}

/// `label=path` or a path (labelled `baseline <path>`), each of which must exist.
fn labelled_binaries(option: &str, values: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for b in values {
        let (label, path) = match b.split_once('=') {
            Some((l, p)) if !l.is_empty() => (l.to_string(), PathBuf::from(p)),
            _ => (format!("baseline {b}"), PathBuf::from(b)),
        };
        anyhow::ensure!(path.exists(), "{option} {b}: no such binary");
        anyhow::ensure!(
            label != "this build" && !out.iter().any(|(l, _)| *l == label),
            "{option} {b}: the label {label:?} is taken"
        );
        out.push((label, path));
    }
    Ok(out)
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if k.starts_with("RELAY_") => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not RELAY_<KEY>=<VALUE>")),
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not <key>=<value>")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Throughput,
    Latency,
    Order,
    /// The relay on one broker beside a three-broker cluster (`--kafka-nodes 3`).
    KafkaCluster,
    /// A transfer from POST to COMPLETED through transaction-service, the relay and Kafka.
    Settle,
    /// Debezium's Outbox Event Router and relay-cdc's `debezium` format on the same rows,
    /// record by record; fails on a difference relay-cdc does not document. Needs Java
    /// 17+ and, on first use, Maven.
    DebeziumCompare,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Throughput => "throughput",
            Part::Latency => "latency",
            Part::Order => "order",
            Part::KafkaCluster => "kafka-cluster",
            Part::Settle => "settle",
            Part::DebeziumCompare => "debezium-compare",
        })
    }
}

/// One throughput workload: a preloaded backlog of `rows` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub rows_per_txn: u32,
    pub payload: usize,
    pub rows: u64,
}

impl Workload {
    pub fn txns(&self) -> u64 {
        self.rows / u64::from(self.rows_per_txn)
    }

    /// The row label in tables, e.g. `10 rows/txn, 1 KiB`.
    pub fn label(&self) -> String {
        format!(
            "{} rows/txn, {}",
            self.rows_per_txn,
            crate::table::bytes(self.payload)
        )
    }
}

/// What a run measures.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workloads: Vec<Workload>,
    pub rates: Vec<Rate>,
    pub duration: Duration,
    pub latency_payload: usize,
    pub generator_connections: usize,
    pub poll_intervals: Vec<Duration>,
    pub poll_batch: i64,
    pub pairs: u64,
    pub parts: Vec<Part>,
    /// Delivery modes of the relay, in the order given, each once.
    pub deliveries: Vec<Delivery>,
    /// Capture modes of the relay's throughput and settle runs, in the order given, each once.
    pub captures: Vec<Capture>,
    /// Debezium as a further system (off unless `--debezium`).
    pub debezium: bool,
    /// (label, relay-cdc binary) measured beside this build in the throughput runs.
    pub relay_baselines: Vec<(String, PathBuf)>,
    pub outage: Option<Duration>,
    /// What `--only settle` measures; `None` when it is not in the run.
    pub settle: Option<SettlePlan>,
}

impl Plan {
    /// Whether the tables compare delivery modes (exactly-once is in the run): then
    /// they gain the columns that tell the modes apart. A default run prints them as
    /// before.
    pub fn compares_delivery(&self) -> bool {
        self.deliveries.contains(&Delivery::ExactlyOnce)
    }

    /// Whether the tables compare capture modes (messages are in the run): then they
    /// gain a capture column and the writer's and the whole pipeline's CPU.
    pub fn compares_capture(&self) -> bool {
        self.captures.contains(&Capture::Messages)
    }
}

/// What the settle part measures, from the options.
#[derive(Debug, Clone)]
pub struct SettlePlan {
    /// (label, transaction-service binary): this build first, then baselines.
    pub services: Vec<(String, PathBuf)>,
    pub accounts: usize,
    pub rates: Vec<u32>,
    pub clients: usize,
    pub duration: Duration,
    /// Transfers of the backlog phase (0: no such phase).
    pub backlog: usize,
    /// Capture modes of the service and the relay, each binary measured once per mode.
    pub captures: Vec<Capture>,
}

impl Options {
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let rows = self
            .rows
            .unwrap_or(if self.quick { 2_000 } else { 300_000 });
        let shapes: Vec<(u32, usize)> = if !self.rows_per_txn.is_empty() || !self.payload.is_empty()
        {
            let rpt = if self.rows_per_txn.is_empty() {
                vec![10]
            } else {
                self.rows_per_txn.clone()
            };
            let pl = if self.payload.is_empty() {
                vec![100]
            } else {
                self.payload.clone()
            };
            rpt.iter()
                .flat_map(|r| pl.iter().map(move |p| (*r, *p)))
                .collect()
        } else if self.full {
            [1, 10, 1000]
                .into_iter()
                .flat_map(|r| [100, 1024, 16384].map(move |p| (r, p)))
                .collect()
        } else if self.quick {
            vec![(1, 100), (1000, 1024)]
        } else {
            vec![(1, 100), (10, 100), (1000, 100), (10, 1024), (10, 16384)]
        };
        let mut workloads = Vec::new();
        for (rows_per_txn, payload) in shapes {
            anyhow::ensure!(rows_per_txn > 0, "--rows-per-txn must be positive");
            anyhow::ensure!(payload >= 40, "--payload must be at least 40 bytes");
            let cap = (self.max_mib * 1024 * 1024) / payload as u64;
            let r = rows.min(cap).max(u64::from(rows_per_txn));
            // Whole transactions only.
            let r = r.div_ceil(u64::from(rows_per_txn)) * u64::from(rows_per_txn);
            workloads.push(Workload {
                rows_per_txn,
                payload,
                rows: r,
            });
        }
        let rates = if !self.rates.is_empty() {
            self.rates.clone()
        } else if self.quick {
            vec![Rate::Fixed(500)]
        } else {
            vec![Rate::Fixed(1000), Rate::Fixed(5000)]
        };
        anyhow::ensure!(self.poll_batch > 0, "--poll-batch must be positive");
        anyhow::ensure!(
            self.generator_connections > 0,
            "--generator-connections must be positive"
        );
        let mut deliveries = Vec::new();
        for d in &self.delivery {
            if !deliveries.contains(d) {
                deliveries.push(*d);
            }
        }
        anyhow::ensure!(!deliveries.is_empty(), "--delivery needs a mode");
        let mut captures = Vec::new();
        for c in &self.capture {
            if !captures.contains(c) {
                captures.push(*c);
            }
        }
        anyhow::ensure!(!captures.is_empty(), "--capture needs a mode");
        if let Some((k, _)) = self
            .relay_env
            .iter()
            .find(|(k, _)| Capture::is_relay_setting(k))
        {
            anyhow::bail!("{k} is set per measurement from --capture, not with --relay-env");
        }
        anyhow::ensure!(
            matches!(self.kafka_nodes, 1 | 3),
            "--kafka-nodes takes 1 (the shared broker) or 3 (also a private three-broker cluster), not {}",
            self.kafka_nodes
        );
        let mut parts = self.only.clone();
        if self.kafka_nodes == 3 && !parts.contains(&Part::KafkaCluster) {
            parts.push(Part::KafkaCluster);
        }
        if let Some((k, _)) = self.relay_env.iter().find(|(k, _)| {
            matches!(
                k.as_str(),
                "RELAY_KAFKA__DELIVERY"
                    | "RELAY_KAFKA__CHECKPOINT_TOPIC"
                    | "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX"
            )
        }) {
            anyhow::bail!("{k} is set per measurement from --delivery, not with --relay-env");
        }
        let relay_baselines = labelled_binaries("--relay-baseline", &self.relay_baseline)?;
        anyhow::ensure!(
            self.baseline_fillfactor.is_none() || !relay_baselines.is_empty(),
            "--baseline-fillfactor applies to --relay-baseline measurements: name one"
        );
        Ok(Plan {
            workloads,
            rates,
            duration: Duration::from_secs(self.duration.unwrap_or(if self.quick { 2 } else { 5 })),
            latency_payload: 100,
            generator_connections: self.generator_connections,
            poll_intervals: self
                .poll_interval_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            poll_batch: self.poll_batch,
            pairs: self.pairs.unwrap_or(if self.quick { 10 } else { 200 }),
            settle: parts
                .contains(&Part::Settle)
                .then(|| self.settle_plan())
                .transpose()?,
            parts,
            deliveries,
            captures,
            debezium: self.debezium,
            relay_baselines,
            outage: self.outage.then(|| Duration::from_secs(self.outage_secs)),
        })
    }
}

impl Options {
    fn settle_plan(&self) -> anyhow::Result<SettlePlan> {
        let this = match &self.transaction_service_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(|d| d.join("transaction-service"))
                .unwrap_or_default(),
        };
        anyhow::ensure!(
            this.exists(),
            "no transaction-service binary at {} (cargo build --release -p transaction-service, or --transaction-service-bin)",
            this.display()
        );
        let mut services = vec![("this build".to_string(), this)];
        services.extend(labelled_binaries(
            "--settle-baseline",
            &self.settle_baseline,
        )?);
        anyhow::ensure!(
            self.settle_accounts >= 2,
            "--settle-accounts needs at least 2"
        );
        anyhow::ensure!(self.settle_clients > 0, "--settle-clients must be positive");
        anyhow::ensure!(
            self.settle_rates.iter().all(|r| *r > 0),
            "--settle-rates must be positive"
        );
        Ok(SettlePlan {
            services,
            accounts: self.settle_accounts,
            rates: self.settle_rates.clone(),
            clients: self.settle_clients,
            duration: Duration::from_secs(self.settle_seconds.max(1)),
            backlog: self.settle_backlog,
            captures: self.capture.iter().fold(Vec::new(), |mut v, c| {
                if !v.contains(c) {
                    v.push(*c);
                }
                v
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Plan {
        Options::try_parse_from([&["relay-bench"], args].concat())
            .unwrap()
            .plan()
            .unwrap()
    }

    #[test]
    fn relay_baselines_are_labelled_binaries_that_exist() {
        let me = std::env::current_exe().unwrap();
        let me = me.display();
        let p = plan(&["--relay-baseline", &format!("before={me}")]);
        assert_eq!(p.relay_baselines.len(), 1);
        assert_eq!(p.relay_baselines[0].0, "before");

        let missing =
            Options::try_parse_from(["relay-bench", "--relay-baseline", "old=/nonexistent/relay"])
                .unwrap()
                .plan()
                .err()
                .unwrap()
                .to_string();
        assert!(
            missing.contains("--relay-baseline old=/nonexistent/relay: no such binary"),
            "{missing}"
        );

        let twice = Options::try_parse_from([
            "relay-bench",
            "--relay-baseline",
            &format!("a={me}"),
            "--relay-baseline",
            &format!("a={me}"),
        ])
        .unwrap()
        .plan()
        .err()
        .unwrap()
        .to_string();
        assert!(twice.contains("is taken"), "{twice}");
    }

    #[test]
    fn the_default_run_is_bounded_and_the_full_one_is_the_matrix() {
        let p = plan(&[]);
        assert_eq!(p.workloads.len(), 5);
        assert_eq!(p.rates, vec![Rate::Fixed(1000), Rate::Fixed(5000)]);
        assert_eq!(plan(&["--full"]).workloads.len(), 9);
        // 16 KiB payloads are capped by --max-mib (128 MiB → 8192 rows, rounded up to whole transactions).
        let big = p.workloads.iter().find(|w| w.payload == 16384).unwrap();
        assert_eq!(big.rows, 8200);
    }

    #[test]
    fn workloads_hold_whole_transactions() {
        let p = plan(&[
            "--rows-per-txn",
            "1000",
            "--payload",
            "100",
            "--rows",
            "1500",
        ]);
        assert_eq!(p.workloads[0].rows, 2000);
        assert_eq!(p.workloads[0].txns(), 2);
    }

    #[test]
    fn quick_is_small() {
        let p = plan(&["--quick"]);
        assert!(p.workloads.iter().all(|w| w.rows <= 2000));
        assert_eq!(p.duration, Duration::from_secs(2));
        assert_eq!(p.pairs, 10);
        assert!(!p.debezium, "a quick run never needs Maven or a JVM");
    }

    #[test]
    fn debezium_runs_only_when_asked() {
        assert!(!plan(&[]).debezium);
        assert!(plan(&["--debezium"]).debezium);
        assert!(plan(&["--quick", "--debezium"]).debezium);
        let o = Options::try_parse_from([
            "relay-bench",
            "--debezium-set",
            "poll.interval.ms=50",
            "--debezium-set",
            "worker.producer.batch.size=65536",
        ])
        .unwrap();
        assert_eq!(
            o.debezium_set,
            [
                ("poll.interval.ms".to_string(), "50".to_string()),
                ("worker.producer.batch.size".into(), "65536".into())
            ]
        );
        assert!(Options::try_parse_from(["relay-bench", "--debezium-set", "x"]).is_err());
    }

    #[test]
    fn the_relay_runs_at_least_once_unless_told_otherwise() {
        let p = plan(&[]);
        assert_eq!(p.deliveries, vec![Delivery::AtLeastOnce]);
        assert!(!p.compares_delivery());
        let both = plan(&["--delivery", "at-least-once,exactly-once,at-least-once"]);
        assert_eq!(
            both.deliveries,
            vec![Delivery::AtLeastOnce, Delivery::ExactlyOnce]
        );
        assert!(both.compares_delivery());
    }

    #[test]
    fn three_kafka_nodes_add_the_cluster_comparison_to_the_other_parts() {
        assert!(!plan(&[]).parts.contains(&Part::KafkaCluster));
        let p = plan(&["--kafka-nodes", "3", "--only", "throughput"]);
        assert_eq!(p.parts, vec![Part::Throughput, Part::KafkaCluster]);
        let alone = plan(&["--only", "kafka-cluster"]);
        assert_eq!(alone.parts, vec![Part::KafkaCluster]);
        let e = Options::try_parse_from(["relay-bench", "--kafka-nodes", "2"])
            .unwrap()
            .plan()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kafka-nodes takes 1"), "{e}");
    }

    #[test]
    fn the_relay_reads_rows_unless_told_otherwise() {
        assert_eq!(plan(&[]).captures, vec![Capture::Table]);
        assert_eq!(
            plan(&["--capture", "table,messages,table"]).captures,
            vec![Capture::Table, Capture::Messages]
        );
        let e = Options::try_parse_from([
            "relay-bench",
            "--relay-env",
            "RELAY_SOURCES__BENCH__CAPTURE=messages",
        ])
        .unwrap()
        .plan()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--capture"), "{e}");
    }

    #[test]
    fn a_baseline_fillfactor_needs_a_baseline_and_a_sane_value() {
        let me = std::env::current_exe().unwrap();
        let me = me.display();
        let p = Options::try_parse_from([
            "relay-bench".to_string(),
            "--relay-baseline".into(),
            format!("ff80={me}"),
            "--baseline-fillfactor".into(),
            "80".into(),
        ])
        .unwrap();
        assert_eq!(p.baseline_fillfactor, Some(80));
        assert!(p.plan().is_ok());
        let alone = Options::try_parse_from(["relay-bench", "--baseline-fillfactor", "80"])
            .unwrap()
            .plan()
            .unwrap_err()
            .to_string();
        assert!(alone.contains("--relay-baseline"), "{alone}");
        assert!(Options::try_parse_from(["relay-bench", "--baseline-fillfactor", "5"]).is_err());
    }

    #[test]
    fn the_debezium_comparison_runs_only_when_named() {
        assert!(!plan(&[]).parts.contains(&Part::DebeziumCompare));
        assert_eq!(
            plan(&["--only", "debezium-compare"]).parts,
            vec![Part::DebeziumCompare]
        );
    }

    #[test]
    fn delivery_settings_are_not_taken_from_relay_env() {
        let e = Options::try_parse_from([
            "relay-bench",
            "--relay-env",
            "RELAY_KAFKA__DELIVERY=exactly-once",
        ])
        .unwrap()
        .plan()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--delivery"), "{e}");
    }
}
