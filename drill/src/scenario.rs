//! One scenario from a clean state to its verdict.
//!
//! Each scenario gets databases, replication slots, topics and a consumer group of its
//! own, so its counts are its own: fresh `drill_s<N>_users` / `drill_s<N>_tx`
//! databases (migrated by the services at start-up), slots of the same names, topics
//! `drill.<run>.s<N>.outbox.event.{user,transaction}`; in exactly-once mode also the
//! relay's checkpoint topic `drill.<run>.s<N>.checkpoints` and transactional ids
//! `drill.<run>.s<N>.relay-<source>` (shared by the scenario's relays, so a new
//! active relay fences the old one, and by no other scenario). Then: both services and
//! the relay start, the load runs while the scenario's faults are injected, the load
//! stops, everything is given time to converge, the processes stop, and every outbox
//! row of both databases is compared with everything the topics hold.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::RDKafkaErrorCode;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::kafka::{self, Collector, Isolation, Seen};
use crate::load::{Load, LoadConfig, LoadSummary, Rng, Target, ROLLED_BACK_EVENT};
use testkit::proc::{command, Process};
use testkit::{free_port, Delivery, Proxy, RelayConfig, RelayProcess};

use crate::stack::{Service, StackConfig};
use crate::verify::{self, Committed, Tally};

/// The drills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    RelayKill,
    KafkaOutage,
    PgRestart,
    Standby,
    AckBeforeMark,
    Rollbacks,
    PrimaryFailover,
    KafkaLeaderFailover,
}

impl Scenario {
    /// What runs by default: every drill that needs nothing beyond the stack.
    pub const ALL: [Scenario; 6] = [
        Scenario::RelayKill,
        Scenario::KafkaOutage,
        Scenario::PgRestart,
        Scenario::Standby,
        Scenario::AckBeforeMark,
        Scenario::Rollbacks,
    ];

    pub fn number(self) -> u8 {
        match self {
            Scenario::RelayKill => 1,
            Scenario::KafkaOutage => 2,
            Scenario::PgRestart => 3,
            Scenario::Standby => 4,
            Scenario::AckBeforeMark => 5,
            Scenario::Rollbacks => 6,
            Scenario::PrimaryFailover => 7,
            Scenario::KafkaLeaderFailover => 8,
        }
    }

    pub fn from_number(n: u8) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .chain([Scenario::PrimaryFailover, Scenario::KafkaLeaderFailover])
            .find(|s| s.number() == n)
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::RelayKill => "relay kill -9 at random moments",
            Scenario::KafkaOutage => "Kafka broker stopped",
            Scenario::PgRestart => "PostgreSQL fast-shutdown restart",
            Scenario::Standby => "active relay killed, standby takes over",
            Scenario::AckBeforeMark => "crash between Kafka ack and PROCESSED",
            Scenario::Rollbacks => "rolled-back transactions under load",
            Scenario::PrimaryFailover => "PostgreSQL primary killed, standby promoted",
            Scenario::KafkaLeaderFailover => {
                "Kafka cluster: leader killed, rolling restart, too few in-sync replicas"
            }
        }
    }
}

/// The binaries the drill starts.
#[derive(Debug, Clone)]
pub struct Bins {
    pub user_service: PathBuf,
    pub transaction_service: PathBuf,
    pub relay: PathBuf,
}

/// How long and how hard each scenario runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Load time per scenario (scenario 2 runs longer when the outage needs it).
    pub duration: Duration,
    pub kafka_outage: Duration,
    /// Relay kills in scenario 1 (at least 10).
    pub kills: usize,
    /// Failovers in scenario 4.
    pub failovers: usize,
    /// Crashes with acked-but-unmarked rows in scenario 5.
    pub ack_kills: usize,
    /// Bound on waiting for everything to settle after the load.
    pub converge_timeout: Duration,
    pub load: LoadConfig,
}

/// Everything scenarios share.
pub struct Ctx {
    pub stack: StackConfig,
    pub bins: Bins,
    pub run_id: String,
    pub log_dir: PathBuf,
    pub http: reqwest::Client,
    pub plan: Plan,
    pub rng: Rng,
    /// Keep a passed scenario's topics (with `--keep-stack`, for inspection).
    pub keep: bool,
    pub delivery: Delivery,
    /// Scenario 7: failover slots synced to the standby (PostgreSQL 17+), or off to
    /// show the reconciliation fallback.
    pub slot_sync: bool,
}

/// One end-to-end check and whether it held.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What a scenario found.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    /// The relays' delivery mode, which decides whether duplicates fail the verdict.
    pub delivery: Delivery,
    /// Every committed row against what a `read_committed` consumer read: the verdict.
    pub tally: Tally,
    /// Duplicates as a `read_uncommitted` consumer saw them (records of aborted Kafka
    /// transactions included); informational. `None` if the scenario stopped before.
    pub duplicates_uncommitted: Option<usize>,
    /// Per fault: from the fault's end until every row pending at that moment was in
    /// Kafka (`None`: never, within the bound).
    pub recoveries: Vec<Option<Duration>>,
    /// Scenario 4: from kill -9 of the active relay until the standby streams every source.
    pub takeovers: Vec<Duration>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    /// The scenario could not run to its verdict.
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl Outcome {
    /// An outcome before anything ran.
    pub fn new(scenario: Scenario, delivery: Delivery) -> Outcome {
        Outcome {
            scenario,
            delivery,
            tally: Tally::default(),
            duplicates_uncommitted: None,
            recoveries: Vec::new(),
            takeovers: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            error: None,
            elapsed: Duration::ZERO,
        }
    }

    /// The verdict: nothing lost, invented or out of order, every end-to-end check
    /// holds, and in exactly-once mode no event read twice by a `read_committed`
    /// consumer. What a `read_uncommitted` consumer saw never decides it.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.tally.lost == 0
            && self.tally.invented == 0
            && self.tally.order_violations() == 0
            && !self.duplicates_forbidden()
            && self.checks.iter().all(|c| c.ok)
    }

    /// Exactly-once mode, and `read_committed` read an event more than once.
    pub fn duplicates_forbidden(&self) -> bool {
        self.delivery == Delivery::ExactlyOnce && self.tally.duplicates > 0
    }
}

/// Names of one scenario's databases, slots and topics.
struct Names {
    users_db: String,
    tx_db: String,
    prefix: String,
    user_topic: String,
    tx_topic: String,
    /// Exactly-once: the relay's checkpoint topic, deleted with the scenario's topics.
    checkpoint_topic: String,
    /// Exactly-once: `transactional.id` = this + the source name.
    transactional_id_prefix: String,
    group: String,
}

