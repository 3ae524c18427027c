//! What each source is doing, shared by its pipeline, its housekeeping task and the
//! admin port: the lifecycle state, the watchdog's stamps, and the newest source time
//! fully handled. Gauges derived from it (lag in seconds, the oldest unacked record,
//! stalled) are computed when they are read, so they never freeze with a stuck task.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::pipeline::progress::{Stage, Watchdog};

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

#[derive(Debug)]
struct Inner {
    state: State,
    watchdog: Watchdog,
    last_handled_micros: i64,
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
        let now = crate::pipeline::now_unix_micros();
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
            .unwrap_or_else(|| {
                Arc::new(SourceStatus::new(name, crate::pipeline::now_unix_micros()))
            })
    }

    pub fn snapshots(&self) -> Vec<(String, Snapshot)> {
        let (now, micros) = (Instant::now(), crate::pipeline::now_unix_micros());
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
/// source's state and, when stalled, the stage and for how long.
pub fn healthz(snapshots: &[(String, Snapshot)]) -> (bool, Value) {
    let mut healthy = true;
    let sources: serde_json::Map<String, Value> = snapshots
        .iter()
        .map(|(name, snap)| {
            let v = match (&snap.state, snap.stall) {
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
}
