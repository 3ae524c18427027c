//! outbox-drill: failover drills that prove "nothing lost" for the outbox + relay.
//!
//! Brings up a private stack (never the shared one), then runs each scenario: both
//! services and relay-cdc as child processes, load through both HTTP services, faults
//! injected; then every outbox row of both databases is checked against what Kafka
//! holds. Prints a markdown table and exits 1 if anything was lost, invented or out of
//! order, the relays' audit published an orphan, an end-to-end check failed, or (with
//! `--delivery exactly-once`) a `read_committed` consumer read an event twice; 2 when
//! the drill itself could not run.

mod kafka;
mod load;
mod report;
mod scenario;
mod stack;
mod truth;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use load::{LoadConfig, Rng};
use scenario::{Bins, Ctx, Plan, Scenario};
use stack::{StackConfig, StackGuard};
use testkit::Delivery;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Failover drills for the outbox relay: load, faults, then every outbox row checked against Kafka"
)]
struct Cli {
    /// Load time per scenario, in seconds (`90`, `90s` or `2m`).
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    duration: Duration,
    /// The bounded version the test suite runs: 10 s of load per scenario, a 10 s broker
    /// outage, a few minutes in total.
    #[arg(long)]
    short: bool,
    /// How long the broker stays stopped in scenario 2 (default 30 s; 10 s with --short).
    #[arg(long, value_parser = parse_secs)]
    kafka_outage: Option<Duration>,
    /// Which scenarios to run, e.g. `1,4` (default: 1-6). Scenario 7, the primary
    /// failover, runs only when named, on PostgreSQL 17+ (`PG_VERSION=17 scripts/drill
    /// --scenarios 7`) unless `--slot-sync off`.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<u8>,
    /// The relays' delivery mode (`RELAY_KAFKA__DELIVERY`); with `exactly-once` a
    /// duplicate read by a `read_committed` consumer fails the scenario.
    #[arg(long, value_enum, default_value_t = Delivery::AtLeastOnce)]
    delivery: Delivery,
    /// Scenario 7: relay slots are failover slots synced to the standby (`on`, needs
    /// PostgreSQL 17+), or plain ones (`off`): after the promotion the relay then
    /// recreates its slots and publishes what is still PENDING.
    #[arg(long, value_enum, default_value_t = SlotSync::On)]
    slot_sync: SlotSync,
    /// How events travel from the services to the relays: `table` (outbox rows, the
    /// default) or `messages` / `messages:<prefix>` (transactional logical decoding
    /// messages, no table: the services get `OUTBOX_CAPTURE`, the relays' sources
    /// `capture = "messages"`, and the verdict reads what committed from a slot of the
    /// drill's own). Scenario 5 (it needs PROCESSED marking) is reported not applicable.
    #[arg(long, default_value = "table", value_parser = parse_capture)]
    capture: outbox::Capture,
    /// Sign-ups per second on user-service.
    #[arg(long, default_value_t = 10.0)]
    signups_per_s: f64,
    /// Deposits and transfers per second on transaction-service.
    #[arg(long, default_value_t = 80.0)]
    transactions_per_s: f64,
    /// Seed of the random fault times and load mix (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The private stack: `plain`, or `tls` (TLS-only PostgreSQL with least-privilege
    /// roles, SASL_SSL-only Kafka with ACLs; each component as its own principal).
    #[arg(long, value_enum, default_value_t = Security::Plain)]
    security: Security,
    /// The private stack's folder (default: <repo>/.stack/drill).
    #[arg(long)]
    stack_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 55532)]
    pg_port: u16,
    #[arg(long, default_value_t = 59192)]
    kafka_port: u16,
    #[arg(long, default_value_t = 59193)]
    kafka_controller_port: u16,
    /// Leave the private stack running afterwards (it is stopped by default), with
    /// every scenario's topics (a passed scenario's are deleted otherwise).
    #[arg(long)]
    keep_stack: bool,
    /// Where user-service, transaction-service and relay-cdc are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The repository (for scripts/stack); default: where this binary was built from.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Security {
    Plain,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SlotSync {
    On,
    Off,
}

