//! The broker outage: relay-cdc's memory while a private broker is stopped under load,
//! and how long it takes to deliver everything once the broker is back.

use std::time::{Duration, Instant};

use testkit::Delivery;
use tokio::sync::watch;

use crate::ctx::{Ctx, PARTITIONS, READY_TIMEOUT, READ_IDLE};
use crate::db;
use crate::kafka;
use crate::load::{self, Rate};
use crate::progress::progress;
use crate::relay;

const RECORDS_IN_FLIGHT: &str = "relay_records_in_flight";

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
pub async fn outage(ctx: &Ctx, outage: Duration) -> anyhow::Result<OutageResult> {
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
    let mut relay = ctx
        .relay_spec(&db, &prefix, &broker.brokers, Delivery::AtLeastOnce)
        .spawn()?;
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
                match testkit::proc::rss_bytes(pid) {
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
    let steady_peak_rss = relay.peak_rss_bytes()?;
    progress("broker outage: stopping the broker");
    broker.stop().await?;
    let down = Instant::now();
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    relay.check_alive()?;
    let in_flight_at_end = relay::metric(&relay, RECORDS_IN_FLIGHT)
        .await?
        .unwrap_or(0.0);
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
    let after_rss = relay.rss_bytes()?;
    relay::stop(relay).await?;
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
