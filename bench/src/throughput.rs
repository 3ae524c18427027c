//! Throughput: a preloaded backlog drained as fast as possible, per workload: the
//! ceiling (`pg_recvlogical`), the Kafka ingest ceiling, relay-cdc in each capture mode
//! (`--capture`: rows or messages, each with its own ceiling) and delivery mode of the
//! plan, the polling worker and, when asked, Debezium, each on a database and topics of
//! its own.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use testkit::Delivery;

use crate::capture::Capture;
use crate::ceiling::{self, Recv};
use crate::ctx::{
    check_delivery, delete_topics, failed, topics_of, Ctx, System, DEBEZIUM_START_TIMEOUT,
    PARTITIONS, READY_TIMEOUT,
};
use crate::db::{self, Backend};
use crate::debezium::{self, ConnectProcess};
use crate::ingest;
use crate::kafka;
use crate::options::{Plan, Workload};
use crate::polling::Poller;
use crate::progress::progress;
use crate::relay::{self, KafkaTransactions};

/// How often the PostgreSQL backends of a throughput run are sampled for CPU time.
const BACKEND_SAMPLE_EVERY: Duration = Duration::from_millis(250);
const EVENTS_PUBLISHED: &str = "relay_events_published_total";
const DEAD_LETTERED: &str = "relay_dead_lettered_total";

/// How long a throughput run may take before it counts as stuck (≥ 500 rows/s).
fn stuck_after(rows: u64) -> Duration {
    Duration::from_secs(60 + rows / 500)
}

pub struct RelayThroughput {
    pub delivery: Delivery,
    /// How the load reached the relay: rows, or messages.
    pub capture: Capture,
    /// The `--relay-baseline` label; `None` for this build.
    pub baseline: Option<String>,
    /// Until the server's confirmed position covered the load (acked, marked, confirmed).
    pub rows_per_s: f64,
    /// Until Kafka acked the last record (sampled every 50 ms).
    pub acked_rows_per_s: f64,
    pub startup_s: f64,
    pub cpu_per_100k: f64,
    /// CPU of the loader's backend writing the load (rows or messages), before the run.
    pub writer_cpu_per_100k: f64,
    /// CPU of the relay's ordinary PostgreSQL sessions (marking, housekeeping).
    pub pg_marking_cpu_per_100k: f64,
    /// CPU of the walsender serving the relay's slot.
    pub walsender_cpu_per_100k: f64,
    pub peak_rss: u64,
    /// The Kafka transactions of the timed run (none when at-least-once).
    pub transactions: KafkaTransactions,
}

impl RelayThroughput {
    /// PostgreSQL's and the relay's CPU per 100k events: the writer, marking, the
    /// walsender and the relay process (the broker is shared and not counted).
    pub fn pipeline_cpu_per_100k(&self) -> f64 {
        self.writer_cpu_per_100k
            + self.pg_marking_cpu_per_100k
            + self.walsender_cpu_per_100k
            + self.cpu_per_100k
    }
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
    /// pg_recvlogical over the rows (table mode).
    pub ceiling: f64,
    /// pg_recvlogical with `messages=true` over the same events as messages, when the
    /// plan has that capture mode.
    pub message_ceiling: Option<f64>,
    /// The Kafka ingest ceiling: relay-shaped records from librdkafka alone.
    pub ingest: f64,
    /// What that producer's process spent per 100,000 records: librdkafka's own cost.
    pub ingest_cpu_per_100k: f64,
    /// One per delivery mode, in the plan's order; after each, its baselines'.
    pub relays: Vec<RelayThroughput>,
    pub polling: f64,
    /// `None` when the plan leaves Debezium out; `Err` says why it did not run.
    pub debezium: Option<Result<DebeziumThroughput, String>>,
}

impl ThroughputRow {
    /// This build's relay in `delivery` mode.
    pub fn relay(&self, delivery: Delivery) -> Option<&RelayThroughput> {
        self.relay_in(delivery, Capture::Table)
    }

    /// This build's relay in `delivery` mode on the `capture` load.
    pub fn relay_in(&self, delivery: Delivery, capture: Capture) -> Option<&RelayThroughput> {
        self.relays
            .iter()
            .find(|r| r.delivery == delivery && r.capture == capture && r.baseline.is_none())
    }

    /// The decode ceiling of `capture`'s load (0 when not measured).
    pub fn ceiling_of(&self, capture: Capture) -> f64 {
        match capture {
            Capture::Table => self.ceiling,
            Capture::Messages => self.message_ceiling.unwrap_or(0.0),
        }
    }
}

