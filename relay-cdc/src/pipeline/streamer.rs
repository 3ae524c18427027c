//! The stream loop of one session: one `select!` whose arms each make one call on a
//! state value: the stream's rules ([`super::stream`]), the poison rule
//! ([`super::poison`]), the sink, the marker. Nothing in the loop awaits without bound:
//! back-pressure (a full producer queue, a topic being created) parks the event and
//! stops reading WAL while shutdown, acks and confirmations keep being served.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationEvent};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use super::acks::{Acks, UnitRefusal};
use super::audit::Found;
use super::error::PipelineError;
use super::poison::{self, BeforeSending, Finding, Suspects, Verdict};
use super::slot::Wal;
use super::stream::{Limits, StreamState};
use crate::config::Capture;
use crate::config::PoisonPolicy;
use crate::marker::{Confirmed, MarkerLink};
use crate::metrics::StreamMeters;
use crate::pgoutput::OutboxTable;
use crate::sink::{Delivery, Event, PrepareError, Preparing, Refusal, SendError, Sink, StuckCheck};
use crate::source::HEARTBEAT_PREFIX;
use crate::status::{now_unix_micros, SourceStatus};

/// What the loop needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub source: String,
    pub limits: Limits,
    pub poison: PoisonPolicy,
    pub shutdown_timeout: Duration,
    /// Exactly-once: the checkpoint's end LSN; transactions that committed before it
    /// are in Kafka already and are only marked and confirmed.
    pub skip_before: Option<Lsn>,
    /// Where events come from: inserts into `table`, or transactional messages with
    /// `message_prefix`. The other one is a writer in the other mode, whose events this
    /// source never publishes: counted and named (see [`Streamer::mismatched`]).
    pub capture: Capture,
    /// The outbox table (other tables' inserts are always skipped).
    pub table: OutboxTable,
    pub message_prefix: String,
}

/// An event waiting to be enqueued (back-pressure or a topic being prepared).
struct Pending {
    event: Event,
    kind: PendingKind,
    retry_at: Instant,
}

enum PendingKind {
    Record,
    /// A record Kafka refused in an earlier session (it or a record batched with it):
    /// sent alone, once everything before it is acked, so the answer is about it only.
    Probe,
    /// To the dead-letter topic; `unit` when Kafka refused it after the commit: the
    /// unit's remaining deliveries, re-queued at the front once this one is enqueued.
    DeadLetter {
        reason: String,
        with_payload: bool,
        unit: Option<(u64, Vec<Delivery>)>,
    },
}

/// Resolves when every delivery of the open transaction so far is settled.
type Barrier = Pin<Box<dyn Future<Output = Vec<Result<(), Refusal>>> + Send>>;

/// The stream loop's state and its handlers, one per `select!` arm.
pub struct Streamer<'a, W: Wal, S: Sink> {
    cfg: StreamConfig,
    wal: &'a mut W,
    sink: &'a mut S,
    marker: MarkerLink,
    status: Arc<SourceStatus>,
    meters: StreamMeters,
    state: StreamState,
    acks: Acks,
    pending: Option<Pending>,
    preparing: Option<Preparing>,
    suspects: Suspects,
    /// Before a probe: the open transaction's deliveries, settling.
    barrier: Option<Barrier>,
    /// The probe's delivery.
    probe: Option<Delivery>,
    /// The sink's check of a client that reaches no broker (see [`Sink::check_stuck`]).
    stuck: Option<StuckCheck>,
    /// WAL arrived since the last tick (the watchdog's replication stage).
    received: bool,
    /// The confirmed position as the audit watches it: fed where the loop confirms.
    confirmed_tx: watch::Sender<Option<Lsn>>,
    /// The audit's finding, if it finds rows the slot skipped (see [`super::audit`]).
    audit: Option<oneshot::Receiver<Found>>,
    /// The open transaction is covered by the checkpoint: not sent again.
    skipping: bool,
    skipped: u64,
    /// A deadline for disabled timer arms: `select!` builds every arm's future on each
    /// turn, and reading the clock for one never polled cost ~7 % of the relay's CPU.
    never: Instant,
    last_progress_log: Instant,
    /// A capture mismatch was logged in this session (see [`Streamer::mismatched`]).
    mismatch_logged: bool,
}

impl<'a, W: Wal, S: Sink> Streamer<'a, W, S> {
    pub fn new(
        cfg: StreamConfig,
        wal: &'a mut W,
        sink: &'a mut S,
        marker: MarkerLink,
        status: Arc<SourceStatus>,
        metrics: &crate::metrics::Metrics,
        suspects: Suspects,
    ) -> Self {
        let meters = StreamMeters::new(metrics, &cfg.source);
        meters.backlog.set(0);
        meters.in_flight.set(0);
        meters.in_flight_bytes.set(0);
        let mut state = StreamState::new(
            cfg.limits,
            (cfg.capture == Capture::Table).then(|| cfg.table.clone()),
        );
        if cfg.capture == Capture::Messages {
            state.watch_unread_table(&cfg.table.schema, &cfg.table.name);
        }
        Self {
            state,
            cfg,
            wal,
            sink,
            marker,
            status,
            meters,
            acks: Acks::default(),
            pending: None,
            preparing: None,
            suspects,
            barrier: None,
            probe: None,
            stuck: None,
            received: false,
            confirmed_tx: watch::channel(None).0,
            audit: None,
            skipping: false,
            skipped: 0,
            never: Instant::now() + Duration::from_secs(86_400 * 365),
            last_progress_log: Instant::now(),
            mismatch_logged: false,
        }
    }

    /// The position confirmed so far (to persist after the session ended).
    pub fn confirmed(&self) -> Option<Lsn> {
        self.state.progress().confirmed()
    }

    /// The confirmed position, as it moves (the audit's view of the session).
    pub fn confirmed_watch(&self) -> watch::Receiver<Option<Lsn>> {
        self.confirmed_tx.subscribe()
    }

    /// Ends the session with [`PipelineError::Orphans`] when the audit finds rows the
    /// slot skipped, after draining what is in flight.
    pub fn audited_by(&mut self, found: oneshot::Receiver<Found>) {
        self.audit = Some(found);
    }

    /// Takes the marker link back (teardown after an error).
    pub fn into_marker(self) -> MarkerLink {
        self.marker
    }