impl Names {
    fn new(run_id: &str, sc: Scenario) -> Names {
        let n = sc.number();
        let prefix = format!("drill.{run_id}.s{n}.");
        Names {
            users_db: format!("drill_s{n}_users"),
            tx_db: format!("drill_s{n}_tx"),
            user_topic: format!("{prefix}outbox.event.user"),
            tx_topic: format!("{prefix}outbox.event.transaction"),
            checkpoint_topic: format!("{prefix}checkpoints"),
            transactional_id_prefix: format!("{prefix}relay-"),
            group: format!("drill-{run_id}-s{n}"),
            prefix,
        }
    }

    fn topic_for(&self, aggregate_type: &str) -> String {
        format!("{}outbox.event.{aggregate_type}", self.prefix)
    }
}

/// Runs `sc` and always returns its outcome; processes and slots are cleaned up.
pub async fn run(ctx: &mut Ctx, sc: Scenario) -> Outcome {
    let started = Instant::now();
    let names = Names::new(&ctx.run_id, sc);
    let mut out = Outcome::new(sc, ctx.delivery);
    if let Err(e) = run_inner(ctx, sc, &names, &mut out).await {
        out.error = Some(format!("{e:#}"));
    }
    if sc == Scenario::PrimaryFailover {
        // The promoted standby goes; the old primary comes back for what runs next.
        if let Err(e) = ctx.stack.run("standby-down").await {
            out.notes
                .push(format!("could not remove the standby: {e:#}"));
        }
    }
    // Processes are gone (dropped with the world); slots must not outlive the scenario.
    if let Err(e) = ctx.stack.drop_slots(&[&names.users_db, &names.tx_db]).await {
        out.notes.push(format!("could not drop the slots: {e:#}"));
    }
    if out.passed() && !ctx.keep {
        let mut topics = vec![names.user_topic.clone(), names.tx_topic.clone()];
        if ctx.delivery == Delivery::ExactlyOnce {
            topics.push(names.checkpoint_topic.clone());
        }
        kafka::delete_topics(&ctx.stack.brokers(), &topics).await;
    }
    out.elapsed = started.elapsed();
    out
}

/// A scenario's running processes and connections.
struct World<'a> {
    ctx: &'a Ctx,
    sc: Scenario,
    names: &'a Names,
    users_pool: PgPool,
    tx_pool: PgPool,
    /// Reads `read_committed`: the verdict, recovery times, scenario 5's evidence.
    collector: Collector,
    /// Reads `read_uncommitted`: aborted copies too, for the informational column.
    uncommitted: Collector,
    user_svc: Option<Process>,
    tx_svc: Option<Process>,
    user_url: String,
    tx_url: String,
    relays: [Option<RelayProcess>; 2],
    relay_ports: [u16; 2],
    relay_env: Vec<(String, String)>,
    recoveries: Vec<JoinHandle<Option<Duration>>>,
    /// Where the services, the relay and the drill's own pools connect: PostgreSQL, or
    /// in scenario 7 the proxy that plays the virtual IP.
    pg_port: u16,
    proxy: Option<Proxy>,
    /// When the load's own deadline passes: after it, nothing new reaches the relay.
    load_deadline: Instant,
}

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one recovery measurement.
const RECOVERY_BOUND: Duration = Duration::from_secs(600);
/// How long the load may run past its window and the planned outage before it stops
/// by itself (see `run_inner`).
const LOAD_SAFETY_NET: Duration = Duration::from_secs(900);
/// Scenario 8's rolling restart: how long it waits for every partition to be fully
/// replicated before stopping the next broker; it goes on regardless after that (and
/// says so in the notes).
const ISR_WAIT: Duration = Duration::from_secs(60);

async fn run_inner(
    ctx: &mut Ctx,
    sc: Scenario,
    names: &Names,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let mut rng = ctx.rng.fork();
    let ctx: &Ctx = ctx;
    let stack = &ctx.stack;
    stack
        .fresh_databases(&[
            (&names.users_db, Service::Users),
            (&names.tx_db, Service::Transactions),
        ])
        .await
        .context("creating the scenario's databases")?;
    let mut proxy = None;
    if sc == Scenario::PrimaryFailover {
        let version = stack.server_version_num().await?;
        if ctx.slot_sync && version < 170_000 {
            bail!(
                "scenario 7 with slot sync needs PostgreSQL 17 or newer (this stack runs {version}): run PG_VERSION=17 scripts/drill --scenarios 7, or add --slot-sync off"
            );
        }
        // After the scenario's databases exist: the base backup carries them.
        stack
            .run("standby-up")
            .await
            .context("starting the standby")?;
        let p = Proxy::start(([127, 0, 0, 1], stack.pg_port)).await?;
        out.notes.push(format!(
            "PostgreSQL {}.{}: primary on {}, streaming standby on {}, clients through a proxy on {} (the virtual IP); failover slots {}",
            version / 10_000,
            version % 10_000,
            stack.pg_port,
            stack.standby_port(),
            p.port,
            if ctx.slot_sync { "on, synced to the standby" } else { "off (failover_slot = false)" }
        ));
        proxy = Some(p);
    }
    let pg_port = proxy.as_ref().map_or(stack.pg_port, |p| p.port);
    if sc == Scenario::KafkaLeaderFailover && stack.kafka_nodes() != 3 {
        bail!("scenario 8 needs a three-broker cluster: run KAFKA_NODES=3 scripts/drill --scenarios 8");
    }
    let brokers = stack.brokers();
    kafka::create_topics(
        &brokers,
        &[names.user_topic.clone(), names.tx_topic.clone()],
    )
    .await?;
    let topics = [names.user_topic.clone(), names.tx_topic.clone()];
    let collector = Collector::start(&brokers, &topics, Isolation::ReadCommitted)?;
    let uncommitted = Collector::start(&brokers, &topics, Isolation::ReadUncommitted)?;

    let mut w = World {
        ctx,
        sc,
        names,
        users_pool: stack.pool_at(&names.users_db, pg_port)?,
        tx_pool: stack.pool_at(&names.tx_db, pg_port)?,
        collector,
        uncommitted,
        user_svc: None,
        tx_svc: None,
        user_url: String::new(),
        tx_url: String::new(),
        relays: [None, None],
        relay_ports: [free_port(), free_port()],
        relay_env: relay_env(stack, names, sc, ctx.delivery, (pg_port, ctx.slot_sync))?,
        recoveries: Vec::new(),
        pg_port,
        proxy,
        load_deadline: Instant::now(),
    };
    w.start_services().await?;
    let t = w.start_relay(0)?;
    w.wait_relay_ready(0).await?;
    out.notes.push(format!(
        "relay streaming {:.1} s after start",
        t.elapsed().as_secs_f64()
    ));
    if sc == Scenario::Standby {
        w.start_relay(1)?;
        w.wait_healthy(1).await?;
        let standby_ready = w.relay_ready(1).await;
        out.notes.push(format!(
            "standby started beside the active relay; its /readyz: {}",
            if standby_ready {
                "200 (unexpected)"
            } else {
                "503 (waiting for the slots)"
            }
        ));
    }

    let plan = &ctx.plan;
    let mut load_cfg = plan.load.clone();
    if sc == Scenario::Rollbacks {
        load_cfg.rollbacks = true;
        load_cfg.failing_share = 0.15;
    }
    // The window's end stops the load; this deadline is only the net under a drill that
    // hangs. It must outlast the slowest fault routine: scenario 8's rolling restart
    // took 184 s on a loaded CI machine, and a load stopped by an earlier 200 s limit
    // left the relay nothing to send during the outage that followed.
    let hard_limit = plan.duration + plan.kafka_outage + LOAD_SAFETY_NET;
    let load = Load::start(
        Target {
            http: ctx.http.clone(),
            user_url: w.user_url.clone(),
            tx_url: w.tx_url.clone(),
            tag: format!("{}-s{}", ctx.run_id, sc.number()),
            users_pool: w.users_pool.clone(),
            tx_pool: w.tx_pool.clone(),
        },
        &load_cfg,
        hard_limit,
        &mut rng,
    );
    let window_start = Instant::now();
    w.load_deadline = window_start + hard_limit;
    let faults = w.inject(window_start, &mut rng, out).await;
    let window_end = (window_start + plan.duration).max(Instant::now() + Duration::from_secs(2));
    tokio::time::sleep_until(window_end.into()).await;
    let accounts_seen = load.accounts();
    let summary = load.stop().await;
    out.notes.push(format!(
        "load ran {:.1} s ({accounts_seen} accounts open when it stopped): {}",
        window_start.elapsed().as_secs_f64(),
        summary.describe()
    ));
    // A fault routine that failed leaves the world in an unknown state: report it, but
    // still stop, converge and count what can be counted.
    if let Err(e) = &faults {
        out.checks.push(Check {
            name: "faults injected as planned".into(),
            ok: false,
            detail: format!("{e:#}"),
        });
    }
    w.ensure_relay_running().await?;
    w.finish(summary, out).await
}

