//! An in-memory [`Sink`] for tests of the pipeline's rules: it records what was sent,
//! and a test decides when (and whether) each delivery is acked or refused.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Delivery, Event, Preparing, Refusal, SendError, Sink, StuckCheck};

/// One record the sink took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub event_id: String,
    /// `Some(reason)` for a dead-letter record.
    pub dead_letter: Option<String>,
    pub with_payload: bool,
}

#[derive(Default)]
struct Inner {
    sent: Vec<Sent>,
    /// Deliveries not resolved yet, in send order (only when holding).
    held: VecDeque<(Event, oneshot::Sender<Result<(), Refusal>>)>,
    hold: bool,
    /// Event ids whose delivery is refused as poison, with the reason.
    refuse: HashMap<String, String>,
    /// Event ids whose first delivery only is refused (a batch-mate of poison).
    refuse_once: HashMap<String, String>,
    /// Event ids whose delivery fails as a fatal producer error would fail it.
    fail: HashMap<String, String>,
    /// Event ids refused before sending (as a producer's own size check would).
    refuse_on_send: HashMap<String, String>,
    /// How many sends answer "queue full" before one goes through.
    full: usize,
    /// What the next [`Sink::check_stuck`] answers (once).
    stuck: Option<String>,
    /// How often the loop asked.
    stuck_checks: usize,
    /// Transactional mode: what the open transaction holds, and what was committed.
    txn: Option<MemTxn>,
}

/// A transaction as a transactional sink keeps it; commits when the test says so.
#[derive(Default)]
struct MemTxn {
    open: Vec<String>,
    since_boundary: usize,
    waiters: Vec<oneshot::Sender<Result<(), Refusal>>>,
    /// Event ids per committed transaction, in commit order.
    committed: Vec<Vec<String>>,
    aborted: usize,
}

/// Cheap to clone: clones share the same record of what was sent.
#[derive(Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<Inner>>,
}

impl MemorySink {
    /// Acks every record as soon as it is sent.
    pub fn acking() -> Self {
        Self::default()
    }

    /// Holds every delivery until [`MemorySink::release`].
    pub fn holding() -> Self {
        let s = Self::default();
        s.lock().hold = true;
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    /// A transactional sink: records wait for [`MemorySink::commit_now`] (or the loop's
    /// `commit`) to become committed; each unit's delivery resolves at its commit.
    pub fn transactional() -> Self {
        let s = Self::default();
        s.lock().txn = Some(MemTxn::default());
        s
    }

    /// Event ids per committed transaction.
    pub fn committed(&self) -> Vec<Vec<String>> {
        self.lock()
            .txn
            .as_ref()
            .map(|t| t.committed.clone())
            .unwrap_or_default()
    }

    /// Transactions aborted so far.
    pub fn aborted(&self) -> usize {
        self.lock().txn.as_ref().map_or(0, |t| t.aborted)
    }

    /// Refuses the delivery of `event_id` for good.
    pub fn refuse(&self, event_id: &str, reason: &str) {
        self.lock().refuse.insert(event_id.into(), reason.into());
    }

    /// Refuses the first delivery of `event_id` only, as a broker refuses a whole batch
    /// for one record in it.
    pub fn refuse_once(&self, event_id: &str, reason: &str) {
        self.lock()
            .refuse_once
            .insert(event_id.into(), reason.into());
    }

    /// Fails the delivery of `event_id` the way a producer in a fatal state fails every
    /// record (librdkafka's `_FATAL`): not a refusal of the record, the producer is gone.
    pub fn fail(&self, event_id: &str, reason: &str) {
        self.lock().fail.insert(event_id.into(), reason.into());
    }

    /// Makes the next stuck check find the client stuck, for `why`.
    pub fn stuck(&self, why: &str) {
        self.lock().stuck = Some(why.into());
    }

    /// How often the loop asked whether the client is stuck.
    pub fn stuck_checks(&self) -> usize {
        self.lock().stuck_checks
    }

    /// Refuses `event_id` when it is sent, before any delivery.
    pub fn refuse_on_send(&self, event_id: &str, reason: &str) {
        self.lock()
            .refuse_on_send
            .insert(event_id.into(), reason.into());
    }

    /// The next `n` sends answer "queue full".
    pub fn fill_queue(&self, n: usize) {
        self.lock().full = n;
    }

    /// Resolves the oldest `n` held deliveries (acked unless refused); returns how many.
    pub fn release(&self, n: usize) -> usize {
        let mut inner = self.lock();
        let mut done = 0;
        while done < n {
            let Some((event, tx)) = inner.held.pop_front() else {
                break;
            };
            let r = outcome(&mut inner, event);
            let _ = tx.send(r);
            done += 1;
        }
        done
    }

    /// Stops holding and resolves everything held.
    pub fn release_all(&self) {
        self.lock().hold = false;
        self.release(usize::MAX);
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }

    fn take(&self, event: &Event, dead_letter: Option<String>, with_payload: bool) -> Delivery {
        let mut inner = self.lock();
        inner.sent.push(Sent {
            event_id: event.row.id.clone(),
            dead_letter: dead_letter.clone(),
            with_payload,
        });
        if let Some(t) = inner.txn.as_mut() {
            t.open.push(event.row.id.clone());
            t.since_boundary += 1;
        }
        let mut event = event.clone();
        if !with_payload {
            event.row.payload.clear();
        }
        if dead_letter.is_some() {
            // A dead-letter record is never refused here.
            return Box::pin(std::future::ready(Ok(())));
        }
        if inner.hold {
            let (tx, rx) = oneshot::channel();
            inner.held.push_back((event, tx));
            return super::delivery_from(rx, "sink dropped");
        }
        Box::pin(std::future::ready(outcome(&mut inner, event)))
    }
}

fn outcome(inner: &mut Inner, event: Event) -> Result<(), Refusal> {
    if let Some(reason) = inner.fail.get(&event.row.id) {
        return Err(Refusal::Fatal(reason.clone()));
    }
    let once = inner.refuse_once.remove(&event.row.id);
    match once.as_ref().or(inner.refuse.get(&event.row.id)) {
        Some(reason) => Err(Refusal::Poison {
            reason: reason.clone(),
            event: Box::new(event),
        }),
        None => Ok(()),
    }
}

impl Sink for MemorySink {
    fn prepare(&mut self, _event: &Event) -> Option<Preparing> {
        None
    }

