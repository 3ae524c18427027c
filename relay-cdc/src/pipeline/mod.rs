//! One source's pipeline: replication slot → pgoutput decoding → Kafka → PROCESSED
//! marking → LSN confirmation, supervised: after an error the session is rebuilt (new
//! producer, new replication session) and resumes from the slot's confirmed position.
//!
//! | module | owns |
//! |---|---|
//! | `mod.rs` (this) | the supervisor: what each error leads to ([`next_step`]: halt, stand by, retry with backoff); carries the confirmed position between sessions |
//! | [`session`] | one session: preflight, start, teardown |
//! | [`streamer`] | the `select!` loop: each arm one call on a state value |
//! | [`stream`] | the stream's rules as a pure state machine |
//! | [`acks`] | the deliveries of each unit, answered in commit order |
//! | [`progress`] | in-flight counts, the units waiting for the marker, the confirmed position |
//! | [`poison`] | the poison rule and its suspects, for streaming and reconciliation |
//! | [`slot`] | slot lookup, creation, failover flag, the final position |
//! | [`reconcile`] | slot creation with an exported snapshot and PENDING rows, crash-safe |
//! | [`housekeeping`] | heartbeats, lag in bytes, retention, the stall and halt warnings |
//! | [`audit`] | the table against the slot: PENDING rows the slot skipped are found and published |
//! | [`error`] | why a session ended |
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

pub mod acks;
pub mod audit;
pub mod error;
pub mod housekeeping;
pub mod poison;
pub mod progress;
pub mod reconcile;
pub mod session;
pub mod slot;
pub mod stream;
pub mod streamer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use pgwire_replication::Lsn;
use tokio::sync::watch;

pub use error::PipelineError;

use crate::config::{Settings, SourceSettings};
use crate::metrics::Metrics;
use crate::status::{SourceStatus, State};

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
        PipelineError::SlotLost(why) => Next::Halt {
            reason: format!("{why}; to accept the gap, create the slot yourself (pg_create_logical_replication_slot with pgoutput) and restart: the relay then streams from its position"),
        },
        // A standby relay took over with the same transactional id: stand by in turn.
        PipelineError::SlotBusy(_) | PipelineError::Fenced(_) => Next::StandBy,
        // Rows the slot skipped: the next session publishes them first, at once.
        PipelineError::Replay(_) | PipelineError::Orphans(_) => Next::Replay,
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
    /// Records Kafka refused for good, to be tried alone (see [`poison`]).
    pub suspects: poison::Suspects,
}

/// The delays between restarts: 250 ms doubling up to `max`; retries never run out.
fn restart_delays(max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(max)
        .without_max_times()
}

/// A session that ran this long was no failure loop: the backoff starts over.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

impl Pipeline {
    /// Runs the source until shutdown, or until it halts.
    ///
    /// The supervisor carries the position its sessions confirmed from one session to
    /// the next (0/0: nothing yet): a session tells by it whether the slot it finds is
    /// the one it left (see [`slot::look_up`]). It carries the rows an audit found the
    /// slot had skipped too, until a session published them.
    pub async fn run(mut self) {
        let name = self.source.name.clone();
        let _watch =
            housekeeping::beside_source(&self.status, self.settings.pipeline.stall_timeout());
        let delays = restart_delays(self.settings.pipeline.max_backoff());
        let mut backoffs = delays.build();
        let mut backoff = backoffs.next().expect("a backoff without a limit of tries");
        let mut confirmed = Lsn::from_u64(0);
        let mut orphans: Option<audit::Found> = None;
        loop {
            let started = Instant::now();
            let result = session::run(&self, &mut confirmed, &mut orphans).await;
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
                    if let PipelineError::Orphans(found) = error {
                        orphans = Some(found);
                        tracing::info!(source = %name, "publishing the rows the slot skipped, then streaming from the confirmed position");
                    } else {
                        tracing::info!(source = %name, "replaying from the confirmed position");
                    }
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
            if started.elapsed() > HEALTHY_SESSION {
                backoffs = delays.build();
                backoff = backoffs.next().expect("a backoff without a limit of tries");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => {}
            }
            if *self.shutdown.borrow() {
                self.status.set_state(State::Stopped);
                return;
            }
            backoff = backoffs.next().expect("a backoff without a limit of tries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceError;

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
        // A lost slot without status marking: recreating it would skip events unseen.
        let lost = PipelineError::SlotLost("the slot s is missing and marking = \"none\"".into());
        assert_eq!(lost.kind(), "slot_lost");
        let Next::Halt { reason } = next_step(&lost) else {
            panic!("a lost slot without a way back must halt")
        };
        assert!(
            reason.contains("is missing") && reason.contains("pg_create_logical_replication_slot"),
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
    fn restarts_back_off_from_a_quarter_second_doubling_up_to_the_maximum() {
        let ms: Vec<u128> = restart_delays(Duration::from_secs(5))
            .build()
            .take(8)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn a_held_slot_means_stand_by_and_everything_else_retries() {
        assert_eq!(
            next_step(&PipelineError::SlotBusy("s".into())),
            Next::StandBy
        );
        assert_eq!(next_step(&PipelineError::Replay(2)), Next::Replay);
        // Rows the slot skipped are published by a new session at once, not after a backoff.
        let found = audit::Found {
            ids: vec![uuid::Uuid::nil()],
            round_lsn: Lsn::from_u64(0x100),
            oldest_age: Duration::from_secs(7),
        };
        assert_eq!(next_step(&PipelineError::Orphans(found)), Next::Replay);
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
