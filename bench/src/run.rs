//! Orchestration: every measurement on a fresh database (and topic) of its own, the
//! systems one after another on the same stack (relay-cdc once per delivery mode of
//! the plan, Debezium when asked), then the tables.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use testkit::TestDb;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::ceiling::{self, Recv};
use crate::ctx::{
    check_delivery, delete_topics, failed, probe_topic, topics_of, Ctx, System,
    DEBEZIUM_START_TIMEOUT, PARTITIONS, READY_TIMEOUT, READ_IDLE,
};
use crate::db::{self, Backend};
use crate::debezium::{self, ConnectProcess};
use crate::ingest;
use crate::kafka;
use crate::load::{self, Rate};
use crate::options::{Delivery, Options, Part, Plan, Workload};
use crate::polling::Poller;
use crate::proc_stats;
use crate::progress::progress;
use crate::relay::{self, KafkaTransactions, RelayProcess};
use crate::stats::{self, Latency};
use crate::table::{self, Table};

/// How often the PostgreSQL backends of a throughput run are sampled for CPU time.
const BACKEND_SAMPLE_EVERY: Duration = Duration::from_millis(250);
const EVENTS_PUBLISHED: &str = "relay_events_published_total";
const RECORDS_IN_FLIGHT: &str = "relay_records_in_flight";

/// How long a throughput run may take before it counts as stuck (≥ 500 rows/s).
fn stuck_after(rows: u64) -> Duration {
    Duration::from_secs(60 + rows / 500)
}

// --- throughput -----------------------------------------------------------------------

pub struct RelayThroughput {
    pub delivery: Delivery,
    /// Until the server's confirmed position covered the load (acked, marked, confirmed).
    pub rows_per_s: f64,
    /// Until Kafka acked the last record (sampled every 50 ms).
    pub acked_rows_per_s: f64,
    pub startup_s: f64,
    pub cpu_per_100k: f64,
    /// CPU of the relay's ordinary PostgreSQL sessions (marking, housekeeping).
    pub pg_marking_cpu_per_100k: f64,
    /// CPU of the walsender serving the relay's slot.
    pub walsender_cpu_per_100k: f64,
    pub peak_rss: u64,
    /// The Kafka transactions of the timed run (none when at-least-once).
    pub transactions: KafkaTransactions,
}

/// Debezium draining the same kind of backlog.
pub struct DebeziumThroughput {
    /// Rows / seconds from the JVM's start until the last record was in Kafka.
    pub rows_per_s: f64,
    /// Rows / seconds from the first record in Kafka to the last.
    pub streaming_rows_per_s: f64,
    /// Seconds from the JVM's start until the first record was in Kafka.
    pub first_record_s: f64,
    /// CPU of the JVM over its whole life (start-up included).
    pub cpu_per_100k: f64,
    pub walsender_cpu_per_100k: f64,
    pub peak_rss: u64,
}

pub struct ThroughputRow {
    pub workload: Workload,
    pub ceiling: f64,
    /// The Kafka ingest ceiling: relay-shaped records from librdkafka alone.
    pub ingest: f64,
    /// What that producer's process spent per 100,000 records: librdkafka's own cost.
    pub ingest_cpu_per_100k: f64,
    /// One per delivery mode, in the plan's order.
    pub relays: Vec<RelayThroughput>,
    pub polling: f64,
    /// `None` when the plan leaves Debezium out; `Err` says why it did not run.
    pub debezium: Option<Result<DebeziumThroughput, String>>,
}

impl ThroughputRow {
    fn relay(&self, delivery: Delivery) -> Option<&RelayThroughput> {
        self.relays.iter().find(|r| r.delivery == delivery)
    }
}

/// pg_recvlogical over a slot created before the load, up to the load's end LSN.
async fn ceiling_throughput(ctx: &Ctx, w: &Workload) -> anyhow::Result<f64> {
    let db = db::fresh().await?;
    // As the admin: on the secured stack the database's owner may not replicate.
    let c = db::connect(&ctx.stack.database_url(&db.name), "relay-bench").await?;
    let slot = db::create_slot(&c, "bench_ceiling").await?;
    let loaded = db::preload(&db.url, w.txns(), w.rows_per_txn, w.payload).await?;
    let s = &ctx.stack;
    let secs = ceiling::stream_to(
        &Recv {
            bin: &ctx.recvlogical,
            host: &s.pg_host,
            port: s.pg_port,
            user: &s.pg_user,
            password: &s.pg_password,
            database: &db.name,
            slot: &slot,
        },
        loaded.end_lsn,
    )
    .await?;
    c.execute("select pg_drop_replication_slot($1)", &[&slot])
        .await?;
    Ok(loaded.rows as f64 / secs)
}

