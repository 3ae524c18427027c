//! `--only settle`: a transfer from `POST /api/v1/transactions` to COMPLETED, through the
//! whole system. Per transaction-service binary (this build, and `--settle-baseline`
//! ones beside it): a fresh database the service migrates itself, relay-cdc on it,
//! topics of the run's own, accounts opened from `UserCreated` records the bench
//! publishes and funded by deposits; then transfers between random accounts, first
//! paced at each `--settle-rates` rate, then as fast as `--settle-clients` closed-loop
//! clients get answers (the highest rate the service sustains), then a backlog of
//! `--settle-backlog` transfers POSTed while the relay is stopped and settled once it
//! starts again (how fast settlement goes when the POST rate does not bound it).
//! With `--capture table,messages` every binary runs once per capture mode, the service
//! (`OUTBOX_CAPTURE`) and the relay's source in the same mode, rows labelled
//! `<binary> (messages)` for the message mode.
//!
//! COMPLETED is when the settlement's `TransactionCompleted` (or `TransactionFailed`)
//! record is in Kafka, read by the bench on the transaction topic: what a downstream
//! consumer sees, a few ms (the relay's publish) after the settlement committed, for
//! any implementation of the consumer. Latency is that read time minus the POST's send
//! time, both this host's clock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use testkit::{Delivery, Metrics, TestDb};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::capture::Capture;
use crate::ctx::Ctx;
use crate::options::SettlePlan;
use crate::progress::progress;
use crate::relay;
use crate::stats::Latency;
use crate::{db, kafka};

const PARTITIONS: i32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long settlement may take to drain after the load stopped before the run fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Requests in flight at most in a paced run: beyond it a tick is not sent (the
/// service is not keeping up, and the achieved rate says so).
const PACED_IN_FLIGHT: usize = 512;

/// How a phase loads the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// POSTs paced at this rate per second.
    Rate(u32),
    /// As fast as the closed-loop clients get answers.
    ClosedLoop,
    /// This many transfers POSTed with the relay stopped, settled after it restarts.
    Backlog(usize),
}

/// One load phase of one binary.
#[derive(Debug, Clone)]
pub struct Phase {
    pub offered: Offered,
    pub posted: usize,
    pub post_rate: f64,
    /// Settlements per second from the first POST (backlog: from the relay's restart)
    /// to the last settlement.
    pub settled_rate: f64,
    /// Transfers not yet settled when the load stopped.
    pub backlog_at_end: usize,
    /// From the end of the load (backlog: the relay's restart) until the last settlement.
    pub drain_s: f64,
    pub latency: Latency,
    /// From each POST's send to its answer.
    pub post_latency: Latency,
    /// From each POST's answer to its `TransactionCreated` read from Kafka (relay-cdc's
    /// hop); `None` when none was read.
    pub relayed: Option<Latency>,
    /// From `TransactionCreated` read to `TransactionCompleted` read (the consumer's
    /// settlement and relay-cdc's second hop).
    pub applied: Option<Latency>,
    /// CPU of every backend of the service's database (its sessions, the relay's,
    /// the walsender) per 1,000 settlements.
    pub db_cpu_per_1k: f64,
    /// The service process's CPU per 1,000 settlements.
    pub service_cpu_per_1k: f64,
    pub failed: usize,
    /// Records per database transaction of the consumer over the phase, the mean ms one
    /// took, and of that the mean ms spent waiting for rows to become visible (`None`:
    /// the binary does not report batches).
    pub mean_batch: Option<(f64, f64, f64)>,
}

pub struct SettleRow {
    pub label: String,
    pub phases: Vec<Phase>,
}

/// Every binary of the plan, one after the other.
pub async fn run(ctx: &Ctx, plan: &SettlePlan) -> anyhow::Result<Vec<SettleRow>> {
    let mut rows = Vec::new();
    for capture in &plan.captures {
        for (label, bin) in &plan.services {
            let label = format!("{label}{}", capture.suffix());
            progress(format!("settle: {label} ({})", bin.display()));
            rows.push(SettleRow {
                phases: one_binary(ctx, plan, bin, *capture).await?,
                label,
            });
        }
    }
    Ok(rows)
}

