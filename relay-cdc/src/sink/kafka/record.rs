//! The record mapping on the Kafka side: an [`Event`] as the record [`outbox::record`]
//! says (topic from `kafka.topic_template`, key = aggregate id, value = the payload as
//! written, the relay's headers then the row's own), in librdkafka's types; and back,
//! the event a refused record was made from, so that poison can be dead-lettered. In
//! another format ([`crate::format`]) an event is mapped to a [`KafkaRecord`] and sent
//! with a copy of itself, since such a record cannot be read back into its event.
//!
//! The native mapping lives in `libs/outbox` so that tests publishing "as the relay
//! would" use the very same one; this module only converts.

use outbox::headers;
use outbox::record::{self, Commit, Row};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;

use super::KafkaSink;
use crate::format::{FormatError, KafkaRecord, OutboxEvent};
use crate::pgoutput::OutboxRow;
use crate::sink::{CommitMeta, Delivery, Event, SendError};

/// The mapping's view of a decoded row.
pub fn row(row: &OutboxRow) -> Row<'_> {
    Row {
        id: &row.id,
        aggregate_type: &row.aggregate_type,
        aggregate_id: &row.aggregate_id,
        event_type: &row.event_type,
        payload: &row.payload,
        headers: &row.headers,
    }
}

/// The headers of `event`'s record from `source`: the relay's, then the row's own.
pub fn headers(event: &Event, source: &str) -> OwnedHeaders {
    let commit = Commit {
        source,
        lsn: &event.commit.lsn,
        time: &event.commit.time,
    };
    let mut hs = OwnedHeaders::new_with_capacity(8 + event.row.headers.len());
    for (key, value) in row(&event.row).headers(&commit) {
        hs = hs.insert(Header {
            key,
            value: Some(value),
        });
    }
    hs
}

/// A format's view of `event` from `source`: the row's roles, its payload with the
/// column's type, the time (the table's timestamp column, else the commit time) and
/// the further mapped columns.
pub fn outbox_event<'a>(event: &'a Event, source: &'a str) -> OutboxEvent<'a> {
    let row = &event.row;
    OutboxEvent {
        id: &row.id,
        aggregate_type: &row.aggregate_type,
        aggregate_id: &row.aggregate_id,
        event_type: &row.event_type,
        payload: row.payload(),
        payload_type: row.payload_type,
        time: row.time.as_deref().unwrap_or(&event.commit.time),
        source,
        headers: &row.headers,
        columns: &row.columns,
    }
}

/// `record`'s headers in librdkafka's type.
fn owned_headers(record: &KafkaRecord) -> OwnedHeaders {
    let mut hs = OwnedHeaders::new_with_capacity(record.headers.len());
    for (key, value) in &record.headers {
        hs = hs.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    hs
}

impl KafkaSink {
    /// Sends the record a (non-native) format made of `event`, with a copy of `event`.
    /// What the format could not map, or a record larger than `kafka.max_record_bytes`,
    /// is poison before it is sent.
    pub(super) fn send_formatted(
        &mut self,
        event: &Event,
        mapped: Result<KafkaRecord, FormatError>,
    ) -> Result<Delivery, SendError> {
        let mapped = mapped
            .map_err(|e| SendError::Poison(format!("the record format refused the row: {e}")))?;
        let size = mapped.size();
        if size > self.max_record_bytes {
            return Err(SendError::Poison(format!(
                "record of {size} bytes exceeds kafka.max_record_bytes ({})",
                self.max_record_bytes
            )));
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&mapped.topic).headers(owned_headers(&mapped));
        if let Some(key) = &mapped.key {
            record = record.key(key);
        }
        if let Some(value) = &mapped.value {
            record = record.payload(value);
        }
        if let Some(p) = mapped.partition {
            record = record.partition(p);
        }
        self.enqueue(record, Some(Box::new(event.clone())))
    }

    /// The topic for an aggregate type, from the configured template.
    pub fn topic_for(&mut self, aggregate_type: &str) -> &str {
        if !self.topics.contains_key(aggregate_type) {
            let t = record::topic(&self.topic_template, aggregate_type, &self.source);
            self.topics.insert(aggregate_type.to_string(), t);
        }
        &self.topics[aggregate_type]
    }
}

/// The value of header `name` of `msg` (empty when it has none).
pub(super) fn header(msg: &OwnedMessage, name: &str) -> String {
    msg.headers()
        .and_then(|hs| hs.iter().find(|h| h.key == name))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The event a record was made from (its headers, key and payload).
pub(super) fn event_from_message(msg: &OwnedMessage) -> Event {
    let mut row = OutboxRow::new(
        header(msg, headers::EVENT_ID),
        header(msg, headers::AGGREGATE_TYPE),
        header(msg, headers::AGGREGATE_ID),
        header(msg, headers::EVENT_TYPE),
        msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    );
    // The row's own headers: its trace context and every one the relay does not set.
    row.headers = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .filter(|h| record::is_own_header(h.key))
                .map(|h| {
                    let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_string(), v.into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    Event {
        row,
        commit: CommitMeta {
            lsn: header(msg, headers::COMMIT_LSN),
            time: header(msg, headers::COMMIT_TIME),
        },
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    use super::*;
    use crate::sink::kafka::producer::refusal;
    use crate::sink::Refusal;

    fn event() -> Event {
        let row = OutboxRow::new(
            "e1".into(),
            "user".into(),
            "u1".into(),
            "UserCreated".into(),
            b"{}".to_vec(),
        )
        .with_metadata(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            Some("k=v".into()),
            Some(br#"{"x-tenant": "t1"}"#),
        );
        assert_eq!(row.headers.len(), 3, "{row:?}");
        let commit = CommitMeta {
            lsn: "0/10".into(),
            time: "2026-12-01T00:00:00.000000Z".into(),
        };
        Event { row, commit }
    }

    #[test]
    fn the_record_carries_the_shared_mappings_headers_in_order() {
        let event = event();
        let hs = headers(&event, "users_db");
        let got: Vec<(String, String)> = hs
            .iter()
            .map(|h| {
                let v = String::from_utf8_lossy(h.value.unwrap()).into_owned();
                (h.key.to_string(), v)
            })
            .collect();
        let commit = Commit {
            source: "users_db",
            lsn: "0/10",
            time: "2026-12-01T00:00:00.000000Z",
        };
        let want = row(&event.row).record("{aggregate_type}", &commit).headers;
        assert_eq!(got, want);
    }

    #[test]
    fn a_refused_record_comes_back_as_the_event_it_was_made_from() {
        let Event { row, commit } = event();
        let msg = OwnedMessage::new(
            Some(row.payload.clone()),
            Some(b"u1".to_vec()),
            "t".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            0,
            Some(headers(
                &Event {
                    row: row.clone(),
                    commit: commit.clone(),
                },
                "s",
            )),
        );
        let r = refusal(
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            &msg,
            None,
        );
        let Refusal::Poison { event, reason } = r else {
            panic!("expected poison, got {r:?}")
        };
        assert_eq!(*event, Event { row, commit });
        assert!(reason.contains("too large"), "{reason}");
    }
}
