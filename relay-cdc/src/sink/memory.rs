//! An in-memory [`Sink`] for tests of the pipeline's rules: it records what was sent,
//! and a test decides when (and whether) each delivery is acked or refused.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Delivery, Event, Preparing, Refusal, SendError, Sink};

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
    /// Event ids refused before sending (as a producer's own size check would).
    refuse_on_send: HashMap<String, String>,
    /// How many sends answer "queue full" before one goes through.
    full: usize,
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
            return Box::pin(async move {
                rx.await
                    .unwrap_or_else(|_| Err(Refusal::Fatal("sink dropped".into())))
            });
        }
        Box::pin(std::future::ready(outcome(&mut inner, event)))
    }
}

fn outcome(inner: &mut Inner, event: Event) -> Result<(), Refusal> {
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
}