/// The relay streams a backlog of WAL: it ran once (its slot exists), was stopped,
/// the rows were loaded, and it is timed from its second start until the server's
/// `confirmed_flush_lsn` covers the last loaded transaction (which implies every row
/// was acked by Kafka and marked PROCESSED; both are checked afterwards).
async fn relay_throughput(
    ctx: &Ctx,
    w: &Workload,
    delivery: Delivery,
    brokers: &str,
) -> anyhow::Result<RelayThroughput> {
    let db = db::fresh().await?;
    let (prefix, topic) = ctx.topic_prefix();
    kafka::create_topic(brokers, &topic, PARTITIONS, false).await?;
    let spec = ctx.relay_spec(&db, &prefix, brokers, delivery);
    let mut first = RelayProcess::spawn(&spec)?;
    first.wait_ready(READY_TIMEOUT).await?;
    first.terminate().await?;

    let loaded = db::preload(&db.url, w.txns(), w.rows_per_txn, w.payload).await?;
    let c = db::connect(&db.url, "relay-bench").await?;
    // The relay's backends, walsender apart: none exist yet (the first run ended), so
    // every one sampled started inside the timed run.
    let relay_backends = || db::backends_of(&ctx.admin, &db.name, relay::APPLICATION_NAME);
    let mut pg_cpu = proc_stats::CpuTracker::begin(
        &relay_backends()
            .await?
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let mut relay = RelayProcess::spawn(&spec)?;
    let mut startup = None;
    let mut acked = None;
    let mut sampled = started;
    let deadline = started + stuck_after(loaded.rows);
    for round in 0u64.. {
        relay.check_alive()?;
        if sampled.elapsed() >= BACKEND_SAMPLE_EVERY {
            pg_cpu.sample(&relay_backends().await?);
            sampled = Instant::now();
        }
        if startup.is_none() && relay.is_ready().await {
            startup = Some(started.elapsed().as_secs_f64());
        }
        // Every 50 ms: when did Kafka ack the last record (before marking and confirmation)?
        if acked.is_none()
            && round % 10 == 0
            && relay
                .metric(EVENTS_PUBLISHED)
                .await
                .ok()
                .flatten()
                .unwrap_or(0.0) as u64
                >= loaded.rows
        {
            acked = Some(started.elapsed().as_secs_f64());
        }
        if db::confirmed_flush(&c, &spec.slot).await? > loaded.last_txn_floor {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "relay did not confirm the load within {:?}; log: {}",
                stuck_after(loaded.rows),
                relay.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let acked = acked.unwrap_or(secs);
    pg_cpu.sample(&relay_backends().await?);
    let cpu = relay.cpu_seconds()?;
    let peak_rss = relay.peak_rss()?;
    let published = relay.metric(EVENTS_PUBLISHED).await?.unwrap_or(0.0) as u64;
    let transactions = relay.kafka_transactions().await?;
    check_delivery(delivery, &transactions, &relay.log)?;
    relay.terminate().await?;
    let processed = db::count_status(&c, "PROCESSED").await? as u64;
    ensure!(
        processed == loaded.rows && published >= loaded.rows,
        "relay confirmed the load but published {published} and marked {processed} of {} rows",
        loaded.rows
    );
    delete_topics(
        brokers,
        &topics_of(System::Relay(delivery), &prefix, &topic),
    )
    .await;
    Ok(RelayThroughput {
        delivery,
        rows_per_s: loaded.rows as f64 / secs,
        acked_rows_per_s: loaded.rows as f64 / acked,
        startup_s: startup.unwrap_or(secs),
        cpu_per_100k: cpu * 100_000.0 / loaded.rows as f64,
        pg_marking_cpu_per_100k: pg_cpu.used(&Backend::Session) * 100_000.0 / loaded.rows as f64,
        walsender_cpu_per_100k: pg_cpu.used(&Backend::Walsender) * 100_000.0 / loaded.rows as f64,
        peak_rss,
        transactions,
    })
}

/// The Kafka ingest ceiling: relay-shaped records from one librdkafka producer with the
/// relay's settings into a fresh topic, first send to last ack (see [`ingest`]).
async fn ingest_throughput(ctx: &Ctx, w: &Workload) -> anyhow::Result<ingest::Ingest> {
    let (_, topic) = ctx.topic_prefix();
    let brokers = &ctx.stack.kafka_brokers;
    kafka::create_topic(brokers, &topic, PARTITIONS, false).await?;
    let measured = ingest::ingest(
        brokers,
        &topic,
        &ctx.kafka_set,
        (w.rows, w.rows_per_txn, w.payload),
    )
    .await?;
    testkit::delete_topics(brokers, &[&topic]).await;
    Ok(measured)
}

/// Debezium drains a backlog: its slot is created before the load (with no stored
/// offset it streams from there), the JVM is started once the load is flushed, and it
/// is timed until the routed topic's end offsets cover every row.
async fn debezium_throughput(
    ctx: &Ctx,
    libs: &debezium::Libs,
    w: &Workload,
) -> anyhow::Result<DebeziumThroughput> {
    let db = db::fresh().await?;
    let (prefix, topic) = ctx.topic_prefix();
    let brokers = &ctx.stack.kafka_brokers;
    kafka::create_topic(brokers, &topic, PARTITIONS, false).await?;
    let c = db::connect(&db.url, "relay-bench").await?;
    let slot = db::create_slot(&c, "bench_dbz").await?;
    let loaded = db::preload(&db.url, w.txns(), w.rows_per_txn, w.payload).await?;
    let offsets = kafka::EndOffsets::watch(brokers, &topic, PARTITIONS, Duration::from_millis(5))?;
    let spec = ctx.debezium_spec(libs, &db, &slot, &prefix, brokers);
    let started = Instant::now();
    let mut connect = ConnectProcess::spawn(&spec)?;
    let mut walsender = proc_stats::CpuTracker::begin(&[]);
    let mut sampled = started;
    let mut first = None;
    let deadline = started + DEBEZIUM_START_TIMEOUT + stuck_after(loaded.rows);
    let rows = loaded.rows as i64;
    loop {
        let n = offsets.total();
        if first.is_none() && n > 0 {
            first = Some(started.elapsed().as_secs_f64());
        }
        if n >= rows {
            break;
        }
        connect.check_alive()?;
        if sampled.elapsed() >= BACKEND_SAMPLE_EVERY {
            walsender.sample(&db::walsenders(&ctx.admin, &db.name).await?);
            sampled = Instant::now();
        }
        if Instant::now() > deadline {
            bail!(
                "debezium wrote {n} of {rows} records within {:?}; log: {}",
                deadline - started,
                connect.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    walsender.sample(&db::walsenders(&ctx.admin, &db.name).await?);
    let cpu = connect.cpu_seconds()?;
    let peak_rss = connect.peak_rss()?;
    connect.terminate().await?;
    let written = offsets.total();
    offsets.stop().await;
    if written > rows {
        progress(format!(
            "warning: debezium wrote {written} records for {rows} rows (duplicates)"
        ));
    }
    delete_topics(brokers, &topics_of(System::Debezium, &prefix, &topic)).await;
    let first = first.unwrap_or(secs);
    let per_100k = |v: f64| v * 100_000.0 / loaded.rows as f64;
    Ok(DebeziumThroughput {
        rows_per_s: loaded.rows as f64 / secs,
        streaming_rows_per_s: loaded.rows as f64 / (secs - first).max(1e-3),
        first_record_s: first,
        cpu_per_100k: per_100k(cpu),
        walsender_cpu_per_100k: per_100k(walsender.used(&Backend::Walsender)),
        peak_rss,
    })
}

/// The polling worker drains the same backlog; timed from its start until it
/// published and marked every row. (With a backlog no round is empty, so the interval
/// does not matter here.)
async fn polling_throughput(ctx: &Ctx, plan: &Plan, w: &Workload) -> anyhow::Result<f64> {
    let db = db::fresh().await?;
    let (_, topic) = ctx.topic_prefix();
    let brokers = &ctx.stack.kafka_brokers;
    kafka::create_topic(brokers, &topic, PARTITIONS, false).await?;
    let loaded = db::preload(&db.url, w.txns(), w.rows_per_txn, w.payload).await?;
    let interval = plan.poll_intervals.last().copied().unwrap_or_default();
    let started = Instant::now();
    let poller =
        Poller::start(ctx.poller_spec(&db, &topic, brokers, interval, plan.poll_batch)).await?;
    let deadline = started + stuck_after(loaded.rows);
    while poller.published() < loaded.rows {
        poller.check_alive()?;
        if Instant::now() > deadline {
            bail!("the polling worker did not drain the load in time");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    poller.stop().await?;
    let c = db::connect(&db.url, "relay-bench").await?;
    ensure!(db::count_status(&c, "PROCESSED").await? as u64 == loaded.rows);
    testkit::delete_topics(brokers, &[&topic]).await;
    Ok(loaded.rows as f64 / secs)
}

async fn throughput(ctx: &Ctx, plan: &Plan, w: &Workload) -> anyhow::Result<ThroughputRow> {
    progress(format!(
        "throughput {} ({} rows): ceiling",
        w.label(),
        w.rows
    ));
    let ceiling = ceiling_throughput(ctx, w).await?;
    progress(format!("throughput {}: kafka ingest", w.label()));
    let ingest = ingest_throughput(ctx, w).await?;
    let mut relays = Vec::new();
    for delivery in &plan.deliveries {
        progress(format!(
            "throughput {}: {}",
            w.label(),
            System::Relay(*delivery)
        ));
        relays.push(relay_throughput(ctx, w, *delivery, &ctx.stack.kafka_brokers).await?);
    }
    progress(format!("throughput {}: polling", w.label()));
    let polling = polling_throughput(ctx, plan, w).await?;
    let debezium = match &ctx.debezium {
        None => None,
        Some(Err(reason)) => Some(Err(format!("skipped: {reason}"))),
        Some(Ok(libs)) => {
            progress(format!("throughput {}: debezium", w.label()));
            Some(
                debezium_throughput(ctx, libs, w)
                    .await
                    .map_err(|e| failed(ctx, System::Debezium, &e)),
            )
        }
    };
    Ok(ThroughputRow {
        workload: *w,
        ceiling,
        ingest: ingest.rows_per_s,
        ingest_cpu_per_100k: ingest.cpu_per_100k,
        relays,
        polling,
        debezium,
    })
}

// --- systems under load ---------------------------------------------------------------

/// A started system: the relay child process, the in-process polling worker or
/// Debezium's JVM.
enum Running {
    Relay(Box<RelayProcess>),
    Polling(Poller),
    Debezium(Box<ConnectProcess>),
}

impl Running {
    async fn start(
        ctx: &Ctx,
        plan: &Plan,
        system: System,
        db: &TestDb,
        prefix: &str,
        topic: &str,
        brokers: &str,
    ) -> anyhow::Result<Self> {
        Ok(match system {
            System::Relay(delivery) => {
                let mut r = RelayProcess::spawn(&ctx.relay_spec(db, prefix, brokers, delivery))?;
                r.wait_ready(READY_TIMEOUT).await?;
                Running::Relay(Box::new(r))
            }
            System::Polling(interval) => Running::Polling(
                Poller::start(ctx.poller_spec(db, topic, brokers, interval, plan.poll_batch))
                    .await?,
            ),
            System::Debezium => {
                Running::Debezium(Box::new(start_debezium(ctx, db, prefix, brokers).await?))
            }
        })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Running::Relay(r) => r.check_alive(),
            Running::Polling(p) => p.check_alive(),
            Running::Debezium(c) => c.check_alive(),
        }
    }

    fn relay(&self) -> Option<&RelayProcess> {
        match self {
            Running::Relay(r) => Some(r),
            _ => None,
        }
    }

    /// CPU seconds of the system's own process (the relay, Debezium's JVM); the
    /// polling worker runs inside the bench and has none.
    fn process_cpu(&self) -> anyhow::Result<Option<f64>> {
        match self {
            Running::Relay(r) => r.cpu_seconds().map(Some),
            Running::Polling(_) => Ok(None),
            Running::Debezium(c) => c.cpu_seconds().map(Some),
        }
    }

    fn process_peak_rss(&self) -> anyhow::Result<Option<u64>> {
        match self {
            Running::Relay(r) => r.peak_rss().map(Some),
            Running::Polling(_) => Ok(None),
            Running::Debezium(c) => c.peak_rss().map(Some),
        }
    }

    /// Transactions the bench itself ran on the database while starting the system
    /// (Debezium: the slot's creation and the warm-up row), left out of its load.
    fn bench_xacts(&self) -> i64 {
        match self {
            Running::Debezium(_) => 2,
            _ => 0,
        }
    }

    /// For the relay: checks it ran in its delivery mode (see [`check_delivery`]).
    async fn check_delivery(&self, system: System) -> anyhow::Result<()> {
        match (self.relay(), system) {
            (Some(r), System::Relay(delivery)) => {
                check_delivery(delivery, &r.kafka_transactions().await?, &r.log)
            }
            _ => Ok(()),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Running::Relay(mut r) => r.terminate().await,
            Running::Polling(p) => p.stop().await.map(|_| ()),
            Running::Debezium(c) => c.terminate().await,
        }
    }
}

/// Starts Debezium on a slot created for it and returns once it streams: a warm-up row
/// (aggregate type `probe`, routed to a topic of its own) reached Kafka, so the JVM's
/// start is not in any latency.
async fn start_debezium(
    ctx: &Ctx,
    db: &TestDb,
    prefix: &str,
    brokers: &str,
) -> anyhow::Result<ConnectProcess> {
    let Some(Ok(libs)) = &ctx.debezium else {
        bail!("debezium is not available in this run");
    };
    let probe = probe_topic(prefix);
    kafka::create_topic(brokers, &probe, 1, false).await?;
    // The generator's application name: its backend is not the system's.
    let c = db::connect(&db.url, db::LOAD_APP).await?;
    let slot = db::create_slot(&c, "bench_dbz").await?;
    let mut connect = ConnectProcess::spawn(&ctx.debezium_spec(libs, db, &slot, prefix, brokers))?;
    c.execute(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
         values (gen_random_uuid(), 'probe', 'probe', 'Probe', '{}')",
        &[],
    )
    .await?;
    drop(c);
    let offsets = kafka::EndOffsets::watch(brokers, &probe, 1, Duration::from_millis(20))?;
    let deadline = Instant::now() + DEBEZIUM_START_TIMEOUT;
    while offsets.total() < 1 {
        connect.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "debezium did not stream within {DEBEZIUM_START_TIMEOUT:?}; log: {}",
                connect.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    offsets.stop().await;
    Ok(connect)
}

// --- latency --------------------------------------------------------------------------

/// Database work a system caused during a latency run, beyond the load generator's.
pub struct DbLoad {
    pub xacts_per_s: f64,
    pub rows_read_per_s: f64,
    pub blks_hit_per_s: f64,
    pub cpu_per_100k: f64,
}

pub struct LatencyRow {
    pub system: System,
    pub rate: Rate,
    pub achieved: f64,
    pub events: u64,
    /// Commit → broker append.
    pub latency: Latency,
    /// Commit → read by a `read_committed` consumer.
    pub read_latency: Latency,
    /// CPU of the system's own process (relay-cdc, Debezium's JVM) while it ran
    /// (after its start), per 100 000 events; none for the in-process poller.
    pub process_cpu_per_100k: Option<f64>,
    /// `VmHWM` of that process, start-up included.
    pub process_peak_rss: Option<u64>,
    pub db: DbLoad,
}

/// A latency row that could not be measured (Debezium unavailable or failed).
pub struct SkippedRow {
    pub system: System,
    pub rate: Rate,
    pub reason: String,
}

/// 1-row transactions at `rate` for the plan's duration; latency is the broker's
/// `LogAppendTime` minus the record's `commit_time` header, and the time a
/// `read_committed` reader (caught up before the load starts) got the record minus it.
async fn latency(
    ctx: &Ctx,
    plan: &Plan,
    system: System,
    rate: Rate,
    brokers: &str,
) -> anyhow::Result<LatencyRow> {
    progress(format!("latency {system} @ {rate} ({brokers})"));
    let db = db::fresh().await?;
    let (prefix, topic) = ctx.topic_prefix();
    kafka::create_topic(brokers, &topic, PARTITIONS, true).await?;
    let before = db::counters(&ctx.admin, &db.name).await?;
    let mut running = Running::start(ctx, plan, system, &db, &prefix, &topic, brokers).await?;
    // Rates are per second from when the system is ready (Debezium's JVM takes ~10 s
    // to start); the counters include its start-up work.
    let started = Instant::now();
    let backends0 = proc_stats::cpu_by_pid(&db::system_backends(&ctx.admin, &db.name).await?);
    let process_cpu0 = running.process_cpu()?;

    let (want, want_rx) = watch::channel(None);
    let mut reader = kafka::Reader::spawn(brokers, &topic, PARTITIONS, want_rx, READ_IDLE)?;
    reader.caught_up(READY_TIMEOUT).await?;
    let generated = load::paced(
        &db.url,
        rate,
        plan.duration,
        plan.latency_payload,
        plan.generator_connections,
    )
    .await?;
    want.send_replace(Some(generated.sent as usize));
    let received = reader.join().await?;
    running.check_alive()?;
    running.check_delivery(system).await?;

    let backends1 = proc_stats::cpu_by_pid(&db::system_backends(&ctx.admin, &db.name).await?);
    let db_cpu = proc_stats::cpu_used(&backends0, &backends1);
    let process_cpu = match (running.process_cpu()?, process_cpu0) {
        (Some(c1), Some(c0)) => Some(c1 - c0),
        _ => None,
    };
    let process_peak_rss = running.process_peak_rss()?;
    let bench_xacts = running.bench_xacts();
    let window = started.elapsed().as_secs_f64();
    running.stop().await?;
    db::wait_disconnected(&ctx.admin, &db.name).await?;
    let d = db::counters(&ctx.admin, &db.name).await?.delta(&before);
    // The generator's own transactions: one per insert and one per prepared statement.
    let extra_xacts =
        d.xact_commit - generated.sent as i64 - plan.generator_connections as i64 - bench_xacts;

    let micros: Vec<i64> = received
        .iter()
        .filter_map(|r| r.latency_micros())
        .map(|v| v.max(0))
        .collect();
    ensure!(
        micros.len() == received.len(),
        "{} records lacked a commit_time header or a LogAppendTime timestamp",
        received.len() - micros.len()
    );
    let latency = Latency::from_micros(micros).context("no records arrived")?;
    let read_latency = Latency::from_micros(
        received
            .iter()
            .filter_map(|r| r.read_latency_micros())
            .map(|v| v.max(0))
            .collect(),
    )
    .context("no records arrived")?;
    delete_topics(brokers, &topics_of(system, &prefix, &topic)).await;
    let per_100k = |cpu: f64| cpu * 100_000.0 / generated.sent.max(1) as f64;
    Ok(LatencyRow {
        system,
        rate,
        achieved: generated.rate(),
        events: generated.sent,
        latency,
        read_latency,
        process_cpu_per_100k: process_cpu.map(per_100k),
        process_peak_rss,
        db: DbLoad {
            xacts_per_s: extra_xacts.max(0) as f64 / window,
            rows_read_per_s: d.tup_returned as f64 / window,
            blks_hit_per_s: d.blks_hit as f64 / window,
            cpu_per_100k: per_100k(db_cpu),
        },
    })
}

// --- commit order ---------------------------------------------------------------------

pub struct OrderRow {
    pub system: System,
    pub pairs: u64,
    pub events: u64,
    pub violations: usize,
}

/// Interleaved pairs (T1 begins and inserts, T2 inserts and commits, T1 commits) into a
/// one-partition topic; counts events Kafka holds after an event that committed later.
async fn order(ctx: &Ctx, plan: &Plan, system: System) -> anyhow::Result<OrderRow> {
    progress(format!("commit order {system}"));
    let db = db::fresh().await?;
    let (prefix, topic) = ctx.topic_prefix();
    let brokers = &ctx.stack.kafka_brokers;
    kafka::create_topic(brokers, &topic, 1, false).await?;
    let mut running = Running::start(ctx, plan, system, &db, &prefix, &topic, brokers).await?;
    let (want, want_rx) = watch::channel(None);
    let reader = kafka::Reader::spawn(brokers, &topic, 1, want_rx, READ_IDLE)?;
    let events = load::interleaved_pairs(&db.url, plan.pairs).await?;
    want.send_replace(Some(events as usize));
    let received = reader.join().await?;
    running.check_alive()?;
    running.check_delivery(system).await?;
    running.stop().await?;
    let positions: Vec<u64> = received
        .iter()
        .map(|r| r.seq.context("a record without seq"))
        .collect::<anyhow::Result<_>>()?;
    delete_topics(brokers, &topics_of(system, &prefix, &topic)).await;
    Ok(OrderRow {
        system,
        pairs: plan.pairs,
        events,
        violations: stats::order_violations(&positions),
    })
}

// --- broker outage --------------------------------------------------------------------

pub struct OutageResult {
    pub outage: Duration,
    pub rate: u32,
    pub steady_peak_rss: u64,
    pub outage_max_rss: u64,
    pub in_flight_at_end: f64,
    pub after_rss: u64,
    pub events: u64,
    pub recovery_s: f64,
}

/// The relay on a private broker under 1k events/s: 10 s steady, the broker stopped
/// for `outage`, then restarted; RSS sampled every 250 ms throughout.
async fn outage(ctx: &Ctx, outage: Duration) -> anyhow::Result<OutageResult> {
    const RATE: u32 = 1000;
    const WARMUP: Duration = Duration::from_secs(10);
    progress(format!(
        "broker outage ({}s): starting a private broker",
        outage.as_secs()
    ));
    let broker = testkit::PrivateKafka::start().await?;
    let db = db::fresh().await?;
    let (prefix, topic) = ctx.topic_prefix();
    kafka::create_topic(&broker.brokers, &topic, PARTITIONS, false).await?;
    let mut relay =
        RelayProcess::spawn(&ctx.relay_spec(&db, &prefix, &broker.brokers, Delivery::AtLeastOnce))?;
    relay.wait_ready(READY_TIMEOUT).await?;
    let url = db.url.clone();
    let total = WARMUP + outage + WARMUP;
    let generator =
        tokio::spawn(async move { load::paced(&url, Rate::Fixed(RATE), total, 100, 4).await });
    let pid = relay.pid();
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, u64)>::new()));
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                match proc_stats::status_bytes(pid, "VmRSS") {
                    Ok(rss) => samples
                        .lock()
                        .expect("not poisoned")
                        .push((Instant::now(), rss)),
                    Err(_) => return,
                }
            }
        })
    };
    tokio::time::sleep(WARMUP).await; // a measured period, not a synchronisation
    let steady_peak_rss = relay.peak_rss()?;
    progress("broker outage: stopping the broker");
    broker.stop().await?;
    let down = Instant::now();
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    relay.check_alive()?;
    let in_flight_at_end = relay.metric(RECORDS_IN_FLIGHT).await?.unwrap_or(0.0);
    progress("broker outage: restarting the broker");
    broker.resume().await?;
    let up = Instant::now();
    let outage_max_rss = samples
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|(t, _)| *t >= down && *t <= up)
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(0);
    let generated = generator.await??;
    let (want, want_rx) = watch::channel(Some(generated.sent as usize));
    kafka::Reader::spawn(&broker.brokers, &topic, PARTITIONS, want_rx, READ_IDLE)?
        .join()
        .await?;
    drop(want);
    let recovery_s = up.elapsed().as_secs_f64();
    sampler.abort();
    let after_rss = relay.rss()?;
    relay.terminate().await?;
    Ok(OutageResult {
        outage,
        rate: RATE,
        steady_peak_rss,
        outage_max_rss,
        in_flight_at_end,
        after_rss,
        events: generated.sent,
        recovery_s,
    })
}

