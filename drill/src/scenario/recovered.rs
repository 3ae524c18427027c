//! What recovered during a scenario, as the processes count it themselves
//! ([`Recovered`]): the relay's session restarts (`relay_source_restarts_total`), the
//! stuck Kafka producers it replaced (`relay_kafka_producer_replaced_total`), the
//! orphans its audit published
//! (`relay_orphans_total`) and transaction-service's consumer rebuilds
//! (`consumer_rebuilds_total`). A recovery that happened shows in the report's row, not
//! only in a log.
//!
//! A counter lives as long as its process: a kill -9 takes it along, and the restarted
//! relay counts from 0 again. So every relay process is a lifetime of its own
//! ([`Lifetimes`]), read right before the drill kills or stops it, and the scenario's
//! figure is the sum over lifetimes of what each one last showed (within one lifetime a
//! counter never falls, so the last read is its whole contribution). A lifetime that
//! ended unread (killed before its admin port answered, which scenario 1 does on
//! purpose) adds nothing, and the figures are lower bounds then ([`Recovered::unread`]).
//! transaction-service runs once per scenario: one read before its SIGTERM.

use testkit::Metrics;

/// Session restarts after an error, per source (relay-cdc `metrics::RESTARTS`).
pub(super) const RELAY_RESTARTS: &str = "relay_source_restarts_total";
/// Rows the audit found skipped by the slot and published, per source (relay-cdc
/// `metrics::ORPHANS`).
pub(super) const RELAY_ORPHANS: &str = "relay_orphans_total";
/// Sessions ended to replace a producer that reached no broker while a new client did,
/// per source (relay-cdc `metrics::PRODUCER_REPLACED`).
pub(super) const RELAY_PRODUCERS_REPLACED: &str = "relay_kafka_producer_replaced_total";
/// Kafka clients transaction-service replaced because they stayed out of their group
/// (transaction-service `metrics::CONSUMER_REBUILDS_TOTAL`).
pub(super) const CONSUMER_REBUILDS: &str = "consumer_rebuilds_total";

/// What recovered over one scenario, summed over every process lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The relays' session restarts after an error (kill -9s by the drill are faults,
    /// not counted here).
    pub relay_restarts: u64,
    /// Sessions the relays ended because their producer reached no broker while a new
    /// client did; a new producer resumed.
    pub stuck_producers: u64,
    /// Rows the relays' audit found skipped by the slot and published. Any fails the
    /// scenario: a drill never moves a slot, so an orphan is a bug.
    pub orphans: u64,
    /// transaction-service's consumer rebuilds; `None` when it did not answer before it
    /// stopped.
    pub consumer_rebuilds: Option<u64>,
    /// Relay lifetimes that ended before their counters could be read: the relay
    /// figures are lower bounds.
    pub unread: usize,
}

/// A relay process's counters as one scrape of its `/metrics` shows them, summed over
/// its sources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RelayCounters {
    pub(super) restarts: u64,
    pub(super) stuck_producers: u64,
    pub(super) orphans: u64,
}

impl RelayCounters {
    /// A counter the relay has not touched yet is not exposed at all: 0.
    pub(super) fn read(m: &Metrics) -> RelayCounters {
        let total = |name: &str| m.sum(name, &[]).unwrap_or(0.0) as u64;
        RelayCounters {
            restarts: total(RELAY_RESTARTS),
            stuck_producers: total(RELAY_PRODUCERS_REPLACED),
            orphans: total(RELAY_ORPHANS),
        }
    }
}

/// One relay process, from its start to its kill or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LifeId(usize);

#[derive(Debug, Default)]
struct Life {
    /// What it showed when it ended; `None` while it runs or when it ended unread.
    last: Option<RelayCounters>,
    ended: bool,
}

/// Every relay lifetime of a scenario and what each showed last.
#[derive(Debug, Default)]
pub(super) struct Lifetimes {
    lives: Vec<Life>,
}

impl Lifetimes {
    /// A relay process started.
    pub(super) fn begin(&mut self) -> LifeId {
        self.lives.push(Life::default());
        LifeId(self.lives.len() - 1)
    }

    /// Lifetime `id` ended (kill -9 or SIGTERM); `last` is the read just before it,
    /// `None` when the relay did not answer.
    pub(super) fn end(&mut self, id: LifeId, last: Option<RelayCounters>) {
        let life = &mut self.lives[id.0];
        life.last = last;
        life.ended = true;
    }