/// pg_recvlogical over a slot created before the load, up to the load's end LSN; for
/// messages with pgoutput's `messages` option.
async fn ceiling_throughput(ctx: &Ctx, w: &Workload, capture: Capture) -> anyhow::Result<f64> {
    let db = db::fresh().await?;
    // As the admin: on the secured stack the database's owner may not replicate.
    let c = db::connect(&ctx.stack.database_url(&db.name), "relay-bench").await?;
    let slot = db::create_slot(&c, "bench_ceiling").await?;
    let loaded = db::preload_as(&db.url, capture, w.txns(), w.rows_per_txn, w.payload).await?;
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
            messages: capture == Capture::Messages,
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
/// was acked by Kafka and, for rows, marked PROCESSED; both are checked afterwards).
/// `capture`: the load is rows or messages, and the relay's source reads it so.
/// `baseline`: another relay binary and its label, instead of this build.
pub async fn relay_throughput(
    ctx: &Ctx,
    w: &Workload,
    delivery: Delivery,
    capture: Capture,
    brokers: &str,
    baseline: Option<&(String, std::path::PathBuf)>,
) -> anyhow::Result<RelayThroughput> {
    let db = db::fresh().await?;
    if let (Some(_), Some(ff)) = (baseline, ctx.baseline_fillfactor) {
        db::connect(&db.url, "relay-bench")
            .await?
            .batch_execute(&format!("alter table outbox set (fillfactor = {ff})"))
            .await
            .context("setting the baseline's fillfactor")?;
    }
    let (prefix, topic) = ctx.topic_prefix();
    kafka::create_topic(brokers, &topic, PARTITIONS, false).await?;
    let mut spec = ctx.relay_spec(&db, &prefix, brokers, delivery);
    // First, so `--relay-env` (which may not name it) still comes last.
    spec.extra_env.insert(0, capture.relay_env());
    if let Some((_, bin)) = baseline {
        spec.bin = bin.clone();
    }
    let mut first = spec.spawn()?;
    first.wait_ready(READY_TIMEOUT).await?;
    relay::stop(first).await?;

    let loaded = db::preload_as(&db.url, capture, w.txns(), w.rows_per_txn, w.payload).await?;
    let c = db::connect(&db.url, "relay-bench").await?;
    // The relay's backends, walsender apart: none exist yet (the first run ended), so
    // every one sampled started inside the timed run.
    let relay_backends = || db::backends_of(&ctx.admin, &db.name, relay::APPLICATION_NAME);
    let mut pg_cpu = testkit::proc::CpuTracker::begin(
        &relay_backends()
            .await?
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>(),
    );
    let started = Instant::now();
    let mut relay = spec.spawn()?;
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
            && relay::metric(&relay, EVENTS_PUBLISHED)
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
                relay.log().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let acked = acked.unwrap_or(secs);
    pg_cpu.sample(&relay_backends().await?);
    let cpu = relay.cpu_seconds()?;
    let peak_rss = relay.peak_rss_bytes()?;
    let published = relay::metric(&relay, EVENTS_PUBLISHED)
        .await?
        .unwrap_or(0.0) as u64;
    let dead_lettered = relay::metric(&relay, DEAD_LETTERED).await?.unwrap_or(0.0) as u64;
    let transactions = relay::kafka_transactions(&relay).await?;
    check_delivery(delivery, &transactions, relay.log())?;
    let log = relay.log().to_path_buf();
    relay::stop(relay).await?;
    // Messages leave no row to mark.
    let processed = match capture {
        Capture::Table => db::count_status(&c, "PROCESSED").await? as u64,
        Capture::Messages => loaded.rows,
    };
    ensure!(
        processed == loaded.rows && published >= loaded.rows && dead_lettered == 0,
        "relay ({capture}) confirmed the load but published {published}, dead-lettered {dead_lettered} \
         and marked {processed} of {} events; log: {}",
        loaded.rows,
        log.display()
    );
    delete_topics(
        brokers,
        &topics_of(System::Relay(delivery), &prefix, &topic),
    )
    .await;
    Ok(RelayThroughput {
        delivery,
        capture,
        baseline: baseline.map(|(label, _)| label.clone()),
        rows_per_s: loaded.rows as f64 / secs,
        acked_rows_per_s: loaded.rows as f64 / acked,
        startup_s: startup.unwrap_or(secs),
        cpu_per_100k: cpu * 100_000.0 / loaded.rows as f64,
        writer_cpu_per_100k: loaded.writer_cpu * 100_000.0 / loaded.rows as f64,
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
    let mut walsender = testkit::proc::CpuTracker::begin(&[]);
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

pub async fn throughput(ctx: &Ctx, plan: &Plan, w: &Workload) -> anyhow::Result<ThroughputRow> {
    progress(format!(
        "throughput {} ({} rows): ceiling",
        w.label(),
        w.rows
    ));
    let ceiling = ceiling_throughput(ctx, w, Capture::Table).await?;
    let message_ceiling = if plan.captures.contains(&Capture::Messages) {
        progress(format!("throughput {}: ceiling (messages)", w.label()));
        Some(ceiling_throughput(ctx, w, Capture::Messages).await?)
    } else {
        None
    };
    progress(format!("throughput {}: kafka ingest", w.label()));
    let ingest = ingest_throughput(ctx, w).await?;
    let mut relays = Vec::new();
    let brokers = &ctx.stack.kafka_brokers;
    for capture in &plan.captures {
        for delivery in &plan.deliveries {
            let system = format!("{}{}", System::Relay(*delivery), capture.suffix());
            progress(format!("throughput {}: {system}", w.label()));
            relays.push(relay_throughput(ctx, w, *delivery, *capture, brokers, None).await?);
            for b in &plan.relay_baselines {
                progress(format!("throughput {}: {system} from {}", w.label(), b.0));
                relays.push(relay_throughput(ctx, w, *delivery, *capture, brokers, Some(b)).await?);
            }
        }
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
        message_ceiling,
        ingest: ingest.rows_per_s,
        ingest_cpu_per_100k: ingest.cpu_per_100k,
        relays,
        polling,
        debezium,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_runs_get_a_generous_bound() {
        assert_eq!(stuck_after(50_000), Duration::from_secs(160));
    }
}