fn parse_capture(s: &str) -> Result<outbox::Capture, String> {
    outbox::Capture::parse(s).map_err(|e| e.to_string())
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.strip_suffix('m') {
        Some(n) => (n, 60.0),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (e.g. 60, 60s, 2m)"))?;
    if !(v > 0.0 && v <= 3600.0 * 24.0) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(v * unit))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rdkafka=off,librdkafka=off,sqlx=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drill: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("drill: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let repo = match &cli.repo {
        Some(r) => r.clone(),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
    .canonicalize()
    .context("the repository folder")?;
    let stack = StackConfig {
        dir: cli
            .stack_dir
            .clone()
            .unwrap_or_else(|| repo.join(".stack/drill")),
        repo: repo.clone(),
        pg_port: cli.pg_port,
        kafka_port: cli.kafka_port,
        kafka_controller_port: cli.kafka_controller_port,
        secured: cli.security == Security::Tls,
    };
    stack.validate()?;
    anyhow::ensure!(
        !stack.secured || stack.kafka_nodes() == 1,
        "--security tls runs one broker (KAFKA_NODES=1)"
    );
    let bins = find_bins(cli.bin_dir.clone())?;
    let scenarios: Vec<Scenario> = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        cli.scenarios
            .iter()
            .map(|n| Scenario::from_number(*n).with_context(|| format!("no scenario {n} (1-7)")))
            .collect::<anyhow::Result<_>>()?
    };
    let duration = if cli.short {
        Duration::from_secs(10)
    } else {
        cli.duration
    };
    let kafka_outage = cli
        .kafka_outage
        .unwrap_or(Duration::from_secs(if cli.short { 10 } else { 30 }));
    let secs = duration.as_secs_f64();
    let plan = Plan {
        duration,
        kafka_outage,
        kills: 10.max((secs / 5.0) as usize),
        failovers: 3.max((secs / 15.0) as usize),
        ack_kills: 3.max((secs / 10.0) as usize),
        converge_timeout: Duration::from_secs(if cli.short { 120 } else { 300 }),
        load: LoadConfig {
            signups_per_s: cli.signups_per_s,
            transactions_per_s: cli.transactions_per_s,
            signup_workers: 3,
            transaction_workers: 4,
            failing_share: 0.03,
            rollbacks: false,
        },
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let log_dir = stack.dir.join("logs").join(&run_id);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    tracing::info!(run = %run_id, seed, logs = %log_dir.display(), "drill starting: {command}");

    tracing::info!(dir = %stack.dir.display(), pg_port = stack.pg_port, kafka_port = stack.kafka_port, "bringing up the private stack");
    let guard = StackGuard {
        config: stack.clone(),
        keep: cli.keep_stack,
    };
    stack.run("up").await?;
    kafka::set_security(stack.kafka_security("admin")?);

    let mut ctx = Ctx {
        stack,
        bins,
        run_id: run_id.clone(),
        log_dir: log_dir.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()?,
        plan,
        rng: Rng::new(seed),
        keep: cli.keep_stack,
        delivery: cli.delivery,
        slot_sync: cli.slot_sync == SlotSync::On,
        capture: cli.capture.clone(),
    };
    let mut outcomes = Vec::new();
    let interrupted = tokio::select! {
        biased;
        _ = testkit::shutdown_signal() => true,
        _ = async {
            for sc in &scenarios {
                tracing::info!(scenario = sc.number(), "scenario {}: {}", sc.number(), sc.title());
                let o = scenario::run(&mut ctx, *sc).await;
                tracing::info!(
                    scenario = sc.number(),
                    passed = o.passed(),
                    not_applicable = o.not_applicable.is_some(),
                    committed = o.tally.committed,
                    lost = o.tally.lost,
                    duplicates = o.tally.duplicates,
                    duplicates_uncommitted = o.duplicates_uncommitted.unwrap_or(0),
                    invented = o.tally.invented,
                    order_violations = o.tally.order_violations(),
                    relay_restarts = o.recovered.map_or(0, |r| r.relay_restarts),
                    orphans = o.orphans(),
                    error = o.error.as_deref().unwrap_or(""),
                    "scenario {} done in {:.0} s", sc.number(), o.elapsed.as_secs_f64()
                );
                outcomes.push(o);
            }
        } => false,
    };
    if interrupted {
        drop(guard);
        bail!("interrupted; child processes were killed and the private stack stopped");
    }

    let preface = format!(
        "`{command}` — run {run_id}, seed {seed}, delivery {}, capture {}, {}, {} s of load per scenario, broker outage {} s; logs in {}",
        cli.delivery.as_str(),
        cli.capture,
        match cli.security {
            Security::Plain => "plain stack",
            Security::Tls => "secured stack (TLS verify-full to PostgreSQL, SASL_SSL/SCRAM to Kafka, each component as its least-privilege principal)",
        },
        duration.as_secs_f64(),
        kafka_outage.as_secs_f64(),
        log_dir.display()
    );
    let text = report::render(&outcomes, cli.delivery, &preface);
    println!("{text}");
    if let Some(path) = &cli.report {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    drop(guard);
    Ok(outcomes.iter().all(scenario::Outcome::passed))
}

fn find_bins(dir: Option<PathBuf>) -> anyhow::Result<Bins> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("the drill binary has no folder")?
            .to_path_buf(),
    };
    let bin = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            bail!(
                "{} not found; build it (scripts/drill does: cargo build --release -p user-service -p transaction-service -p relay-cdc) or pass --bin-dir",
                p.display()
            )
        }
    };
    Ok(Bins {
        user_service: bin("user-service")?,
        transaction_service: bin("transaction-service")?,
        relay: bin("relay-cdc")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_seconds_and_minutes() {
        assert_eq!(parse_secs("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_secs("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_secs("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("0").is_err());
    }

    #[test]
    fn the_cli_parses_the_documented_flags() {
        let c = Cli::try_parse_from([
            "outbox-drill",
            "--short",
            "--scenarios",
            "1,4",
            "--pg-port",
            "6000",
        ])
        .unwrap();
        assert!(c.short);
        assert_eq!(c.scenarios, vec![1, 4]);
        assert_eq!(c.pg_port, 6000);
        assert_eq!(c.delivery, Delivery::AtLeastOnce);
        assert_eq!(c.capture, outbox::Capture::Table);
    }

    #[test]
    fn the_capture_flag_takes_the_services_own_forms() {
        let parse = |v: &str| Cli::try_parse_from(["outbox-drill", "--capture", v]);
        assert_eq!(
            parse("messages").unwrap().capture,
            outbox::Capture::messages()
        );
        assert_eq!(
            parse("messages:drill").unwrap().capture,
            outbox::Capture::Messages {
                prefix: "drill".into()
            }
        );
        assert_eq!(parse("table").unwrap().capture, outbox::Capture::Table);
        assert!(parse("rows").is_err());
        assert!(parse("messages:").is_err());
    }

    #[test]
    fn the_delivery_flag_takes_the_relays_own_names() {
        let parse = |v: &str| Cli::try_parse_from(["outbox-drill", "--delivery", v]);
        assert_eq!(
            parse("exactly-once").unwrap().delivery,
            Delivery::ExactlyOnce
        );
        assert_eq!(
            parse("at-least-once").unwrap().delivery,
            Delivery::AtLeastOnce
        );
        assert!(parse("exactly_once").is_err());
        // The names are the ones relay-cdc reads from RELAY_KAFKA__DELIVERY.
        for d in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
            assert_eq!(
                clap::ValueEnum::to_possible_value(&d).unwrap().get_name(),
                d.as_str()
            );
        }
    }
}
