//! The faults of each scenario, injected during its load window: one module per
//! scenario, each fault a named step. Scenario 6 has none of its own: its rolled-back
//! transactions and failing requests come from the load.

mod ack_before_mark;
mod kafka_leader;
mod kafka_outage;
mod pg_restart;
mod primary_failover;
mod relay_kill;
mod standby;

use super::catalog::Scenario;
use super::outcome::Outcome;
use super::world::{Window, World};
use crate::load::Rng;

/// Injects `w`'s scenario's faults during `window`.
pub(super) async fn inject(
    w: &mut World<'_>,
    window: Window,
    rng: &mut Rng,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    match w.sc {
        Scenario::RelayKill => relay_kill::run(w, window, rng, out).await,
        Scenario::KafkaOutage => kafka_outage::run(w, window, out).await,
        Scenario::PgRestart => pg_restart::run(w, window, out).await,
        Scenario::Standby => standby::run(w, window, out).await,
        Scenario::AckBeforeMark => ack_before_mark::run(w, window, out).await,
        Scenario::Rollbacks => Ok(()),
        Scenario::KafkaLeaderFailover => kafka_leader::run(w, window, out).await,
        Scenario::PrimaryFailover => primary_failover::run(w, window, out).await,
    }
}
