//! Notices a consumer that cannot get back into its group although the cluster is
//! reachable, so [`super::run`] can replace the client.
//!
//! librdkafka rejoins by itself after a broker restart, almost always. Once in four
//! suite runs the drill saw it not: after the group session timed out during a broker
//! restart ("broker -1"), the client's coordinator handle kept one request queued and
//! never sent (`REQTMOUT [thrd:GroupCoordinator]: Timed out 0 in-flight, 0
//! retry-queued, 1 out-queue` every 60 s) while the broker was up, and settlement
//! stopped for good with 1,863 transactions PENDING. A new client finds the
//! coordinator again.
//!
//! The client reports its group's state in its statistics (every
//! [`STATS_INTERVAL`]); [`GroupContext`] keeps the latest. [`StallWatch`] decides:
//! a group that is not `up` and `steady` for [`KafkaSettings::stall_timeout`] while at
//! least one broker connection is up is stalled. While no broker is up the cluster is
//! down, not the consumer, and the clock does not run: a rebuild would find nothing
//! better. After a rebuild that did not help, the next one waits twice as long (up to
//! [`MAX_STALL_TIMEOUT`]): a client whose close cannot finish stays behind on a
//! blocking thread, and a stall that rebuilding cannot cure (another member that
//! never rejoins) must not pile them up.
//!
//! [`KafkaSettings::stall_timeout`]: crate::config::KafkaSettings::stall_timeout

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rdkafka::consumer::ConsumerContext;
use rdkafka::ClientContext;
use serde::Deserialize;

/// How often the client reports its statistics (`statistics.interval.ms`), and how
/// often [`super::run`] looks at them.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// The longest wait before a rebuild, however many came before.
pub const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(600);

/// What the statistics say about the group and the brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    /// `cgrp.state`: `up` once the coordinator is known and connected.
    pub state: String,
    /// `cgrp.join_state`: `steady` once the member has its assignment.
    pub join_state: String,
    /// Connections to real brokers (not the bootstrap or coordinator handles) that are `UP`.
    pub brokers_up: usize,
}

impl GroupSnapshot {
    /// The member is in its group with its assignment.
    pub fn joined(&self) -> bool {
        self.state == "up" && self.join_state == "steady"
    }

    /// Reads the parts of librdkafka's statistics JSON this module needs; `None` for a
    /// document without a group (a client that has not subscribed).
    fn parse(json: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Stats {
            cgrp: Option<Group>,
            #[serde(default)]
            brokers: HashMap<String, Broker>,
        }
        #[derive(Deserialize)]
        struct Group {
            state: String,
            join_state: String,
        }
        #[derive(Deserialize)]
        struct Broker {
            nodeid: i32,
            state: String,
        }
        let stats: Stats = serde_json::from_slice(json).ok()?;
        let group = stats.cgrp?;
        Some(Self {
            state: group.state,
            join_state: group.join_state,
            brokers_up: stats
                .brokers
                .values()
                .filter(|b| b.nodeid >= 0 && b.state == "UP")
                .count(),
        })
    }
}

/// The consumer's client context: keeps the latest [`GroupSnapshot`].
#[derive(Default)]
pub struct GroupContext {
    latest: Mutex<Option<GroupSnapshot>>,
}

impl GroupContext {
    /// The latest statistics' view of the group; `None` before the first report.
    pub fn snapshot(&self) -> Option<GroupSnapshot> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ClientContext for GroupContext {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(snapshot) = GroupSnapshot::parse(statistics) {
            *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
        }
    }
}

impl ConsumerContext for GroupContext {}

/// What [`StallWatch::observe`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// In the group, or nothing to say yet.
    Fine,
    /// Out of the group while the cluster is reachable, for less than the timeout.
    Waiting(Duration),
    /// Out of the group while the cluster is reachable for this long: replace the client.
    Stalled(Duration),
}

/// Decides when a consumer out of its group is stalled (see the module docs).
#[derive(Debug)]
pub struct StallWatch {
    base: Duration,
    timeout: Duration,
    /// The timeouts after each rebuild: `base` doubled, up to [`MAX_STALL_TIMEOUT`]
    /// (or `base` when that is longer); started again once the group is back.
    after_rebuilds: ExponentialBackoff,
    /// Since when the group has been out while a broker was up.
    out_since: Option<Instant>,
}

impl StallWatch {
    pub fn new(timeout: Duration) -> Self {
        Self {
            base: timeout,
            timeout,
            after_rebuilds: Self::doubling(timeout),
            out_since: None,
        }
    }

    /// `base` doubled at each step, up to [`MAX_STALL_TIMEOUT`] or `base` if longer.
    fn doubling(base: Duration) -> ExponentialBackoff {
        let mut timeouts = ExponentialBuilder::default()
            .with_factor(2.0)
            .with_min_delay(base)
            .with_max_delay(MAX_STALL_TIMEOUT.max(base))
            .without_max_times()
            .build();
        // The first is `base` itself, the timeout before any rebuild.
        timeouts.next();
        timeouts
    }

    /// How long the group may stay out before the next rebuild.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Takes the latest snapshot at `now`.
    pub fn observe(&mut self, snapshot: Option<&GroupSnapshot>, now: Instant) -> Verdict {
        let Some(snapshot) = snapshot else {
            return Verdict::Fine;
        };
        if snapshot.joined() {
            self.out_since = None;
            if self.timeout != self.base {
                self.timeout = self.base;
                self.after_rebuilds = Self::doubling(self.base);
            }
            return Verdict::Fine;
        }
        if snapshot.brokers_up == 0 {
            self.out_since = None;
            return Verdict::Fine;
        }
        let out_for = now.duration_since(*self.out_since.get_or_insert(now));
        if out_for >= self.timeout {
            Verdict::Stalled(out_for)
        } else {
            Verdict::Waiting(out_for)
        }
    }

