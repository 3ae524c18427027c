//! The stream's rules as a pure state machine: what a WAL event, an ack and a
//! confirmation do to one source's state. No I/O; the session feeds it and acts on
//! what it returns.
//!
//! Invariants:
//! - Units (transactions, heartbeats) are acked and handed to the marker strictly in
//!   the order they were committed: an ack for any unit but the oldest is refused.
//! - A heartbeat (non-transactional logical message) becomes a unit only between
//!   transactions, behind every unit before it: it never confirms past a transaction
//!   that is not acked.
//! - The in-flight bounds apply between transactions only: a transaction confirms only
//!   as a whole, so one larger than the bounds must still be read to its commit.

use std::collections::VecDeque;
use std::time::Instant;

use pgwire_replication::Lsn;
use thiserror::Error;
use uuid::Uuid;

use super::progress::Progress;
use crate::marker::{Confirmed, MarkItem};
use crate::pgoutput::{self, Change, OutboxTable, RelationCache};
use crate::sink::{CommitMeta, Event};

/// PostgreSQL timestamps count microseconds from 2000-01-01; this converts to Unix time.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// RFC 3339 (UTC, microseconds) of a PostgreSQL commit timestamp.
pub fn commit_time_rfc3339(pg_micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(pg_micros + PG_EPOCH_OFFSET_MICROS)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("decoding pgoutput: {0}")]
    Decode(#[from] pgoutput::RowError),
    #[error("an insert arrived outside a transaction")]
    OutsideTransaction,
    #[error("outbox id {0:?} is not a uuid")]
    BadId(String),
    #[error("ack for unit {got} while unit {want:?} is the oldest")]
    OutOfOrder { got: u64, want: Option<u64> },
}

/// The in-flight bounds and the largest record the relay sends.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_record_bytes: usize,
}

/// A transaction being read.
#[derive(Debug)]
struct OpenTxn {
    meta: CommitMeta,
    commit_unix_micros: i64,
    ids: Vec<Uuid>,
    dead: Vec<Uuid>,
    bytes: usize,
}

/// A committed transaction (or a heartbeat) waiting for its acks.
#[derive(Debug)]
pub struct Unit {
    pub seq: u64,
    lsn: Lsn,
    source_time_micros: i64,
    ids: Vec<Uuid>,
    dead: Vec<Uuid>,
    bytes: usize,
    commit_unix_micros: Option<i64>,
    queued_at: Instant,
}

/// A unit Kafka acked: what to hand to the marker, and what to measure.
#[derive(Debug)]
pub struct Acked {
    pub item: MarkItem,
    /// Source commit time (Unix µs) of a transaction; `None` for a heartbeat.
    pub commit_unix_micros: Option<i64>,
}

#[derive(Debug)]
pub struct StreamState {
    limits: Limits,
    relations: RelationCache,
    txn: Option<OpenTxn>,
    units: VecDeque<Unit>,
    next_seq: u64,
    progress: Progress,
    /// `capture = "messages"`: the source's outbox table, whose inserts are not read.
    unread_table: Option<(String, String)>,
    /// Inserts into `unread_table` seen (a writer in table mode: its events are not
    /// published by this source).
    pub unread_rows: u64,
}

impl StreamState {
    /// `table`: the table whose inserts are events (`None` under `capture = "messages"`).
    pub fn new(limits: Limits, table: Option<OutboxTable>) -> Self {
        Self {
            limits,
            relations: RelationCache::new(table),
            unread_table: None,
            unread_rows: 0,
            txn: None,
            units: VecDeque::new(),
            next_seq: 0,
            progress: Progress::default(),
        }
    }

    /// Whether to read more WAL: inside a transaction always, between transactions
    /// only while the in-flight records and bytes are under their bounds.
    pub fn has_room(&self) -> bool {
        self.txn.is_some()
            || (self.progress.records() < self.limits.max_records
                && self.progress.bytes() < self.limits.max_bytes)
    }

    pub fn on_begin(&mut self, final_lsn: Lsn, commit_time_micros: i64) {
        self.txn = Some(OpenTxn {
            meta: CommitMeta {
                lsn: final_lsn.to_string(),
                time: commit_time_rfc3339(commit_time_micros),
            },
            commit_unix_micros: commit_time_micros + PG_EPOCH_OFFSET_MICROS,
            ids: Vec::new(),
            dead: Vec::new(),
            bytes: 0,
        });
    }

