//! Latency: 1-row transactions at an offered rate, commit → broker append (and → a
//! `read_committed` read), with what the system under test cost the database meanwhile.

use std::time::Instant;

use anyhow::{ensure, Context};
use tokio::sync::watch;

use crate::ctx::{delete_topics, topics_of, Ctx, System, PARTITIONS, READY_TIMEOUT, READ_IDLE};
use crate::db;
use crate::kafka;
use crate::load::{self, Rate};
use crate::options::Plan;
use crate::progress::progress;
use crate::running::Running;
use crate::stats::Latency;

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
pub async fn latency(
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
    let backends0 = testkit::proc::cpu_by_pid(&db::system_backends(&ctx.admin, &db.name).await?);
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

    let backends1 = testkit::proc::cpu_by_pid(&db::system_backends(&ctx.admin, &db.name).await?);
    let db_cpu = testkit::proc::cpu_used(&backends0, &backends1);
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
