//! Scenario 2: the broker stopped at 20 % of the load for the outage length, then
//! started again; the load keeps running through it.

use std::time::Instant;

use super::super::outcome::Outcome;
use super::super::world::{Window, World};

pub(super) async fn run(
    w: &mut World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let ctx = w.ctx;
    let plan = &ctx.plan;
    let start = window.start;
    let at = |f: f64| window.at(f);
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
    w.begin_recovery().await;
    Ok(())
}
