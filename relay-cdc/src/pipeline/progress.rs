//! Progress of one source: the in-flight counts that bound reading, the confirmed
//! position, the watchdog that names a stuck stage, and the final slot advance.
//!
//! Invariants:
//! - The confirmed LSN only moves forward, and only to the end of a unit (transaction
//!   or heartbeat) that Kafka acked and the marker marked, with every unit before it.
//! - A source is *stalled* when the oldest thing it waits for (an ack, a marking, a
//!   heartbeat coming back through the slot) is older than `pipeline.stall_timeout_ms`.
//!   Every way the loop can stop making progress ends in one of these three waits.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pgwire_replication::Lsn;

use crate::config::SourceSettings;
use crate::marker::Confirmed;
use crate::source;

/// Records and bytes sent and not yet confirmed, and what was confirmed.
#[derive(Debug, Default)]
pub struct Progress {
    records: usize,
    bytes: usize,
    /// Units acked and handed to the marker, not yet confirmed: (end LSN, when handed).
    handed: VecDeque<(Lsn, Instant)>,
    confirmed: Option<Lsn>,
    /// Source time (Unix µs) of the newest WAL fully handled.
    last_handled_micros: i64,
}

impl Progress {
    pub fn sent(&mut self, bytes: usize) {
        self.records += 1;
        self.bytes += bytes;
    }

    pub fn handed(&mut self, lsn: Lsn, now: Instant) {
        self.handed.push_back((lsn, now));
    }

    /// A marked batch: releases its records and returns the position to confirm, if
    /// it moves the confirmed one forward.
    pub fn on_confirmed(&mut self, c: &Confirmed) -> Option<Lsn> {
        self.records = self.records.saturating_sub(c.records);
        self.bytes = self.bytes.saturating_sub(c.bytes);
        self.last_handled_micros = self.last_handled_micros.max(c.source_time_micros);
        let lsn = c.lsn?;
        while self.handed.front().is_some_and(|(l, _)| *l <= lsn) {
            self.handed.pop_front();
        }
        if self.confirmed.is_some_and(|old| old >= lsn) {
            return None;
        }
        self.confirmed = Some(lsn);
        Some(lsn)
    }

    pub fn records(&self) -> usize {
        self.records
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn confirmed(&self) -> Option<Lsn> {
        self.confirmed
    }

    pub fn last_handled_micros(&self) -> i64 {
        self.last_handled_micros
    }

    /// When the oldest unit still waiting for the marker was handed to it.
    pub fn oldest_unmarked(&self) -> Option<Instant> {
        self.handed.front().map(|(_, t)| *t)
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

/// Makes the final confirmed position reach the server once the session ended:
/// pgwire-replication 0.5 ends a session with CopyDone but without a last status
/// update, so without this the final acks would be replayed after every restart.
pub async fn persist_final_position(source: &SourceSettings, slot: &str, lsn: Lsn) -> bool {
    let name = &source.name;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let c = source::connect(source).await?;
            match source::slot_state(&c, slot).await? {
                Some(st) if st.active => Ok(false),
                _ => source::advance_slot(&c, slot, lsn).await.map(|_| true),
            }
        };
        match attempt.await {
            Ok(true) => {
                tracing::info!(source = %name, lsn = %lsn, "final position confirmed");
                return true;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "could not persist the final position")
            }
        }
        if Instant::now() > deadline {
            tracing::warn!(source = %name, lsn = %lsn, "gave up persisting the final position; it will be replayed");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirmed(lsn: u64, records: usize) -> Confirmed {
        Confirmed {
            lsn: Some(Lsn::from_u64(lsn)),
            source_time_micros: lsn as i64,
            records,
            bytes: records * 10,
        }
    }

    #[test]
    fn the_confirmed_position_only_moves_forward() {
        let mut p = Progress::default();
        for _ in 0..3 {
            p.sent(10);
        }
        assert_eq!(
            p.on_confirmed(&confirmed(0x200, 2)),
            Some(Lsn::from_u64(0x200))
        );
        assert_eq!(p.on_confirmed(&confirmed(0x100, 1)), None);
        assert_eq!(p.confirmed(), Some(Lsn::from_u64(0x200)));
        assert_eq!((p.records(), p.bytes()), (0, 0));
        assert_eq!(p.last_handled_micros(), 0x200);
    }

    #[test]
    fn marked_units_leave_the_marking_wait() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        p.handed(Lsn::from_u64(0x100), t0);
        p.handed(Lsn::from_u64(0x200), t0 + Duration::from_secs(1));
        p.on_confirmed(&confirmed(0x100, 0));
        assert_eq!(p.oldest_unmarked(), Some(t0 + Duration::from_secs(1)));
        p.on_confirmed(&confirmed(0x200, 0));
        assert_eq!(p.oldest_unmarked(), None);
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