async fn one_binary(
    ctx: &Ctx,
    plan: &SettlePlan,
    bin: &Path,
    capture: Capture,
) -> anyhow::Result<Vec<Phase>> {
    let brokers = ctx.stack.kafka_brokers.clone();
    // Empty: the service applies the migrations it was built with.
    let db = TestDb::create_empty("settle").await?;
    let (prefix, _) = ctx.topic_prefix();
    let (user_topic, tx_topic) = (format!("{prefix}.user"), format!("{prefix}.transaction"));
    for t in [&user_topic, &tx_topic] {
        kafka::create_topic(&brokers, t, PARTITIONS, false).await?;
    }
    let mut service = Service::start(ctx, bin, &db, &brokers, &prefix, capture).await?;
    let mut relay_spec = ctx.relay_spec(&db, &prefix, &brokers, Delivery::AtLeastOnce);
    relay_spec.extra_env.insert(0, capture.relay_env());
    let mut first = relay_spec.spawn()?;
    first.wait_ready(READY_TIMEOUT).await?;
    // `None` while a backlog builds up with the relay stopped.
    let mut relay = Some(first);
    let settled = Settlements::watch(&brokers, &tx_topic)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.clients.max(64))
        .build()?;

    let accounts = open_accounts(&db, &brokers, &user_topic, plan.accounts).await?;
    progress(format!("settle: funding {} accounts", accounts.len()));
    let mut funding = Vec::new();
    for a in &accounts {
        let body = serde_json::json!({"amount": "1000000.00", "toUserId": a});
        funding.push(post(&http, &service.url, &body).await?.id);
    }
    settled.wait_all(&funding, DRAIN_TIMEOUT).await?;

    let admin = db::connect(&ctx.stack.database_url("postgres"), "relay-bench").await?;
    let mut phases = Vec::new();
    let mut offered: Vec<Offered> = plan.rates.iter().map(|r| Offered::Rate(*r)).collect();
    offered.push(Offered::ClosedLoop);
    if plan.backlog > 0 {
        offered.push(Offered::Backlog(plan.backlog));
    }
    for phase in offered {
        // CPU is counted over the whole phase, or, for a backlog, from the relay's restart.
        let mut cpu0 = cpu_now(&admin, &db.name, service.pid).await?;
        let batches0 = service.batches(&http).await?;
        let load = Load {
            http: http.clone(),
            url: service.url.clone(),
            accounts: accounts.clone(),
            duration: plan.duration,
        };
        let (sent, post_s) = match phase {
            Offered::Rate(r) => {
                progress(format!(
                    "settle: {r} transfers/s for {} s",
                    plan.duration.as_secs()
                ));
                (load.paced(r).await?, plan.duration.as_secs_f64())
            }
            Offered::ClosedLoop => {
                progress(format!(
                    "settle: {} closed-loop clients for {} s",
                    plan.clients,
                    plan.duration.as_secs()
                ));
                (
                    load.closed_loop(plan.clients, Until::Elapsed(plan.duration))
                        .await?,
                    plan.duration.as_secs_f64(),
                )
            }
            Offered::Backlog(n) => {
                progress(format!(
                    "settle: {n} transfers POSTed with the relay stopped"
                ));
                if let Some(r) = relay.take() {
                    relay::stop(r).await?;
                }
                let started = Instant::now();
                let sent = load.closed_loop(plan.clients, Until::Posted(n)).await?;
                (sent, started.elapsed().as_secs_f64())
            }
        };
        let ended = chrono::Utc::now().timestamp_micros();
        let ids: Vec<Uuid> = sent.iter().map(|s| s.id).collect();
        if let Offered::Backlog(_) = phase {
            cpu0 = cpu_now(&admin, &db.name, service.pid).await?;
            relay = Some(relay_spec.spawn()?);
            progress("settle: relay restarted; draining the backlog".to_string());
        }
        let backlog_at_end = ids.len() - settled.count_of(&ids);
        settled.wait_all(&ids, DRAIN_TIMEOUT).await?;
        service.check_alive()?;
        if let Some(r) = relay.as_mut() {
            r.check_alive()?;
        }
        let cpu1 = cpu_now(&admin, &db.name, service.pid).await?;
        let db_cpu = testkit::proc::cpu_used(&cpu0.0, &cpu1.0);
        let svc_cpu = cpu1.1 - cpu0.1;
        let batches1 = service.batches(&http).await?;
        let mean_batch = batches0.zip(batches1).and_then(|(a, z)| {
            let batches = z.batches - a.batches;
            (batches > 0.0).then(|| {
                (
                    (z.records - a.records) / batches,
                    (z.seconds - a.seconds) * 1e3 / batches,
                    (z.waited - a.waited) * 1e3 / batches,
                )
            })
        });
        let mut p = settle_phase(
            phase,
            &sent,
            &settled,
            ended,
            backlog_at_end,
            (db_cpu, svc_cpu),
            post_s,
        )?;
        p.mean_batch = mean_batch;
        phases.push(p);
    }
    settled.stop();
    if let Some(r) = relay {
        relay::stop(r).await?;
    }
    service.terminate().await?;
    db::wait_disconnected(&admin, &db.name).await?;
    testkit::delete_topics(&brokers, &[&user_topic, &tx_topic]).await;
    Ok(phases)
}

