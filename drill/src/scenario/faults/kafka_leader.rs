//! Scenario 8: Kafka cluster faults on three brokers. At 15 % of the load the broker
//! leading most of the scenario's partitions is killed -9 and started again; at 40 % a
//! rolling restart; at 60 % two brokers stop at once for the outage length, so writes
//! cannot reach `min.insync.replicas` = 2, then start again together.

use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use testkit::RelayProcess;
use tokio::task::JoinHandle;

use super::super::outcome::{Check, Outcome};
use super::super::world::{Window, World};
use crate::kafka;

/// The rolling restart: how long it waits for every partition to be fully replicated
/// before stopping the next broker; it goes on regardless after that (and says so in
/// the notes).
const ISR_WAIT: Duration = Duration::from_secs(60);
const TRANSIENT: &str = "relay_kafka_transient_errors_total";
/// Records the leader refused for now (NOT_ENOUGH_REPLICAS) and that were sent again;
/// connection errors to the stopped brokers are counted apart.
const RESENT: &[(&str, &str)] = &[("kind", "resent")];
/// The relay's RSS bound while writes are refused, in KiB.
const RSS_BOUND_KIB: u64 = 128 * 1024;

pub(super) async fn run(
    w: &mut World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    tokio::time::sleep_until(window.at(0.15).into()).await;
    let leader = kill_busiest_leader(w, window, out).await?;
    w.begin_recovery().await;
    tokio::time::sleep_until(window.at(0.4).into()).await;
    rolling_restart(w, window, out).await?;
    w.begin_recovery().await;
    tokio::time::sleep_until(window.at(0.6).into()).await;
    two_brokers_down(w, window, leader, out).await?;
    w.begin_recovery().await;
    Ok(())
}

/// kill -9 of the broker that leads most of the scenario's partitions, started again
/// after 15 % of the load (at most 20 s); returns its node id.
async fn kill_busiest_leader(
    w: &World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<u32> {
    let stack = &w.ctx.stack;
    let topics = [w.names.user_topic.clone(), w.names.tx_topic.clone()];
    let leader = kafka::busiest_leader(&stack.brokers(), &topics)?;
    let t = Instant::now();
    stack.run(&format!("kafka-node kill {leader}")).await?;
    tokio::time::sleep(Duration::from_secs_f64((window.secs * 0.15).min(20.0))).await;
    stack.run(&format!("kafka-node start {leader}")).await?;
    out.notes.push(format!(
        "broker {leader} (leading the most partitions) killed -9 at {:.1} s, back {:.1} s later",
        (t - window.start).as_secs_f64(),
        t.elapsed().as_secs_f64()
    ));
    Ok(leader)
}

/// Each broker stopped and started in turn, the next one only once every partition is
/// fully replicated again (as an operator does; stopping a broker while the previous
/// one is still out of the ISR made its controlled shutdown wait ~25 s for leaders
/// that had nowhere to go).
async fn rolling_restart(w: &World<'_>, window: Window, out: &mut Outcome) -> anyhow::Result<()> {
    let stack = &w.ctx.stack;
    let brokers = stack.brokers();
    let t = Instant::now();
    let mut waits = Vec::new();
    for node in 1..=3 {
        waits.push(
            match kafka::wait_fully_replicated(&brokers, ISR_WAIT).await {
                Ok(waited) => format!("{:.1} s", waited.as_secs_f64()),
                Err(n) => format!("gave up after {ISR_WAIT:?} with {n} under-replicated"),
            },
        );
        stack.run(&format!("kafka-node stop {node}")).await?;
        stack.run(&format!("kafka-node start {node}")).await?;
    }
    out.notes.push(format!(
        "rolling restart of the three brokers at {:.1} s took {:.1} s (waits for full replication before each stop: {})",
        (t - window.start).as_secs_f64(),
        t.elapsed().as_secs_f64(),
        waits.join(", ")
    ));
    Ok(())
}

/// Two brokers down at once (as one failure takes them), started again together: the
/// controllers (a quorum of five voters) move every leader to the survivor and shrink
/// the ISR to it, so no write can reach min.insync.replicas = 2 for the outage. A probe
/// topic of the drill's own shows what a plain acks=all write gets meanwhile; the
/// relay's metrics must show the refusals and its memory stay bounded.
async fn two_brokers_down(
    w: &World<'_>,
    window: Window,
    leader: u32,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let stack = &w.ctx.stack;
    let outage = w.ctx.plan.kafka_outage;
    let brokers = stack.brokers();
    let probe_topic = format!("{}.probe", w.names.tx_topic);
    kafka::create_topics(&brokers, std::slice::from_ref(&probe_topic)).await?;
    let transient_before = w.relay_metric(0, TRANSIENT, RESENT).await.unwrap_or(0.0);
    let t = Instant::now();
    let survivor = 1 + (leader % 3);
    let down: Vec<u32> = (1..=3).filter(|n| *n != survivor).collect();
    let on_both = |verb: &str| {
        down.iter()
            .map(|n| format!("kafka-node {verb} {n}"))
            .collect::<Vec<_>>()
    };
    let stop = on_both("stop");
    tokio::try_join!(stack.run(&stop[0]), stack.run(&stop[1]))?;
    let probe = probe_refusal(brokers.clone(), probe_topic.clone(), outage);
    let (max_rss, max_down) = sample_relay(w, outage).await;
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
        (t - window.start).as_secs_f64(),
        outage.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        max_rss as f64 / 1024.0
    ));
    let transient = w.relay_metric(0, TRANSIENT, RESENT).await.unwrap_or(0.0) - transient_before;
    let fatal = w
        .relay_metric(0, "relay_kafka_fatal_errors_total", &[])
        .await
        .unwrap_or(0.0);
    // Without load during the outage the relay has nothing to be refused.
    let load_ran = Instant::now() < w.load_deadline;
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
        ok: max_rss > 0 && max_rss < RSS_BOUND_KIB,
        detail: format!("max RSS {:.1} MiB (bound 128 MiB)", max_rss as f64 / 1024.0),
    });
    Ok(())
}

/// Plain acks=all writes to `topic` every 500 ms for `outage`, until the leader refuses
/// one for want of replicas: whether it did, and what each write got.
fn probe_refusal(
    brokers: String,
    topic: String,
    outage: Duration,
) -> JoinHandle<(bool, Vec<String>)> {
    let until = Instant::now() + outage;
    tokio::spawn(async move {
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
}

/// Relay `a` over `outage`: its largest RSS in KiB (every 250 ms) and the most brokers
/// its metrics saw down (every second).
async fn sample_relay(w: &World<'_>, outage: Duration) -> (u64, f64) {
    let pid = w.relays[0].as_ref().map(RelayProcess::pid);
    let mut max_rss = 0u64;
    let mut max_down = 0f64;
    let until = Instant::now() + outage;
    let mut tick = 0u32;
    while Instant::now() < until {
        if let Some(bytes) = pid.and_then(|p| testkit::proc::rss_bytes(p).ok()) {
            max_rss = max_rss.max(bytes / 1024);
        }
        if tick.is_multiple_of(4) {
            let down = w
                .relay_metric(0, "relay_kafka_brokers", &[("state", "down")])
                .await;
            max_down = max_down.max(down.unwrap_or(0.0));
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (max_rss, max_down)
}
