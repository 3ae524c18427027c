//! One source's pipeline: replication slot → pgoutput decoding → Kafka → PROCESSED
//! marking → LSN confirmation, supervised: after an error the session is rebuilt (new
//! producer, new replication session) and resumes from the slot's confirmed position.
//!
//! | module | owns |
//! |---|---|
//! | `mod.rs` (this) | the supervisor: what each error leads to ([`next_step`]: halt, stand by, retry with backoff) |
//! | [`session`] | one session: preflight, slot, the `select!` loop, teardown |
//! | [`stream`] | the stream's rules as a pure state machine |
//! | [`progress`] | in-flight counts, the confirmed position, the watchdog, the final slot advance |
//! | [`reconcile`] | slot creation with an exported snapshot and PENDING rows, crash-safe |
//! | [`housekeeping`] | heartbeats, lag in bytes, the stall and halt warnings |
//!
//! Invariants (details where they are kept):
//! - Records are enqueued in commit order, rows of one transaction in insert order.
//! - A transaction's end LSN is confirmed only after Kafka acked every record of it and
//!   of every transaction before it, and the marker marked them.
//! - After any error what was not confirmed is sent again, with the same event ids.
//! - When the server refuses new connections because it is shutting down, the session
//!   ends at once: a walsender lets the server stop only after its client confirmed
//!   everything it was sent, and rows acked but not yet marked cannot be marked any
//!   more (marking needs a new connection). The unconfirmed tail is replayed after.

pub mod housekeeping;
pub mod progress;
pub mod reconcile;
pub mod session;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Settings, SourceSettings};
use crate::metrics::Metrics;
use crate::source::SourceError;
use crate::status::{SourceStatus, State};

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("replication: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
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
}

impl PipelineError {
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

/// What the supervisor does after a session ended with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Stop this source until an operator acts: retrying cannot help and would only
    /// resend what came before the cause.
    Halt { reason: String },
    /// Another relay streams the slot: wait and take over when it is free.
    StandBy,
    /// Rebuild the session after a backoff, resuming from the confirmed position.
    Retry,
    /// Rebuild the session at once: not a failure, the way suspects are tried alone.
    Replay,
}

/// The restart policy, as data.
pub fn next_step(e: &PipelineError) -> Next {
    if let Some(why) = e.access_refused() {
        return Next::Halt {
            reason: format!("{why}; fix the credentials, certificates or grants named here (relay-cdc check tells which), then restart"),
        };
    }
    match e {
        PipelineError::Poison { event_id, reason } => Next::Halt {
            reason: format!("poison record {event_id}: {reason} (kafka.poison = \"stop\"); publish the row elsewhere or set kafka.poison = \"dead-letter\", then restart"),
        },
        PipelineError::TopicRefused(why) => Next::Halt {
            reason: format!("{why}; create the topic or allow the relay to, then restart"),
        },
        PipelineError::CheckpointAhead(why) => Next::Halt {
            reason: format!("{why}; if the database was restored or replaced, delete the source's checkpoint (a tombstone for its key) and restart"),
        },
        // A standby relay took over with the same transactional id: stand by in turn.
        PipelineError::SlotBusy(_) | PipelineError::Fenced(_) => Next::StandBy,
        PipelineError::Replay(_) => Next::Replay,
        _ => Next::Retry,
    }
}

/// The shared context of a source's pipeline.
#[derive(Clone)]
pub struct Pipeline {
    pub settings: Arc<Settings>,
    pub source: SourceSettings,
    pub metrics: Metrics,
    pub status: Arc<SourceStatus>,
    pub shutdown: watch::Receiver<bool>,
    /// Records Kafka refused for good, to be tried alone (see `session`).
    pub suspects: session::Suspects,
}

