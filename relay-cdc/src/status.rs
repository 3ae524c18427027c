//! What each source is doing, shared by its pipeline, its housekeeping task and the
//! admin port: the lifecycle state, the watchdog's stamps and its rule, and the newest
//! source time fully handled. Gauges derived from it (lag in seconds, the oldest unacked
//! record, stalled) are computed when they are read, so they never freeze with a stuck
//! task.
//!
//! The pipeline writes here and the admin port reads; nothing here reads the pipeline.
//!
//! Invariant: a source is *stalled* when the oldest thing it waits for (an ack, a
//! marking, a heartbeat coming back through the slot) is older than
//! `pipeline.stall_timeout_ms`. Every way the stream loop can stop making progress ends
//! in one of these three waits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::metrics::Metrics;

/// The wall clock in Unix microseconds (source times are compared with it).
pub fn now_unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A source's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Starting,
    /// Publishing rows left PENDING before the slot existed.
    Reconciling,
    Streaming,
    /// Another relay holds the slot; this one takes over when it is free.
    Standby,
    /// The last session failed; a new one starts after a backoff.
    Restarting {
        error: String,
    },
    /// Stopped for good until an operator acts (poison under `stop`, a refused topic).
    Halted {
        reason: String,
    },
    Stopped,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Reconciling => "reconciling",
            State::Streaming => "streaming",
            State::Standby => "standby",
            State::Restarting { .. } => "restarting",
            State::Halted { .. } => "halted",
            State::Stopped => "stopped",
        }
    }
}

/// The stage a stalled source waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Records were sent and Kafka has not acked the oldest of them.
    KafkaAcks,
    /// Kafka acked, and the PROCESSED update has not finished.
    Marking,
    /// Heartbeats were written to the source and none came back through the slot
    /// (walsender, network, or the relay's own loop).
    Replication,
    /// The pipeline keeps failing and restarting without streaming.
    Restarting,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::KafkaAcks => "kafka acks",
            Stage::Marking => "marking",
            Stage::Replication => "replication",
            Stage::Restarting => "restarting",
        })
    }
}

/// What the watchdog knows: when each oldest wait began.
#[derive(Debug, Clone, Default)]
pub struct Watchdog {
    pub oldest_unacked: Option<Instant>,
    pub oldest_unmarked: Option<Instant>,
    /// The oldest heartbeat written since the stream last delivered anything.
    pub unseen_heartbeat: Option<Instant>,
    /// Since when the pipeline has failed to stream (restarting), if it does.
    pub not_streaming_since: Option<Instant>,
}

impl Watchdog {
    pub fn heartbeat_written(&mut self, at: Instant) {
        self.unseen_heartbeat.get_or_insert(at);
    }

    /// The stream delivered WAL: every heartbeat written before now has been read or
    /// will be right behind it.
    pub fn received(&mut self) {
        self.unseen_heartbeat = None;
    }

    /// The stalled stage and for how long, if any wait is older than `timeout`.
    /// The earliest stage in the pipeline wins: marking waits behind Kafka, never ahead.
    pub fn stall(&self, now: Instant, timeout: Duration) -> Option<(Stage, Duration)> {
        [
            (Stage::Restarting, self.not_streaming_since),
            (Stage::KafkaAcks, self.oldest_unacked),
            (Stage::Marking, self.oldest_unmarked),
            (Stage::Replication, self.unseen_heartbeat),
        ]
        .into_iter()
        .filter_map(|(stage, since)| Some((stage, now.saturating_duration_since(since?))))
        .find(|(_, age)| *age >= timeout)
    }
}

/// The last completed audit round of a source (see `pipeline::audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditResult {
    /// When the round ended, RFC 3339 (UTC).
    pub at: String,
    /// PENDING rows the round noted and checked.
    pub checked: usize,
    /// Of them, rows the slot had skipped (published by the next session).
    pub orphans: usize,
}

#[derive(Debug)]
struct Inner {
    state: State,
    watchdog: Watchdog,
    last_handled_micros: i64,
    audit: Option<AuditResult>,
}