// --- one broker beside a cluster -------------------------------------------------------

/// The relay measured on the shared broker and on a private three-broker cluster, one
/// right after the other for each workload, rate and delivery mode, so both see the
/// same machine.
pub struct ClusterComparison {
    /// (workload, one broker, three brokers).
    pub throughput: Vec<(Workload, RelayThroughput, RelayThroughput)>,
    /// (one broker, three brokers).
    pub latency: Vec<(LatencyRow, LatencyRow)>,
}

async fn kafka_cluster(ctx: &Ctx, plan: &Plan) -> anyhow::Result<ClusterComparison> {
    progress("kafka cluster: starting a private cluster of three brokers and two controllers");
    let cluster = testkit::PrivateKafka::start_cluster().await?;
    let (one, three) = (ctx.stack.kafka_brokers.as_str(), cluster.brokers.as_str());
    let mut throughput = Vec::new();
    let mut latency_pairs = Vec::new();
    for delivery in &plan.deliveries {
        for w in &plan.workloads {
            progress(format!(
                "kafka cluster: {} ({delivery}) on one broker, then on three",
                w.label()
            ));
            let a = relay_throughput(ctx, w, *delivery, one).await?;
            let b = relay_throughput(ctx, w, *delivery, three).await?;
            throughput.push((*w, a, b));
        }
        for rate in &plan.rates {
            let system = System::Relay(*delivery);
            let a = latency(ctx, plan, system, *rate, one).await?;
            let b = latency(ctx, plan, system, *rate, three).await?;
            latency_pairs.push((a, b));
        }
    }
    Ok(ClusterComparison {
        throughput,
        latency: latency_pairs,
    })
}