/// CPU seconds so far of each backend of database `db` and of process `service`.
async fn cpu_now(
    admin: &tokio_postgres::Client,
    db: &str,
    service: u32,
) -> anyhow::Result<(HashMap<u32, f64>, f64)> {
    let backends = db::system_backends(admin, db).await?;
    Ok((
        testkit::proc::cpu_by_pid(&backends),
        testkit::proc::cpu_seconds(service)?,
    ))
}

/// What one phase measured. `cpu` is (database, service) seconds over the phase (for a
/// backlog from the relay's restart: settlement's own work, the relay's publish included).
fn settle_phase(
    offered: Offered,
    sent: &[Sent],
    settled: &Settlements,
    ended_micros: i64,
    backlog_at_end: usize,
    cpu: (f64, f64),
    post_s: f64,
) -> anyhow::Result<Phase> {
    let seen = settled.seen.lock().expect("not poisoned");
    let created = settled.created.lock().expect("not poisoned");
    let (mut relayed, mut applied) = (Vec::new(), Vec::new());
    let mut micros = Vec::with_capacity(sent.len());
    let mut failed = 0;
    let mut last = i64::MIN;
    let mut post_micros = Vec::with_capacity(sent.len());
    for Sent { id, at, answered } in sent {
        let s = seen.get(id).context("a transfer was never settled")?;
        micros.push(s.read_micros - at);
        post_micros.push(answered - at);
        if let Some(c) = created.get(id) {
            relayed.push(c - answered);
            applied.push(s.read_micros - c);
        }
        last = last.max(s.read_micros);
        failed += usize::from(!s.completed);
    }
    let first = match offered {
        Offered::Backlog(_) => ended_micros,
        _ => sent.iter().map(|s| s.at).min().unwrap_or(0),
    };
    let span_s = (last - first).max(1) as f64 / 1e6;
    let drain_s = (last - ended_micros).max(0) as f64 / 1e6;
    let n = sent.len().max(1) as f64;
    Ok(Phase {
        offered,
        posted: sent.len(),
        post_rate: sent.len() as f64 / post_s.max(1e-3),
        settled_rate: sent.len() as f64 / span_s,
        backlog_at_end,
        drain_s,
        latency: Latency::from_micros(micros).context("no transfer was posted")?,
        post_latency: Latency::from_micros(post_micros).context("no transfer was posted")?,
        relayed: Latency::from_micros(relayed),
        applied: Latency::from_micros(applied),
        db_cpu_per_1k: cpu.0 * 1000.0 / n,
        service_cpu_per_1k: cpu.1 * 1000.0 / n,
        failed,
        mean_batch: None,
    })
}

/// `UserCreated` records for `n` new users, as relay-cdc publishes user-service's;
/// returns once the service opened every account.
async fn open_accounts(
    db: &TestDb,
    brokers: &str,
    topic: &str,
    n: usize,
) -> anyhow::Result<Vec<Uuid>> {
    progress(format!("settle: opening {n} accounts"));
    let producer: FutureProducer = testkit::kafka_config(brokers)
        .set("enable.idempotence", "true")
        .create()?;
    let users: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    for u in &users {
        let (id, event_id) = (u.to_string(), Uuid::now_v7().to_string());
        let payload =
            serde_json::json!({"id": id, "email": format!("{id}@bench.example")}).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event_id",
                value: Some(&event_id),
            })
            .insert(Header {
                key: "event_type",
                value: Some("UserCreated"),
            })
            .insert(Header {
                key: "aggregate_type",
                value: Some("user"),
            })
            .insert(Header {
                key: "aggregate_id",
                value: Some(&id),
            });
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&id)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("publishing UserCreated: {e}"))?;
    }
    let c = db::connect(&db.url, "relay-bench").await?;
    testkit::wait_for("the accounts opened", READY_TIMEOUT, || async {
        let open: i64 = c
            .query_one("select count(*) from accounts", &[])
            .await?
            .get(0);
        Ok((open as usize >= n).then_some(()))
    })
    .await?;
    Ok(users)
}

