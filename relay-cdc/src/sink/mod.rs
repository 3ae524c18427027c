//! Where events go: the [`Sink`] trait, with Kafka ([`kafka`]) and an in-memory sink
//! for tests ([`memory`]).
//!
//! Invariant: an event counts as published only when its [`Delivery`] resolved `Ok`.
//! A refusal says whether Kafka can *never* take the record ([`Refusal::Poison`],
//! handled by `kafka.poison`) or whether the pipeline must be rebuilt and resume from
//! the confirmed LSN ([`Refusal::Fatal`]); a sink never skips a record silently.

pub mod kafka;
pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

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

impl Event {
    /// Bytes the record carries (key + value): what `kafka.max_record_bytes` bounds.
    pub fn size(&self) -> usize {
        self.row.payload.len() + self.row.aggregate_id.len()
    }
}

/// Resolves when the sink acked one record (or refused it).
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), Refusal>> + Send>>;

/// Why a record was not published.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The destination can never take this record (too large, invalid, not authorized).
    #[error("refused for good: {reason}")]
    Poison { event: Box<Event>, reason: String },
    /// Anything else: the producer is in an unknown state; rebuild and resume.
    #[error("{0}")]
    Fatal(String),
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
}