    /// A pgoutput message: learns relations, turns an outbox insert into an event.
    pub fn on_data(&mut self, data: &[u8]) -> Result<Option<Event>, StreamError> {
        match pgoutput::decode(data).map_err(pgoutput::RowError::from)? {
            Change::Relation(rel) => {
                self.relations.learn(rel);
                Ok(None)
            }
            Change::Insert { relation, values } => {
                let txn = self.txn.as_ref().ok_or(StreamError::OutsideTransaction)?;
                let Some(row) = self.relations.outbox_row(relation, values)? else {
                    if let Some((schema, name)) = &self.unread_table {
                        if self
                            .relations
                            .relation(relation)
                            .is_some_and(|r| &r.namespace == schema && &r.name == name)
                        {
                            self.unread_rows += 1;
                        }
                    }
                    return Ok(None);
                };
                Ok(Some(Event {
                    row,
                    commit: txn.meta.clone(),
                }))
            }
            Change::Other(_) => Ok(None),
        }
    }

    /// Counts the inserts into `schema.table` (not read under `capture = "messages"`).
    pub fn watch_unread_table(&mut self, schema: &str, table: &str) {
        self.unread_table = Some((schema.to_string(), table.to_string()));
    }

    /// A transactional logical message with the source's prefix (`capture =
    /// "messages"`): the event it carries (a poison one when it is not an envelope).
    pub fn on_message(&mut self, lsn: Lsn, content: &[u8]) -> Result<Event, StreamError> {
        let txn = self.txn.as_ref().ok_or(StreamError::OutsideTransaction)?;
        Ok(Event {
            row: pgoutput::message_row(lsn.as_u64(), content),
            commit: txn.meta.clone(),
        })
    }

    /// Why `event` can never be sent, if the relay's own rules say so (see
    /// [`Event::unsendable`]).
    pub fn unsendable(&self, event: &Event) -> Option<String> {
        event.unsendable(self.limits.max_record_bytes)
    }

    /// `event` was enqueued to the sink, as itself (`dead = false`) or as a
    /// dead-letter record (`dead = true`).
    pub fn on_sent(&mut self, event: &Event, dead: bool) -> Result<(), StreamError> {
        let id =
            Uuid::parse_str(&event.row.id).map_err(|_| StreamError::BadId(event.row.id.clone()))?;
        let txn = self.txn.as_mut().ok_or(StreamError::OutsideTransaction)?;
        if dead {
            txn.dead.push(id);
        } else {
            txn.ids.push(id);
        }
        txn.bytes += event.memory();
        self.progress.sent(event.memory());
        Ok(())
    }

    /// The open transaction committed: it becomes a unit waiting for its acks.
    pub fn on_commit(&mut self, end_lsn: Lsn, now: Instant) -> u64 {
        let txn = self.txn.take();
        let seq = self.next_seq;
        self.next_seq += 1;
        let (ids, dead, bytes, time) = match txn {
            Some(t) => (t.ids, t.dead, t.bytes, Some(t.commit_unix_micros)),
            None => (Vec::new(), Vec::new(), 0, None),
        };
        self.units.push_back(Unit {
            seq,
            lsn: end_lsn,
            source_time_micros: time.unwrap_or(0),
            ids,
            dead,
            bytes,
            commit_unix_micros: time,
            queued_at: now,
        });
        seq
    }

    /// A heartbeat: a unit of its own, behind everything received before it; ignored
    /// inside a transaction (its position is not safe to confirm there).
    pub fn on_heartbeat(&mut self, lsn: Lsn, source_time_micros: i64, now: Instant) -> Option<u64> {
        if self.txn.is_some() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.units.push_back(Unit {
            seq,
            lsn,
            source_time_micros,
            ids: Vec::new(),
            dead: Vec::new(),
            bytes: 0,
            commit_unix_micros: None,
            queued_at: now,
        });
        Some(seq)
    }

    /// Every record of unit `seq` is acked; it must be the oldest unit.
    pub fn on_acked(&mut self, seq: u64, now: Instant) -> Result<Acked, StreamError> {
        let want = self.units.front().map(|u| u.seq);
        if want != Some(seq) {
            return Err(StreamError::OutOfOrder { got: seq, want });
        }
        let u = self.units.pop_front().expect("checked above");
        self.progress.handed(u.lsn, now);
        Ok(Acked {
            item: MarkItem {
                lsn: u.lsn,
                source_time_micros: u.source_time_micros,
                ids: u.ids,
                dead: u.dead,
                bytes: u.bytes,
            },
            commit_unix_micros: u.commit_unix_micros,
        })
    }

    /// Kafka refused `event_id` of the oldest unit for good and it went to the dead
    /// letter instead: the row's fate is DEAD_LETTERED, not PROCESSED.
    pub fn on_dead_lettered(&mut self, seq: u64, event_id: &str) -> Result<(), StreamError> {
        let id = Uuid::parse_str(event_id).map_err(|_| StreamError::BadId(event_id.into()))?;
        let want = self.units.front().map(|u| u.seq);
        let unit = self
            .units
            .front_mut()
            .filter(|u| u.seq == seq)
            .ok_or(StreamError::OutOfOrder { got: seq, want })?;
        if let Some(i) = unit.ids.iter().position(|x| *x == id) {
            unit.ids.remove(i);
            unit.dead.push(id);
        }
        Ok(())
    }

