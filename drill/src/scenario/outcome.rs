//! What a scenario found ([`Outcome`]) and the verdict drawn from it.

use std::time::Duration;

use testkit::Delivery;

use super::catalog::Scenario;
use super::recovered::Recovered;
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
    /// What the processes' own counters say recovered; `None` if the scenario stopped
    /// before its processes did.
    pub recovered: Option<Recovered>,
    pub notes: Vec<String>,
    /// The scenario could not run to its verdict.
    pub error: Option<String>,
    pub elapsed: Duration,
    /// Events travelled as logical decoding messages (`--capture messages`): no table,
    /// so no audit and no orphans to count.
    pub no_table: bool,
    /// Why the scenario does not apply to this run (it needs the outbox table); it ran
    /// nothing and is reported as not applicable, never as passed.
    pub not_applicable: Option<String>,
    /// The documented halt is the expected end (a lost slot without a table): the
    /// events the halt leaves behind are the documented gap, not a loss the verdict
    /// counts; a check asserts the halt itself.
    pub expect_halt: bool,
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
            recovered: None,
            notes: Vec::new(),
            error: None,
            elapsed: Duration::ZERO,
            no_table: false,
            not_applicable: None,
            expect_halt: false,
        }
    }

    /// The verdict: nothing lost, invented or out of order, no orphan published, every
    /// end-to-end check holds, and in exactly-once mode no event read twice by a
    /// `read_committed` consumer. What a `read_uncommitted` consumer saw never decides it.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// Why the scenario failed, one reason each; empty when it passed.
    pub fn failures(&self) -> Vec<String> {
        let t = &self.tally;
        let mut why = Vec::new();
        if self.not_applicable.is_some() {
            return why;
        }
        if self.error.is_some() {
            why.push("it could not run to its verdict".to_string());
        }
        if t.lost > 0 && !self.expect_halt {
            why.push(format!("{} lost", t.lost));
        }
        if t.invented > 0 {
            why.push(format!("{} invented", t.invented));
        }
        if t.order_violations() > 0 {
            why.push(format!(
                "order violations {} / {}",
                t.order_aggregate, t.order_source
            ));
        }
        if self.duplicates_forbidden() {
            why.push(format!(
                "{} read twice by read_committed under exactly-once",
                t.duplicates
            ));
        }
        let orphans = self.orphans();
        if orphans > 0 {
            why.push(format!(
                "{orphans} orphans published (rows the slot skipped; a drill never moves a slot)"
            ));
        }
        why.extend(
            self.checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("check failed: {}", c.name)),
        );
        why
    }

    /// Rows the relays' audit found skipped by the slot and published.
    pub fn orphans(&self) -> u64 {
        self.recovered.map_or(0, |r| r.orphans)
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
    fn an_orphan_fails_the_verdict_and_says_why() {
        let mut o = clean(Delivery::AtLeastOnce);
        o.recovered = Some(Recovered {
            relay_restarts: 4,
            stuck_producers: 1,
            consumer_rebuilds: Some(2),
            ..Recovered::default()
        });
        assert!(o.passed(), "recoveries that happened are shown, not judged");
        o.recovered = Some(Recovered {
            orphans: 3,
            ..o.recovered.unwrap()
        });
        assert!(!o.passed());
        assert_eq!(
            o.failures(),
            ["3 orphans published (rows the slot skipped; a drill never moves a slot)"]
        );
    }

    #[test]
    fn each_failure_is_named() {
        let mut o = clean(Delivery::ExactlyOnce);
        assert!(o.failures().is_empty());
        o.tally.lost = 1;
        o.tally.order_source = 2;
        o.tally.duplicates = 1;
        o.checks[0].ok = false;
        o.error = Some("stack".into());
        assert_eq!(
            o.failures(),
            [
                "it could not run to its verdict",
                "1 lost",
                "order violations 0 / 2",
                "1 read twice by read_committed under exactly-once",
                "check failed: every outbox row PROCESSED",
            ]
        );
    }

    #[test]
    fn a_scenario_that_does_not_apply_neither_fails_nor_counts_anything() {
        let o = Outcome {
            not_applicable: Some("needs the outbox table".into()),
            ..Outcome::new(Scenario::AckBeforeMark, Delivery::AtLeastOnce)
        };
        assert!(o.failures().is_empty());
        assert_eq!(o.tally.committed, 0);
    }

    #[test]
    fn an_expected_halt_leaves_a_gap_but_still_fails_on_invention_disorder_or_its_check() {
        let mut o = clean(Delivery::AtLeastOnce);
        o.expect_halt = true;
        o.tally.lost = 40;
        assert!(o.passed(), "the gap a halt leaves is documented");
        o.tally.invented = 1;
        assert!(!o.passed());
        o.tally.invented = 0;
        o.checks[0].ok = false;
        assert!(!o.passed(), "the halt itself is a check");
        let mut o = clean(Delivery::AtLeastOnce);
        o.tally.lost = 1;
        assert!(!o.passed(), "without an expected halt a gap is a loss");
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