fn cluster_tables(c: &ClusterComparison) -> String {
    let mut t = Table::new(&[
        "workload",
        "delivery",
        "rows",
        "1 broker rows/s",
        "3 brokers rows/s",
        "3/1",
        "1 broker acked rows/s",
        "3 brokers acked rows/s",
        "1 broker relay CPU s/100k",
        "3 brokers relay CPU s/100k",
    ]);
    for (w, one, three) in &c.throughput {
        t.row(vec![
            w.label(),
            one.delivery.to_string(),
            table::count(w.rows as f64),
            table::count(one.rows_per_s),
            table::count(three.rows_per_s),
            table::ratio(three.rows_per_s, one.rows_per_s),
            table::count(one.acked_rows_per_s),
            table::count(three.acked_rows_per_s),
            table::secs(one.cpu_per_100k),
            table::secs(three.cpu_per_100k),
        ]);
    }
    let mut l = Table::new(&[
        "relay @ offered rate",
        "1 broker p50 ms",
        "1 broker p99 ms",
        "3 brokers p50 ms",
        "3 brokers p99 ms",
        "1 broker read p99 ms",
        "3 brokers read p99 ms",
    ]);
    for (one, three) in &c.latency {
        l.row(vec![
            format!("{} @ {}", one.system, one.rate),
            table::ms(one.latency.p50),
            table::ms(one.latency.p99),
            table::ms(three.latency.p50),
            table::ms(three.latency.p99),
            table::ms(one.read_latency.p99),
            table::ms(three.read_latency.p99),
        ]);
    }
    format!(
        "### Kafka: one broker beside a cluster of three (replication 3, min.insync.replicas 2, acks=all)\n\n{}\n{}\n\
         Each pair ran one after the other on fresh databases and topics (3 partitions; the cluster's are replicated \
         to all three brokers, and acks=all waits for two of them). The cluster's five JVMs (three brokers, two \
         controllers) share the machine's cores with everything else. Latency: commit → broker append; read: commit → \
         a read_committed consumer got it.\n\n",
        t.render(),
        l.render()
    )
}

