//! The poison policy: what becomes of a record Kafka can never take. One pure rule
//! ([`judge`], [`before_sending`]) for the stream ([`super::streamer`]) and for
//! reconciliation ([`super::reconcile`]), and the [`Suspects`] it keeps across sessions.
//!
//! A broker refuses a whole producer batch for one record too large, so a refusal while
//! other records were in flight only makes each of them a *suspect*: the session ends,
//! what came before is confirmed, and the next session sends each suspect alone, once
//! everything before it was answered, so the answer is about it only. A record refused
//! alone, or before it was sent (the relay's own bound, invalid headers, the producer's
//! size check), is poison: under `kafka.poison = "stop"` the source halts once everything
//! before it is confirmed; under `"dead-letter"` its dead-letter record goes out instead,
//! with the payload when only the broker refused it (it may fit the dead-letter topic),
//! without when the payload is what made it unsendable.
//!
//! Invariants:
//! - Nothing after a poison record is confirmed unless the record was dead-lettered first.
//! - A refusal for a missing ACL is the relay's configuration, not the record's fault: it
//!   halts the source whatever the policy (dead-lettering would send every record away).
//! - A transactional sink cannot dead-letter a record Kafka refused in the same
//!   transaction (the refusal dooms it): the record is remembered as known poison, the
//!   session replays, and the record is dead-lettered without its payload when it comes
//!   again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::error::{kafka_not_authorized, PipelineError};
use crate::config::PoisonPolicy;

/// Where a record showed that it may never be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// Refused before it was sent: by the relay's own rules, by the producer, or known
    /// poison from an earlier session. Its payload is what makes it unsendable.
    BeforeSending,
    /// Kafka refused it while other records were in flight: the refusal may be a
    /// batch-mate's.
    InBatch,
    /// Kafka refused it while it was the only record in flight: the refusal is its own.
    Alone,
    /// Its dead-letter record was refused, by the producer before it was sent or by
    /// Kafka after.
    DeadLetterRefused { with_payload: bool, by_kafka: bool },
}

/// What becomes of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Kafka does not let the relay publish it: halt the source, whatever the policy.
    AccessRefused,
    /// `kafka.poison = "stop"`: halt once everything before it is confirmed.
    Stop,
    /// Send its dead-letter record, with or without the payload.
    DeadLetter { with_payload: bool },
    /// Its dead-letter record was refused with the payload: send it again without.
    ShrinkDeadLetter,
    /// A suspect, with every record refused beside it: let what came before be
    /// confirmed, end the session, and send each suspect alone in the next one.
    TryAlone,
    /// Remember it as known poison and replay: the refusal doomed the open transaction.
    RememberAndReplay,
    /// Even its dead-letter record without the payload was refused: halt.
    Halt,
}

/// The rule: what `finding` means for a record under `policy`, with a transactional
/// sink or not. `reason` is Kafka's or the relay's own words for the refusal.
pub fn judge(policy: PoisonPolicy, transactional: bool, finding: Finding, reason: &str) -> Verdict {
    let dead_letter = policy == PoisonPolicy::DeadLetter;
    match finding {
        Finding::InBatch => Verdict::TryAlone,
        // A refusal by Kafka dooms the open transaction: nothing in it can be committed.
        Finding::DeadLetterRefused { by_kafka: true, .. } if transactional => Verdict::TryAlone,
        Finding::Alone if transactional && dead_letter => Verdict::RememberAndReplay,
        _ if kafka_not_authorized(reason) => Verdict::AccessRefused,
        _ if !dead_letter => Verdict::Stop,
        Finding::BeforeSending => Verdict::DeadLetter {
            with_payload: false,
        },
        Finding::Alone => Verdict::DeadLetter { with_payload: true },
        Finding::DeadLetterRefused {
            with_payload: true, ..
        } => Verdict::ShrinkDeadLetter,
        Finding::DeadLetterRefused {
            with_payload: false,
            ..
        } => Verdict::Halt,
    }
}

impl Verdict {
    /// Whether the record is found poison by this verdict (counted once, in
    /// `relay_publish_failures_total{kind="poison"}`): a second try at its dead letter,
    /// a suspicion or a refused ACL is not.
    pub fn counts(self) -> bool {
        matches!(
            self,
            Self::Stop | Self::DeadLetter { .. } | Self::RememberAndReplay
        )
    }