    /// The client was replaced: the new one gets twice the time before the next rebuild.
    pub fn rebuilt(&mut self) {
        self.out_since = None;
        self.timeout = self
            .after_rebuilds
            .next()
            .expect("timeouts without a limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(state: &str, join_state: &str, brokers_up: usize) -> GroupSnapshot {
        GroupSnapshot {
            state: state.into(),
            join_state: join_state.into(),
            brokers_up,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn librdkafka_statistics_are_read_for_the_group_and_real_brokers() {
        let json = br#"{"name":"c#consumer-1","type":"consumer","brokers":{
            "127.0.0.1:9092/bootstrap":{"nodeid":-1,"state":"UP"},
            "GroupCoordinator":{"nodeid":-1,"state":"DOWN"},
            "127.0.0.1:9092/1":{"nodeid":1,"state":"UP"},
            "127.0.0.1:9094/2":{"nodeid":2,"state":"CONNECT"}},
            "cgrp":{"state":"up","stateage":1,"join_state":"wait-join","rebalance_age":2,
                    "rebalance_cnt":1,"rebalance_reason":"","assignment_size":0}}"#;
        assert_eq!(
            GroupSnapshot::parse(json),
            Some(group("up", "wait-join", 1))
        );
        assert_eq!(GroupSnapshot::parse(br#"{"brokers":{}}"#), None);
        assert_eq!(GroupSnapshot::parse(b"not json"), None);
    }

    #[test]
    fn a_group_out_while_a_broker_is_up_stalls_after_the_timeout() {
        let t0 = Instant::now();
        let mut watch = StallWatch::new(TIMEOUT);
        let out = group("up", "wait-join", 1);
        assert_eq!(
            watch.observe(Some(&out), t0),
            Verdict::Waiting(Duration::ZERO)
        );
        let late = t0 + TIMEOUT;
        assert_eq!(watch.observe(Some(&out), late), Verdict::Stalled(TIMEOUT));
    }

    #[test]
    fn rejoining_resets_the_clock() {
        let t0 = Instant::now();
        let mut watch = StallWatch::new(TIMEOUT);
        watch.observe(Some(&group("query-coord", "init", 1)), t0);
        let t1 = t0 + TIMEOUT / 2;
        assert_eq!(
            watch.observe(Some(&group("up", "steady", 1)), t1),
            Verdict::Fine
        );
        let t2 = t0 + TIMEOUT;
        let again = watch.observe(Some(&group("up", "wait-join", 1)), t2);
        assert_eq!(again, Verdict::Waiting(Duration::ZERO));
    }

    #[test]
    fn an_unreachable_cluster_is_not_a_stall() {
        let t0 = Instant::now();
        let mut watch = StallWatch::new(TIMEOUT);
        let down = group("query-coord", "init", 0);
        assert_eq!(watch.observe(Some(&down), t0), Verdict::Fine);
        assert_eq!(watch.observe(Some(&down), t0 + TIMEOUT * 10), Verdict::Fine);
        // The clock starts when a broker is back.
        let back = group("query-coord", "init", 1);
        let t1 = t0 + TIMEOUT * 10;
        assert_eq!(
            watch.observe(Some(&back), t1),
            Verdict::Waiting(Duration::ZERO)
        );
        assert_eq!(
            watch.observe(Some(&back), t1 + TIMEOUT),
            Verdict::Stalled(TIMEOUT)
        );
    }

    #[test]
    fn no_statistics_yet_says_nothing() {
        let mut watch = StallWatch::new(TIMEOUT);
        assert_eq!(watch.observe(None, Instant::now()), Verdict::Fine);
    }

    #[test]
    fn each_rebuild_that_does_not_help_doubles_the_wait_up_to_a_bound() {
        let mut watch = StallWatch::new(TIMEOUT);
        watch.rebuilt();
        assert_eq!(watch.timeout(), TIMEOUT * 2);
        for _ in 0..10 {
            watch.rebuilt();
        }
        assert_eq!(watch.timeout(), MAX_STALL_TIMEOUT);
        // Back in the group: the next stall gets the configured timeout again.
        watch.observe(Some(&group("up", "steady", 1)), Instant::now());
        assert_eq!(watch.timeout(), TIMEOUT);
    }

    #[test]
    fn after_a_rebuild_the_clock_starts_over() {
        let t0 = Instant::now();
        let mut watch = StallWatch::new(TIMEOUT);
        let out = group("up", "wait-join", 1);
        watch.observe(Some(&out), t0);
        assert!(matches!(
            watch.observe(Some(&out), t0 + TIMEOUT),
            Verdict::Stalled(_)
        ));
        watch.rebuilt();
        let t1 = t0 + TIMEOUT;
        assert_eq!(
            watch.observe(Some(&out), t1),
            Verdict::Waiting(Duration::ZERO)
        );
        assert!(matches!(
            watch.observe(Some(&out), t1 + TIMEOUT),
            Verdict::Waiting(_)
        ));
        assert!(matches!(
            watch.observe(Some(&out), t1 + TIMEOUT * 2),
            Verdict::Stalled(_)
        ));
    }
}