    /// Runs until shutdown (`Ok`, after draining) or an error. A poison record under
    /// `stop` returns [`PipelineError::Poison`] after everything before it was acked,
    /// marked and confirmed.
    pub async fn run(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
        going_away: &Notify,
    ) -> Result<(), PipelineError> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reading = self.pending.is_none() && self.state.has_room();
            // A probe goes out only once everything before it is acked: alone in flight.
            let retry_at = self
                .pending
                .as_ref()
                .filter(|p| {
                    !matches!(p.kind, PendingKind::Probe)
                        || (self.barrier.is_none() && self.acks.is_empty() && self.probe.is_none())
                })
                .map(|p| p.retry_at);
            // The oldest unit is out of the queue while its dead letter waits to be sent.
            let acks_open = !self.acks.is_empty()
                && !self.pending.as_ref().is_some_and(|p| {
                    matches!(p.kind, PendingKind::DeadLetter { unit: Some(_), .. })
                });
            let commit_due = self.sink.commit_due();
            tokio::select! {
                biased;
                // 1. Shutdown first: stop reading, drain what was sent, confirm.
                _ = shutdown.changed() => if *shutdown.borrow() {
                    return self.shut_down().await;
                },
                // 2. The server is going away: end the session so it can stop (see `pipeline`).
                _ = going_away.notified() => return Err(PipelineError::ServerGoingAway),
                // 3. The marker ended: nothing would be confirmed any more.
                r = &mut self.marker.task => return Err(marker_ended(r)),
                // 3b. The audit found rows the slot skipped: drain, confirm, end the
                // session; the next one publishes them before it streams.
                r = async { self.audit.as_mut().expect("guarded").await }, if self.audit.is_some() => self.on_audit(r).await?,
                // 4. The watchdog's view and the gauges, twice a second.
                _ = tick.tick() => self.on_tick(),
                // 4b. A stuck sink client: end the session, a new sink resumes from the
                // confirmed LSN (what was in flight is sent again, same event ids).
                r = async { self.stuck.as_mut().expect("guarded").await }, if self.stuck.is_some() => self.on_stuck(r)?,
                // 5. A topic being prepared for the parked event.
                r = async { self.preparing.as_mut().expect("guarded").await }, if self.preparing.is_some() => self.on_prepared(r)?,
                // 6. The parked event's retry (back-pressure).
                _ = tokio::time::sleep_until(retry_at.unwrap_or(self.never)), if retry_at.is_some() && self.preparing.is_none() => self.try_pending().await?,
                // 6b. Before a probe: the open transaction's deliveries settled.
                r = async { self.barrier.as_mut().expect("guarded").await }, if self.barrier.is_some() => self.on_settled(r),
                // 6c. The probe's answer.
                r = async { self.probe.as_mut().expect("guarded").await }, if self.probe.is_some() => self.on_probed(r).await?,
                // 6d. Exactly-once: the open Kafka transaction is old enough to commit.
                _ = tokio::time::sleep_until(commit_due.unwrap_or(self.never)), if commit_due.is_some() => self.sink.commit(),
                // 7. Acks, in commit order: hand units to the marker.
                Some((seq, r)) = self.acks.next(), if acks_open => self.on_unit(seq, r).await?,
                // 8. Marked batches: confirm their position to PostgreSQL.
                c = self.marker.rx.recv() => self.on_marked(c)?,
                // 9. New WAL, while nothing is parked and the in-flight bounds allow.
                ev = self.wal.recv(), if reading => self.on_wal(ev?).await?,
            }
        }
    }

    /// Shutdown: stop reading, drain what was sent, confirm.
    async fn shut_down(&mut self) -> Result<(), PipelineError> {
        self.finish(true).await;
        Ok(())
    }

    /// The audit's finding, or its end without one (its task ended: nothing to wait for).
    async fn on_audit(
        &mut self,
        r: Result<Found, oneshot::error::RecvError>,
    ) -> Result<(), PipelineError> {
        self.audit = None;
        let Ok(found) = r else { return Ok(()) };
        self.finish(true).await;
        Err(PipelineError::Orphans(found))
    }

    /// The sink's answer on a client that reaches no broker.
    fn on_stuck(&mut self, r: Option<String>) -> Result<(), PipelineError> {
        self.stuck = None;
        match r {
            Some(why) => {
                self.meters.producer_replaced.inc();
                Err(PipelineError::Kafka(why))
            }
            None => Ok(()),
        }
    }

    /// Before a probe: the open transaction's deliveries settled.
    fn on_settled(&mut self, answers: Vec<Result<(), Refusal>>) {
        self.barrier = None;
        self.acks.restore_open(answers);
    }

    /// A batch the marker marked, or its end.
    fn on_marked(&mut self, c: Option<Confirmed>) -> Result<(), PipelineError> {
        match c {
            Some(c) => {
                self.on_confirmed(c);
                Ok(())
            }
            None => Err(PipelineError::MarkerStopped("its channel closed".into())),
        }
    }

    fn on_tick(&mut self) {
        if self.stuck.is_none() && self.state.oldest_unacked().is_some() {
            self.stuck = self.sink.check_stuck();
        }
        let p = self.state.progress();
        self.status.observe(
            self.state.oldest_unacked(),
            p.oldest_unmarked(),
            std::mem::take(&mut self.received),
            p.last_handled_micros(),
        );
        self.meters.in_flight.set(p.records() as i64);
        self.meters.in_flight_bytes.set(p.bytes() as i64);
        if self.last_progress_log.elapsed() >= Duration::from_secs(60) {
            self.last_progress_log = Instant::now();
            tracing::info!(
                source = %self.cfg.source,
                published = self.meters.published.get(),
                confirmed_lsn = %p.confirmed().map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                lag_seconds = (now_unix_micros() - p.last_handled_micros()).max(0) / 1_000_000,
                in_flight = p.records(),
                unacked_transactions = self.state.unacked(),
                "progress"
            );
        }
    }

    async fn on_wal(&mut self, ev: Option<ReplicationEvent>) -> Result<(), PipelineError> {
        let Some(ev) = ev else {
            return Err(PipelineError::StreamEnded);
        };
        self.received = true;
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                self.skipping = self.cfg.skip_before.is_some_and(|c| final_lsn < c);
                self.state.on_begin(final_lsn, commit_time_micros);
            }
            ReplicationEvent::XLogData { data, .. } => {
                let unread = self.state.unread_rows;
                if let Some(event) = self.state.on_data(&data)? {
                    self.offer(event).await?;
                } else if self.state.unread_rows > unread {
                    self.mismatched("rows");
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                if !self.skipping {
                    // Exactly-once: the unit is done only when its Kafka transaction committed.
                    if let Some(committed) = self.sink.end_transaction(end_lsn) {
                        self.acks.sent(committed);
                    }
                } else if self.cfg.skip_before.is_some_and(|c| end_lsn >= c) {
                    tracing::info!(source = %self.cfg.source, events = self.skipped, checkpoint = %end_lsn, "caught up with the kafka checkpoint: what came before it was not sent again");
                }
                let seq = self.state.on_commit(end_lsn, Instant::now().into_std());
                self.acks.commit(seq);
            }
            ReplicationEvent::Message {
                prefix,
                content,
                lsn,
                transactional: false,
            } if prefix == HEARTBEAT_PREFIX => {
                let t = std::str::from_utf8(&content)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(0);
                if let Some(seq) = self.state.on_heartbeat(lsn, t, Instant::now().into_std()) {
                    self.acks.heartbeat(seq);
                }
            }
            ReplicationEvent::Message {
                prefix,
                content,
                lsn,
                transactional,
            } if self.cfg.capture == Capture::Messages && prefix == self.cfg.message_prefix => {
                if !transactional {
                    // Written outside any transaction: it may belong to one that rolled back.
                    self.meters.ignored_non_transactional.inc();
                    return Ok(());
                }
                let event = self.state.on_message(lsn, &content)?;
                self.offer(event).await?;
            }
            ReplicationEvent::Message {
                prefix,
                transactional,
                ..
            } => {
                if prefix == HEARTBEAT_PREFIX {
                    return Ok(());
                }
                self.meters.ignored_prefix.inc();
                if transactional
                    && self.cfg.capture == Capture::Table
                    && prefix == self.cfg.message_prefix
                {
                    self.mismatched("messages");
                }
            }
            ReplicationEvent::KeepAlive { .. } => {}
            ReplicationEvent::StoppedAt { .. } => return Err(PipelineError::StreamEnded),
        }
        Ok(())
    }

    /// A writer uses the other capture mode: its events are committed and never
    /// published by this source. Counted each time, logged once per session.
    fn mismatched(&mut self, seen: &'static str) {
        match seen {
            "rows" => self.meters.mismatch_rows.inc(),
            _ => self.meters.mismatch_messages.inc(),
        }
        if self.mismatch_logged {
            return;
        }
        self.mismatch_logged = true;
        let (prefix, t) = (&self.cfg.message_prefix, &self.cfg.table);
        let hint = match self.cfg.capture {
            Capture::Table => format!("transactional messages with prefix {prefix:?} arrive: a writer emits its events as messages (OUTBOX_CAPTURE=messages), which this source does not publish; set capture = \"messages\" for it, or write rows"),
            Capture::Messages => format!("rows are inserted into {}.{}: a writer writes its events as rows (OUTBOX_CAPTURE=table), which this source does not publish; set capture = \"table\" for it, or emit messages", t.schema, t.name),
        };
        tracing::warn!(source = %self.cfg.source, capture = self.cfg.capture.as_str(), seen, "{hint}");
    }

    /// A new event from the stream: poison already, a suspect sent alone, or parked
    /// and sent.
    async fn offer(&mut self, event: Event) -> Result<(), PipelineError> {
        if self.skipping {
            // In Kafka already (the checkpoint covers it): only marked and confirmed.
            self.state.on_sent(&event, false)?;
            self.acks.settled();
            self.skipped += 1;
            self.meters.skipped.inc();
            return Ok(());
        }
        let suspicion = self.suspects.of(&event.row.id);
        let kind = match poison::before_sending(self.state.unsendable(&event), suspicion) {
            BeforeSending::Poison(reason) => {
                return self
                    .poisoned(event, Finding::BeforeSending, reason, None)
                    .await
            }
            BeforeSending::SendAlone => {
                tracing::info!(source = %self.cfg.source, event_id = %event.row.id, "sending a record Kafka refused before on its own");
                let open = self.acks.take_open();
                self.barrier = Some(Box::pin(futures::future::join_all(open)));
                PendingKind::Probe
            }
            BeforeSending::Send => PendingKind::Record,
        };
        let probe = matches!(kind, PendingKind::Probe);
        self.pending = Some(Pending {
            event,
            kind,
            retry_at: Instant::now(),
        });
        if probe {
            // Sent once everything before it is acked (see `run`).
            return Ok(());
        }
        self.try_pending().await
    }

    /// Tries to enqueue the parked event; on back-pressure it stays parked.
    async fn try_pending(&mut self) -> Result<(), PipelineError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let result = match &p.kind {
            PendingKind::Record | PendingKind::Probe => {
                if let Some(fut) = self.sink.prepare(&p.event) {
                    self.preparing = Some(fut);
                    self.pending = Some(p);
                    return Ok(());
                }
                self.sink.send(&p.event)
            }
            PendingKind::DeadLetter {
                reason,
                with_payload,
                ..
            } => self.sink.dead_letter(&p.event, reason, *with_payload),
        };
        match result {
            Ok(d) if matches!(p.kind, PendingKind::Probe) => {
                self.probe = Some(d);
                self.pending = Some(p);
                Ok(())
            }
            Ok(d) => self.enqueued(p, d),
            Err(SendError::Full) => {
                self.pending = Some(Pending {
                    retry_at: Instant::now() + Duration::from_millis(5),
                    ..p
                });
                Ok(())
            }
            Err(SendError::Poison(reason)) => match p.kind {
                PendingKind::Record | PendingKind::Probe => {
                    self.poisoned(p.event, Finding::BeforeSending, reason, None)
                        .await
                }
                PendingKind::DeadLetter {
                    with_payload, unit, ..
                } => {
                    let finding = Finding::DeadLetterRefused {
                        with_payload,
                        by_kafka: false,
                    };
                    self.poisoned(p.event, finding, reason, unit).await
                }
            },
            Err(SendError::Fatal(e)) => Err(PipelineError::Kafka(e)),
        }
    }

    fn enqueued(&mut self, p: Pending, d: Delivery) -> Result<(), PipelineError> {
        match p.kind {
            PendingKind::Record | PendingKind::Probe => {
                self.state.on_sent(&p.event, false)?;
                self.acks.sent(d);
            }
            PendingKind::DeadLetter { unit: None, .. } => {
                self.state.on_sent(&p.event, true)?;
                self.acks.sent(d);
            }
            PendingKind::DeadLetter {
                unit: Some((seq, rest)),
                ..
            } => {
                self.state.on_dead_lettered(seq, &p.event.row.id)?;
                let mut deliveries = vec![d];
                deliveries.extend(rest);
                self.acks.resume(seq, deliveries);
            }
        }
        Ok(())
    }

    fn on_prepared(&mut self, r: Result<(), PrepareError>) -> Result<(), PipelineError> {
        self.preparing = None;
        match r {
            Ok(()) => {
                if let Some(p) = self.pending.as_mut() {
                    p.retry_at = Instant::now();
                }
                Ok(())
            }
            Err(PrepareError::Refused(why)) => Err(PipelineError::TopicRefused(why)),
            Err(PrepareError::Transient(why)) => {
                tracing::warn!(source = %self.cfg.source, error = %why, "cannot create the topic yet; retrying");
                if let Some(p) = self.pending.as_mut() {
                    p.retry_at = Instant::now() + Duration::from_secs(1);
                }
                Ok(())
            }
        }
    }

    /// A record Kafka can never take, or may not: found as `finding` says, with the
    /// rest of its unit when Kafka refused it after the commit. The poison rule says
    /// what becomes of it.
    async fn poisoned(
        &mut self,
        event: Event,
        finding: Finding,
        reason: String,
        unit: Option<(u64, Vec<Delivery>)>,
    ) -> Result<(), PipelineError> {
        let verdict = poison::judge(self.cfg.poison, self.sink.transactional(), finding, &reason);
        if verdict.counts() {
            self.meters.poison.inc();
        }
        if let Some(halt) = verdict.halts(&event.row.id, &reason) {
            // Under stop (or a missing ACL), everything committed before it is in the ack
            // queue or acked already: let it finish and be confirmed, nothing after it.
            self.finish(verdict != Verdict::Halt).await;
            return Err(halt);
        }
        match verdict {
            Verdict::DeadLetter { .. } | Verdict::ShrinkDeadLetter => {
                let with_payload = verdict == Verdict::DeadLetter { with_payload: true };
                tracing::warn!(source = %self.cfg.source, event_id = %event.row.id, reason = %reason, with_payload, "poison record: sending it to the dead-letter topic");
                self.pending = Some(Pending {
                    event,
                    kind: PendingKind::DeadLetter {
                        reason,
                        with_payload,
                        unit,
                    },
                    retry_at: Instant::now(),
                });
                Box::pin(self.try_pending()).await
            }
            Verdict::TryAlone => {
                let rest = unit.map(|(_, rest)| rest).unwrap_or_default();
                self.replay_with_suspects(event, rest).await
            }
            Verdict::RememberAndReplay => {
                // The refusal doomed the open Kafka transaction: remember the record as
                // poison, abort, and dead-letter it in the next session.
                tracing::warn!(source = %self.cfg.source, event_id = %event.row.id, reason = %reason, "poison record: the kafka transaction is aborted; it goes to the dead-letter topic when resent");
                self.suspects.know(&event.row.id, &reason);
                self.sink.abort("a record was refused for good");
                self.finish(false).await;
                Err(PipelineError::Replay(1))
            }
            Verdict::AccessRefused | Verdict::Stop | Verdict::Halt => {
                unreachable!("halting verdicts returned above")
            }
        }
    }

    /// The probe's answer: accepted (it was refused only for a batch-mate) or poison.
    async fn on_probed(&mut self, r: Result<(), Refusal>) -> Result<(), PipelineError> {
        self.probe = None;
        let p = self.pending.take().expect("a probe is pending");
        self.suspects.answered(&p.event.row.id);
        match r {
            Ok(()) => {
                self.state.on_sent(&p.event, false)?;
                self.acks.settled();
                Ok(())
            }
            Err(Refusal::Poison { reason, .. }) => {
                self.poisoned(p.event, Finding::Alone, reason, None).await
            }
            Err(Refusal::Fatal(e)) => {
                self.meters.delivery_failures.inc();
                Err(PipelineError::Delivery(e))
            }
            Err(Refusal::Fenced(e)) => Err(PipelineError::Fenced(e)),
        }
    }

    async fn on_unit(&mut self, seq: u64, r: Result<(), UnitRefusal>) -> Result<(), PipelineError> {
        match r {
            Ok(()) => self.hand_over(seq),
            Err(UnitRefusal::Fatal(e)) => {
                self.meters.delivery_failures.inc();
                Err(PipelineError::Delivery(e))
            }
            Err(UnitRefusal::Fenced(e)) => Err(PipelineError::Fenced(e)),
            Err(UnitRefusal::Poison {
                event,
                reason,
                rest,
            }) => {
                let finding = if self.state.is_dead_lettered(seq, &event.row.id) {
                    // The refused record is a dead letter: the event Kafka hands back
                    // carries the payload only if the dead letter did.
                    Finding::DeadLetterRefused {
                        with_payload: !event.row.payload.is_empty(),
                        by_kafka: true,
                    }
                } else {
                    Finding::InBatch
                };
                self.poisoned(*event, finding, reason, Some((seq, rest)))
                    .await
            }
        }
    }

    /// Kafka refused a record for good, but a broker refuses a whole producer batch for
    /// one record too large: the refusal may belong to a batch-mate. Collect every
    /// record refused with it, let what came before be confirmed, and end the session;
    /// the next one resends from the confirmed position and tries each suspect alone.
    async fn replay_with_suspects(
        &mut self,
        first: Event,
        rest: Vec<Delivery>,
    ) -> Result<(), PipelineError> {
        let mut refused = vec![first.row.id];
        // A transactional sink's open transaction is doomed: abort it so every unit in
        // it answers now (their refusals are collected below).
        self.sink.abort("a record was refused for good");
        let collect = self.acks.collect_refused(rest, &mut refused);
        if tokio::time::timeout(self.cfg.shutdown_timeout, collect)
            .await
            .is_err()
        {
            tracing::warn!(source = %self.cfg.source, "not every outstanding record answered; collected what did");
        }
        tracing::warn!(source = %self.cfg.source, records = refused.len(), "kafka refused records for good; resending from the confirmed position, each of them alone, to find which cannot be published");
        let n = refused.len();
        self.suspects.suspect(refused);
        self.finish(false).await;
        Err(PipelineError::Replay(n))
    }

    /// A unit is acked: hand it to the marker.
    fn hand_over(&mut self, seq: u64) -> Result<(), PipelineError> {
        let acked = self.state.on_acked(seq, Instant::now().into_std())?;
        let item = acked.item;
        self.meters.published.inc_by(item.ids.len() as u64);
        self.meters.dead_lettered.inc_by(item.dead.len() as u64);
        self.meters
            .backlog
            .add((item.ids.len() + item.dead.len()) as i64);
        if let Some(t) = acked.commit_unix_micros {
            self.meters
                .commit_to_ack
                .observe((now_unix_micros() - t).max(0) as f64 / 1e6);
        }
        let sent = self
            .marker
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(item).is_ok());
        if sent {
            Ok(())
        } else {
            Err(PipelineError::MarkerStopped(
                "it no longer takes rows".into(),
            ))
        }
    }

    fn on_confirmed(&mut self, c: Confirmed) {
        self.meters.backlog.sub(c.records as i64);
        if let Some(lsn) = self.state.on_confirmed(&c) {
            self.wal.confirm(lsn);
            self.confirmed_tx.send_replace(Some(lsn));
            self.meters.confirmed_lsn.set(lsn.as_u64() as i64);
        }
        let p = self.state.progress();
        self.meters.in_flight.set(p.records() as i64);
        self.meters.in_flight_bytes.set(p.bytes() as i64);
    }

    /// Ends the stream cleanly: optionally waits (bounded) for every outstanding unit's
    /// acks, then lets the marker finish (bounded) and confirms what it marked.
    async fn finish(&mut self, drain_acks: bool) {
        let name = self.cfg.source.clone();
        let bound = self.cfg.shutdown_timeout;
        if drain_acks {
            // Exactly-once: commit what ends at a PostgreSQL commit (else abort it).
            self.sink.commit();
            let pending = self.acks.len();
            let drained = tokio::time::timeout(bound, async {
                while let Some((seq, r)) = self.acks.next().await {
                    if r.is_err() || self.hand_over(seq).is_err() {
                        break;
                    }
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!(source = %name, transactions = self.acks.len(), "acks still outstanding; they will be replayed");
            } else {
                tracing::info!(source = %name, transactions = pending, "drained in-flight transactions");
            }
        }
        self.marker.tx = None;
        let marked = tokio::time::timeout(bound, async {
            while let Some(c) = self.marker.rx.recv().await {
                self.on_confirmed(c);
            }
        })
        .await;
        if marked.is_err() {
            tracing::warn!(source = %name, "the marker did not finish in time; its last batch will be replayed");
        }
    }
}

/// The marker's task ended: nothing would be confirmed any more.
fn marker_ended(r: Result<(), tokio::task::JoinError>) -> PipelineError {
    PipelineError::MarkerStopped(match r {
        Ok(()) => "it returned".into(),
        Err(e) => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    //! The loop's rules with an in-memory sink, a scripted replication stream and a
    //! marker that marks at once: no PostgreSQL, no Kafka.

    use std::sync::Mutex;

    use bytes::Bytes;
    use tokio::sync::mpsc;
    use uuid::Uuid;

    use super::*;

    use pgwire_replication::PgWireError;

    use crate::marker::MarkItem;
    use crate::metrics::Metrics;
    use crate::pgoutput::fixtures::{insert, relation};
    use crate::sink::memory::MemorySink;
    use crate::status::{Stage, State};

    const COLS: [&str; 5] = [
        "id",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
    ];

    struct FakeWal {
        events: mpsc::UnboundedReceiver<ReplicationEvent>,
        confirms: mpsc::UnboundedSender<Lsn>,
    }

    impl Wal for FakeWal {
        async fn recv(&mut self) -> Result<Option<ReplicationEvent>, PgWireError> {
            Ok(self.events.recv().await)
        }

        fn confirm(&mut self, lsn: Lsn) {
            let _ = self.confirms.send(lsn);
        }
    }

    struct Harness {
        events: mpsc::UnboundedSender<ReplicationEvent>,
        confirms: mpsc::UnboundedReceiver<Lsn>,
        marked: Arc<Mutex<Vec<MarkItem>>>,
        status: Arc<SourceStatus>,
        metrics: Metrics,
        shutdown: watch::Sender<bool>,
        next_lsn: u64,
    }

    impl Harness {
        /// One transaction of `payloads.len()` rows; returns the ids and its end LSN.
        fn txn(&mut self, payloads: &[&str]) -> (Vec<String>, Lsn) {
            let rows: Vec<(String, &str)> = payloads
                .iter()
                .map(|p| (Uuid::new_v4().to_string(), *p))
                .collect();
            let end = self.txn_of(&rows);
            (rows.into_iter().map(|(id, _)| id).collect(), end)
        }

        /// One transaction of the given rows (ids and payloads), e.g. replayed ones.
        fn txn_of(&mut self, rows: &[(String, &str)]) -> Lsn {
            let begin = self.next_lsn;
            self.next_lsn += 0x100;
            let end = Lsn::from_u64(self.next_lsn);
            let ev = |e| self.events.send(e).unwrap();
            ev(ReplicationEvent::Begin {
                final_lsn: Lsn::from_u64(begin),
                xid: 1,
                commit_time_micros: 0,
            });
            ev(xlog(relation(1, &COLS)));
            for (id, p) in rows {
                ev(xlog(insert(
                    1,
                    &[Some(id), Some("t"), Some("k"), Some("E"), Some(p)],
                )));
            }
            ev(ReplicationEvent::Commit {
                lsn: Lsn::from_u64(begin),
                end_lsn: end,
                commit_time_micros: 0,
            });
            end
        }

        /// One transaction of logical messages `(prefix, transactional, content)`, with
        /// an insert into the relay's table among them; returns its end LSN.
        fn message_txn(&mut self, messages: &[(&str, bool, Vec<u8>)]) -> Lsn {
            let begin = self.next_lsn;
            self.next_lsn += 0x100;
            let end = Lsn::from_u64(self.next_lsn);
            let ev = |e| self.events.send(e).unwrap();
            ev(ReplicationEvent::Begin {
                final_lsn: Lsn::from_u64(begin),
                xid: 1,
                commit_time_micros: 0,
            });
            ev(xlog(relation(1, &COLS)));
            let row = Uuid::new_v4().to_string();
            ev(xlog(insert(
                1,
                &[Some(&row), Some("t"), Some("k"), Some("E"), Some("{}")],
            )));
            for (i, (prefix, transactional, content)) in messages.iter().enumerate() {
                ev(ReplicationEvent::Message {
                    prefix: prefix.to_string(),
                    content: Bytes::from(content.clone()),
                    lsn: Lsn::from_u64(begin + 1 + i as u64),
                    transactional: *transactional,
                });
            }
            ev(ReplicationEvent::Commit {
                lsn: Lsn::from_u64(begin),
                end_lsn: end,
                commit_time_micros: 0,
            });
            end
        }

        /// Waits for the confirmation of `lsn` (or fails after 5 s of virtual time).
        async fn confirmed(&mut self, lsn: Lsn) {
            let wait = async {
                while let Some(c) = self.confirms.recv().await {
                    if c >= lsn {
                        return;
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .unwrap_or_else(|_| panic!("{lsn} was never confirmed"));
        }

        fn marked_ids(&self) -> (Vec<String>, Vec<String>) {
            let items = self.marked.lock().unwrap();
            let s = |v: &Vec<Uuid>| v.iter().map(Uuid::to_string).collect::<Vec<_>>();
            (
                items.iter().flat_map(|i| s(&i.ids)).collect(),
                items.iter().flat_map(|i| s(&i.dead)).collect(),
            )
        }

        fn poison_count(&self) -> u64 {
            self.metrics
                .publish_failures
                .with_label_values(&["src", "poison"])
                .get()
        }
    }

    fn xlog(data: Vec<u8>) -> ReplicationEvent {
        ReplicationEvent::XLogData {
            wal_start: Lsn::from_u64(0),
            wal_end: Lsn::from_u64(0),
            server_time_micros: 0,
            data: Bytes::from(data),
        }
    }

    fn config(poison: PoisonPolicy) -> StreamConfig {
        StreamConfig {
            source: "src".into(),
            limits: Limits {
                max_records: 1000,
                max_bytes: 1 << 20,
                max_record_bytes: 100,
            },
            poison,
            shutdown_timeout: Duration::from_millis(500),
            skip_before: None,
            capture: Capture::Table,
            table: OutboxTable::default(),
            message_prefix: "outbox".into(),
        }
    }

    /// A marker that marks every item at once; `alive = false`: one that has died.
    fn marker(marked: Arc<Mutex<Vec<MarkItem>>>, alive: bool) -> MarkerLink {
        let (tx, mut items) = mpsc::unbounded_channel::<MarkItem>();
        let (confirmed, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            if !alive {
                return;
            }
            while let Some(item) = items.recv().await {
                let c = Confirmed {
                    lsn: Some(item.lsn),
                    source_time_micros: item.source_time_micros,
                    records: item.ids.len() + item.dead.len(),
                    bytes: item.bytes,
                };
                marked.lock().unwrap().push(item);
                if confirmed.send(c).is_err() {
                    return;
                }
            }
        });
        MarkerLink {
            tx: Some(tx),
            rx,
            task,
        }
    }

    fn harness(alive: bool) -> (Harness, FakeWal, MarkerLink, watch::Receiver<bool>) {
        let (events, ev_rx) = mpsc::unbounded_channel();
        let (c_tx, confirms) = mpsc::unbounded_channel();
        let marked = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let status = Arc::new(SourceStatus::new("src", 0));
        status.set_state(State::Streaming);
        let link = marker(marked.clone(), alive);
        (
            Harness {
                events,
                confirms,
                marked,
                status,
                metrics: Metrics::new(),
                shutdown,
                next_lsn: 0x1000,
            },
            FakeWal {
                events: ev_rx,
                confirms: c_tx,
            },
            link,
            shutdown_rx,
        )
    }

    /// Polls `cond` on virtual time until it holds (at most 5 s).
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    fn sent_ids(sink: &MemorySink) -> Vec<String> {
        sink.sent().into_iter().map(|s| s.event_id).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn events_go_out_in_commit_order_and_are_confirmed_only_after_marking() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::acking();
        let probe = sink.clone();
        let notify = Notify::new();
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let driver = async {
            let (a, _) = h.txn(&["{}", "{}"]);
            let (b, end) = h.txn(&["{}"]);
            h.confirmed(end).await;
            assert_eq!(sent_ids(&probe), [a.clone(), b.clone()].concat());
            assert_eq!(h.marked_ids().0, [a, b].concat(), "marked in commit order");
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
        assert_eq!(s.confirmed(), Some(Lsn::from_u64(0x1200)));
    }

    fn envelope(aggregate_id: &str) -> (String, Vec<u8>) {
        let id = Uuid::now_v7();
        let event = outbox::NewEvent::new(
            "order",
            aggregate_id,
            "OrderPlaced",
            &serde_json::json!({"n": 1}),
        )
        .unwrap();
        (id.to_string(), outbox::message::encode(id, &event).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn in_message_capture_the_prefixs_transactional_messages_are_the_events_in_commit_order()
    {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::acking();
        let probe = sink.clone();
        let notify = Notify::new();
        let mut cfg = config(PoisonPolicy::Stop);
        cfg.capture = Capture::Messages;
        let mut s = Streamer::new(
            cfg,
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let driver = async {
            let (a, a_bytes) = envelope("o-1");
            let (b, b_bytes) = envelope("o-2");
            let (c, c_bytes) = envelope("o-1");
            let (stray, stray_bytes) = envelope("o-9");
            h.message_txn(&[
                ("outbox", true, a_bytes),
                ("other", true, b"not ours".to_vec()),
                ("outbox", false, stray_bytes),
                ("outbox", true, b_bytes),
            ]);
            let end = h.message_txn(&[("outbox", true, c_bytes)]);
            h.confirmed(end).await;
            assert_eq!(
                sent_ids(&probe),
                [a.clone(), b.clone(), c.clone()],
                "the envelopes, in commit order; not the table's rows, another prefix or a non-transactional message"
            );
            assert!(!sent_ids(&probe).contains(&stray));
            assert_eq!(h.marked_ids().0, [a, b, c], "settled in order");
            let ignored = |reason: &str| {
                h.metrics
                    .messages_ignored
                    .with_label_values(&["src", reason])
                    .get()
            };
            assert_eq!((ignored("prefix"), ignored("non_transactional")), (1, 1));
            let mismatch = |seen: &str| {
                h.metrics
                    .capture_mismatch
                    .with_label_values(&["src", seen])
                    .get()
            };
            assert_eq!(
                (mismatch("rows"), mismatch("messages")),
                (2, 0),
                "each transaction's row in the outbox table is a writer in table mode"
            );
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn in_table_capture_an_event_message_is_counted_as_a_capture_mismatch() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::acking();
        let probe = sink.clone();
        let notify = Notify::new();
        let cfg = config(PoisonPolicy::Stop);
        let mut s = Streamer::new(
            cfg,
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let driver = async {
            let (_, bytes) = envelope("o-1");
            let end = h.message_txn(&[("outbox", true, bytes), ("other", true, b"x".to_vec())]);
            h.confirmed(end).await;
            assert_eq!(sent_ids(&probe).len(), 1, "only the row");
            let mismatch = |seen: &str| {
                h.metrics
                    .capture_mismatch
                    .with_label_values(&["src", seen])
                    .get()
            };
            assert_eq!((mismatch("messages"), mismatch("rows")), (1, 0));
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn transactions_the_checkpoint_covers_are_marked_and_confirmed_but_not_sent_again() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::acking();
        let probe = sink.clone();
        let notify = Notify::new();
        let mut cfg = config(PoisonPolicy::Stop);
        // The first transaction ends at 0x1100: the checkpoint says it is in Kafka.
        cfg.skip_before = Some(Lsn::from_u64(0x1100));
        let mut s = Streamer::new(
            cfg,
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let driver = async {
            let (a, _) = h.txn(&["{}", "{}"]);
            let (b, end) = h.txn(&["{}"]);
            h.confirmed(end).await;
            assert_eq!(
                sent_ids(&probe),
                b,
                "only what the checkpoint does not cover"
            );
            assert_eq!(h.marked_ids().0, [a, b].concat(), "all marked, in order");
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
        assert_eq!(h.metrics.skipped.with_label_values(&["src"]).get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_transactional_sink_a_unit_is_marked_only_after_its_whole_transaction_committed()
    {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::transactional();
        let probe = sink.clone();
        let notify = Notify::new();
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let driver = async {
            let (a, _) = h.txn(&["{}", "{}", "{}"]);
            let (b, end) = h.txn(&["{}", "{}"]);
            until("both sent", || probe.sent().len() == 5).await;
            assert!(
                h.marked_ids().0.is_empty(),
                "nothing marked before the commit"
            );
            assert!(probe.committed().is_empty());
            h.confirmed(end).await;
            let committed = probe.committed();
            assert_eq!(committed.concat(), [a.clone(), b.clone()].concat());
            for t in &committed {
                assert!(
                    *t == a || *t == b || *t == [a.clone(), b.clone()].concat(),
                    "a postgresql transaction was split: {committed:?}"
                );
            }
            assert_eq!(h.marked_ids().0, [a, b].concat());
            // A third transaction cut short by shutdown is aborted, never committed.
            h.events
                .send(ReplicationEvent::Begin {
                    final_lsn: Lsn::from_u64(h.next_lsn),
                    xid: 9,
                    commit_time_micros: 0,
                })
                .unwrap();
            h.events.send(xlog(relation(1, &COLS))).unwrap();
            let id = Uuid::new_v4().to_string();
            h.events
                .send(xlog(insert(
                    1,
                    &[Some(&id), Some("t"), Some("k"), Some("E"), Some("{}")],
                )))
                .unwrap();
            until("the partial one sent", || probe.sent().len() == 6).await;
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
        assert_eq!(probe.aborted(), 1, "the cut-short transaction is aborted");
        assert_eq!(probe.committed().concat().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_audits_finding_ends_the_session_once_what_was_in_flight_is_confirmed() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::acking();
        let notify = Notify::new();
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let (found_tx, found_rx) = oneshot::channel();
        s.audited_by(found_rx);
        let mut confirmed = s.confirmed_watch();
        let (ids, end) = h.txn(&["{}", "{}"]);
        let found = Found {
            ids: vec![Uuid::new_v4()],
            round_lsn: end,
            oldest_age: Duration::from_secs(9),
        };
        let driver = async {
            // The audit judges by the position the loop confirmed, as it confirms it.
            confirmed
                .wait_for(|c| c.is_some_and(|c| c >= end))
                .await
                .unwrap();
            found_tx.send(found.clone()).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        let Err(PipelineError::Orphans(f)) = r else {
            panic!("expected the audit's finding, got {r:?}")
        };
        assert_eq!(f, found);
        assert_eq!(s.confirmed(), Some(end));
        assert_eq!(h.marked_ids().0, ids);
        assert_eq!(
            super::super::next_step(&PipelineError::Orphans(f)),
            super::super::Next::Replay
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_audit_that_ends_without_a_finding_leaves_the_session_streaming() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::acking();
        let notify = Notify::new();
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let (found_tx, found_rx) = oneshot::channel::<Found>();
        s.audited_by(found_rx);
        drop(found_tx);
        let driver = async {
            let (_, end) = h.txn(&["{}"]);
            h.confirmed(end).await;
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_poison_record_under_stop_drains_what_came_before_it_and_nothing_after() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::holding();
        let probe = sink.clone();
        let notify = Notify::new();
        let big = format!("\"{}\"", "x".repeat(200));
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let (before, before_end) = h.txn(&["{}", "{}"]);
        let (poisoned, _) = h.txn(&["{}", &big, "{}"]);
        let driver = async {
            until("the poison record was met", || h.poison_count() == 1).await;
            // Only now are the acks of the transaction before it released.
            probe.release_all();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        let Err(PipelineError::Poison { event_id, reason }) = r else {
            panic!("expected a poison error, got {r:?}")
        };
        assert_eq!(event_id, poisoned[1]);
        assert!(reason.contains("max_record_bytes"), "{reason}");
        assert_eq!(
            s.confirmed(),
            Some(before_end),
            "everything before it is confirmed"
        );
        assert_eq!(h.marked_ids().0, before);
        let sent = sent_ids(&probe);
        assert!(
            !sent.contains(&poisoned[1]) && !sent.contains(&poisoned[2]),
            "{sent:?}"
        );
    }

    /// A broker refuses a whole producer batch for one record too large in it. The
    /// session collects every refused record, lets what came before be confirmed and
    /// ends; the replay sends each suspect alone: the batch-mate goes through, the
    /// culprit is dead-lettered with its payload, and the rows after it flow.
    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_is_replayed_record_by_record_and_only_the_culprit_is_dead_lettered() {
        let mut sink = MemorySink::acking();
        let probe = sink.clone();
        let suspects = Suspects::default();
        let notify = Notify::new();
        let rows: Vec<(String, &str)> = ["mate", "culprit", "after"]
            .iter()
            .map(|_| (Uuid::new_v4().to_string(), "{}"))
            .collect();
        let (mate, culprit) = (rows[0].0.clone(), rows[1].0.clone());
        probe.refuse_once(&mate, "Broker: Message size too large");
        probe.refuse(&culprit, "Broker: Message size too large");

        // Session 1: the refusal ends it after the transaction before is confirmed.
        let (mut h, mut wal, link, shutdown) = harness(true);
        let (first, first_end) = h.txn(&["{}"]);
        h.txn_of(&rows);
        let mut s = Streamer::new(
            config(PoisonPolicy::DeadLetter),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            suspects.clone(),
        );
        let r = s.run(shutdown, &notify).await;
        assert!(matches!(r, Err(PipelineError::Replay(2))), "{r:?}");
        assert_eq!(s.confirmed(), Some(first_end));
        assert_eq!(h.marked_ids(), (first, vec![]));
        drop(s);

        // Session 2: the slot replays the refused transaction, then a new one.
        let (mut h, mut wal, link, shutdown) = harness(true);
        let replayed_end = h.txn_of(&rows);
        let (next, next_end) = h.txn(&["{}"]);
        let mut s = Streamer::new(
            config(PoisonPolicy::DeadLetter),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            suspects.clone(),
        );
        let driver = async {
            h.confirmed(next_end.max(replayed_end)).await;
            let (processed, dead) = h.marked_ids();
            assert_eq!(dead, vec![culprit.clone()]);
            assert_eq!(
                processed,
                [vec![mate.clone(), rows[2].0.clone()], next].concat()
            );
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
        let dlq: Vec<_> = probe
            .sent()
            .into_iter()
            .filter(|s| s.dead_letter.is_some())
            .collect();
        assert_eq!(dlq.len(), 1);
        assert_eq!(dlq[0].event_id, culprit);
        assert!(
            dlq[0].with_payload,
            "refused by the broker: the payload may fit the dead letter"
        );
        assert!(suspects.is_empty(), "every suspect was tried");
        assert_eq!(h.metrics.dead_lettered.with_label_values(&["src"]).get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_kafka_refuses_alone_halts_the_source_under_stop_after_what_came_before() {
        let mut sink = MemorySink::acking();
        let suspects = Suspects::default();
        let notify = Notify::new();
        let (mut h, mut wal, link, shutdown) = harness(true);
        let (before, before_end) = h.txn(&["{}"]);
        let (poisoned, _) = h.txn(&["{}"]);
        sink.refuse(&poisoned[0], "Broker: Message size too large");
        suspects.suspect([poisoned[0].clone()]);
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            suspects.clone(),
        );
        let r = s.run(shutdown, &notify).await;
        let Err(PipelineError::Poison { event_id, reason }) = r else {
            panic!("expected poison, got {r:?}")
        };
        assert_eq!(event_id, poisoned[0]);
        assert!(reason.contains("too large"), "{reason}");
        assert_eq!(s.confirmed(), Some(before_end));
        assert_eq!(h.marked_ids().0, before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_producer_error_ends_the_session_after_what_came_before_and_retries() {
        let mut sink = MemorySink::acking();
        let notify = Notify::new();
        let (mut h, mut wal, link, shutdown) = harness(true);
        let (before, before_end) = h.txn(&["{}"]);
        let (failed, _) = h.txn(&["{}"]);
        let (after, _) = h.txn(&["{}"]);
        sink.fail(
            &failed[0],
            "Local: Fatal error: Broker: Out of order sequence number",
        );
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let r = s.run(shutdown, &notify).await;
        let Err(e @ PipelineError::Delivery(_)) = r else {
            panic!("expected a delivery error, got {r:?}")
        };
        assert!(e.to_string().contains("Out of order sequence"), "{e}");
        // Nothing from the failed transaction on is confirmed or marked, though the one
        // after it was acked: the next session (a new producer) sends them again from
        // the confirmed position (the one before, too, if it was not marked yet).
        assert!(s.confirmed() <= Some(before_end), "{:?}", s.confirmed());
        let marked = h.marked_ids().0;
        assert!(marked.iter().all(|id| before.contains(id)), "{marked:?}");
        assert!(!marked.contains(&failed[0]) && !marked.contains(&after[0]));
        assert_eq!(super::super::next_step(&e), super::super::Next::Retry);
        let failures = h
            .metrics
            .publish_failures
            .with_label_values(&["src", "delivery"]);
        assert_eq!(failures.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_sink_client_ends_the_session_with_nothing_confirmed_past_the_acks() {
        let mut sink = MemorySink::holding();
        let probe = sink.clone();
        let notify = Notify::new();
        let (mut h, mut wal, link, shutdown) = harness(true);
        h.txn(&["{}", "{}"]);
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        // Records wait for acks that never come: the loop asks the sink, which finds
        // nothing the first times, then a stuck client.
        let r = {
            let run = s.run(shutdown, &notify);
            tokio::pin!(run);
            tokio::select! {
                r = &mut run => panic!("the session ended before the sink was stuck: {r:?}"),
                _ = until("the loop to ask the sink", || probe.stuck_checks() >= 2) => {}
            }
            probe.stuck("no broker for 31 s");
            tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .expect("the session ends once the sink is stuck")
        };
        let Err(e @ PipelineError::Kafka(_)) = r else {
            panic!("expected a kafka error, got {r:?}")
        };
        assert!(e.to_string().contains("no broker for 31 s"), "{e}");
        assert_eq!(super::super::next_step(&e), super::super::Next::Retry);
        assert_eq!(
            h.metrics
                .producer_replaced
                .with_label_values(&["src"])
                .get(),
            1,
            "relay_kafka_producer_replaced_total counts it"
        );
        assert_eq!(
            s.confirmed(),
            None,
            "nothing was acked, nothing is confirmed"
        );
        assert!(h.marked_ids().0.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_never_asks_whether_the_sink_is_stuck() {
        let mut sink = MemorySink::acking();
        let probe = sink.clone();
        let notify = Notify::new();
        let (mut h, mut wal, link, shutdown) = harness(true);
        let (ids, _) = h.txn(&["{}"]);
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        probe.stuck("would end the session");
        let run = s.run(shutdown, &notify);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => panic!("the session ended: {r:?}"),
            _ = until("the transaction to be marked", || h.marked_ids().0 == ids) => {}
        }
        // Ticks go by with nothing waiting for an ack.
        tokio::select! {
            r = &mut run => panic!("the session ended: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(1500)) => {}
        }
        assert_eq!(probe.stuck_checks(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_row_is_dead_lettered_without_its_payload() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::acking();
        let probe = sink.clone();
        let notify = Notify::new();
        let big = format!("\"{}\"", "x".repeat(200));
        let mut s = Streamer::new(
            config(PoisonPolicy::DeadLetter),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let driver = async {
            let (ids, end) = h.txn(&[&big, "{}"]);
            h.confirmed(end).await;
            assert_eq!(h.marked_ids(), (vec![ids[1].clone()], vec![ids[0].clone()]));
            let sent = probe.sent();
            assert_eq!(sent[0].event_id, ids[0]);
            assert!(sent[0]
                .dead_letter
                .as_deref()
                .unwrap()
                .contains("max_record_bytes"));
            assert!(!sent[0].with_payload);
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_marker_failure_surfaces_as_an_error() {
        let (mut h, mut wal, link, shutdown) = harness(false);
        let mut sink = MemorySink::acking();
        let notify = Notify::new();
        h.txn(&["{}"]);
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let r = tokio::time::timeout(Duration::from_secs(5), s.run(shutdown, &notify))
            .await
            .expect("the loop ends instead of waiting for confirmations");
        assert!(matches!(r, Err(PipelineError::MarkerStopped(_))), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_that_never_comes_trips_the_watchdog() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::holding();
        let notify = Notify::new();
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        let timeout = Duration::from_secs(60);
        let driver = async {
            h.txn(&["{}"]);
            let status = h.status.clone();
            until("the watchdog sees the unacked transaction", || {
                let later = std::time::Instant::now() + timeout;
                status.snapshot(later, 0, timeout).stall.map(|s| s.0) == Some(Stage::KafkaAcks)
            })
            .await;
            let now = status.snapshot(std::time::Instant::now(), 0, timeout);
            assert!(now.stall.is_none(), "not stalled before the timeout");
            h.shutdown.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(s.run(shutdown, &notify), driver);
        r.unwrap();
        assert_eq!(s.confirmed(), None, "nothing acked, nothing confirmed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_producer_queue_does_not_keep_shutdown_waiting() {
        let (mut h, mut wal, link, shutdown) = harness(true);
        let mut sink = MemorySink::acking();
        sink.fill_queue(usize::MAX);
        let notify = Notify::new();
        let mut s = Streamer::new(
            config(PoisonPolicy::Stop),
            &mut wal,
            &mut sink,
            link,
            h.status.clone(),
            &h.metrics,
            Suspects::default(),
        );
        h.txn(&["{}", "{}"]);
        let driver = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            h.shutdown.send(true).unwrap();
        };
        let run = tokio::time::timeout(Duration::from_secs(2), s.run(shutdown, &notify));
        let (r, ()) = tokio::join!(run, driver);
        r.expect("shutdown is served while the queue is full")
            .unwrap();
    }
}