/// One source's shared status.
#[derive(Debug)]
pub struct SourceStatus {
    pub name: String,
    inner: Mutex<Inner>,
}

/// What the admin port and the logs report about a source at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: State,
    pub stall: Option<(Stage, Duration)>,
    pub lag_seconds: f64,
    pub oldest_unacked_seconds: f64,
    pub audit: Option<AuditResult>,
}

impl SourceStatus {
    pub fn new(name: &str, now_micros: i64) -> Self {
        Self {
            name: name.to_string(),
            inner: Mutex::new(Inner {
                state: State::Starting,
                watchdog: Watchdog {
                    not_streaming_since: Some(Instant::now()),
                    ..Watchdog::default()
                },
                last_handled_micros: now_micros,
                audit: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    pub fn set_state(&self, state: State) {
        let mut inner = self.lock();
        let w = &mut inner.watchdog;
        match &state {
            State::Streaming | State::Reconciling | State::Standby => w.not_streaming_since = None,
            State::Starting | State::Restarting { .. } => {
                w.not_streaming_since.get_or_insert_with(Instant::now);
            }
            State::Halted { .. } | State::Stopped => w.not_streaming_since = None,
        }
        if !matches!(state, State::Streaming | State::Reconciling) {
            // No session: nothing is waited for.
            w.oldest_unacked = None;
            w.oldest_unmarked = None;
            w.unseen_heartbeat = None;
        }
        inner.state = state;
    }

    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// The session's view: its oldest waits, whether WAL arrived since the last call,
    /// and the newest source time fully handled.
    pub fn observe(
        &self,
        oldest_unacked: Option<Instant>,
        oldest_unmarked: Option<Instant>,
        received: bool,
        last_handled_micros: i64,
    ) {
        let mut inner = self.lock();
        inner.watchdog.oldest_unacked = oldest_unacked;
        inner.watchdog.oldest_unmarked = oldest_unmarked;
        if received {
            inner.watchdog.received();
        }
        inner.last_handled_micros = inner.last_handled_micros.max(last_handled_micros);
    }

    /// Housekeeping wrote a heartbeat; while streaming it must come back through the slot.
    pub fn heartbeat_written(&self, at: Instant) {
        let mut inner = self.lock();
        if inner.state == State::Streaming {
            inner.watchdog.heartbeat_written(at);
        }
    }

    /// The audit completed a round.
    pub fn audited(&self, result: AuditResult) {
        self.lock().audit = Some(result);
    }

    pub fn snapshot(&self, now: Instant, now_micros: i64, stall_timeout: Duration) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            state: inner.state.clone(),
            stall: inner.watchdog.stall(now, stall_timeout),
            lag_seconds: (now_micros - inner.last_handled_micros).max(0) as f64 / 1e6,
            oldest_unacked_seconds: inner
                .watchdog
                .oldest_unacked
                .map(|t| now.saturating_duration_since(t).as_secs_f64())
                .unwrap_or(0.0),
            audit: inner.audit.clone(),
        }
    }
}

/// Every source's status, and the rules that turn them into health.
#[derive(Debug, Clone)]
pub struct Health {
    pub sources: Vec<Arc<SourceStatus>>,
    pub stall_timeout: Duration,
}

impl Health {
    pub fn new(names: &[String], stall_timeout: Duration) -> Self {
        let now = now_unix_micros();
        Self {
            sources: names
                .iter()
                .map(|n| Arc::new(SourceStatus::new(n, now)))
                .collect(),
            stall_timeout,
        }
    }

    pub fn source(&self, name: &str) -> Arc<SourceStatus> {
        self.sources
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| Arc::new(SourceStatus::new(name, now_unix_micros())))
    }

    pub fn snapshots(&self) -> Vec<(String, Snapshot)> {
        let (now, micros) = (Instant::now(), now_unix_micros());
        self.sources
            .iter()
            .map(|s| (s.name.clone(), s.snapshot(now, micros, self.stall_timeout)))
            .collect()
    }

    /// Sets the gauges that are derived at read time.
    pub fn refresh(&self, metrics: &Metrics) {
        for (name, snap) in self.snapshots() {
            let l = [name.as_str()];
            metrics
                .lag_seconds
                .with_label_values(&l)
                .set(snap.lag_seconds);
            metrics
                .oldest_unacked_seconds
                .with_label_values(&l)
                .set(snap.oldest_unacked_seconds);
            metrics
                .stalled
                .with_label_values(&l)
                .set(i64::from(snap.stall.is_some()));
            metrics
                .source_halted
                .with_label_values(&l)
                .set(i64::from(matches!(snap.state, State::Halted { .. })));
            metrics
                .source_up
                .with_label_values(&l)
                .set(i64::from(snap.state == State::Streaming));
        }
    }
}

/// `/healthz`: healthy unless a source is stalled or halted; the body names each
/// source's state and, when stalled, the stage and for how long, and the last audit
/// round (`"audit": {"at": …, "checked": n, "orphans": m}`) once there was one.
pub fn healthz(snapshots: &[(String, Snapshot)]) -> (bool, Value) {
    let mut healthy = true;
    let sources: serde_json::Map<String, Value> = snapshots
        .iter()
        .map(|(name, snap)| {
            let mut v = match (&snap.state, snap.stall) {
                (State::Halted { reason }, _) => {
                    healthy = false;
                    json!({ "state": "halted", "reason": reason })
                }
                (_, Some((stage, age))) => {
                    healthy = false;
                    json!({
                        "state": "stalled",
                        "stage": stage.to_string(),
                        "seconds": (age.as_secs_f64() * 10.0).round() / 10.0,
                        "lifecycle": snap.state.name(),
                    })
                }
                (State::Restarting { error }, None) => {
                    json!({ "state": "restarting", "error": error })
                }
                (state, None) => json!({ "state": state.name() }),
            };
            if let Some(a) = &snap.audit {
                v["audit"] = json!({ "at": a.at, "checked": a.checked, "orphans": a.orphans });
            }
            (name.clone(), v)
        })
        .collect();
    (healthy, json!({ "healthy": healthy, "sources": sources }))
}

/// `/readyz`: ready only when every source streams.
pub fn readyz(snapshots: &[(String, Snapshot)]) -> (bool, Value) {
    let sources: serde_json::Map<String, Value> = snapshots
        .iter()
        .map(|(name, snap)| (name.clone(), Value::from(snap.state.name())))
        .collect();
    let ready = snapshots.iter().all(|(_, s)| s.state == State::Streaming);
    (ready, json!({ "ready": ready, "sources": sources }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_source_makes_the_process_unhealthy_and_names_the_stage() {
        let s = SourceStatus::new("users_db", 0);
        s.set_state(State::Streaming);
        let t0 = Instant::now();
        s.observe(Some(t0), None, true, 0);
        let timeout = Duration::from_secs(60);
        let (ok, _) = healthz(&[("users_db".into(), s.snapshot(t0, 0, timeout))]);
        assert!(ok);
        let later = t0 + Duration::from_secs(61);
        let (ok, body) = healthz(&[("users_db".into(), s.snapshot(later, 0, timeout))]);
        assert!(!ok);
        assert_eq!(body["sources"]["users_db"]["state"], "stalled");
        assert_eq!(body["sources"]["users_db"]["stage"], "kafka acks");
    }

    #[test]
    fn a_halted_source_is_unhealthy_with_its_reason_and_not_ready() {
        let s = SourceStatus::new("tx", 0);
        s.set_state(State::Halted {
            reason: "record too large".into(),
        });
        let snaps = [(
            "tx".to_string(),
            s.snapshot(Instant::now(), 0, Duration::from_secs(1)),
        )];
        let (ok, body) = healthz(&snaps);
        assert!(!ok);
        assert_eq!(body["sources"]["tx"]["reason"], "record too large");
        assert!(!readyz(&snaps).0);
    }

    #[test]
    fn a_restart_loop_is_a_stall_once_it_lasts_past_the_timeout() {
        let s = SourceStatus::new("tx", 0);
        s.set_state(State::Restarting {
            error: "kafka: all brokers down".into(),
        });
        let timeout = Duration::from_secs(5);
        let soon = s.snapshot(Instant::now(), 0, timeout);
        assert!(soon.stall.is_none() && healthz(&[("tx".into(), soon)]).0);
        let late = s.snapshot(Instant::now() + Duration::from_secs(6), 0, timeout);
        assert_eq!(late.stall.map(|s| s.0), Some(Stage::Restarting));
        s.set_state(State::Standby);
        let standby = s.snapshot(Instant::now() + Duration::from_secs(60), 0, timeout);
        assert!(standby.stall.is_none(), "a standby waits by design");
    }

    #[test]
    fn lag_is_computed_when_read_so_it_never_freezes() {
        let s = SourceStatus::new("tx", 1_000_000);
        let a = s.snapshot(Instant::now(), 3_000_000, Duration::from_secs(60));
        let b = s.snapshot(Instant::now(), 5_000_000, Duration::from_secs(60));
        assert_eq!((a.lag_seconds, b.lag_seconds), (2.0, 4.0));
    }

    #[test]
    fn an_ack_that_never_comes_trips_the_watchdog_naming_kafka() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(60);
        let w = Watchdog {
            oldest_unacked: Some(t0),
            // Marking waits behind Kafka: an older unmarked unit still names Kafka first.
            oldest_unmarked: Some(t0),
            ..Watchdog::default()
        };
        assert_eq!(w.stall(t0 + Duration::from_secs(59), timeout), None);
        assert_eq!(
            w.stall(t0 + Duration::from_secs(61), timeout),
            Some((Stage::KafkaAcks, Duration::from_secs(61)))
        );
    }

    #[test]
    fn a_marking_wait_past_the_timeout_names_marking() {
        let t0 = Instant::now();
        let w = Watchdog {
            oldest_unacked: Some(t0 + Duration::from_secs(50)),
            oldest_unmarked: Some(t0),
            ..Watchdog::default()
        };
        let (stage, _) = w
            .stall(t0 + Duration::from_secs(70), Duration::from_secs(60))
            .unwrap();
        assert_eq!(stage, Stage::Marking);
    }

    #[test]
    fn heartbeats_that_never_come_back_name_replication_until_wal_arrives() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut w = Watchdog::default();
        w.heartbeat_written(t0);
        w.heartbeat_written(t0 + Duration::from_secs(5));
        assert_eq!(
            w.stall(t0 + Duration::from_secs(11), timeout).map(|s| s.0),
            Some(Stage::Replication),
            "the oldest unseen heartbeat counts"
        );
        w.received();
        assert_eq!(w.stall(t0 + Duration::from_secs(11), timeout), None);
    }

    #[test]
    fn the_last_audit_round_shows_on_healthz_without_changing_health() {
        let s = SourceStatus::new("tx", 0);
        s.set_state(State::Streaming);
        let snap = || {
            [(
                "tx".to_string(),
                s.snapshot(Instant::now(), 0, Duration::from_secs(60)),
            )]
        };
        assert!(healthz(&snap()).1["sources"]["tx"].get("audit").is_none());
        s.audited(AuditResult {
            at: "2026-12-06T07:00:00Z".into(),
            checked: 12,
            orphans: 3,
        });
        let (ok, body) = healthz(&snap());
        assert!(ok, "orphans are published, not a failure of the source");
        let audit = &body["sources"]["tx"]["audit"];
        assert_eq!(
            (audit["checked"].as_u64(), audit["orphans"].as_u64()),
            (Some(12), Some(3))
        );
        assert_eq!(audit["at"], "2026-12-06T07:00:00Z");
    }

    #[test]
    fn an_idle_source_is_never_stalled() {
        let w = Watchdog::default();
        assert_eq!(
            w.stall(
                Instant::now() + Duration::from_secs(3600),
                Duration::from_secs(1)
            ),
            None
        );
    }
}
