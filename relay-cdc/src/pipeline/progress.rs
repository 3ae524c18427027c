//! Progress of one session: the in-flight counts that bound reading, the units waiting
//! for the marker, and the confirmed position, its one owner in a session (the
//! supervisor carries it to the next one).
//!
//! Invariant: the confirmed LSN only moves forward, and only to the end of a unit
//! (transaction or heartbeat) that Kafka acked and the marker marked, with every unit
//! before it.

use std::collections::VecDeque;
use std::time::Instant;

use pgwire_replication::Lsn;

use crate::marker::Confirmed;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}