    /// Whether `event_id` of unit `seq` was already sent as a dead letter.
    pub fn is_dead_lettered(&self, seq: u64, event_id: &str) -> bool {
        let Ok(id) = Uuid::parse_str(event_id) else {
            return false;
        };
        let in_units = self
            .units
            .iter()
            .find(|u| u.seq == seq)
            .is_some_and(|u| u.dead.contains(&id));
        in_units || self.txn.as_ref().is_some_and(|t| t.dead.contains(&id))
    }

    /// The marker finished a batch: returns the position to confirm, if it moved.
    pub fn on_confirmed(&mut self, c: &Confirmed) -> Option<Lsn> {
        self.progress.on_confirmed(c)
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Units committed and not yet acked.
    pub fn unacked(&self) -> usize {
        self.units.len()
    }

    /// When the oldest unit still waiting for acks was committed (read).
    pub fn oldest_unacked(&self) -> Option<Instant> {
        self.units.front().map(|u| u.queued_at)
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::fixtures::{insert, relation};

    const COLS: [&str; 5] = [
        "id",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
    ];

    fn limits() -> Limits {
        Limits {
            max_records: 3,
            max_bytes: 1 << 20,
            max_record_bytes: 100,
        }
    }

    fn lsn(v: u64) -> Lsn {
        Lsn::from_u64(v)
    }

    /// Reads one transaction of `n` rows; returns the unit's seq and its events.
    fn txn(s: &mut StreamState, end: u64, n: usize, payload: &str) -> (u64, Vec<Event>) {
        let now = Instant::now();
        s.on_begin(lsn(end - 1), 0);
        assert!(s.on_data(&relation(1, &COLS)).unwrap().is_none());
        let mut events = Vec::new();
        for _ in 0..n {
            let id = Uuid::new_v4().to_string();
            let data = insert(
                1,
                &[
                    Some(&id),
                    Some("user"),
                    Some("u1"),
                    Some("E"),
                    Some(payload),
                ],
            );
            let e = s.on_data(&data).unwrap().expect("an insert is an event");
            s.on_sent(&e, false).unwrap();
            events.push(e);
        }
        (s.on_commit(lsn(end), now), events)
    }

    fn marked(item: &MarkItem) -> Confirmed {
        Confirmed {
            lsn: Some(item.lsn),
            source_time_micros: item.source_time_micros,
            records: item.ids.len() + item.dead.len(),
            bytes: item.bytes,
        }
    }

    #[test]
    fn confirmation_follows_commit_order() {
        let mut s = StreamState::new(limits(), Some(OutboxTable::default()));
        let (a, _) = txn(&mut s, 0x100, 1, "{}");
        let (b, _) = txn(&mut s, 0x200, 1, "{}");
        assert_eq!(
            s.on_acked(b, Instant::now()).unwrap_err(),
            StreamError::OutOfOrder {
                got: b,
                want: Some(a)
            },
            "a later transaction's ack never jumps the queue"
        );
        let first = s.on_acked(a, Instant::now()).unwrap().item;
        assert_eq!(first.lsn, lsn(0x100));
        assert_eq!(s.on_confirmed(&marked(&first)), Some(lsn(0x100)));
        let second = s.on_acked(b, Instant::now()).unwrap().item;
        assert_eq!(s.on_confirmed(&marked(&second)), Some(lsn(0x200)));
        assert_eq!(s.progress().records(), 0);
    }

    #[test]
    fn a_heartbeat_never_overtakes_a_transaction() {
        let mut s = StreamState::new(limits(), Some(OutboxTable::default()));
        s.on_begin(lsn(0x0ff), 0);
        assert_eq!(
            s.on_heartbeat(lsn(0x150), 1, Instant::now()),
            None,
            "inside a transaction a heartbeat is ignored"
        );
        let t = s.on_commit(lsn(0x100), Instant::now());
        let hb = s.on_heartbeat(lsn(0x300), 2, Instant::now()).unwrap();
        assert!(hb > t);
        assert!(
            s.on_acked(hb, Instant::now()).is_err(),
            "the heartbeat waits for the transaction before it"
        );
        assert_eq!(s.on_acked(t, Instant::now()).unwrap().item.lsn, lsn(0x100));
        let beat = s.on_acked(hb, Instant::now()).unwrap();
        assert_eq!(beat.item.lsn, lsn(0x300));
        assert!(beat.item.ids.is_empty() && beat.commit_unix_micros.is_none());
    }

    #[test]
    fn small_records_are_bounded_by_memory_not_only_by_count() {
        // A memory bound of two records' overhead, far below the count bound.
        let mut s = StreamState::new(
            Limits {
                max_records: 1000,
                max_bytes: 2 * crate::sink::RECORD_OVERHEAD_BYTES,
                max_record_bytes: 100,
            },
            Some(OutboxTable::default()),
        );
        txn(&mut s, 0x100, 1, "{}");
        assert!(s.has_room(), "one tiny record is under the memory bound");
        txn(&mut s, 0x200, 1, "{}");
        assert!(
            !s.has_room(),
            "two records of 4 bytes each charge their overhead: the bound is reached"
        );
    }

    #[test]
    fn bounds_apply_between_transactions_only() {
        let mut s = StreamState::new(limits(), Some(OutboxTable::default()));
        s.on_begin(lsn(0x0ff), 0);
        s.on_data(&relation(1, &COLS)).unwrap();
        for _ in 0..10 {
            let id = Uuid::new_v4().to_string();
            let e = s
                .on_data(&insert(
                    1,
                    &[Some(&id), Some("t"), Some("k"), Some("E"), Some("{}")],
                ))
                .unwrap()
                .unwrap();
            s.on_sent(&e, false).unwrap();
            assert!(
                s.has_room(),
                "a transaction is read to its commit, past the bound"
            );
        }
        let seq = s.on_commit(lsn(0x100), Instant::now());
        assert!(
            !s.has_room(),
            "10 in flight, bound 3: stop reading between transactions"
        );
        let acked = s.on_acked(seq, Instant::now()).unwrap();
        assert!(
            !s.has_room(),
            "acked is not enough: the marker must confirm"
        );
        s.on_confirmed(&marked(&acked.item));
        assert!(s.has_room());
    }

    #[test]
    fn an_oversized_record_is_poison_by_the_relays_own_bound() {
        let mut s = StreamState::new(limits(), Some(OutboxTable::default()));
        let (_, events) = txn(&mut s, 0x100, 1, "{}");
        assert_eq!(s.unsendable(&events[0]), None);
        let mut big = events[0].clone();
        big.row.payload = vec![b'x'; 200];
        assert!(s
            .unsendable(&big)
            .unwrap()
            .contains("kafka.max_record_bytes"));
        // The row's own headers count towards the bound.
        let mut headed = events[0].clone();
        headed.row.headers = vec![("x-big".into(), "y".repeat(150))];
        assert!(s.unsendable(&headed).is_some());
    }

    #[test]
    fn a_row_with_invalid_headers_is_poison_not_sent_without_them() {
        let mut s = StreamState::new(limits(), Some(OutboxTable::default()));
        let (_, events) = txn(&mut s, 0x100, 1, "{}");
        let bad = events[0].clone();
        let bad = Event {
            row: bad.row.with_metadata(None, None, Some(br#"{"n": 1}"#)),
            ..bad
        };
        let why = s.unsendable(&bad).unwrap();
        assert!(why.contains("\"n\" is not a string"), "{why}");
    }

    #[test]
    fn a_dead_lettered_row_is_marked_dead_not_processed_and_still_released() {
        let mut s = StreamState::new(limits(), Some(OutboxTable::default()));
        let (seq, events) = txn(&mut s, 0x100, 2, "{}");
        s.on_dead_lettered(seq, &events[0].row.id).unwrap();
        assert!(s.is_dead_lettered(seq, &events[0].row.id));
        let item = s.on_acked(seq, Instant::now()).unwrap().item;
        assert_eq!(item.dead, vec![Uuid::parse_str(&events[0].row.id).unwrap()]);
        assert_eq!(item.ids, vec![Uuid::parse_str(&events[1].row.id).unwrap()]);
        s.on_confirmed(&marked(&item));
        assert_eq!(
            s.progress().records(),
            0,
            "dead-lettered records leave the bound too"
        );
    }

    #[test]
    fn an_insert_outside_a_transaction_is_an_error() {
        let mut s = StreamState::new(limits(), Some(OutboxTable::default()));
        s.on_data(&relation(1, &COLS)).unwrap();
        let id = Uuid::new_v4().to_string();
        let data = insert(1, &[Some(&id), Some("t"), Some("k"), Some("E"), Some("{}")]);
        assert_eq!(
            s.on_data(&data).unwrap_err(),
            StreamError::OutsideTransaction
        );
    }

    #[test]
    fn commit_times_convert_from_the_postgres_epoch() {
        assert_eq!(commit_time_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(
            commit_time_rfc3339(1_500_000),
            "2000-01-01T00:00:01.500000Z"
        );
    }
}