/// One accepted POST.
#[derive(Debug, Clone, Copy)]
struct Sent {
    id: Uuid,
    /// When the request was sent, Unix µs.
    at: i64,
    /// When its answer was read, Unix µs.
    answered: i64,
}

/// POSTs one transaction; returns its id, send and answer times.
async fn post(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> anyhow::Result<Sent> {
    let at = chrono::Utc::now().timestamp_micros();
    let r = http
        .post(format!("{url}/api/v1/transactions"))
        .json(body)
        .send()
        .await
        .context("POST /api/v1/transactions")?;
    let status = r.status();
    let text = r.text().await?;
    ensure!(status.as_u16() == 202, "POST answered {status}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let id = v["transactionId"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .with_context(|| format!("no transactionId in {text}"))?;
    let answered = chrono::Utc::now().timestamp_micros();
    Ok(Sent { id, at, answered })
}

/// Transfers of 0.01 between random pairs of funded accounts.
struct Load {
    http: reqwest::Client,
    url: String,
    accounts: Vec<Uuid>,
    duration: Duration,
}

impl Load {
    fn transfer(&self, n: u64) -> serde_json::Value {
        // A cheap, well-spread pair from the request number (no RNG state to share).
        let k = self.accounts.len() as u64;
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let from = (h % k) as usize;
        let to = (from + 1 + ((h >> 32) % (k - 1)) as usize) % k as usize;
        serde_json::json!({
            "amount": "0.01",
            "fromUserId": self.accounts[from],
            "toUserId": self.accounts[to],
            "description": "bench"
        })
    }

    /// `rate` POSTs per second for the duration, each on its own task.
    async fn paced(&self, rate: u32) -> anyhow::Result<Vec<Sent>> {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let permits = Arc::new(tokio::sync::Semaphore::new(PACED_IN_FLIGHT));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + self.duration;
        let mut tasks = tokio::task::JoinSet::new();
        let mut n = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue; // the service is behind by PACED_IN_FLIGHT requests
            };
            let (http, url, body) = (self.http.clone(), self.url.clone(), self.transfer(n));
            let (sent, errors) = (sent.clone(), errors.clone());
            n += 1;
            tasks.spawn(async move {
                match post(&http, &url, &body).await {
                    Ok(s) => sent.lock().expect("not poisoned").push(s),
                    Err(e) => errors.lock().expect("not poisoned").push(format!("{e:#}")),
                }
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
        check_errors(&errors)?;
        let sent = std::mem::take(&mut *sent.lock().expect("not poisoned"));
        Ok(sent)
    }

    /// `clients` loops, each POSTing as soon as its previous answer came, until `until`.
    async fn closed_loop(&self, clients: usize, until: Until) -> anyhow::Result<Vec<Sent>> {
        let (end, limit) = match until {
            Until::Elapsed(d) => (Some(Instant::now() + d), usize::MAX),
            Until::Posted(n) => (None, n),
        };
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let me = Load {
                http: self.http.clone(),
                url: self.url.clone(),
                accounts: self.accounts.clone(),
                duration: self.duration,
            };
            let next = next.clone();
            tasks.spawn(async move {
                let mut out = Vec::new();
                while end.is_none_or(|e| Instant::now() < e) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= limit {
                        break;
                    }
                    out.push(post(&me.http, &me.url, &me.transfer(k as u64)).await?);
                }
                anyhow::Ok(out)
            });
        }
        let mut sent = Vec::new();
        while let Some(r) = tasks.join_next().await {
            sent.extend(r??);
        }
        Ok(sent)
    }
}

/// When closed-loop clients stop.
#[derive(Debug, Clone, Copy)]
enum Until {
    Elapsed(Duration),
    Posted(usize),
}

fn check_errors(errors: &Mutex<Vec<String>>) -> anyhow::Result<()> {
    let errors = errors.lock().expect("not poisoned");
    if let Some(first) = errors.first() {
        bail!("{} POSTs failed; the first: {first}", errors.len());
    }
    Ok(())
}

/// One settlement as the bench read it.
#[derive(Debug, Clone, Copy)]
struct Settled {
    read_micros: i64,
    completed: bool,
}

/// Reads the transaction topic on a thread of its own and notes, per transaction id
/// (the record key), when its settlement record arrived.
struct Settlements {
    seen: Arc<Mutex<HashMap<Uuid, Settled>>>,
    /// When each transaction's `TransactionCreated` was read (Unix µs).
    created: Arc<Mutex<HashMap<Uuid, i64>>>,
    stop: Arc<AtomicBool>,
}

impl Settlements {
    fn watch(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = testkit::kafka_config(brokers)
            .set(
                "group.id",
                format!("relay-bench-settle-{}", testkit::unique_suffix()),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        consumer.subscribe(&[topic])?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let created = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let (seen, created, stop) = (seen.clone(), created.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let read_micros = chrono::Utc::now().timestamp_micros();
                    let event_type = m
                        .headers()
                        .and_then(|hs| {
                            use rdkafka::message::Headers;
                            hs.iter()
                                .find(|h| h.key == "event_type")
                                .and_then(|h| h.value)
                        })
                        .unwrap_or_default();
                    let Some(id) = m.key().and_then(|k| Uuid::try_parse_ascii(k).ok()) else {
                        continue;
                    };
                    let completed = match event_type {
                        b"TransactionCompleted" => true,
                        b"TransactionFailed" => false,
                        b"TransactionCreated" => {
                            let mut created = created.lock().expect("not poisoned");
                            created.entry(id).or_insert(read_micros);
                            continue;
                        }
                        _ => continue,
                    };
                    seen.lock()
                        .expect("not poisoned")
                        .entry(id)
                        .or_insert(Settled {
                            read_micros,
                            completed,
                        });
                }
            }
        });
        Ok(Self {
            seen,
            created,
            stop,
        })
    }

    fn count_of(&self, ids: &[Uuid]) -> usize {
        let seen = self.seen.lock().expect("not poisoned");
        ids.iter().filter(|id| seen.contains_key(id)).count()
    }

    async fn wait_all(&self, ids: &[Uuid], timeout: Duration) -> anyhow::Result<()> {
        testkit::wait_for("every transfer settled", timeout, || async {
            Ok((self.count_of(ids) == ids.len()).then_some(()))
        })
        .await
        .with_context(|| format!("{} of {} settled", self.count_of(ids), ids.len()))
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Settlements {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The consumer's batch counters as its `/metrics` says them.
#[derive(Debug, Clone, Copy)]
struct Batches {
    records: f64,
    batches: f64,
    seconds: f64,
    /// Seconds spent waiting for transaction rows to become visible.
    waited: f64,
}

/// transaction-service as a child process on the run's database and topics.
struct Service {
    child: Child,
    pid: u32,
    url: String,
    log: PathBuf,
}

impl Service {
    async fn start(
        ctx: &Ctx,
        bin: &Path,
        db: &TestDb,
        brokers: &str,
        prefix: &str,
        capture: Capture,
    ) -> anyhow::Result<Self> {
        let (capture_key, capture_value) = capture.service_env();
        let port = testkit::free_port();
        let log = ctx.log_dir.join(format!(
            "transaction-service-{}.log",
            testkit::unique_suffix()
        ));
        let child = Command::new(bin)
            .env("DATABASE_URL", &db.url)
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", port.to_string())
            .env("KAFKA_BROKERS", brokers)
            .env("KAFKA_GROUP_ID", format!("{prefix}.settle"))
            .env("USER_EVENTS_TOPIC", format!("{prefix}.user"))
            .env("TRANSACTION_EVENTS_TOPIC", format!("{prefix}.transaction"))
            .env(capture_key, capture_value)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).context("creating the service's log")?)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the service exited at once")?;
        let mut s = Self {
            child,
            pid,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        let ready = format!("{}/readyz", s.url);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            s.check_alive()?;
            if http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!(
                    "transaction-service not ready within {READY_TIMEOUT:?}; log: {}",
                    s.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The consumer's batch counters so far; `None` from a binary that does not batch
    /// (no `consumer_batch_events` histogram).
    async fn batches(&self, http: &reqwest::Client) -> anyhow::Result<Option<Batches>> {
        let m = Metrics::scrape(http, &format!("{}/metrics", self.url)).await?;
        let sum = m.sum("consumer_batch_events_sum", &[]);
        let count = m.sum("consumer_batch_events_count", &[]);
        let secs = m.sum("consumer_batch_duration_seconds_sum", &[]);
        let wait = m.sum("consumer_visibility_wait_seconds_total", &[]);
        Ok(sum
            .zip(count)
            .zip(secs)
            .map(|((records, batches), seconds)| Batches {
                records,
                batches,
                seconds,
                waited: wait.unwrap_or(0.0),
            }))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "transaction-service exited with {status}; log: {}",
                self.log.display()
            );
        }
        Ok(())
    }

    async fn terminate(mut self) -> anyhow::Result<()> {
        // Fails only when the process is already gone: the wait below reaps it.
        let _ = testkit::proc::signal(self.pid, "TERM");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("transaction-service did not stop on SIGTERM")??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_never_go_to_their_sender_and_reach_every_account() {
        let load = Load {
            http: reqwest::Client::new(),
            url: String::new(),
            accounts: (0..7).map(|_| Uuid::now_v7()).collect(),
            duration: Duration::ZERO,
        };
        let mut from_seen = std::collections::HashSet::new();
        let mut to_seen = std::collections::HashSet::new();
        for n in 0..1000 {
            let t = load.transfer(n);
            assert_ne!(t["fromUserId"], t["toUserId"], "{t}");
            from_seen.insert(t["fromUserId"].to_string());
            to_seen.insert(t["toUserId"].to_string());
        }
        assert_eq!((from_seen.len(), to_seen.len()), (7, 7));
    }

    #[test]
    fn a_phase_measures_from_each_post_to_its_settlement() {
        let settled = Settlements {
            seen: Arc::default(),
            created: Arc::default(),
            stop: Arc::default(),
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        settled.seen.lock().unwrap().extend([
            (
                a,
                Settled {
                    read_micros: 1_050_000,
                    completed: true,
                },
            ),
            (
                b,
                Settled {
                    read_micros: 3_000_000,
                    completed: false,
                },
            ),
        ]);
        settled.created.lock().unwrap().insert(a, 1_030_000);
        let sent = [
            Sent {
                id: a,
                at: 1_000_000,
                answered: 1_010_000,
            },
            Sent {
                id: b,
                at: 1_500_000,
                answered: 1_520_000,
            },
        ];
        let p = settle_phase(
            Offered::Rate(2),
            &sent,
            &settled,
            2_000_000,
            1,
            (0.5, 0.2),
            1.0,
        )
        .unwrap();
        assert_eq!((p.posted, p.failed, p.backlog_at_end), (2, 1, 1));
        assert_eq!((p.latency.p50, p.latency.max), (50.0, 1500.0));
        assert_eq!(p.post_latency.max, 20.0);
        // Only `a`'s TransactionCreated was read: the hops are measured over `a` alone.
        assert_eq!(p.relayed.map(|l| l.max), Some(20.0));
        assert_eq!(p.applied.map(|l| l.max), Some(20.0));
        assert_eq!(p.drain_s, 1.0);
        assert_eq!(p.settled_rate, 1.0); // 2 transfers over 1 s .. 3 s
        assert_eq!((p.db_cpu_per_1k, p.service_cpu_per_1k), (250.0, 100.0));
        // A transfer never settled is an error, not a silent gap.
        let missing = [Sent {
            id: Uuid::now_v7(),
            at: 0,
            answered: 0,
        }];
        assert!(settle_phase(
            Offered::ClosedLoop,
            &missing,
            &settled,
            0,
            0,
            (0.0, 0.0),
            1.0
        )
        .is_err());
        // A backlog's rate runs from the relay's restart, not from the first POST.
        let p = settle_phase(
            Offered::Backlog(2),
            &sent,
            &settled,
            2_000_000,
            2,
            (1.0, 1.0),
            0.5,
        )
        .unwrap();
        assert_eq!((p.settled_rate, p.drain_s, p.post_rate), (2.0, 1.0, 4.0));
    }
}
