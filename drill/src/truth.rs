//! The ground truth without a table (`--capture messages`): what committed, read from a
//! logical replication slot of the drill's own on each source database.
//!
//! With message capture no outbox row exists to compare Kafka with. What committed is
//! still in the WAL: each event is a transactional logical decoding message
//! (`pg_logical_emit_message(true, prefix, envelope)`) that PostgreSQL decodes at its
//! transaction's commit and never when the transaction rolled back. So before the load
//! the drill creates a `pgoutput` slot per source database ([`slot_name`]) and reads it
//! while it waits for convergence and at the end (`pg_logical_slot_peek_binary_changes`,
//! `messages 'true'`): every
//! transactional message with the capture's prefix that committed since the slot was
//! made, in commit order, decoded with `outbox::message::decode` into the rows the
//! verdict compares ([`crate::verify::Committed`]). The drill keeps what it read and
//! only then [`advance`]s the slot past it, so each read decodes only what is new and a
//! failover slot's copy on a standby becomes usable (scenario 7); a read that fails
//! half-way costs nothing, as the next peek starts where the slot still is. The slot
//! is dropped with the scenario's other slots, whatever happened (an inactive slot
//! retains WAL forever).
//!
//! The slot is independent of the relay's: it sees what PostgreSQL committed, not what
//! the relay read. It is created once the services migrated and the relay streams (the
//! publication `pgoutput` needs exists then; PostgreSQL 15 refuses to decode a change
//! from before its publication existed) and before the load, so every event of the load
//! is after its consistent point.
//!
//! [`parse`] is the pure part: pgoutput protocol version 1 as the peek returns it, one
//! message per row. It keeps `B` (begin: the transaction's commit LSN), `C` (commit: its
//! end LSN, how far the slot may be advanced) and
//! `M` (message: u8 flags, bit 0 transactional; u64 LSN; the prefix as a NUL-terminated
//! string; u32 length; the content) and skips every other kind (relations, inserts of
//! the tables in the publication). Non-transactional messages and other prefixes (the
//! relay's heartbeats) are not events. A transactional message with the prefix that is
//! not an envelope fails the truth: the relay would treat it as poison, and the verdict
//! must not drop it silently.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::PgPool;

use crate::verify::Committed;

/// The drill's truth slot on the database `db` (one per scenario database; dropped with
/// the database's other slots).
pub fn slot_name(db: &str) -> String {
    format!("{db}_truth")
}

/// One event that committed, as its envelope and its transaction say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthEvent {
    pub id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// The LSN of its transaction's commit record (pgoutput's `B` final LSN): the
    /// `commit_lsn` the relay puts on the record.
    pub commit_lsn: u64,
}

impl TruthEvent {
    /// The row the verdict compares, for the relay's source `source`.
    pub fn committed(&self, source: &str) -> Committed {
        Committed {
            id: self.id.clone(),
            source: source.to_string(),
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            event_type: self.event_type.clone(),
        }
    }
}

/// A little reader over one pgoutput message.
struct Bytes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize, what: &str) -> anyhow::Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .with_context(|| {
                format!(
                    "truncated at byte {}: {what} needs {n} bytes, {} left",
                    self.at,
                    self.buf.len() - self.at
                )
            })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> anyhow::Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> anyhow::Result<u32> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into()?))
    }

    fn u64(&mut self, what: &str) -> anyhow::Result<u64> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into()?))
    }

    fn cstring(&mut self, what: &str) -> anyhow::Result<&'a str> {
        let rest = &self.buf[self.at..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .with_context(|| format!("{what} at byte {} has no NUL terminator", self.at))?;
        let s = std::str::from_utf8(&rest[..nul])
            .with_context(|| format!("{what} at byte {} is not UTF-8", self.at))?;
        self.at += nul + 1;
        Ok(s)
    }
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// What one peek read.
#[derive(Debug, Default)]
pub struct Peeked {
    /// The events, in commit order.
    pub events: Vec<TruthEvent>,
    /// The end of the last commit read: the slot may be advanced to it once the events
    /// are kept (see [`advance`]).
    pub last_commit_end: Option<u64>,
}