    /// The error a halting verdict ends the session with; `None` for the others.
    pub fn halts(self, event_id: &str, reason: &str) -> Option<PipelineError> {
        let poison = |reason: String| PipelineError::Poison {
            event_id: event_id.to_string(),
            reason,
        };
        match self {
            Self::AccessRefused => Some(PipelineError::AccessRefused(format!(
                "kafka: not authorized to publish event {event_id}: {reason}"
            ))),
            Self::Stop => Some(poison(reason.to_string())),
            Self::Halt => Some(poison(format!(
                "the dead-letter topic refused it too: {reason}"
            ))),
            _ => None,
        }
    }
}

/// What a record needs before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeforeSending {
    Send,
    /// Send it once everything before it was answered, alone in flight.
    SendAlone,
    /// It is poison already ([`Finding::BeforeSending`]), for this reason.
    Poison(String),
}

/// The rule before sending: `unsendable` is the relay's own verdict on the record (see
/// [`crate::sink::Event::unsendable`]), `suspicion` what an earlier session found.
pub fn before_sending(unsendable: Option<String>, suspicion: Suspicion) -> BeforeSending {
    match (unsendable, suspicion) {
        (Some(reason), _) | (None, Suspicion::Known(reason)) => BeforeSending::Poison(reason),
        (None, Suspicion::Suspect) => BeforeSending::SendAlone,
        (None, Suspicion::Clean) => BeforeSending::Send,
    }
}

/// What the suspects say of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspicion {
    Clean,
    /// Refused beside other records: to be sent alone.
    Suspect,
    /// Refused alone in a transaction that was aborted for it: poison, for this reason.
    Known(String),
}

/// Records Kafka refused for good, by event id, kept across sessions by the supervisor.
#[derive(Debug, Clone, Default)]
pub struct Suspects(Arc<Mutex<HashMap<String, Option<String>>>>);

