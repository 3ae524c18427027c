//! Where events go: the [`Sink`] trait, with Kafka ([`kafka`]) and, in unit tests
//! only, an in-memory sink (`memory`).
//!
//! Invariant: an event counts as published only when its [`Delivery`] resolved `Ok`.
//! A refusal says whether Kafka can *never* take the record ([`Refusal::Poison`],
//! handled by `kafka.poison`) or whether the pipeline must be rebuilt and resume from
//! the confirmed LSN ([`Refusal::Fatal`]); a sink never skips a record silently.
//!
//! A transactional sink (Kafka in exactly-once mode) groups whole PostgreSQL
//! transactions into one destination transaction: [`Sink::end_transaction`] marks a
//! PostgreSQL commit and returns a delivery that resolves only when the destination
//! transaction holding it committed, so a unit is never confirmed before that. It
//! commits only at such a boundary; a PostgreSQL transaction is never split.

pub mod kafka;
#[cfg(test)]
pub mod memory;

pub use kafka::{checkpoint, cluster};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pgwire_replication::Lsn;
use thiserror::Error;
use tokio::time::Instant;

use crate::pgoutput::OutboxRow;

/// Where a record's source transaction committed; shared by all its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMeta {
    pub lsn: String,
    pub time: String,
}

/// One outbox row on its way out, with where its transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub row: OutboxRow,
    pub commit: CommitMeta,
}

/// Memory an in-flight record holds beyond its key and payload: librdkafka's message and
/// its seven headers, the delivery future, the relay's bookkeeping. Measured: a 60 s
/// broker outage held ~2.2 KiB of RSS per queued record carrying ~170 bytes.
pub const RECORD_OVERHEAD_BYTES: usize = 2048;

impl Event {
    /// Bytes the record carries (key + value + the row's own headers): what
    /// `kafka.max_record_bytes` bounds.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .row
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        self.row.payload.len() + self.row.aggregate_id.len() + headers
    }

    /// Why the event can never be sent as written, if the relay's own rules say so: it
    /// is larger than `max_record_bytes`, or its trace context or headers are invalid.
    /// Such an event is poison.
    pub fn unsendable(&self, max_record_bytes: usize) -> Option<String> {
        if let Some(why) = &self.row.unsendable {
            return Some(why.clone());
        }
        let size = self.size();
        (size > max_record_bytes).then(|| {
            format!("record of {size} bytes exceeds kafka.max_record_bytes ({max_record_bytes})")
        })
    }

    /// Memory the record holds while in flight: what `pipeline.max_in_flight_bytes`
    /// bounds, so that small records are bounded by memory too, not only by count.
    pub fn memory(&self) -> usize {
        self.size() + RECORD_OVERHEAD_BYTES
    }
}

/// Resolves when the sink acked one record (or refused it).
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send>>;

/// A delivery answered later through `rx`; a dropped sender is fatal (`dropped` says what).
pub fn delivery_from(
    rx: tokio::sync::oneshot::Receiver<Result<(), Refusal>>,
    dropped: &'static str,
) -> Delivery {
    Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err(Refusal::Fatal(dropped.into())))
    })
}

/// Why a record was not published.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The destination can never take this record (too large, invalid, not authorized).
    #[error("refused for good: {reason}")]
    Poison { event: Box<Event>, reason: String },
    /// Anything else: the producer is in an unknown state; rebuild and resume.
    #[error("{0}")]
    Fatal(String),
    /// Another producer with the same transactional id took over (a standby relay):
    /// nothing this one sent becomes visible, and it must not go on.
    #[error("fenced: {0}")]
    Fenced(String),
}

/// Why [`Sink::send`] did not enqueue a record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// The producer queue is full: back-pressure, try again shortly.
    #[error("producer queue full")]
    Full,
    /// Refused before it was sent, for good (e.g. larger than the producer allows).
    #[error("refused for good: {0}")]
    Poison(String),
    #[error("{0}")]
    Fatal(String),
}

/// Preparing a destination failed (e.g. a topic could not be created).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrepareError {
    /// The cluster refused for good (policy, authorization, bad settings): an operator must act.
    #[error("{0}")]
    Refused(String),
    /// It may work later (broker unreachable, timeout).
    #[error("{0}")]
    Transient(String),
}

/// Resolves when a destination exists (bounded in time); see [`Sink::prepare`].
pub type Preparing = Pin<Box<dyn Future<Output = Result<(), PrepareError>> + Send>>;

/// Resolves to why the sink's client is stuck (`Some`), or `None` when the check found
/// nothing to act on; see [`Sink::check_stuck`].
pub type StuckCheck = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// A destination for outbox events.
pub trait Sink: Send {
    /// Makes sure the destination of `event` exists (e.g. creates its topic): `None` when
    /// it is known to, else a future the caller awaits without blocking its loop.
    fn prepare(&mut self, event: &Event) -> Option<Preparing>;
    /// The same for the dead-letter destination.
    fn prepare_dead_letter(&mut self) -> Option<Preparing>;
    /// Enqueues one record; the returned delivery resolves when it is acked.
    fn send(&mut self, event: &Event) -> Result<Delivery, SendError>;
    /// Enqueues the dead-letter record of `event`: its headers and `reason`, with the
    /// payload only when `with_payload`.
    fn dead_letter(
        &mut self,
        event: &Event,
        reason: &str,
        with_payload: bool,
    ) -> Result<Delivery, SendError>;
    /// Waits up to `timeout` for everything enqueued to be delivered.
    fn flush(&self, timeout: Duration);

    /// Transactional sinks: the PostgreSQL transaction ending at `end_lsn` was sent
    /// whole. Returns a delivery resolving when the destination transaction holding it
    /// committed (`None`: nothing to wait for, e.g. not transactional).
    fn end_transaction(&mut self, _end_lsn: Lsn) -> Option<Delivery> {
        None
    }
    /// When the open destination transaction should be committed, if one is open and
    /// ends at a PostgreSQL commit.
    fn commit_due(&self) -> Option<Instant> {
        None
    }
    /// Commits the open destination transaction if it ends at a PostgreSQL commit,
    /// else aborts it (its records never become visible; they are sent again).
    fn commit(&mut self) {}
    /// Aborts the open destination transaction: its waiters fail, nothing becomes visible.
    fn abort(&mut self, _why: &str) {}
    /// Whether a refusal dooms the open transaction (transactional sinks): the records
    /// sent with it can never be committed, so the session must end and resend.
    fn transactional(&self) -> bool {
        false
    }
    /// Whether the sink's client is stuck while its destination is reachable: `None`
    /// when nothing is suspect (or a check ran recently); else a check that resolves to
    /// why when a new client reaches the destination this one has not reached for long.
    /// The session then ends and the next one, with a new sink, resumes from the
    /// confirmed LSN. Asked only while records wait for acks.
    fn check_stuck(&mut self) -> Option<StuckCheck> {
        None
    }
    /// Transactional sinks: commits a transaction whose checkpoint is `lsn` at once
    /// (after a slot was created: a checkpoint of a former slot must not make the new
    /// one skip anything). Resolves when committed.
    fn checkpoint(&mut self, _lsn: Lsn) -> Option<Delivery> {
        None
    }
}
