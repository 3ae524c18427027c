//! A system under load: the relay child process, the in-process polling worker or
//! Debezium's JVM, started on a measurement's database and topics, then checked,
//! measured (its process's CPU and memory) and stopped. The latency and commit-order
//! runs drive every system through it.

use std::time::{Duration, Instant};

use anyhow::bail;
use testkit::TestDb;

use crate::ctx::{check_delivery, probe_topic, Ctx, System, DEBEZIUM_START_TIMEOUT, READY_TIMEOUT};
use crate::db;
use crate::debezium::ConnectProcess;
use crate::kafka;
use crate::options::Plan;
use crate::polling::Poller;
use crate::relay;
use testkit::RelayProcess;

/// A started system: the relay child process, the in-process polling worker or
/// Debezium's JVM.
pub enum Running {
    Relay(Box<RelayProcess>),
    Polling(Poller),
    Debezium(Box<ConnectProcess>),
}

impl Running {
    pub async fn start(
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
                let mut r = ctx.relay_spec(db, prefix, brokers, delivery).spawn()?;
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

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
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
    pub fn process_cpu(&self) -> anyhow::Result<Option<f64>> {
        match self {
            Running::Relay(r) => r.cpu_seconds().map(Some),
            Running::Polling(_) => Ok(None),
            Running::Debezium(c) => c.cpu_seconds().map(Some),
        }
    }

    pub fn process_peak_rss(&self) -> anyhow::Result<Option<u64>> {
        match self {
            Running::Relay(r) => r.peak_rss_bytes().map(Some),
            Running::Polling(_) => Ok(None),
            Running::Debezium(c) => c.peak_rss().map(Some),
        }
    }

    /// Transactions the bench itself ran on the database while starting the system
    /// (Debezium: the slot's creation and the warm-up row), left out of its load.
    pub fn bench_xacts(&self) -> i64 {
        match self {
            Running::Debezium(_) => 2,
            _ => 0,
        }
    }

    /// For the relay: checks it ran in its delivery mode (see [`check_delivery`]).
    pub async fn check_delivery(&self, system: System) -> anyhow::Result<()> {
        match (self.relay(), system) {
            (Some(r), System::Relay(delivery)) => {
                check_delivery(delivery, &relay::kafka_transactions(r).await?, r.log())
            }
            _ => Ok(()),
        }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Running::Relay(r) => relay::stop(*r).await,
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