impl Suspects {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.0.lock().expect("not poisoned")
    }

    pub fn of(&self, event_id: &str) -> Suspicion {
        match self.lock().get(event_id) {
            None => Suspicion::Clean,
            Some(None) => Suspicion::Suspect,
            Some(Some(reason)) => Suspicion::Known(reason.clone()),
        }
    }

    /// Records refused beside others: each is sent alone in the next session.
    pub fn suspect(&self, event_ids: impl IntoIterator<Item = String>) {
        self.lock()
            .extend(event_ids.into_iter().map(|id| (id, None)));
    }

    /// A record refused alone whose dead letter must wait for the next session.
    pub fn know(&self, event_id: &str, reason: &str) {
        self.lock()
            .insert(event_id.to_string(), Some(reason.to_string()));
    }

    /// A suspect sent alone was answered: what the answer means is the rule's.
    pub fn answered(&self, event_id: &str) {
        self.lock().remove(event_id);
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOO_LARGE: &str = "kafka refused the record: Broker: Message size too large";
    const NO_ACL: &str = "kafka refused the record: Broker: Topic authorization failed";
    const STOP: PoisonPolicy = PoisonPolicy::Stop;
    const DEAD: PoisonPolicy = PoisonPolicy::DeadLetter;

    fn refused(with_payload: bool, by_kafka: bool) -> Finding {
        Finding::DeadLetterRefused {
            with_payload,
            by_kafka,
        }
    }

    #[test]
    fn a_refusal_beside_other_records_only_makes_a_suspect_under_either_policy() {
        for policy in [STOP, DEAD] {
            for transactional in [false, true] {
                for reason in [TOO_LARGE, NO_ACL] {
                    let v = judge(policy, transactional, Finding::InBatch, reason);
                    assert_eq!(v, Verdict::TryAlone, "{policy:?} {transactional} {reason}");
                    assert!(!v.counts(), "a suspect is not counted as poison yet");
                }
            }
        }
    }

    #[test]
    fn under_stop_a_record_found_poison_halts_the_source_and_counts_once() {
        for transactional in [false, true] {
            for finding in [Finding::BeforeSending, Finding::Alone] {
                let v = judge(STOP, transactional, finding, TOO_LARGE);
                assert_eq!(v, Verdict::Stop, "{finding:?} {transactional}");
                assert!(v.counts());
                let Some(PipelineError::Poison { event_id, reason }) = v.halts("e1", TOO_LARGE)
                else {
                    panic!("stop halts with the poison error")
                };
                assert_eq!((event_id.as_str(), reason.as_str()), ("e1", TOO_LARGE));
            }
        }
    }

    #[test]
    fn a_record_unsendable_before_sending_is_dead_lettered_without_its_payload() {
        for transactional in [false, true] {
            let v = judge(DEAD, transactional, Finding::BeforeSending, TOO_LARGE);
            assert_eq!(
                v,
                Verdict::DeadLetter {
                    with_payload: false
                }
            );
            assert!(v.counts() && v.halts("e1", TOO_LARGE).is_none());
        }
    }

    #[test]
    fn a_record_kafka_refuses_alone_is_dead_lettered_with_its_payload() {
        let v = judge(DEAD, false, Finding::Alone, TOO_LARGE);
        assert_eq!(v, Verdict::DeadLetter { with_payload: true });
        assert!(v.counts());
    }

    #[test]
    fn a_transactional_sink_remembers_a_record_refused_alone_and_replays() {
        let v = judge(DEAD, true, Finding::Alone, TOO_LARGE);
        assert_eq!(v, Verdict::RememberAndReplay);
        assert!(v.counts() && v.halts("e1", TOO_LARGE).is_none());
        // Under stop there is nothing to remember: it halts.
        assert_eq!(judge(STOP, true, Finding::Alone, TOO_LARGE), Verdict::Stop);
    }

    #[test]
    fn a_refused_dead_letter_goes_again_without_the_payload_then_halts() {
        for by_kafka in [false, true] {
            let v = judge(DEAD, false, refused(true, by_kafka), TOO_LARGE);
            assert_eq!(v, Verdict::ShrinkDeadLetter, "by kafka: {by_kafka}");
            assert!(!v.counts(), "the record was counted when first found");
            let v = judge(DEAD, false, refused(false, by_kafka), TOO_LARGE);
            assert_eq!(v, Verdict::Halt, "by kafka: {by_kafka}");
            assert!(!v.counts());
            let Some(PipelineError::Poison { reason, .. }) = v.halts("e1", TOO_LARGE) else {
                panic!("a refused dead letter halts as poison")
            };
            assert!(
                reason.contains("dead-letter topic refused it") && reason.contains("too large")
            );
        }
    }

    #[test]
    fn a_dead_letter_kafka_refuses_in_a_transaction_makes_a_suspect() {
        for with_payload in [false, true] {
            assert_eq!(
                judge(DEAD, true, refused(with_payload, true), TOO_LARGE),
                Verdict::TryAlone
            );
        }
        // Refused by the producer, it never entered the transaction: shrink it as always.
        assert_eq!(
            judge(DEAD, true, refused(true, false), TOO_LARGE),
            Verdict::ShrinkDeadLetter
        );
    }

    #[test]
    fn a_missing_acl_halts_whatever_the_policy_and_names_the_event() {
        for policy in [STOP, DEAD] {
            for finding in [Finding::BeforeSending, refused(true, false)] {
                let v = judge(policy, false, finding, NO_ACL);
                assert_eq!(v, Verdict::AccessRefused, "{policy:?} {finding:?}");
                assert!(!v.counts(), "the relay's configuration, not the record");
                let Some(e @ PipelineError::AccessRefused(_)) = v.halts("e1", NO_ACL) else {
                    panic!("a missing acl halts as access refused")
                };
                assert!(e.to_string().contains("event e1"), "{e}");
                assert!(e.access_refused().is_some());
            }
        }
        assert_eq!(
            judge(STOP, false, Finding::Alone, NO_ACL),
            Verdict::AccessRefused
        );
    }

    #[test]
    fn the_relays_own_verdict_comes_before_what_earlier_sessions_found() {
        let own = || Some("record of 200 bytes exceeds kafka.max_record_bytes (100)".to_string());
        assert_eq!(
            before_sending(own(), Suspicion::Suspect),
            BeforeSending::Poison(own().unwrap())
        );
        assert_eq!(
            before_sending(None, Suspicion::Known(TOO_LARGE.into())),
            BeforeSending::Poison(TOO_LARGE.into())
        );
        assert_eq!(
            before_sending(None, Suspicion::Suspect),
            BeforeSending::SendAlone
        );
        assert_eq!(before_sending(None, Suspicion::Clean), BeforeSending::Send);
    }

    #[test]
    fn suspects_are_tried_alone_until_answered_and_known_poison_is_kept() {
        let s = Suspects::default();
        s.suspect(["a".to_string(), "b".to_string()]);
        assert_eq!(s.of("a"), Suspicion::Suspect);
        assert_eq!(s.of("c"), Suspicion::Clean);
        s.answered("a");
        assert_eq!(s.of("a"), Suspicion::Clean);
        s.know("b", TOO_LARGE);
        assert_eq!(s.of("b"), Suspicion::Known(TOO_LARGE.into()));
        // Refused beside others again: tried alone once more.
        s.suspect(["b".to_string()]);
        assert_eq!(s.of("b"), Suspicion::Suspect);
        s.answered("b");
        assert!(s.is_empty());
    }
}
