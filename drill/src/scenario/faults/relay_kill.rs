//! Scenario 1: the relay killed -9 at random moments of the load (at least 10 times)
//! and restarted at once each time, so some kills hit it while it is still starting.

use super::super::outcome::Outcome;
use super::super::world::{Window, World};
use crate::load::Rng;

/// Kills and restarts relay `a` at `plan.kills` random moments of the window.
pub(super) async fn run(
    w: &mut World<'_>,
    window: Window,
    rng: &mut Rng,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let plan = &w.ctx.plan;
    let d = window.secs;
    let at = |f: f64| window.at(f);
    let mut times: Vec<f64> = (0..plan.kills).map(|_| 0.05 + 0.85 * rng.unit()).collect();
    times.sort_by(f64::total_cmp);
    for f in &times {
        tokio::time::sleep_until(at(*f).into()).await;
        w.kill_relay(0).await;
        w.start_relay(0)?;
        w.begin_recovery().await;
    }
    out.notes.push(format!(
        "kill -9 + restart of the relay {} times, at {} s",
        times.len(),
        times
            .iter()
            .map(|f| format!("{:.1}", f * d))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(())
}