/// The relays' environment; `pg_port` is where they reach PostgreSQL, `slot_sync`
/// whether scenario 7's slots are failover slots.
fn relay_env(
    stack: &StackConfig,
    names: &Names,
    sc: Scenario,
    delivery: Delivery,
    (pg_port, slot_sync): (u16, bool),
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = vec![
        ("RELAY_KAFKA__BROKERS".to_string(), stack.brokers()),
        (
            "RELAY_KAFKA__TOPIC_TEMPLATE".to_string(),
            format!("{}outbox.event.{{aggregate_type}}", names.prefix),
        ),
        ("RUST_LOG".to_string(), "info,rdkafka=warn".to_string()),
    ];
    // On the secured stack: its own principal, over SASL_SSL.
    for (k, v) in stack.kafka_security("relay_cdc")? {
        let key = k.replace('.', "_").to_uppercase();
        env.push((format!("RELAY_KAFKA__PROPERTIES__{key}"), v));
    }
    let (user, password) = stack.relay_role()?;
    for (source, db) in [
        ("USERS_DB", &names.users_db),
        ("TRANSACTION_DB", &names.tx_db),
    ] {
        let p = format!("RELAY_SOURCES__{source}__");
        env.extend([
            (format!("{p}HOST"), stack.host().to_string()),
            (format!("{p}PORT"), pg_port.to_string()),
            (format!("{p}USER"), user.clone()),
            (format!("{p}PASSWORD"), password.clone()),
            (format!("{p}DATABASE"), db.clone()),
            (format!("{p}SLOT"), db.clone()),
        ]);
        for (k, v) in stack.pg_tls() {
            env.push((format!("{p}{}", k.to_uppercase()), v));
        }
    }
    if sc == Scenario::PrimaryFailover && !slot_sync {
        for source in ["USERS_DB", "TRANSACTION_DB"] {
            env.push((
                format!("RELAY_SOURCES__{source}__FAILOVER_SLOT"),
                "false".into(),
            ));
        }
    }
    if sc == Scenario::AckBeforeMark {
        // Marking lags the acks by seconds: a crash lands between ack and PROCESSED.
        env.push(("RELAY_PIPELINE__MARK_INTERVAL_MS".into(), "3000".into()));
        env.push(("RELAY_PIPELINE__MARK_BATCH_SIZE".into(), "1000000".into()));
    }
    if delivery == Delivery::ExactlyOnce {
        env.extend([
            (
                "RELAY_KAFKA__DELIVERY".to_string(),
                delivery.as_str().to_string(),
            ),
            (
                "RELAY_KAFKA__CHECKPOINT_TOPIC".to_string(),
                names.checkpoint_topic.clone(),
            ),
            (
                "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX".to_string(),
                names.transactional_id_prefix.clone(),
            ),
        ]);
    }
    Ok(env)
}