/// The events in `messages` (pgoutput v1 messages, one per peeked row, in order): the
/// transactional messages with `prefix`, decoded, each with its commit LSN.
pub fn parse<B: AsRef<[u8]>>(messages: &[B], prefix: &str) -> anyhow::Result<Peeked> {
    let mut events = Vec::new();
    let mut last_commit_end = None;
    // The commit LSN of the transaction being read (between B and C).
    let mut open: Option<u64> = None;
    for (i, m) in messages.iter().enumerate() {
        let mut r = Bytes {
            buf: m.as_ref(),
            at: 0,
        };
        let Ok(kind) = r.u8("message kind") else {
            bail!("message {i} is empty");
        };
        let what = |e: anyhow::Error| e.context(format!("message {i} ({})", kind as char));
        match kind {
            b'B' => {
                let final_lsn = r.u64("final LSN").map_err(what)?;
                if let Some(lsn) = open {
                    bail!(
                        "message {i}: a transaction begins inside the one committing at {}",
                        lsn_text(lsn)
                    );
                }
                open = Some(final_lsn);
            }
            b'C' => {
                anyhow::ensure!(
                    open.take().is_some(),
                    "message {i}: a commit without a begin"
                );
                let _flags = r.u8("flags").map_err(what)?;
                let _commit_lsn = r.u64("commit LSN").map_err(what)?;
                last_commit_end = Some(r.u64("end LSN").map_err(what)?);
            }
            b'M' => {
                let flags = r.u8("flags").map_err(what)?;
                let lsn = r.u64("LSN").map_err(what)?;
                let p = r.cstring("prefix").map_err(what)?;
                let len = r.u32("content length").map_err(what)? as usize;
                let content = r.take(len, "content").map_err(what)?;
                if flags & 1 == 0 || p != prefix {
                    // Not an event: non-transactional (it may belong to a transaction
                    // that rolled back), or another prefix (the relay's heartbeats).
                    continue;
                }
                let Some(commit_lsn) = open else {
                    bail!(
                        "message {i}: a transactional message at {} outside a transaction",
                        lsn_text(lsn)
                    );
                };
                let e = outbox::message::decode(content).with_context(|| {
                    format!(
                        "message {i} at {} with prefix {prefix:?} is not an event envelope",
                        lsn_text(lsn)
                    )
                })?;
                events.push(TruthEvent {
                    id: e.id.to_string(),
                    aggregate_type: e.aggregate_type.to_string(),
                    aggregate_id: e.aggregate_id.to_string(),
                    event_type: e.event_type.to_string(),
                    commit_lsn,
                });
            }
            // Relations, types, origins, inserts into published tables: not events.
            _ => {}
        }
    }
    Ok(Peeked {
        events,
        last_commit_end,
    })
}

/// Creates the truth slot `slot` on `pool`'s database; `failover` makes it a failover
/// slot (PostgreSQL 17+) that a standby with `sync_replication_slots` keeps a copy of.
pub async fn create(pool: &PgPool, slot: &str, failover: bool) -> anyhow::Result<()> {
    let sql = if failover {
        "select pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "select pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    sqlx::query(sql)
        .bind(slot)
        .execute(pool)
        .await
        .with_context(|| format!("creating the truth slot {slot}"))?;
    Ok(())
}

/// Every event committed since `slot`'s confirmed position on `pool`'s database, in
/// commit order; the slot does not move.
pub async fn peek(pool: &PgPool, slot: &str, prefix: &str) -> anyhow::Result<Peeked> {
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
        "select data from pg_logical_slot_peek_binary_changes($1, null, null, \
         'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
    )
    .bind(slot)
    .bind(outbox::PUBLICATION)
    .fetch_all(pool)
    .await
    .with_context(|| format!("peeking at the truth slot {slot}"))?;
    let rows: Vec<Vec<u8>> = rows.into_iter().map(|(d,)| d).collect();
    parse(&rows, prefix).with_context(|| format!("reading the truth slot {slot}"))
}

/// Moves `slot` to `lsn` (the end of a commit the drill has read and kept), so it
/// does not decode those transactions again and retains less WAL. A failover slot must
/// move for a standby to keep a usable copy: PostgreSQL 17 keeps a synced slot
/// temporary until the primary's copy has passed the WAL the standby reserved for it.
/// A peek followed by an advance never loses an event: if the advance fails, the next
/// peek reads the same transactions again (the caller keeps each event once).
pub async fn advance(pool: &PgPool, slot: &str, lsn: u64) -> anyhow::Result<()> {
    sqlx::query("select pg_replication_slot_advance($1, $2::text::pg_lsn)")
        .bind(slot)
        .bind(lsn_text(lsn))
        .execute(pool)
        .await
        .with_context(|| format!("advancing the truth slot {slot} to {}", lsn_text(lsn)))?;
    Ok(())
}

