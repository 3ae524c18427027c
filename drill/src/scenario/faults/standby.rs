//! Scenario 4: an active and a standby relay; the active one killed -9 (3 times or
//! more), the takeover measured until the standby streams both sources, and the killed
//! one brought back as the new standby.

use std::time::Instant;

use anyhow::{bail, Context};

use super::super::outcome::Outcome;
use super::super::world::{Window, World};

pub(super) async fn run(
    w: &mut World<'_>,
    window: Window,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let plan = &w.ctx.plan;
    let at = |f: f64| window.at(f);
    let n = plan.failovers.max(1);
    let mut active = 0;
    for k in 0..n {
        let f = 0.1 + 0.8 * (k as f64 + 0.5) / n as f64;
        tokio::time::sleep_until(at(f).into()).await;
        let standby = 1 - active;
        if !w.relay_ready(active).await {
            bail!(
                "relay {} was not streaming before failover {}",
                ["a", "b"][active],
                k + 1
            );
        }
        w.kill_relay(active).await;
        let killed = Instant::now();
        w.begin_recovery().await;
        w.wait_relay_ready(standby)
            .await
            .with_context(|| format!("standby did not take over (failover {})", k + 1))?;
        out.takeovers.push(killed.elapsed());
        // The dead one comes back as the new standby.
        w.start_relay(active)?;
        w.wait_healthy(active).await?;
        active = standby;
    }
    out.notes.push(format!(
        "{} failovers; takeover (kill -9 of the active relay until the standby streams both sources): {}",
        out.takeovers.len(),
        out.takeovers.iter().map(|t| format!("{:.2} s", t.as_secs_f64())).collect::<Vec<_>>().join(", ")
    ));
    Ok(())
}
