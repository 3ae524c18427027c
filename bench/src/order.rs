//! Commit order: interleaved transaction pairs whose commit order differs from their
//! begin order, and how many events each system published out of commit order.

use anyhow::Context;
use tokio::sync::watch;

use crate::ctx::{delete_topics, topics_of, Ctx, System, READ_IDLE};
use crate::db;
use crate::kafka;
use crate::load;
use crate::options::Plan;
use crate::progress::progress;
use crate::running::Running;
use crate::stats;

pub struct OrderRow {
    pub system: System,
    pub pairs: u64,
    pub events: u64,
    pub violations: usize,
}

/// Interleaved pairs (T1 begins and inserts, T2 inserts and commits, T1 commits) into a
/// one-partition topic; counts events Kafka holds after an event that committed later.
pub async fn order(ctx: &Ctx, plan: &Plan, system: System) -> anyhow::Result<OrderRow> {
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