impl Pipeline {
    /// Runs the source until shutdown, or until it halts.
    pub async fn run(mut self) {
        let name = self.source.name.clone();
        let _watch = AbortOnDrop(tokio::spawn(housekeeping::watch(
            self.status.clone(),
            self.settings.pipeline.stall_timeout(),
        )));
        let mut backoff = Duration::from_millis(250);
        loop {
            let started = Instant::now();
            let result = session::run(&self).await;
            let error = match result {
                Ok(()) => {
                    self.status.set_state(State::Stopped);
                    tracing::info!(source = %name, "source stopped");
                    return;
                }
                Err(e) => e,
            };
            match next_step(&error) {
                Next::Halt { reason } => {
                    self.status.set_state(State::Halted {
                        reason: reason.clone(),
                    });
                    tracing::error!(source = %name, kind = error.kind(), reason = %reason, "source halted");
                    let _ = self.shutdown.wait_for(|s| *s).await;
                    return;
                }
                Next::StandBy => {
                    if let PipelineError::Fenced(why) = &error {
                        tracing::error!(source = %name, reason = %why, "fenced: another relay with the same transactional id took over; nothing this one sent after that becomes visible; standing by");
                    } else if self.status.state() != State::Standby {
                        tracing::info!(source = %name, slot = %self.source.slot_name(), "slot in use by another relay; standing by");
                    }
                    self.status.set_state(State::Standby);
                }
                Next::Replay => {
                    tracing::info!(source = %name, "replaying from the confirmed position");
                    continue;
                }
                Next::Retry => {
                    self.metrics.restarts.with_label_values(&[&name]).inc();
                    tracing::warn!(source = %name, error = %error, kind = error.kind(), backoff_ms = backoff.as_millis() as u64, "resuming from the confirmed LSN after a backoff");
                    self.status.set_state(State::Restarting {
                        error: error.to_string(),
                    });
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(250);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => {}
            }
            if *self.shutdown.borrow() {
                self.status.set_state(State::Stopped);
                return;
            }
            backoff = (backoff * 2).min(self.settings.pipeline.max_backoff());
        }
    }
}

pub fn now_unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Aborts a spawned task when dropped, so a failed session leaves nothing running.
pub(crate) struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_and_refused_topics_halt_instead_of_looping() {
        let poison = PipelineError::Poison {
            event_id: "e1".into(),
            reason: "kafka refused the record: Broker: Message size too large".into(),
        };
        let Next::Halt { reason } = next_step(&poison) else {
            panic!("poison must halt")
        };
        assert!(
            reason.contains("e1") && reason.contains("too large"),
            "{reason}"
        );
        assert!(matches!(
            next_step(&PipelineError::TopicRefused("policy violation".into())),
            Next::Halt { .. }
        ));
        // A checkpoint of another or a restored database: skipping by it would lose events.
        let Next::Halt { reason } = next_step(&PipelineError::CheckpointAhead(
            "the kafka checkpoint of source s (end LSN 5/0) does not belong to this server".into(),
        )) else {
            panic!("a foreign checkpoint must halt")
        };
        assert!(
            reason.contains("delete the source's checkpoint"),
            "{reason}"
        );
    }

    #[test]
    fn refused_credentials_certificates_and_acls_halt_naming_what_was_refused() {
        for (e, want) in [
            (
                PipelineError::Source(SourceError::Connect {
                    servers: "db:5432".into(),
                    database: "users_db".into(),
                    reason: "password authentication failed for user \"relay_cdc\" (28P01)"
                        .into(),
                    going_away: false,
                    refused: true,
                }),
                "password authentication failed",
            ),
            (
                PipelineError::Replication(pgwire_replication::PgWireError::Tls(
                    "TLS handshake failed: invalid peer certificate: UnknownIssuer".into(),
                )),
                "UnknownIssuer",
            ),
            (
                PipelineError::AccessRefused(
                    "kafka: SASL authentication error: invalid credentials".into(),
                ),
                "SASL authentication",
            ),
            (
                PipelineError::TopicRefused(
                    "the cluster refused to create topic outbox.event.user: Broker: Topic authorization failed"
                        .into(),
                ),
                "authorization failed",
            ),
        ] {
            let Next::Halt { reason } = next_step(&e) else {
                panic!("{e} must halt")
            };
            assert!(reason.contains(want) && reason.contains("restart"), "{reason}");
        }
        // A server that is down or going away is not a refusal.
        let down = PipelineError::Source(SourceError::Connect {
            servers: "db:5432".into(),
            database: "users_db".into(),
            reason: "connection refused".into(),
            going_away: false,
            refused: false,
        });
        assert_eq!(next_step(&down), Next::Retry);
    }

    #[test]
    fn a_held_slot_means_stand_by_and_everything_else_retries() {
        assert_eq!(
            next_step(&PipelineError::SlotBusy("s".into())),
            Next::StandBy
        );
        assert_eq!(next_step(&PipelineError::Replay(2)), Next::Replay);
        // Exactly-once: another relay fenced this one; it stands by, never retries sending.
        assert_eq!(
            next_step(&PipelineError::Fenced("producer fenced".into())),
            Next::StandBy
        );
        for e in [
            PipelineError::Delivery("all brokers down".into()),
            PipelineError::MarkerStopped("panicked".into()),
            PipelineError::StreamEnded,
            PipelineError::ServerGoingAway,
            PipelineError::Kafka("timed out".into()),
        ] {
            assert_eq!(next_step(&e), Next::Retry, "{e}");
        }
    }
}
