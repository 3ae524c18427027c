//! The deliveries of the stream's units (a transaction, or a heartbeat), answered in
//! commit order: a unit answers once every record of it was acked, or with its first
//! refusal and the deliveries after it.

use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesOrdered, StreamExt};

use crate::sink::{Delivery, Event, Refusal};

/// Why a unit was not acked whole.
pub enum UnitRefusal {
    /// One record was refused for good; `rest` are the unit's deliveries after it.
    Poison {
        event: Box<Event>,
        reason: String,
        rest: Vec<Delivery>,
    },
    Fatal(String),
    Fenced(String),
}

/// Resolves with the unit's sequence number once every record of it was acked, or with
/// the first refusal.
type UnitFuture = Pin<Box<dyn Future<Output = (u64, Result<(), UnitRefusal>)> + Send>>;

fn await_unit(seq: u64, deliveries: Vec<Delivery>) -> UnitFuture {
    Box::pin(async move {
        let mut it = deliveries.into_iter();
        while let Some(d) = it.next() {
            match d.await {
                Ok(()) => {}
                Err(Refusal::Poison { event, reason }) => {
                    let rest = it.collect();
                    return (
                        seq,
                        Err(UnitRefusal::Poison {
                            event,
                            reason,
                            rest,
                        }),
                    );
                }
                Err(Refusal::Fatal(e)) => return (seq, Err(UnitRefusal::Fatal(e))),
                Err(Refusal::Fenced(e)) => return (seq, Err(UnitRefusal::Fenced(e))),
            }
        }
        (seq, Ok(()))
    })
}

/// The committed units waiting for their acks, and the deliveries of the open
/// transaction.
#[derive(Default)]
pub struct Acks {
    units: FuturesOrdered<UnitFuture>,
    open: Vec<Delivery>,
}

impl Acks {
    /// A record of the open transaction was enqueued.
    pub fn sent(&mut self, d: Delivery) {
        self.open.push(d);
    }

    /// A record of the open transaction that waits for no ack (in Kafka already).
    pub fn settled(&mut self) {
        self.open.push(Box::pin(std::future::ready(Ok(()))));
    }

    /// The open transaction committed as unit `seq`.
    pub fn commit(&mut self, seq: u64) {
        let open = std::mem::take(&mut self.open);
        self.units.push_back(await_unit(seq, open));
    }

    /// A heartbeat: a unit with nothing to ack, behind every unit before it.
    pub fn heartbeat(&mut self, seq: u64) {
        self.units.push_back(await_unit(seq, Vec::new()));
    }

    /// Unit `seq`, taken out for a refusal, goes back at the front with `deliveries`.
    pub fn resume(&mut self, seq: u64, deliveries: Vec<Delivery>) {
        self.units.push_front(await_unit(seq, deliveries));
    }

    /// The open transaction's deliveries, to settle before a record is sent alone.
    pub fn take_open(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.open)
    }

    /// The open transaction's deliveries, settled.
    pub fn restore_open(&mut self, answers: Vec<Result<(), Refusal>>) {
        self.open = answers
            .into_iter()
            .map(|r| Box::pin(std::future::ready(r)) as Delivery)
            .collect();
    }

    /// The oldest unit's answer, once it has one.
    pub async fn next(&mut self) -> Option<(u64, Result<(), UnitRefusal>)> {
        self.units.next().await
    }

    /// Committed units not answered yet.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Waits for every outstanding delivery (`rest` first, then every unit, then the
    /// open transaction) and adds the id of each record refused for good to `refused`.
    pub async fn collect_refused(&mut self, rest: Vec<Delivery>, refused: &mut Vec<String>) {
        let mut deliveries = rest;
        loop {
            for d in deliveries.drain(..) {
                if let Err(Refusal::Poison { event, .. }) = d.await {
                    refused.push(event.row.id);
                }
            }
            match self.units.next().await {
                Some((_, Err(UnitRefusal::Poison { event, rest, .. }))) => {
                    refused.push(event.row.id);
                    deliveries = rest;
                }
                Some(_) => {}
                None => break,
            }
        }
        for d in std::mem::take(&mut self.open) {
            if let Err(Refusal::Poison { event, .. }) = d.await {
                refused.push(event.row.id);
            }
        }
    }
}