    /// The sum over lifetimes of what each showed last, and how many lifetimes are
    /// missing from it (ended unread, or never ended).
    pub(super) fn total(&self) -> (RelayCounters, usize) {
        let mut sum = RelayCounters::default();
        let mut unread = 0;
        for life in &self.lives {
            match (life.ended, life.last) {
                (true, Some(c)) => {
                    sum.restarts += c.restarts;
                    sum.stuck_producers += c.stuck_producers;
                    sum.orphans += c.orphans;
                }
                _ => unread += 1,
            }
        }
        (sum, unread)
    }
}

/// transaction-service's consumer rebuilds in one scrape of its `/metrics` (an
/// unlabelled counter: always exposed).
pub(super) fn consumer_rebuilds(m: &Metrics) -> Option<u64> {
    m.get(CONSUMER_REBUILDS).map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay_metrics(restarts: &[(&str, u64)], orphans: &[(&str, u64)]) -> Metrics {
        let mut text = String::from("# TYPE relay_source_restarts_total counter\n");
        for (source, n) in restarts {
            text.push_str(&format!(
                "relay_source_restarts_total{{source=\"{source}\"}} {n}\n"
            ));
        }
        text.push_str("# TYPE relay_kafka_producer_replaced_total counter\n");
        text.push_str("relay_kafka_producer_replaced_total{source=\"users_db\"} 1\n");
        text.push_str("# TYPE relay_orphans_total counter\n");
        for (source, n) in orphans {
            text.push_str(&format!("relay_orphans_total{{source=\"{source}\"}} {n}\n"));
        }
        Metrics::parse(&text)
    }

    #[test]
    fn a_relays_counters_are_summed_over_its_sources_and_absent_ones_are_zero() {
        let m = relay_metrics(&[("users_db", 2), ("transaction_db", 1)], &[]);
        assert_eq!(
            RelayCounters::read(&m),
            RelayCounters {
                restarts: 3,
                stuck_producers: 1,
                orphans: 0
            }
        );
        let m = relay_metrics(&[], &[("users_db", 0), ("transaction_db", 4)]);
        assert_eq!(
            RelayCounters::read(&m),
            RelayCounters {
                restarts: 0,
                stuck_producers: 1,
                orphans: 4
            }
        );
    }

    #[test]
    fn counters_lost_with_a_killed_relay_still_count_when_read_before_the_kill() {
        let mut lives = Lifetimes::default();
        // Relay a: 2 restarts (one for a stuck producer), then kill -9; its successor
        // starts from 0 and shows 1 of each.
        let a1 = lives.begin();
        lives.end(
            a1,
            Some(RelayCounters {
                restarts: 2,
                stuck_producers: 1,
                orphans: 0,
            }),
        );
        let a2 = lives.begin();
        // Standby b beside it, with an orphan published.
        let b = lives.begin();
        lives.end(
            b,
            Some(RelayCounters {
                restarts: 0,
                stuck_producers: 0,
                orphans: 1,
            }),
        );
        lives.end(
            a2,
            Some(RelayCounters {
                restarts: 1,
                stuck_producers: 1,
                orphans: 0,
            }),
        );
        assert_eq!(
            lives.total(),
            (
                RelayCounters {
                    restarts: 3,
                    stuck_producers: 2,
                    orphans: 1
                },
                0
            ),
            "the sum of each lifetime's last read, not the last process's counters"
        );
    }

    #[test]
    fn a_lifetime_that_ended_unread_or_never_ended_makes_the_figures_lower_bounds() {
        let mut lives = Lifetimes::default();
        let killed_while_starting = lives.begin();
        lives.end(killed_while_starting, None);
        let read = lives.begin();
        lives.end(
            read,
            Some(RelayCounters {
                restarts: 5,
                stuck_producers: 0,
                orphans: 0,
            }),
        );
        let _still_running = lives.begin();
        let (sum, unread) = lives.total();
        assert_eq!(sum.restarts, 5);
        assert_eq!(unread, 2);
        assert_eq!(Lifetimes::default().total(), (RelayCounters::default(), 0));
    }

    #[test]
    fn transaction_services_rebuilds_are_read_from_its_unlabelled_counter() {
        let m =
            Metrics::parse("# TYPE consumer_rebuilds_total counter\nconsumer_rebuilds_total 2\n");
        assert_eq!(consumer_rebuilds(&m), Some(2));
        assert_eq!(consumer_rebuilds(&Metrics::parse("")), None);
    }
}
