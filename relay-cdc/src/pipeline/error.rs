//! Why a session ended: one error per cause, and which of them mean the servers refused
//! the relay itself (credentials, certificates, grants), which no retry can mend.

use std::time::Duration;

use pgwire_replication::Lsn;
use thiserror::Error;
use uuid::Uuid;

use super::stream::StreamError;
use crate::source::SourceError;

/// Why a session ended.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("replication: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("kafka refused a record: {0}")]
    Delivery(String),
    #[error("poison record, event {event_id}: {reason}")]
    Poison { event_id: String, reason: String },
    #[error("{0}")]
    TopicRefused(String),
    #[error("the marker stopped ({0}); confirmations would stop with it")]
    MarkerStopped(String),
    #[error("the replication stream ended")]
    StreamEnded,
    #[error("kafka refused {0} record(s) for good; replaying to try each alone")]
    Replay(usize),
    #[error("slot {0} is held by another session (standby: waiting)")]
    SlotBusy(String),
    #[error("the server is shutting down; ending the replication session so it can stop")]
    ServerGoingAway,
    #[error("{0}")]
    Fenced(String),
    #[error("{0}")]
    CheckpointAhead(String),
    /// PostgreSQL or Kafka refused the relay itself: wrong password, a certificate that
    /// does not verify, plaintext where TLS is required, a missing grant or ACL.
    #[error("access refused: {0}")]
    AccessRefused(String),
    /// The audit found PENDING rows that committed before a position this session
    /// confirmed: the slot skipped them. The next session publishes them first.
    #[error("the audit found {} row(s) the slot skipped (committed before {}, still PENDING after it was confirmed); publishing them in a new session", .0.ids.len(), .0.round_lsn)]
    Orphans(Found),
    /// The slot is gone (missing, or invalidated by the server) and the table cannot
    /// say what it had not delivered yet (`marking = "none"`): recreating it at the
    /// current position would skip those events without a trace.
    #[error("{0}")]
    SlotLost(String),
}

impl PipelineError {
    /// The `kind` label of the error in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Source(_) => "source",
            Self::Replication(_) => "replication",
            Self::Kafka(_) | Self::Delivery(_) => "kafka",
            Self::Stream(_) => "decode",
            Self::Poison { .. } => "poison",
            Self::TopicRefused(_) => "topic_refused",
            Self::MarkerStopped(_) => "marker",
            Self::StreamEnded => "stream_ended",
            Self::SlotBusy(_) => "slot_busy",
            Self::Replay(_) => "replay",
            Self::ServerGoingAway => "server_going_away",
            Self::Fenced(_) => "fenced",
            Self::CheckpointAhead(_) => "checkpoint_ahead",
            Self::AccessRefused(_) => "access_refused",
            Self::Orphans(_) => "orphans",
            Self::SlotLost(_) => "slot_lost",
        }
    }

    /// Why the servers refused the relay itself, if they did: retrying with the same
    /// credentials, certificates and grants cannot help.
    pub fn access_refused(&self) -> Option<String> {
        match self {
            Self::AccessRefused(why) => Some(why.clone()),
            Self::Source(e) => e.access_refused().then(|| e.to_string()),
            Self::Replication(e) => replication_refused(e).then(|| format!("replication: {e}")),
            Self::TopicRefused(why) if kafka_not_authorized(why) => Some(why.clone()),
            _ => None,
        }
    }
}

/// A replication connection the server refused for who the relay is, or a TLS handshake
/// that failed (a certificate that does not verify, no TLS where it is required).
pub fn replication_refused(e: &pgwire_replication::PgWireError) -> bool {
    use pgwire_replication::PgWireError as E;
    match e {
        E::Auth(_) | E::Tls(_) => true,
        E::Server(m) => crate::source::REFUSED_SQLSTATES
            .iter()
            .any(|code| m.contains(code)),
        _ => false,
    }
}

/// Kafka's answer means the relay's principal lacks an ACL.
pub fn kafka_not_authorized(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("authorization failed") || r.contains("not authorized")
}

/// Rows the slot skipped, as a round found them: what the next session publishes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// In `(created_at, id)` order.
    pub ids: Vec<Uuid>,
    /// The round's LSN: every one of them committed before it.
    pub round_lsn: Lsn,
    /// Age of the oldest of them when found.
    pub oldest_age: Duration,
}