    fn check_stuck(&mut self) -> Option<StuckCheck> {
        let mut inner = self.lock();
        inner.stuck_checks += 1;
        let why = inner.stuck.take()?;
        Some(Box::pin(std::future::ready(Some(why))))
    }

    fn prepare_dead_letter(&mut self) -> Option<Preparing> {
        None
    }

    fn send(&mut self, event: &Event) -> Result<Delivery, SendError> {
        {
            let mut inner = self.lock();
            if inner.full > 0 {
                inner.full -= 1;
                return Err(SendError::Full);
            }
            if let Some(reason) = inner.refuse_on_send.get(&event.row.id) {
                return Err(SendError::Poison(reason.clone()));
            }
        }
        Ok(self.take(event, None, true))
    }

    fn dead_letter(
        &mut self,
        event: &Event,
        reason: &str,
        with_payload: bool,
    ) -> Result<Delivery, SendError> {
        Ok(self.take(event, Some(reason.into()), with_payload))
    }

    fn flush(&self, _timeout: Duration) {}

    fn end_transaction(&mut self, _end_lsn: pgwire_replication::Lsn) -> Option<Delivery> {
        let mut inner = self.lock();
        let t = inner.txn.as_mut()?;
        if t.open.is_empty() {
            return None;
        }
        t.since_boundary = 0;
        let (tx, rx) = oneshot::channel();
        t.waiters.push(tx);
        Some(super::delivery_from(rx, "sink dropped"))
    }

    fn commit_due(&self) -> Option<tokio::time::Instant> {
        let inner = self.lock();
        let t = inner.txn.as_ref()?;
        (t.since_boundary == 0 && !t.waiters.is_empty())
            .then(|| tokio::time::Instant::now() + Duration::from_millis(100))
    }

    fn commit(&mut self) {
        let mut inner = self.lock();
        let Some(t) = inner.txn.as_mut() else { return };
        if t.open.is_empty() {
            return;
        }
        if t.since_boundary > 0 {
            drop(inner);
            self.abort("cut short");
            return;
        }
        let ids = std::mem::take(&mut t.open);
        t.committed.push(ids);
        for w in t.waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
    }

    fn abort(&mut self, why: &str) {
        let mut inner = self.lock();
        let Some(t) = inner.txn.as_mut() else { return };
        if t.open.is_empty() {
            return;
        }
        t.open.clear();
        t.since_boundary = 0;
        t.aborted += 1;
        for w in t.waiters.drain(..) {
            let _ = w.send(Err(Refusal::Fatal(format!("aborted: {why}"))));
        }
    }

    fn transactional(&self) -> bool {
        self.lock().txn.is_some()
    }
}