// --- the run --------------------------------------------------------------------------

pub async fn run(opts: Options) -> anyhow::Result<String> {
    let plan = opts.plan()?;
    let ctx = Ctx::new(&opts).await?;
    let started = Instant::now();
    let machine = machine(&ctx.admin).await?;
    let mut throughput_rows = Vec::new();
    let mut latency_rows = Vec::new();
    let mut latency_skipped = Vec::new();
    let mut order_rows = Vec::new();
    let single = ctx.stack.kafka_brokers.as_str();
    let pollers: Vec<System> = plan
        .poll_intervals
        .iter()
        .map(|d| System::Polling(*d))
        .collect();
    let systems: Vec<System> = plan
        .deliveries
        .iter()
        .map(|d| System::Relay(*d))
        .chain(pollers)
        .collect();

    if plan.parts.contains(&Part::Throughput) {
        for w in &plan.workloads {
            throughput_rows.push(throughput(&ctx, &plan, w).await?);
        }
    }
    if plan.parts.contains(&Part::Latency) {
        for rate in &plan.rates {
            for system in &systems {
                latency_rows.push(latency(&ctx, &plan, *system, *rate, single).await?);
            }
            // Debezium is compared, not judged: when it cannot run or fails, its row
            // says why and the run goes on.
            match &ctx.debezium {
                None => {}
                Some(Err(reason)) => latency_skipped.push(SkippedRow {
                    system: System::Debezium,
                    rate: *rate,
                    reason: format!("skipped: {reason}"),
                }),
                Some(Ok(_)) => match latency(&ctx, &plan, System::Debezium, *rate, single).await {
                    Ok(row) => latency_rows.push(row),
                    Err(e) => latency_skipped.push(SkippedRow {
                        system: System::Debezium,
                        rate: *rate,
                        reason: failed(&ctx, System::Debezium, &e),
                    }),
                },
            }
        }
    }
    if plan.parts.contains(&Part::Order) {
        for system in &systems {
            order_rows.push(order(&ctx, &plan, *system).await?);
        }
    }
    let outage_result = match plan.outage {
        Some(d) => Some(outage(&ctx, d).await?),
        None => None,
    };
    let settle_rows = match &plan.settle {
        Some(s) => crate::settle::run(&ctx, s).await?,
        None => Vec::new(),
    };
    let cluster = if plan.parts.contains(&Part::KafkaCluster) {
        Some(kafka_cluster(&ctx, &plan).await?)
    } else {
        None
    };
    if ctx.keep_logs.load(std::sync::atomic::Ordering::Relaxed) {
        progress(format!("logs kept in {}", ctx.log_dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&ctx.log_dir);
    }
    Ok(render(
        &opts,
        &plan,
        &machine,
        started.elapsed(),
        &throughput_rows,
        &latency_rows,
        &latency_skipped,
        &order_rows,
        outage_result.as_ref(),
        cluster.as_ref(),
        &settle_rows,
    ))
}

async fn machine(admin: &Client) -> anyhow::Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib =
        proc_stats::parse_status_kib(&meminfo, "MemTotal").unwrap_or(0) as f64 / (1024.0 * 1024.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let pg: String = admin.query_one("show server_version", &[]).await?.get(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    Ok(format!(
        "{cores} cores ({model}), {mem_gib:.1} GiB RAM, load average at start {}; PostgreSQL {pg}",
        load.join(" ")
    ))
}

#[allow(clippy::too_many_arguments)]
fn render(
    opts: &Options,
    plan: &Plan,
    machine: &str,
    took: Duration,
    throughput_rows: &[ThroughputRow],
    latency_rows: &[LatencyRow],
    latency_skipped: &[SkippedRow],
    order_rows: &[OrderRow],
    outage: Option<&OutageResult>,
    cluster: Option<&ClusterComparison>,
    settle_rows: &[crate::settle::SettleRow],
) -> String {
    let mut out = String::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    out.push_str(&format!(
        "## relay-bench{}\n\nMachine: {machine}. Run took {:.0} s.\n\n",
        if args.is_empty() {
            String::new()
        } else {
            format!(" {}", args.join(" "))
        },
        took.as_secs_f64()
    ));
    let _ = opts;

    if !throughput_rows.is_empty() {
        out.push_str("### Throughput: a preloaded backlog, as fast as possible\n\n");
        out.push_str(&throughput_table(plan, throughput_rows).render());
        out.push_str(&format!(
            "\nPolling drains the backlog in rounds of {} rows (the interval only matters when a round finds nothing). \
             Kafka ingest: relay-shaped records from one librdkafka producer with the relay's settings, no PostgreSQL \
             (the most this broker takes from this client); its CPU is that producer's, librdkafka's own cost per record and the floor under the relay's. PG CPU columns: the relay's PostgreSQL backends over the timed run, \
             its ordinary sessions (marking) apart from the walsender.\n",
            plan.poll_batch
        ));
        if plan.compares_delivery() {
            out.push_str(
                "Ceiling, Kafka ingest and polling are measured once per workload; each delivery mode of the relay ran on its own database and topics. \
                 Exactly-once: acked = its Kafka transaction committed; records/Kafka txn counts the checkpoint record; \
                 commit ms is flush + commit of a transaction (relay_kafka_transaction_* of the timed run).\n",
            );
        }
        out.push('\n');
        if plan.debezium {
            out.push_str(&format!(
                "### Debezium {} (Kafka Connect 4.1.1 standalone, Outbox Event Router) on the same backlog\n\n",
                debezium::VERSION
            ));
            out.push_str(&debezium_table(throughput_rows).render());
            out.push_str(
                "\nDebezium rows/s: rows / (JVM start → last record in Kafka, the routed topic's end offsets); \
                 streaming: first → last record. Debezium does not mark rows PROCESSED, so compare it with the relay's \
                 acked rows/s (Kafka has every record), not its end-to-end rows/s. JVM CPU includes its start-up.\n\n",
            );
        }
    }

    if !latency_rows.is_empty() || !latency_skipped.is_empty() {
        out.push_str(&format!(
            "### Latency: 1-row transactions at an offered rate for {} s, commit → broker append (LogAppendTime − commit_time)\n\n",
            plan.duration.as_secs()
        ));
        out.push_str(&latency_table(plan, latency_rows, latency_skipped).render());
        out.push_str(
            "\nDB columns: what the system's own sessions cost the database during the run \
             (pg_stat_database deltas without the generator's transactions; CPU of its backends, walsender included).\n",
        );
        if plan.debezium {
            out.push_str(
                "debezium: relay CPU and RSS are its JVM's; it streams before the run starts (a warm-up row reached Kafka). \
                 Its commit_time header is the row's created_at (the inserting transaction's start), as for polling.\n",
            );
        }
        if plan.compares_delivery() {
            out.push_str(
                "read columns: commit → the bench's read_committed consumer got the record (this host's clock). \
                 An exactly-once relay's records are appended before their Kafka transaction commits, \
                 so for it the read columns, not the append ones, say when a consumer sees them.\n",
            );
        }
        out.push('\n');
    }

    if !order_rows.is_empty() {
        out.push_str("### Commit order: interleaved transactions (T1 begins and inserts, T2 inserts and commits, T1 commits)\n\n");
        let mut t = Table::new(&["system", "pairs", "events", "out of commit order"]);
        for r in order_rows {
            t.row(vec![
                r.system.to_string(),
                r.pairs.to_string(),
                r.events.to_string(),
                r.violations.to_string(),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }

    if let Some(o) = outage {
        out.push_str(&format!(
            "### Broker outage: relay-cdc at {}/s, broker stopped for {} s\n\n",
            o.rate,
            o.outage.as_secs()
        ));
        let mut t = Table::new(&[
            "events",
            "peak RSS before MiB",
            "max RSS during outage MiB",
            "records in flight at the end of it",
            "RSS after recovery MiB",
            "all delivered after restart, s",
        ]);
        t.row(vec![
            table::count(o.events as f64),
            table::mib(o.steady_peak_rss),
            table::mib(o.outage_max_rss),
            table::count(o.in_flight_at_end),
            table::mib(o.after_rss),
            table::secs(o.recovery_s),
        ]);
        out.push_str(&t.render());
        out.push('\n');
    }

    if let Some(c) = cluster {
        out.push_str(&cluster_tables(c));
    }
    if !settle_rows.is_empty() {
        out.push_str(&crate::settle::table(settle_rows));
    }

    out.push_str(&targets(throughput_rows, latency_rows, outage));
    out
}

/// One row per workload and delivery mode. A run without exactly-once prints the
/// columns it always did; with it, a delivery column and the exactly-once ones.
fn throughput_table(plan: &Plan, rows: &[ThroughputRow]) -> Table {
    let compare = plan.compares_delivery();
    let mut headers = vec!["workload"];
    if compare {
        headers.push("delivery");
    }
    headers.extend([
        "rows",
        "ceiling rows/s",
        "Kafka ingest rows/s",
        "Kafka ingest CPU s/100k",
        "relay-cdc rows/s",
        "relay/ceiling",
        "polling rows/s",
        "relay/polling",
        "relay acked rows/s",
        "relay start s",
        "relay CPU s/100k",
        "PG marking CPU s/100k",
        "walsender CPU s/100k",
        "relay peak RSS MiB",
    ]);
    if compare {
        headers.extend(["vs at-least-once", "records/Kafka txn", "Kafka commit ms"]);
    }
    let mut t = Table::new(&headers);
    for r in rows {
        for relay in &r.relays {
            let mut cells = vec![r.workload.label()];
            if compare {
                cells.push(relay.delivery.to_string());
            }
            cells.extend([
                table::count(r.workload.rows as f64),
                table::count(r.ceiling),
                table::count(r.ingest),
                table::secs(r.ingest_cpu_per_100k),
                table::count(relay.rows_per_s),
                table::ratio(relay.rows_per_s, r.ceiling),
                table::count(r.polling),
                table::ratio(relay.rows_per_s, r.polling),
                table::count(relay.acked_rows_per_s),
                table::secs(relay.startup_s),
                table::secs(relay.cpu_per_100k),
                table::secs(relay.pg_marking_cpu_per_100k),
                table::secs(relay.walsender_cpu_per_100k),
                table::mib(relay.peak_rss),
            ]);
            if compare {
                let baseline = r
                    .relay(Delivery::AtLeastOnce)
                    .filter(|_| relay.delivery != Delivery::AtLeastOnce);
                cells.extend([
                    baseline.map_or("-".into(), |b| table::ratio(relay.rows_per_s, b.rows_per_s)),
                    relay
                        .transactions
                        .mean_records
                        .map_or("-".into(), |n| format!("{n:.1}")),
                    relay
                        .transactions
                        .mean_commit_s
                        .map_or("-".into(), |s| table::ms(s * 1000.0)),
                ]);
            }
            t.row(cells);
        }
    }
    t
}

/// One row per workload: Debezium beside the relay's acked rate (both "every record is
/// in Kafka"), or why it did not run.
fn debezium_table(rows: &[ThroughputRow]) -> Table {
    let mut t = Table::new(&[
        "workload",
        "rows",
        "debezium rows/s",
        "relay acked rows/s",
        "relay acked/debezium",
        "debezium streaming rows/s",
        "first record s",
        "JVM CPU s/100k",
        "walsender CPU s/100k",
        "JVM peak RSS MiB",
    ]);
    for r in rows {
        let Some(result) = &r.debezium else { continue };
        // The relay's default mode when it ran, else the first one.
        let relay = r.relay(Delivery::AtLeastOnce).or(r.relays.first());
        let acked = relay.map(|x| x.acked_rows_per_s);
        let mut cells = vec![r.workload.label(), table::count(r.workload.rows as f64)];
        match result {
            Ok(d) => cells.extend([
                table::count(d.rows_per_s),
                acked.map_or("-".into(), table::count),
                acked.map_or("-".into(), |a| table::ratio(a, d.rows_per_s)),
                table::count(d.streaming_rows_per_s),
                table::secs(d.first_record_s),
                table::secs(d.cpu_per_100k),
                table::secs(d.walsender_cpu_per_100k),
                table::mib(d.peak_rss),
            ]),
            Err(reason) => {
                cells.push(reason.clone());
                cells.push(acked.map_or("-".into(), table::count));
                cells.extend(std::iter::repeat_n("-".to_string(), 6));
            }
        }
        t.row(cells);
    }
    t
}

/// One row per system and rate; with exactly-once in the run, also commit → read.
/// Skipped rows (Debezium) say why in their first cell after the name.
fn latency_table(plan: &Plan, rows: &[LatencyRow], skipped: &[SkippedRow]) -> Table {
    let compare = plan.compares_delivery();
    let mut headers = vec![
        "system @ offered rate",
        "achieved/s",
        "events",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
    ];
    if compare {
        headers.extend(["read p50 ms", "read p99 ms"]);
    }
    headers.extend([
        "relay CPU s/100k",
        "relay peak RSS MiB",
        "DB xacts/s",
        "DB rows read/s",
        "DB blks hit/s",
        "DB CPU s/100k",
    ]);
    let mut t = Table::new(&headers);
    for r in rows {
        let mut cells = vec![
            format!("{} @ {}", r.system, r.rate),
            table::count(r.achieved),
            table::count(r.events as f64),
            table::ms(r.latency.p50),
            table::ms(r.latency.p95),
            table::ms(r.latency.p99),
            table::ms(r.latency.max),
        ];
        if compare {
            cells.extend([table::ms(r.read_latency.p50), table::ms(r.read_latency.p99)]);
        }
        cells.extend([
            r.process_cpu_per_100k.map_or("-".into(), table::secs),
            r.process_peak_rss.map_or("-".into(), table::mib),
            table::count(r.db.xacts_per_s),
            table::count(r.db.rows_read_per_s),
            table::count(r.db.blks_hit_per_s),
            table::secs(r.db.cpu_per_100k),
        ]);
        t.row(cells);
    }
    for s in skipped {
        let mut cells = vec![format!("{} @ {}", s.system, s.rate), s.reason.clone()];
        cells.resize(t.columns(), "-".into());
        t.row(cells);
    }
    t
}

/// Where the targets stand in this run.
fn targets(
    throughput_rows: &[ThroughputRow],
    latency_rows: &[LatencyRow],
    outage: Option<&OutageResult>,
) -> String {
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut lines = vec!["### Targets\n".to_string()];
    for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
        let name = match delivery {
            Delivery::AtLeastOnce => String::new(),
            d => format!(", {d}"),
        };
        if let Some((worst, r)) = throughput_rows
            .iter()
            .filter_map(|row| Some((row, row.relay(delivery)?.rows_per_s / row.ceiling)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
        {
            lines.push(format!(
                "- relay ≥ 90 % of the ceiling on every workload{name}: {} (lowest {:.0} %, {})",
                mark(r >= 0.9),
                100.0 * r,
                worst.workload.label()
            ));
        }
        if let Some(r) = latency_rows
            .iter()
            .find(|r| r.system == System::Relay(delivery) && r.rate == Rate::Fixed(1000))
        {
            // Exactly-once records are appended before their transaction commits: what
            // counts is when a read_committed consumer gets them.
            let (p99, what) = match delivery {
                Delivery::AtLeastOnce => (r.latency.p99, ""),
                Delivery::ExactlyOnce => (r.read_latency.p99, ", commit → read_committed read"),
            };
            lines.push(format!(
                "- p99 commit → Kafka ≤ 50 ms at 1k events/s{name}{what}: {} (p99 {} ms)",
                mark(p99 <= 50.0),
                table::ms(p99)
            ));
        }
    }
    let peaks: Vec<u64> = throughput_rows
        .iter()
        .flat_map(|r| r.relays.iter().map(|relay| relay.peak_rss))
        .chain(
            latency_rows
                .iter()
                .filter(|r| matches!(r.system, System::Relay(_)))
                .filter_map(|r| r.process_peak_rss),
        )
        .collect();
    if let Some(max) = peaks.iter().max() {
        lines.push(format!(
            "- peak RSS ≤ 64 MiB in steady state: {} (highest {} MiB)",
            mark(*max <= 64 * 1024 * 1024),
            table::mib(*max)
        ));
    }
    lines.push(match outage {
        Some(o) => format!(
            "- RSS during a {} s broker outage: max {} MiB (from {} MiB before it)",
            o.outage.as_secs(),
            table::mib(o.outage_max_rss),
            table::mib(o.steady_peak_rss)
        ),
        None => "- RSS during a broker outage: not measured in this run (--outage)".into(),
    });
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_runs_get_a_generous_bound() {
        assert_eq!(stuck_after(50_000), Duration::from_secs(160));
    }

    fn plan(args: &[&str]) -> Plan {
        use clap::Parser;
        Options::try_parse_from([&["relay-bench"], args].concat())
            .unwrap()
            .plan()
            .unwrap()
    }

    fn relay(delivery: Delivery, rows_per_s: f64) -> RelayThroughput {
        let transactional = delivery == Delivery::ExactlyOnce;
        RelayThroughput {
            delivery,
            rows_per_s,
            acked_rows_per_s: rows_per_s,
            startup_s: 0.05,
            cpu_per_100k: 2.0,
            pg_marking_cpu_per_100k: 1.5,
            walsender_cpu_per_100k: 0.75,
            peak_rss: 20 << 20,
            transactions: KafkaTransactions {
                committed: if transactional { 10 } else { 0 },
                aborted: 0,
                mean_records: transactional.then_some(1001.0),
                mean_commit_s: transactional.then_some(0.0042),
            },
        }
    }

    fn throughput_row(relays: Vec<RelayThroughput>) -> ThroughputRow {
        ThroughputRow {
            workload: Workload {
                rows_per_txn: 1000,
                payload: 100,
                rows: 10_000,
            },
            ceiling: 40_000.0,
            ingest: 200_000.0,
            ingest_cpu_per_100k: 0.4,
            relays,
            polling: 10_000.0,
            debezium: None,
        }
    }

    fn latency_row(system: System) -> LatencyRow {
        let ms = |v: f64| Latency {
            samples: 1,
            p50: v,
            p95: v,
            p99: v,
            max: v,
        };
        LatencyRow {
            system,
            rate: Rate::Fixed(1000),
            achieved: 1000.0,
            events: 5000,
            latency: ms(10.0),
            read_latency: ms(60.0),
            process_cpu_per_100k: None,
            process_peak_rss: None,
            db: DbLoad {
                xacts_per_s: 0.0,
                rows_read_per_s: 0.0,
                blks_hit_per_s: 0.0,
                cpu_per_100k: 0.0,
            },
        }
    }

    #[test]
    fn the_cluster_tables_set_three_brokers_beside_one() {
        let w = throughput_row(vec![]).workload;
        let mut three = latency_row(System::Relay(Delivery::AtLeastOnce));
        three.latency.p99 = 25.0;
        let text = cluster_tables(&ClusterComparison {
            throughput: vec![(
                w,
                relay(Delivery::AtLeastOnce, 40_000.0),
                relay(Delivery::AtLeastOnce, 30_000.0),
            )],
            latency: vec![(latency_row(System::Relay(Delivery::AtLeastOnce)), three)],
        });
        let row = |starts: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.starts_with(starts))
                .unwrap_or_else(|| panic!("no row {starts}: {text}"))
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        };
        let t = row("| 1000 rows/txn, 100 B");
        assert_eq!(
            t[2..7],
            ["at-least-once", "10,000", "40,000", "30,000", "75 %"],
            "{text}"
        );
        let l = row("| relay-cdc @ 1000/s");
        assert_eq!(l[2..6], ["10", "10", "10", "25"], "{text}");
    }

    #[test]
    fn a_default_run_prints_the_tables_it_always_did() {
        let p = plan(&[]);
        let t = throughput_table(
            &p,
            &[throughput_row(vec![relay(Delivery::AtLeastOnce, 20_000.0)])],
        )
        .render();
        let header = t.lines().next().unwrap();
        assert!(header.starts_with("| workload             | rows "), "{t}");
        assert!(
            !header.contains("delivery") && !header.contains("Kafka txn"),
            "{t}"
        );
        assert_eq!(header.matches('|').count(), 16, "{t}");
        let cells: Vec<&str> = t
            .lines()
            .nth(2)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells[4..6], ["200,000", "0.40"], "Kafka ingest: {t}");
        assert_eq!(cells[13..15], ["1.50", "0.75"], "PG CPU: {t}");
        let l = latency_table(
            &p,
            &[latency_row(System::Relay(Delivery::AtLeastOnce))],
            &[],
        )
        .render();
        assert!(!l.contains("read p99"), "{l}");
        assert_eq!(l.lines().next().unwrap().matches('|').count(), 14, "{l}");
    }

    #[test]
    fn exactly_once_rows_sit_beside_at_least_once_with_their_cost() {
        let p = plan(&["--delivery", "at-least-once,exactly-once"]);
        let t = throughput_table(
            &p,
            &[throughput_row(vec![
                relay(Delivery::AtLeastOnce, 20_000.0),
                relay(Delivery::ExactlyOnce, 15_000.0),
            ])],
        )
        .render();
        let rows: Vec<Vec<&str>> = t
            .lines()
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows[0][1], "delivery");
        assert_eq!(
            rows[0][16..],
            ["vs at-least-once", "records/Kafka txn", "Kafka commit ms"]
        );
        assert_eq!(rows[2][1..2], ["at-least-once"]);
        assert_eq!(rows[2][16..], ["-", "-", "-"]);
        assert_eq!(rows[3][0], "1000 rows/txn, 100 B");
        assert_eq!(rows[3][1], "exactly-once");
        assert_eq!(rows[3][16..], ["75 %", "1001.0", "4.2"]);

        let l = latency_table(
            &p,
            &[
                latency_row(System::Relay(Delivery::AtLeastOnce)),
                latency_row(System::Relay(Delivery::ExactlyOnce)),
            ],
            &[],
        )
        .render();
        assert!(l.contains("| relay-cdc (exactly-once) @ 1000/s |"), "{l}");
        assert!(
            l.lines()
                .next()
                .unwrap()
                .contains("| read p50 ms | read p99 ms |"),
            "{l}"
        );
    }

    #[test]
    fn debezium_rows_say_why_they_were_skipped() {
        let mut row = throughput_row(vec![relay(Delivery::AtLeastOnce, 20_000.0)]);
        row.debezium = Some(Err("skipped: mvn not found".into()));
        let t = debezium_table(&[row]).render();
        let cells: Vec<&str> = t
            .lines()
            .nth(2)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells[3..5], ["skipped: mvn not found", "20,000"], "{t}");
        assert!(cells[5..11].iter().all(|c| *c == "-"), "{t}");

        let l = latency_table(
            &plan(&["--debezium"]),
            &[latency_row(System::Relay(Delivery::AtLeastOnce))],
            &[SkippedRow {
                system: System::Debezium,
                rate: Rate::Fixed(1000),
                reason: "skipped: java not found".into(),
            }],
        )
        .render();
        let last: Vec<&str> = l
            .lines()
            .last()
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            last[1..3],
            ["debezium @ 1000/s", "skipped: java not found"],
            "{l}"
        );
    }

    #[test]
    fn debezium_is_set_beside_the_relays_acked_rate() {
        let mut row = throughput_row(vec![relay(Delivery::AtLeastOnce, 20_000.0)]);
        row.debezium = Some(Ok(DebeziumThroughput {
            rows_per_s: 10_000.0,
            streaming_rows_per_s: 25_000.0,
            first_record_s: 9.5,
            cpu_per_100k: 30.0,
            walsender_cpu_per_100k: 0.8,
            peak_rss: 800 << 20,
        }));
        let t = debezium_table(&[row]).render();
        let cells: Vec<&str> = t
            .lines()
            .nth(2)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            cells[3..11],
            ["10,000", "20,000", "200 %", "25,000", "9.50", "30.00", "0.80", "800.0"],
            "{t}"
        );
    }

    #[test]
    fn the_rss_target_judges_the_relay_not_debezium() {
        let mut dbz = latency_row(System::Debezium);
        dbz.process_peak_rss = Some(800 << 20);
        let mut relay = latency_row(System::Relay(Delivery::AtLeastOnce));
        relay.process_peak_rss = Some(10 << 20);
        let t = targets(&[], &[relay, dbz], None);
        assert!(
            t.contains("64 MiB in steady state: met (highest 10.0 MiB)"),
            "{t}"
        );
    }

    #[test]
    fn exactly_once_latency_is_judged_when_a_consumer_can_read() {
        let rows = [
            latency_row(System::Relay(Delivery::AtLeastOnce)),
            latency_row(System::Relay(Delivery::ExactlyOnce)),
        ];
        let t = targets(&[], &rows, None);
        assert!(t.contains("1k events/s: met (p99 10 ms)"), "{t}");
        assert!(
            t.contains(
                "1k events/s, exactly-once, commit → read_committed read: NOT met (p99 60 ms)"
            ),
            "{t}"
        );
    }
}