/// The WAL insert position of `pool`'s server now.
pub async fn current_lsn(pool: &PgPool) -> anyhow::Result<u64> {
    let (lsn,): (String,) = sqlx::query_as("select pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    crate::verify::parse_lsn(&lsn).with_context(|| format!("unreadable LSN {lsn:?}"))
}

/// The time to recover from a fault that ended at `start`, when the WAL was at `lsn`:
/// until the collector had read every event whose transaction committed before `lsn`
/// (`first_read` gives, per event of `events`, when it was first read). An event read
/// before `start` counts as 0, as a row already PROCESSED is not pending in table mode.
/// `None` when one of them was never read.
pub fn recovery(
    start: Instant,
    lsn: u64,
    events: &[&TruthEvent],
    first_read: impl Fn(&[&str]) -> Vec<Option<Instant>>,
) -> Option<Duration> {
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e.commit_lsn < lsn)
        .map(|e| e.id.as_str())
        .collect();
    let mut longest = Duration::ZERO;
    for read in first_read(&ids) {
        longest = longest.max(read?.saturating_duration_since(start));
    }
    Some(longest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox::NewEvent;
    use uuid::Uuid;

    fn begin(final_lsn: u64) -> Vec<u8> {
        let mut m = vec![b'B'];
        m.extend_from_slice(&final_lsn.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes()); // commit time
        m.extend_from_slice(&42u32.to_be_bytes()); // xid
        m
    }

    fn commit(lsn: u64) -> Vec<u8> {
        let mut m = vec![b'C', 0];
        m.extend_from_slice(&lsn.to_be_bytes());
        m.extend_from_slice(&(lsn + 0x30).to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m
    }

    fn message(transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Vec<u8> {
        let mut m = vec![b'M', u8::from(transactional)];
        m.extend_from_slice(&lsn.to_be_bytes());
        m.extend_from_slice(prefix.as_bytes());
        m.push(0);
        m.extend_from_slice(&(content.len() as u32).to_be_bytes());
        m.extend_from_slice(content);
        m
    }

    fn envelope(id: Uuid, aggregate_id: &str, event_type: &str) -> Vec<u8> {
        let e = NewEvent::new(
            "transaction",
            aggregate_id,
            event_type,
            &serde_json::json!({"a": 1}),
        )
        .unwrap();
        outbox::message::encode(id, &e).unwrap()
    }

    #[test]
    fn transactional_messages_with_the_prefix_become_events_with_their_commit_lsn() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let msgs = vec![
            begin(0x100),
            message(
                true,
                0x90,
                "outbox",
                &envelope(a, "t1", "TransactionCreated"),
            ),
            message(
                true,
                0x98,
                "outbox",
                &envelope(b, "t2", "TransactionCreated"),
            ),
            commit(0x100),
            begin(0x2_0000_0200),
            message(
                true,
                0x180,
                "outbox",
                &envelope(c, "t1", "TransactionCompleted"),
            ),
            commit(0x2_0000_0200),
        ];
        let peeked = parse(&msgs, "outbox").unwrap();
        assert_eq!(peeked.last_commit_end, Some(0x2_0000_0200 + 0x30));
        let events = peeked.events;
        let got: Vec<(String, &str, &str, u64)> = events
            .iter()
            .map(|e| {
                (
                    e.id.clone(),
                    e.aggregate_id.as_str(),
                    e.event_type.as_str(),
                    e.commit_lsn,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (a.to_string(), "t1", "TransactionCreated", 0x100),
                (b.to_string(), "t2", "TransactionCreated", 0x100),
                (c.to_string(), "t1", "TransactionCompleted", 0x2_0000_0200),
            ]
        );
        let row = events[0].committed("transaction_db");
        assert_eq!(
            (row.source.as_str(), row.aggregate_type.as_str()),
            ("transaction_db", "transaction")
        );
    }

    #[test]
    fn other_prefixes_non_transactional_messages_and_other_kinds_are_not_events() {
        let id = Uuid::now_v7();
        let env = envelope(id, "t1", "TransactionCreated");
        let msgs = vec![
            // A non-transactional message outside any transaction: it may belong to a
            // transaction that rolled back.
            message(false, 0x10, "outbox", &env),
            begin(0x100),
            vec![b'R', 0, 0, 0, 1],             // a relation
            vec![b'I', 0, 0, 0, 1, b'N', 0, 0], // an insert into a published table
            message(true, 0x20, "relay-cdc-heartbeat", b"not an envelope"),
            message(true, 0x30, "outbox-other", &env),
            message(true, 0x40, "outbox", &env),
            commit(0x100),
        ];
        let events = parse(&msgs, "outbox").unwrap().events;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, id.to_string());
        assert!(parse(&msgs, "drill").unwrap().events.is_empty());
    }

    #[test]
    fn an_empty_peek_is_an_empty_truth() {
        let peeked = parse::<Vec<u8>>(&[], "outbox").unwrap();
        assert!(peeked.events.is_empty());
        assert_eq!(peeked.last_commit_end, None, "nothing to advance to");
    }

    #[test]
    fn a_message_with_the_prefix_that_is_no_envelope_fails_the_truth() {
        let msgs = vec![
            begin(0x100),
            message(true, 0x20, "outbox", b"\x02garbage"),
            commit(0x100),
        ];
        let e = format!("{:#}", parse(&msgs, "outbox").unwrap_err());
        assert!(e.contains("not an event envelope"), "{e}");
        assert!(e.contains("0/20"), "{e}");
    }

    #[test]
    fn truncated_or_misplaced_messages_are_refused_with_where() {
        let env = envelope(Uuid::now_v7(), "t1", "TransactionCreated");
        let mut cut = message(true, 0x20, "outbox", &env);
        cut.truncate(cut.len() - 3);
        let e = format!("{:#}", parse(&[begin(1), cut], "outbox").unwrap_err());
        assert!(e.contains("content needs"), "{e}");

        let no_nul = vec![b'M', 1, 0, 0, 0, 0, 0, 0, 0, 1, b'o'];
        let e = format!("{:#}", parse(&[begin(1), no_nul], "outbox").unwrap_err());
        assert!(e.contains("no NUL terminator"), "{e}");

        let e = format!(
            "{:#}",
            parse(&[message(true, 0x20, "outbox", &env)], "outbox").unwrap_err()
        );
        assert!(e.contains("outside a transaction"), "{e}");

        let e = format!("{:#}", parse(&[commit(1)], "outbox").unwrap_err());
        assert!(e.contains("commit without a begin"), "{e}");
        let e = format!("{:#}", parse(&[begin(1), begin(2)], "outbox").unwrap_err());
        assert!(e.contains("begins inside"), "{e}");
        assert!(parse(&[Vec::new()], "outbox").is_err());
    }

    fn event(id: &str, commit_lsn: u64) -> TruthEvent {
        TruthEvent {
            id: id.into(),
            aggregate_type: "user".into(),
            aggregate_id: id.into(),
            event_type: "UserCreated".into(),
            commit_lsn,
        }
    }

    #[test]
    fn a_recovery_lasts_until_the_last_event_committed_before_the_fault_was_read() {
        let start = Instant::now();
        let events = [event("a", 0x10), event("b", 0x20), event("late", 0x90)];
        let refs: Vec<&TruthEvent> = events.iter().collect();
        let reads = |ids: &[&str]| -> Vec<Option<Instant>> {
            ids.iter()
                .map(|id| match *id {
                    "a" => Some(start + Duration::from_millis(300)),
                    "b" => Some(start + Duration::from_millis(1200)),
                    _ => None,
                })
                .collect()
        };
        // "late" committed after the fault: not part of its backlog, never read.
        assert_eq!(
            recovery(start, 0x80, &refs, reads),
            Some(Duration::from_millis(1200))
        );
        // Once it is part of the backlog, a never-read event means never recovered.
        assert_eq!(recovery(start, 0x100, &refs, reads), None);
        // Events read before the fault ended count as 0.
        let early = |ids: &[&str]| vec![Some(start); ids.len()];
        assert_eq!(
            recovery(start + Duration::from_secs(1), 0x80, &refs, early),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn slot_names_stay_within_postgresqls_rules() {
        let s = slot_name("drill_s7_users");
        assert_eq!(s, "drill_s7_users_truth");
        assert!(s.len() <= 63);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
