//! What a scenario found ([`Outcome`]) and the verdict drawn from it.

use std::time::Duration;

use testkit::Delivery;

use super::catalog::Scenario;
use crate::verify::Tally;

/// One end-to-end check and whether it held.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What a scenario found.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: Scenario,
    /// The relays' delivery mode, which decides whether duplicates fail the verdict.
    pub delivery: Delivery,
    /// Every committed row against what a `read_committed` consumer read: the verdict.
    pub tally: Tally,
    /// Duplicates as a `read_uncommitted` consumer saw them (records of aborted Kafka
    /// transactions included); informational. `None` if the scenario stopped before.
    pub duplicates_uncommitted: Option<usize>,
    /// Per fault: from the fault's end until every row pending at that moment was in
    /// Kafka (`None`: never, within the bound).
    pub recoveries: Vec<Option<Duration>>,
    /// Scenario 4: from kill -9 of the active relay until the standby streams every source.
    pub takeovers: Vec<Duration>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    /// The scenario could not run to its verdict.
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl Outcome {
    /// An outcome before anything ran.
    pub fn new(scenario: Scenario, delivery: Delivery) -> Outcome {
        Outcome {
            scenario,
            delivery,
            tally: Tally::default(),
            duplicates_uncommitted: None,
            recoveries: Vec::new(),
            takeovers: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            error: None,
            elapsed: Duration::ZERO,
        }
    }

    /// The verdict: nothing lost, invented or out of order, every end-to-end check
    /// holds, and in exactly-once mode no event read twice by a `read_committed`
    /// consumer. What a `read_uncommitted` consumer saw never decides it.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.tally.lost == 0
            && self.tally.invented == 0
            && self.tally.order_violations() == 0
            && !self.duplicates_forbidden()
            && self.checks.iter().all(|c| c.ok)
    }

    /// Exactly-once mode, and `read_committed` read an event more than once.
    pub fn duplicates_forbidden(&self) -> bool {
        self.delivery == Delivery::ExactlyOnce && self.tally.duplicates > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(delivery: Delivery) -> Outcome {
        Outcome {
            tally: Tally {
                committed: 100,
                delivered: 100,
                ..Tally::default()
            },
            duplicates_uncommitted: Some(0),
            checks: vec![Check {
                name: "every outbox row PROCESSED".into(),
                ok: true,
                detail: String::new(),
            }],
            ..Outcome::new(Scenario::RelayKill, delivery)
        }
    }

    #[test]
    fn duplicates_fail_the_verdict_under_exactly_once_only() {
        for delivery in [Delivery::AtLeastOnce, Delivery::ExactlyOnce] {
            assert!(clean(delivery).passed(), "{delivery:?}");
        }
        let mut o = clean(Delivery::AtLeastOnce);
        o.tally.duplicates = 7;
        assert!(o.passed(), "at-least-once allows replayed copies");
        o.delivery = Delivery::ExactlyOnce;
        assert!(o.duplicates_forbidden());
        assert!(!o.passed(), "exactly-once: read_committed duplicates fail");
    }

    #[test]
    fn what_read_uncommitted_saw_never_decides_the_verdict() {
        let mut o = clean(Delivery::ExactlyOnce);
        o.duplicates_uncommitted = Some(40);
        assert!(
            o.passed(),
            "aborted copies are visible to read_uncommitted only"
        );
    }

    #[test]
    fn every_scenario_is_held_to_the_exactly_once_rule() {
        for sc in Scenario::ALL {
            let mut o = clean(Delivery::ExactlyOnce);
            o.scenario = sc;
            o.tally.duplicates = 1;
            assert!(!o.passed(), "{sc:?}");
        }
    }
}