impl World<'_> {
    fn log(&self, what: &str) -> PathBuf {
        self.ctx
            .log_dir
            .join(format!("s{}-{what}.log", self.sc.number()))
    }

    async fn start_services(&mut self) -> anyhow::Result<()> {
        let stack = &self.ctx.stack;
        // Each service as its own role (the admin on the plain stack), over TLS on the
        // secured one.
        let db = |name: &str, service: Service| -> anyhow::Result<Vec<(String, String)>> {
            let (user, password) = stack.service_role(service)?;
            let mut env = vec![
                ("DB_HOST".to_string(), stack.host().to_string()),
                ("DB_PORT".to_string(), self.pg_port.to_string()),
                ("DB_USER".to_string(), user),
                ("DB_PASSWORD".to_string(), password),
                ("DB_NAME".to_string(), name.to_string()),
                ("RUST_LOG".to_string(), "info,tower_http=warn".to_string()),
            ];
            for (k, v) in stack.pg_tls() {
                env.push((format!("DB_{}", k.to_uppercase()), v));
            }
            Ok(env)
        };
        let user_port = free_port();
        let mut env = db(&self.names.users_db, Service::Users)?;
        env.push(("SERVER_PORT".into(), user_port.to_string()));
        let mut user = Process::spawn(
            "user-service",
            command(&self.ctx.bins.user_service, &[], &env),
            self.log("user-service"),
        )?;
        let tx_port = free_port();
        let mut env = db(&self.names.tx_db, Service::Transactions)?;
        for (k, v) in stack.kafka_security("transaction_service")? {
            env.push((format!("KAFKA_{}", k.replace('.', "_").to_uppercase()), v));
        }
        env.extend([
            ("SERVER_HOST".to_string(), "127.0.0.1".to_string()),
            ("SERVER_PORT".to_string(), tx_port.to_string()),
            ("KAFKA_BROKERS".to_string(), stack.brokers()),
            ("KAFKA_GROUP_ID".to_string(), self.names.group.clone()),
            (
                "USER_EVENTS_TOPIC".to_string(),
                self.names.user_topic.clone(),
            ),
            (
                "TRANSACTION_EVENTS_TOPIC".to_string(),
                self.names.tx_topic.clone(),
            ),
        ]);
        let mut tx = Process::spawn(
            "transaction-service",
            command(&self.ctx.bins.transaction_service, &[], &env),
            self.log("transaction-service"),
        )?;
        self.user_url = format!("http://127.0.0.1:{user_port}");
        self.tx_url = format!("http://127.0.0.1:{tx_port}");
        let http = &self.ctx.http;
        user.wait_http_ok(http, &format!("{}/readyz", self.user_url), READY_TIMEOUT)
            .await?;
        tx.wait_http_ok(http, &format!("{}/readyz", self.tx_url), READY_TIMEOUT)
            .await?;
        self.user_svc = Some(user);
        self.tx_svc = Some(tx);
        // The services have created their outbox tables: the relay's role may read them.
        stack
            .grant_relay(&[&self.names.users_db, &self.names.tx_db])
            .await
            .context("granting the relay its rights")?;
        Ok(())
    }

    /// Starts relay instance `i` (0 = "a", 1 = "b"); returns when it was started.
    fn start_relay(&mut self, i: usize) -> anyhow::Result<Instant> {
        let name = ["relay-a", "relay-b"][i];
        let p = RelayConfig::new(&self.ctx.bins.relay)
            .named(name)
            .envs(self.relay_env.iter().cloned())
            .set(
                "RELAY_ADMIN__LISTEN",
                format!("127.0.0.1:{}", self.relay_ports[i]),
            )
            .log_to(self.log(name))
            .spawn()?;
        self.relays[i] = Some(p);
        Ok(Instant::now())
    }

    fn kill_relay(&mut self, i: usize) {
        if let Some(p) = self.relays[i].take() {
            p.kill();
        }
    }

    /// The sum of relay `i`'s series of `name` with `labels`; `None` when it does not
    /// run or answer.
    async fn relay_metric(&self, i: usize, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let relay = self.relays[i].as_ref()?;
        relay.metrics().await.ok()?.sum(name, labels)
    }

    async fn relay_ready(&self, i: usize) -> bool {
        match &self.relays[i] {
            Some(r) => r.is_ready().await,
            None => false,
        }
    }

    async fn wait_relay_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let p = self.relays[i].as_mut().context("relay not running")?;
        p.wait_ready(READY_TIMEOUT).await
    }

    async fn wait_healthy(&mut self, i: usize) -> anyhow::Result<()> {
        let p = self.relays[i].as_mut().context("relay not running")?;
        p.wait_healthy(READY_TIMEOUT).await
    }

    /// Outbox ids still PENDING in both databases.
    async fn pending_ids(&self) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        for pool in [&self.users_pool, &self.tx_pool] {
            let rows: Vec<(String,)> =
                sqlx::query_as("select id::text from outbox where status = 'PENDING'")
                    .fetch_all(pool)
                    .await?;
            ids.extend(rows.into_iter().map(|(i,)| i));
        }
        Ok(ids)
    }

    /// Starts measuring a recovery: from now until every row pending now is in Kafka.
    async fn begin_recovery(&mut self) {
        let start = Instant::now();
        let ids = loop {
            match self.pending_ids().await {
                Ok(ids) => break ids,
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(_) => break Vec::new(),
            }
        };
        let seen: Seen = self.collector.seen();
        self.recoveries.push(tokio::spawn(async move {
            loop {
                if seen.has_all(&ids) {
                    return Some(start.elapsed());
                }
                if start.elapsed() > RECOVERY_BOUND {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    /// Injects the scenario's faults during the load window.
    async fn inject(
        &mut self,
        start: Instant,
        rng: &mut Rng,
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        let ctx = self.ctx;
        let plan = &ctx.plan;
        let d = plan.duration.as_secs_f64();
        let at = |f: f64| start + Duration::from_secs_f64(d * f);
        match self.sc {
            Scenario::RelayKill => {
                let mut times: Vec<f64> =
                    (0..plan.kills).map(|_| 0.05 + 0.85 * rng.unit()).collect();
                times.sort_by(f64::total_cmp);
                for f in &times {
                    tokio::time::sleep_until(at(*f).into()).await;
                    self.kill_relay(0);
                    self.start_relay(0)?;
                    self.begin_recovery().await;
                }
                out.notes.push(format!(
                    "kill -9 + restart of the relay {} times, at {} s",
                    times.len(),
                    times
                        .iter()
                        .map(|f| format!("{:.1}", f * d))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Scenario::KafkaOutage => {
                tokio::time::sleep_until(at(0.2).into()).await;
                let t = Instant::now();
                ctx.stack.run("kafka-stop").await?;
                let stopped = Instant::now();
                tokio::time::sleep(plan.kafka_outage).await;
                ctx.stack.run("kafka-start").await?;
                out.notes.push(format!(
                    "broker stopped at {:.1} s (stop took {:.1} s), down {:.1} s, back (start-up included) after {:.1} s",
                    (t - start).as_secs_f64(),
                    (stopped - t).as_secs_f64(),
                    plan.kafka_outage.as_secs_f64(),
                    t.elapsed().as_secs_f64()
                ));
                self.begin_recovery().await;
            }
            Scenario::PgRestart => {
                let fractions: &[f64] = if d >= 40.0 { &[0.3, 0.7] } else { &[0.4] };
                for f in fractions {
                    tokio::time::sleep_until(at(*f).into()).await;
                    let t = Instant::now();
                    ctx.stack.run("pg-restart").await?;
                    out.notes.push(format!(
                        "PostgreSQL restarted (fast shutdown) at {:.1} s, took {:.1} s",
                        (t - start).as_secs_f64(),
                        t.elapsed().as_secs_f64()
                    ));
                    self.begin_recovery().await;
                }
            }
            Scenario::Standby => {
                let n = plan.failovers.max(1);
                let mut active = 0;
                for k in 0..n {
                    let f = 0.1 + 0.8 * (k as f64 + 0.5) / n as f64;
                    tokio::time::sleep_until(at(f).into()).await;
                    let standby = 1 - active;
                    if !self.relay_ready(active).await {
                        bail!(
                            "relay {} was not streaming before failover {}",
                            ["a", "b"][active],
                            k + 1
                        );
                    }
                    self.kill_relay(active);
                    let killed = Instant::now();
                    self.begin_recovery().await;
                    self.wait_relay_ready(standby).await.with_context(|| {
                        format!("standby did not take over (failover {})", k + 1)
                    })?;
                    out.takeovers.push(killed.elapsed());
                    // The dead one comes back as the new standby.
                    self.start_relay(active)?;
                    self.wait_healthy(active).await?;
                    active = standby;
                }
                out.notes.push(format!(
                    "{} failovers; takeover (kill -9 of the active relay until the standby streams both sources): {}",
                    out.takeovers.len(),
                    out.takeovers.iter().map(|t| format!("{:.2} s", t.as_secs_f64())).collect::<Vec<_>>().join(", ")
                ));
            }
            Scenario::AckBeforeMark => {
                let n = plan.ack_kills.max(1);
                // Per kill: rows in Kafka yet PENDING that no earlier kill counted, and
                // how many rows were PENDING in all.
                let mut hits: Vec<(usize, usize)> = Vec::new();
                let mut counted: HashSet<String> = HashSet::new();
                let seen = self.collector.seen();
                for k in 0..n {
                    let f = 0.1 + 0.8 * (k as f64 + 0.5) / n as f64;
                    tokio::time::sleep_until(at(f).into()).await;
                    // Kill while Kafka holds rows this relay acked and has not marked yet
                    // (fresh ones: not the replayed rows an earlier kill left behind).
                    let wait = Instant::now();
                    while wait.elapsed() < Duration::from_secs(15) {
                        match self.pending_ids().await {
                            Ok(ids)
                                if seen.read_of(&ids).iter().any(|id| !counted.contains(id)) =>
                            {
                                break
                            }
                            _ => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    self.kill_relay(0);
                    // Evidence, taken with the relay dead.
                    let ids = self.pending_ids().await.unwrap_or_default();
                    let fresh: Vec<String> = seen
                        .read_of(&ids)
                        .into_iter()
                        .filter(|id| !counted.contains(id))
                        .collect();
                    hits.push((fresh.len(), ids.len()));
                    counted.extend(fresh);
                    self.start_relay(0)?;
                    self.begin_recovery().await;
                }
                out.notes.push(format!(
                    "relay run with pipeline.mark_interval_ms = 3000; kill -9 {} times, each while rows were in Kafka but still PENDING (acked-unmarked rows / PENDING rows at the kill): {}",
                    hits.len(),
                    hits.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>().join(", ")
                ));
                let hit = hits.iter().filter(|(a, _)| *a > 0).count();
                out.checks.push(Check {
                    name: "every crash landed between ack and PROCESSED".into(),
                    ok: hit == hits.len(),
                    detail: format!(
                        "{hit} of {} kills had freshly acked, unmarked rows",
                        hits.len()
                    ),
                });
            }
            Scenario::Rollbacks => {}
            Scenario::KafkaLeaderFailover => {
                let stack = &ctx.stack;
                let brokers = stack.brokers();
                let topics = [self.names.user_topic.clone(), self.names.tx_topic.clone()];
                // 1. kill -9 the broker that leads most of the scenario's partitions.
                tokio::time::sleep_until(at(0.15).into()).await;
                let leader = kafka::busiest_leader(&brokers, &topics)?;
                let t = Instant::now();
                stack.run(&format!("kafka-node kill {leader}")).await?;
                tokio::time::sleep(Duration::from_secs_f64((d * 0.15).min(20.0))).await;
                stack.run(&format!("kafka-node start {leader}")).await?;
                out.notes.push(format!(
                    "broker {leader} (leading the most partitions) killed -9 at {:.1} s, back {:.1} s later",
                    (t - start).as_secs_f64(),
                    t.elapsed().as_secs_f64()
                ));
                self.begin_recovery().await;
                // 2. a rolling restart: each broker stopped and started in turn, the
                // next one only once every partition is fully replicated again (as an
                // operator does; stopping a broker while the previous one is still out
                // of the ISR made its controlled shutdown wait ~25 s for leaders that
                // had nowhere to go).
                tokio::time::sleep_until(at(0.4).into()).await;
                let t = Instant::now();
                let mut waits = Vec::new();
                for node in 1..=3 {
                    waits.push(
                        match kafka::wait_fully_replicated(&brokers, ISR_WAIT).await {
                            Ok(waited) => format!("{:.1} s", waited.as_secs_f64()),
                            Err(n) => {
                                format!("gave up after {ISR_WAIT:?} with {n} under-replicated")
                            }
                        },
                    );
                    stack.run(&format!("kafka-node stop {node}")).await?;
                    stack.run(&format!("kafka-node start {node}")).await?;
                }
                out.notes.push(format!(
                    "rolling restart of the three brokers at {:.1} s took {:.1} s (waits for full replication before each stop: {})",
                    (t - start).as_secs_f64(),
                    t.elapsed().as_secs_f64(),
                    waits.join(", ")
                ));
                self.begin_recovery().await;
                // 3. two brokers down: the controllers (a quorum of five voters) move
                // every leader to the survivor and shrink the ISR to it, so no write can
                // reach min.insync.replicas = 2 for the outage; then back. A probe topic
                // of the drill's own shows what a plain acks=all write gets meanwhile.
                tokio::time::sleep_until(at(0.6).into()).await;
                let probe_topic = format!("{}.probe", self.names.tx_topic);
                kafka::create_topics(&brokers, std::slice::from_ref(&probe_topic)).await?;
                const TRANSIENT: &str = "relay_kafka_transient_errors_total";
                // Records the leader refused for now (NOT_ENOUGH_REPLICAS) and that were
                // sent again; connection errors to the stopped brokers are counted apart.
                const RESENT: &[(&str, &str)] = &[("kind", "resent")];
                let transient_before = self.relay_metric(0, TRANSIENT, RESENT).await.unwrap_or(0.0);
                let t = Instant::now();
                let survivor = 1 + (leader % 3);
                let down: Vec<u32> = (1..=3).filter(|n| *n != survivor).collect();
                // Both at once, as one failure takes them; started again together too.
                let on_both = |verb: &str| {
                    down.iter()
                        .map(|n| format!("kafka-node {verb} {n}"))
                        .collect::<Vec<_>>()
                };
                let stop = on_both("stop");
                tokio::try_join!(stack.run(&stop[0]), stack.run(&stop[1]))?;
                let probe = {
                    let (brokers, topic) = (brokers.clone(), probe_topic.clone());
                    let until = Instant::now() + plan.kafka_outage;
                    tokio::spawn(async move {
                        // Until the leader refuses for want of replicas, or the outage ends.
                        let mut seen = Vec::new();
                        while Instant::now() < until {
                            let got = kafka::probe_write(&brokers, &topic).await;
                            let refused = matches!(
                                got,
                                Ok(Some(
                                    RDKafkaErrorCode::NotEnoughReplicas
                                        | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                                ))
                            );
                            seen.push(match got {
                                Ok(Some(code)) => format!("{code:?}"),
                                Ok(None) => "accepted".to_string(),
                                Err(e) => format!("{e:#}"),
                            });
                            if refused {
                                return (true, seen);
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        (false, seen)
                    })
                };
                let pid = self.relays[0].as_ref().map(RelayProcess::pid);
                let mut max_rss = 0u64;
                let mut max_down = 0f64;
                let until = Instant::now() + plan.kafka_outage;
                let mut tick = 0u32;
                while Instant::now() < until {
                    if let Some(bytes) = pid.and_then(|p| testkit::proc::rss_bytes(p).ok()) {
                        max_rss = max_rss.max(bytes / 1024);
                    }
                    if tick.is_multiple_of(4) {
                        let down = self
                            .relay_metric(0, "relay_kafka_brokers", &[("state", "down")])
                            .await;
                        max_down = max_down.max(down.unwrap_or(0.0));
                    }
                    tick += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let (refused, probes) = probe.await.unwrap_or_default();
                let start_again = on_both("start");
                tokio::try_join!(stack.run(&start_again[0]), stack.run(&start_again[1]))?;
                kafka::delete_topics(&brokers, &[probe_topic]).await;
                out.checks.push(Check {
                    name: "writes were refused for too few in-sync replicas".into(),
                    ok: refused,
                    detail: format!(
                        "a plain acks=all write during the outage got: {}",
                        probes.join(", ")
                    ),
                });
                out.notes.push(format!(
                    "brokers {down:?} stopped at {:.1} s for {:.0} s (only broker {survivor} left: writes cannot reach 2 in-sync replicas), back after {:.1} s; relay RSS at most {:.1} MiB meanwhile",
                    (t - start).as_secs_f64(),
                    plan.kafka_outage.as_secs_f64(),
                    t.elapsed().as_secs_f64(),
                    max_rss as f64 / 1024.0
                ));
                let transient =
                    self.relay_metric(0, TRANSIENT, RESENT).await.unwrap_or(0.0) - transient_before;
                let fatal = self
                    .relay_metric(0, "relay_kafka_fatal_errors_total", &[])
                    .await
                    .unwrap_or(0.0);
                // Without load during the outage the relay has nothing to be refused.
                let load_ran = Instant::now() < self.load_deadline;
                out.checks.push(Check {
                    name: "the outage shows in the relay's metrics".into(),
                    ok: transient > 0.0 && load_ran,
                    detail: format!(
                        "relay_kafka_transient_errors_total{{kind=\"resent\"}} +{transient} over the outage, relay_kafka_brokers{{state=\"down\"}} up to {max_down} meanwhile (both sources), relay_kafka_fatal_errors_total {fatal}{}",
                        if load_ran { "" } else { "; the load had passed its deadline before the outage ended: no records to refuse" }
                    ),
                });
                out.checks.push(Check {
                    name: "relay memory bounded while writes are refused".into(),
                    ok: max_rss > 0 && max_rss < 128 * 1024,
                    detail: format!("max RSS {:.1} MiB (bound 128 MiB)", max_rss as f64 / 1024.0),
                });
                self.begin_recovery().await;
            }
            Scenario::PrimaryFailover => {
                tokio::time::sleep_until(at(0.5).into()).await;
                let stack = &ctx.stack;
                if ctx.slot_sync {
                    // The slots must be on the standby before the primary dies.
                    let waited = Instant::now();
                    let slots = [self.names.users_db.as_str(), self.names.tx_db.as_str()];
                    loop {
                        let synced = stack.synced_slots(stack.standby_port(), &slots).await?;
                        if synced == slots.len() {
                            break;
                        }
                        if waited.elapsed() > Duration::from_secs(180) {
                            bail!(
                                "the standby synced {synced} of the relay's 2 slots within 180 s"
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    out.notes.push(format!(
                        "both relay slots synced on the standby ({:.1} s of waiting)",
                        waited.elapsed().as_secs_f64()
                    ));
                }
                let t = Instant::now();
                stack.run("pg-kill").await?;
                stack.run("standby-promote").await?;
                let proxy = self
                    .proxy
                    .as_ref()
                    .context("scenario 7 runs with a proxy")?;
                proxy.move_to(([127, 0, 0, 1], stack.standby_port()));
                let moved = t.elapsed();
                out.notes.push(format!(
                    "primary killed (SIGKILL) at {:.1} s; standby promoted and the proxy moved to it (port {}) {:.2} s later",
                    (t - start).as_secs_f64(),
                    proxy.target().port(),
                    moved.as_secs_f64()
                ));
                self.begin_recovery().await;
                let streaming = async {
                    loop {
                        if self.relay_ready(0).await {
                            return t.elapsed();
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                match tokio::time::timeout(READY_TIMEOUT, streaming).await {
                    Ok(d) => {
                        out.takeovers.push(d);
                        out.notes.push(format!(
                            "relay streaming from the promoted server {:.2} s after the kill",
                            d.as_secs_f64()
                        ));
                    }
                    Err(_) => bail!(
                        "the relay did not stream from the promoted server within {} s",
                        READY_TIMEOUT.as_secs()
                    ),
                }
            }
        }
        Ok(())
    }

    /// After faults: make sure a relay runs (the one that should be active).
    async fn ensure_relay_running(&mut self) -> anyhow::Result<()> {
        for i in 0..2 {
            if let Some(p) = self.relays[i].as_mut() {
                if let Some(status) = p.exited() {
                    bail!(
                        "relay {} exited by itself with {status}; see {}",
                        ["a", "b"][i],
                        p.log().display()
                    );
                }
            }
        }
        if self.relays.iter().all(Option::is_none) {
            self.start_relay(0)?;
        }
        Ok(())
    }

    async fn count(&self, pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_as::<_, (i64,)>(sql).fetch_one(pool).await?.0)
    }

    /// The numbers that must settle: (pending outbox users, pending outbox tx, pending
    /// transactions, users, accounts).
    async fn settle_state(&self) -> anyhow::Result<[i64; 5]> {
        let pending = "select count(*) from outbox where status = 'PENDING'";
        Ok([
            self.count(&self.users_pool, pending).await?,
            self.count(&self.tx_pool, pending).await?,
            self.count(
                &self.tx_pool,
                "select count(*) from transactions where status = 'PENDING'",
            )
            .await?,
            self.count(&self.users_pool, "select count(*) from users")
                .await?,
            self.count(&self.tx_pool, "select count(*) from accounts")
                .await?,
        ])
    }

    async fn wait_settled(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last;
        loop {
            match self.settle_state().await {
                Ok([0, 0, 0, users, accounts]) if users == accounts => return Ok(start.elapsed()),
                Ok([pu, pt, ptx, users, accounts]) => {
                    last = format!(
                        "PENDING outbox rows: {pu} (users_db) + {pt} (transaction_db); PENDING transactions: {ptx}; users {users}, accounts {accounts}"
                    )
                }
                Err(e) => last = format!("{e:#}"),
            }
            if start.elapsed() > timeout {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_outbox_processed(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok([0, 0, ..]) = self.settle_state().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Converge, stop everything, then compare and check.
    async fn finish(mut self, summary: LoadSummary, out: &mut Outcome) -> anyhow::Result<()> {
        let ctx = self.ctx;
        let plan = &ctx.plan;
        let settled = self.wait_settled(plan.converge_timeout).await;
        match &settled {
            Ok(t) => out.notes.push(format!(
                "settled {:.1} s after the load stopped",
                t.as_secs_f64()
            )),
            Err(why) => out.notes.push(format!(
                "did not settle within {:?} after the load: {why}",
                plan.converge_timeout
            )),
        }

        // Services first (the transaction-service consumer may write its last events).
        let mut services_up = true;
        for (name, p) in [
            ("user-service", self.user_svc.take()),
            ("transaction-service", self.tx_svc.take()),
        ] {
            let Some(mut p) = p else { continue };
            if let Some(status) = p.exited() {
                services_up = false;
                out.notes
                    .push(format!("{name} had exited by itself with {status}"));
                continue;
            }
            match p.stop(STOP_TIMEOUT).await {
                Ok(s) if s.success() => {}
                Ok(s) => out.notes.push(format!("{name} exited with {s} on SIGTERM")),
                Err(e) => out.notes.push(format!("{name}: {e:#}")),
            }
        }
        out.checks.push(Check {
            name: "services stayed up".into(),
            ok: services_up,
            detail: if services_up {
                "both ran until SIGTERM".into()
            } else {
                "a service died".into()
            },
        });
        let processed = self.wait_outbox_processed(Duration::from_secs(60)).await;

        // Then the relays: SIGTERM, a clean exit expected.
        let mut relay_exits = Vec::new();
        for i in 0..2 {
            if let Some(p) = self.relays[i].take() {
                relay_exits.push(match p.stop(STOP_TIMEOUT).await {
                    Ok(s) => (s.success(), format!("relay {}: {s}", ["a", "b"][i])),
                    Err(e) => (false, format!("relay {}: {e:#}", ["a", "b"][i])),
                });
            }
        }
        out.checks.push(Check {
            name: "relays stop cleanly on SIGTERM".into(),
            ok: relay_exits.iter().all(|(ok, _)| *ok),
            detail: relay_exits
                .iter()
                .map(|(_, d)| d.clone())
                .collect::<Vec<_>>()
                .join("; "),
        });

        // Recovery measurements are done once everything was delivered.
        for h in self.recoveries.drain(..) {
            out.recoveries.push(
                tokio::time::timeout(Duration::from_secs(30), h)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten(),
            );
        }
        if !out.recoveries.is_empty() {
            let never = out.recoveries.iter().filter(|r| r.is_none()).count();
            out.checks.push(Check {
                name: "every fault recovered".into(),
                ok: never == 0,
                detail: format!(
                    "{never} of {} faults never saw their backlog delivered",
                    out.recoveries.len()
                ),
            });
        }

        self.collector.catch_up(Duration::from_secs(120)).await?;
        self.uncommitted.catch_up(Duration::from_secs(120)).await?;
        let rebuilt = self.collector.rebuilt() + self.uncommitted.rebuilt();
        let records = self.collector.finish();
        let records_uncommitted = self.uncommitted.finish();
        if rebuilt > 0 {
            out.notes.push(format!(
                "the drill's own consumers were rebuilt {rebuilt} times after 10 s without a record (idle, or stuck after a broker restart)"
            ));
        }

        let mut committed = Vec::new();
        for (source, pool) in [
            ("users_db", &self.users_pool),
            ("transaction_db", &self.tx_pool),
        ] {
            let rows: Vec<(String, String, String, String)> = sqlx::query_as(
                "select id::text, aggregate_type, aggregate_id, event_type from outbox",
            )
            .fetch_all(pool)
            .await?;
            committed.extend(rows.into_iter().map(
                |(id, aggregate_type, aggregate_id, event_type)| Committed {
                    id,
                    source: source.to_string(),
                    aggregate_type,
                    aggregate_id,
                    event_type,
                },
            ));
        }
        let names = self.names;
        out.tally = verify::tally(&committed, &records, |a| names.topic_for(a));
        let uncommitted = verify::tally(&committed, &records_uncommitted, |a| names.topic_for(a));
        out.duplicates_uncommitted = Some(uncommitted.duplicates);
        out.notes.push(format!(
            "{} records read back from Kafka read_committed, {} read_uncommitted ({} committed rows)",
            records.len(),
            records_uncommitted.len(),
            committed.len()
        ));

        self.end_to_end(processed, &summary, &records, out).await?;
        Ok(())
    }

    async fn end_to_end(
        &self,
        processed: bool,
        summary: &LoadSummary,
        records: &[verify::Delivered],
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        let (u, t) = (&self.users_pool, &self.tx_pool);
        let pending = "select count(*) from outbox where status = 'PENDING'";
        let (pu, pt) = (self.count(u, pending).await?, self.count(t, pending).await?);
        out.checks.push(Check {
            name: "every outbox row PROCESSED".into(),
            ok: processed && pu == 0 && pt == 0,
            detail: format!("PENDING: {pu} in users_db, {pt} in transaction_db"),
        });

        let statuses: Vec<(String, i64)> = sqlx::query_as(
            "select status, count(*) from transactions group by status order by status",
        )
        .fetch_all(t)
        .await?;
        let n = |s: &str| {
            statuses
                .iter()
                .find(|(k, _)| k == s)
                .map(|(_, c)| *c)
                .unwrap_or(0)
        };
        let transfers: Vec<(String, i64)> = sqlx::query_as(
            "select status, count(*) from transactions where from_user_id is not null group by status order by status",
        )
        .fetch_all(t)
        .await?;
        out.checks.push(Check {
            name: "every transaction COMPLETED or FAILED".into(),
            ok: n("PENDING") == 0,
            detail: format!(
                "COMPLETED {}, FAILED {}, PENDING {} (transfers: {})",
                n("COMPLETED"),
                n("FAILED"),
                n("PENDING"),
                transfers
                    .iter()
                    .map(|(s, c)| format!("{s} {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });

        let (balances, deposits, equal): (String, String, bool) = sqlx::query_as(
            "select b::text, d::text, b = d from \
             (select coalesce(sum(balance), 0) as b from accounts) x, \
             (select coalesce(sum(amount), 0) as d from transactions where from_user_id is null and status = 'COMPLETED') y",
        )
        .fetch_one(t)
        .await?;
        out.checks.push(Check {
            name: "sum of balances = sum of completed deposits".into(),
            ok: equal,
            detail: format!("balances {balances}, deposits {deposits}"),
        });

        let (bad_settled, bad_created): (i64, i64) = sqlx::query_as(
            "select \
               count(*) filter (where settled <> case when t.status = 'PENDING' then 0 else 1 end), \
               count(*) filter (where created <> 1) \
             from transactions t cross join lateral ( \
               select count(*) filter (where o.event_type in ('TransactionCompleted', 'TransactionFailed')) as settled, \
                      count(*) filter (where o.event_type = 'TransactionCreated') as created \
               from outbox o where o.aggregate_id = t.id::text) e",
        )
        .fetch_one(t)
        .await?;
        out.checks.push(Check {
            name: "one TransactionCreated and one settlement event per transaction".into(),
            ok: bad_settled == 0 && bad_created == 0,
            detail: format!("{bad_settled} with a wrong number of settlement events, {bad_created} with a wrong number of TransactionCreated"),
        });

        let users: Vec<(uuid::Uuid,)> = sqlx::query_as("select id from users order by id")
            .fetch_all(u)
            .await?;
        let accounts: Vec<(uuid::Uuid,)> =
            sqlx::query_as("select user_id from accounts order by user_id")
                .fetch_all(t)
                .await?;
        out.checks.push(Check {
            name: "an account for every user".into(),
            ok: users == accounts,
            detail: format!("{} users, {} accounts", users.len(), accounts.len()),
        });

        if self.sc == Scenario::Rollbacks || !summary.rolled_back_ids.is_empty() {
            let rolled: HashSet<&str> =
                summary.rolled_back_ids.iter().map(String::as_str).collect();
            let in_kafka = records
                .iter()
                .filter(|r| r.event_id.as_deref().is_some_and(|id| rolled.contains(id)))
                .count();
            let q = format!("select count(*) from outbox where event_type = '{ROLLED_BACK_EVENT}'");
            let in_outbox = self.count(u, &q).await? + self.count(t, &q).await?;
            out.checks.push(Check {
                name: "rolled-back rows appear nowhere".into(),
                ok: in_kafka == 0 && in_outbox == 0 && summary.rolled_back_txns > 0,
                detail: format!(
                    "{} transactions rolled back with {} outbox rows; in Kafka: {in_kafka}, in the outbox: {in_outbox}",
                    summary.rolled_back_txns,
                    summary.rolled_back_ids.len()
                ),
            });
            let failed: u64 = summary
                .stats
                .iter()
                .filter(|(k, _)| k.ends_with(" 409") || k.ends_with(" 422"))
                .map(|(_, v)| *v)
                .sum();
            out.notes.push(format!(
                "{failed} HTTP requests failed by design (409 taken e-mail, 422 unknown account)"
            ));
        }
        if self.sc == Scenario::Standby {
            out.checks.push(Check {
                name: "the standby took over every time".into(),
                ok: out.takeovers.len() == self.ctx.plan.failovers.max(1),
                detail: format!(
                    "{} of {} failovers",
                    out.takeovers.len(),
                    self.ctx.plan.failovers.max(1)
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(delivery: Delivery) -> Outcome {
        Outcome {
            tally: Tally {
                committed: 100,
                delivered: 100,
                ..Tally::default()
            },
            duplicates_uncommitted: Some(0),
            checks: vec![Check {
                name: "every outbox row PROCESSED".into(),
                ok: true,
                detail: String::new(),
            }],
            ..Outcome::new(Scenario::RelayKill, delivery)
        }
    }

    #[test]
    fn duplicates_fail_the_verdict_under_exactly_once_only() {
        for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
            assert!(clean(delivery).passed(), "{delivery:?}");
        }
        let mut o = clean(Delivery::AtLeastOnce);
        o.tally.duplicates = 7;
        assert!(o.passed(), "at-least-once allows replayed copies");
        o.delivery = Delivery::ExactlyOnce;
        assert!(o.duplicates_forbidden());
        assert!(!o.passed(), "exactly-once: read_committed duplicates fail");
    }

    #[test]
    fn what_read_uncommitted_saw_never_decides_the_verdict() {
        let mut o = clean(Delivery::ExactlyOnce);
        o.duplicates_uncommitted = Some(40);
        assert!(
            o.passed(),
            "aborted copies are visible to read_uncommitted only"
        );
    }

    #[test]
    fn every_scenario_is_held_to_the_exactly_once_rule() {
        for sc in Scenario::ALL {
            let mut o = clean(Delivery::ExactlyOnce);
            o.scenario = sc;
            o.tally.duplicates = 1;
            assert!(!o.passed(), "{sc:?}");
        }
    }

    fn stack() -> StackConfig {
        StackConfig {
            repo: PathBuf::from("/repo"),
            dir: PathBuf::from("/repo/.stack/drill"),
            pg_port: 55532,
            kafka_port: 59192,
            kafka_controller_port: 59193,
            secured: false,
        }
    }

    fn var<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn exactly_once_relays_get_the_mode_and_a_checkpoint_topic_of_the_scenario() {
        let names = Names::new("20261201120000", Scenario::Standby);
        let env = relay_env(
            &stack(),
            &names,
            Scenario::Standby,
            Delivery::ExactlyOnce,
            (55532, true),
        )
        .unwrap();
        assert_eq!(var(&env, "RELAY_KAFKA__DELIVERY"), Some("exactly-once"));
        assert_eq!(
            var(&env, "RELAY_KAFKA__CHECKPOINT_TOPIC"),
            Some("drill.20261201120000.s4.checkpoints")
        );
        assert_eq!(
            var(&env, "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX"),
            Some("drill.20261201120000.s4.relay-")
        );
        let other = Names::new("20261201120000", Scenario::RelayKill);
        assert_ne!(names.checkpoint_topic, other.checkpoint_topic);
        assert_ne!(names.transactional_id_prefix, other.transactional_id_prefix);
    }

    #[test]
    fn at_least_once_relays_run_with_the_relays_defaults() {
        let names = Names::new("20261201120000", Scenario::RelayKill);
        let env = relay_env(
            &stack(),
            &names,
            Scenario::RelayKill,
            Delivery::AtLeastOnce,
            (55532, true),
        )
        .unwrap();
        for key in [
            "RELAY_KAFKA__DELIVERY",
            "RELAY_KAFKA__CHECKPOINT_TOPIC",
            "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX",
        ] {
            assert_eq!(var(&env, key), None, "{key}");
        }
    }

    #[test]
    fn scenario_7_reaches_postgresql_through_the_proxy_and_may_turn_failover_slots_off() {
        let names = Names::new("20261201120000", Scenario::PrimaryFailover);
        let env = relay_env(
            &stack(),
            &names,
            Scenario::PrimaryFailover,
            Delivery::AtLeastOnce,
            (40001, false),
        )
        .unwrap();
        assert_eq!(var(&env, "RELAY_SOURCES__USERS_DB__PORT"), Some("40001"));
        assert_eq!(
            var(&env, "RELAY_SOURCES__TRANSACTION_DB__FAILOVER_SLOT"),
            Some("false")
        );
        let synced = relay_env(
            &stack(),
            &names,
            Scenario::PrimaryFailover,
            Delivery::AtLeastOnce,
            (40001, true),
        )
        .unwrap();
        assert_eq!(var(&synced, "RELAY_SOURCES__USERS_DB__FAILOVER_SLOT"), None);
        assert_eq!(
            Scenario::from_number(7),
            Some(Scenario::PrimaryFailover),
            "chosen by number, not in the default set"
        );
        assert!(!Scenario::ALL.contains(&Scenario::PrimaryFailover));
    }
}
