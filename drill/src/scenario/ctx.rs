//! What every scenario shares ([`Ctx`]: the private stack, the binaries, the plan) and
//! the names one scenario owns ([`Names`]: databases, slots, topics, consumer group).

use std::path::PathBuf;
use std::time::Duration;

use testkit::Delivery;

use super::catalog::Scenario;
use crate::load::{LoadConfig, Rng};
use crate::stack::StackConfig;

/// The binaries the drill starts.
#[derive(Debug, Clone)]
pub struct Bins {
    pub user_service: PathBuf,
    pub transaction_service: PathBuf,
    pub relay: PathBuf,
}

/// How long and how hard each scenario runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Load time per scenario (scenario 2 runs longer when the outage needs it).
    pub duration: Duration,
    pub kafka_outage: Duration,
    /// Relay kills in scenario 1 (at least 10).
    pub kills: usize,
    /// Failovers in scenario 4.
    pub failovers: usize,
    /// Crashes with acked-but-unmarked rows in scenario 5.
    pub ack_kills: usize,
    /// Bound on waiting for everything to settle after the load.
    pub converge_timeout: Duration,
    pub load: LoadConfig,
}

/// Everything scenarios share.
pub struct Ctx {
    pub stack: StackConfig,
    pub bins: Bins,
    pub run_id: String,
    pub log_dir: PathBuf,
    pub http: reqwest::Client,
    pub plan: Plan,
    pub rng: Rng,
    /// Keep a passed scenario's topics (with `--keep-stack`, for inspection).
    pub keep: bool,
    pub delivery: Delivery,
    /// Scenario 7: failover slots synced to the standby (PostgreSQL 17+), or off to
    /// show the reconciliation fallback.
    pub slot_sync: bool,
    /// How the services hand events to the relays: outbox rows, or logical decoding
    /// messages (then the verdict's truth is the drill's own slot, see `crate::truth`).
    pub capture: outbox::Capture,
}

impl Ctx {
    /// The message prefix when events travel as messages; `None` with the table.
    pub fn message_prefix(&self) -> Option<&str> {
        match &self.capture {
            outbox::Capture::Table => None,
            outbox::Capture::Messages { prefix } => Some(prefix),
        }
    }
}

/// Names of one scenario's databases, slots and topics.
pub(super) struct Names {
    pub(super) users_db: String,
    pub(super) tx_db: String,
    pub(super) prefix: String,
    pub(super) user_topic: String,
    pub(super) tx_topic: String,
    /// Exactly-once: the relay's checkpoint topic, deleted with the scenario's topics.
    pub(super) checkpoint_topic: String,
    /// Exactly-once: `transactional.id` = this + the source name.
    pub(super) transactional_id_prefix: String,
    pub(super) group: String,
}

impl Names {
    pub(super) fn new(run_id: &str, sc: Scenario) -> Names {
        let n = sc.number();
        let prefix = format!("drill.{run_id}.s{n}.");
        Names {
            users_db: format!("drill_s{n}_users"),
            tx_db: format!("drill_s{n}_tx"),
            user_topic: format!("{prefix}outbox.event.user"),
            tx_topic: format!("{prefix}outbox.event.transaction"),
            checkpoint_topic: format!("{prefix}checkpoints"),
            transactional_id_prefix: format!("{prefix}relay-"),
            group: format!("drill-{run_id}-s{n}"),
            prefix,
        }
    }

    pub(super) fn topic_for(&self, aggregate_type: &str) -> String {
        format!("{}outbox.event.{aggregate_type}", self.prefix)
    }
}
