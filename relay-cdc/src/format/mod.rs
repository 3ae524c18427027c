//! Record formats: how one outbox event becomes one Kafka record, as pure functions with
//! no Kafka client in sight (the sink copies a [`KafkaRecord`] into librdkafka's types).
//!
//! - `native`: the relay's own mapping ([`outbox::record`]), unchanged;
//! - `debezium` ([`debezium`]): what Debezium's `io.debezium.transforms.outbox.EventRouter`
//!   emits, through the converters it is run with (String, or JSON without schemas);
//! - `cloudevents` ([`cloudevents`]): the CloudEvents Kafka protocol binding, binary or
//!   structured (JSON event format).
//!
//! The input is an [`OutboxEvent`]: the decoded row by role (id, aggregate type and id,
//! event type, payload and its column type, a time) plus any further columns by name, so
//! that a table whose columns are named otherwise (a Debezium-shaped table) maps onto the
//! same roles. Which column name plays which role is a [`TableColumns`].
//!
//! Invariant: a format never drops an event silently. What it cannot map (a missing
//! column, a value of the wrong type) is a [`FormatError`], which the sink reports as
//! poison for that row.

pub mod cloudevents;
pub mod connect_json;
pub mod debezium;

use thiserror::Error;

pub use crate::pgoutput::Cell;

pub use self::cloudevents::{CloudEvents, CloudEventsMode};
pub use self::debezium::EventRouter;

/// The SQL type of the payload column, which decides how a format carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadType {
    Jsonb,
    Json,
    Text,
    Bytea,
}

impl PayloadType {
    /// Whether the payload is JSON text (json, jsonb).
    pub fn is_json(self) -> bool {
        matches!(self, Self::Jsonb | Self::Json)
    }
}

/// One outbox event as a format reads it, borrowed from the decoded row.
#[derive(Debug, Clone, Copy)]
pub struct OutboxEvent<'a> {
    pub id: &'a str,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    /// The payload column as PostgreSQL's text output gave it (`None`: SQL null).
    pub payload: Option<&'a [u8]>,
    pub payload_type: PayloadType,
    /// When the event happened, RFC 3339 (today: its transaction's commit time, UTC, µs).
    pub time: &'a str,
    /// The relay's name for the source database.
    pub source: &'a str,
    /// The row's own headers (trace context, its `headers` column), checked.
    pub headers: &'a [(String, String)],
    /// Further columns by name (the timestamp and extra columns of the mapping).
    pub columns: &'a [(String, Cell)],
}

/// A Kafka record as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub topic: String,
    /// `None`: the producer's partitioner chooses from the key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl KafkaRecord {
    /// Bytes of key, value and headers: what `kafka.max_record_bytes` bounds.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + headers
    }
}

/// Why an event cannot be mapped: it is poison for this format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// Which column name plays which role in the outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumns {
    pub id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: String,
    /// The event's time, when a column gives it.
    pub timestamp: Option<String>,
    /// Further columns a format may name (`[sources.columns] extra`).
    pub others: Vec<String>,
}

impl TableColumns {
    /// The relay's outbox table (`sql/outbox/0001_outbox.sql`), as the decoder reads it.
    pub fn relay_outbox() -> Self {
        Self {
            id: "id".into(),
            aggregate_type: "aggregate_type".into(),
            aggregate_id: "aggregate_id".into(),
            event_type: "event_type".into(),
            payload: "payload".into(),
            timestamp: None,
            others: Vec::new(),
        }
    }

    /// The column named `name`, if the table has it.
    pub fn field(&self, name: &str) -> Option<Field> {
        let roles = [
            (&self.id, Field::Id),
            (&self.aggregate_type, Field::AggregateType),
            (&self.aggregate_id, Field::AggregateId),
            (&self.event_type, Field::EventType),
            (&self.payload, Field::Payload),
        ];
        roles
            .into_iter()
            .find(|(column, _)| column.as_str() == name)
            .map(|(_, f)| f)
            .or_else(|| {
                self.timestamp
                    .iter()
                    .chain(&self.others)
                    .any(|c| c == name)
                    .then(|| Field::Other(name.to_string()))
            })
    }

    /// The column names, for error messages.
    pub fn names(&self) -> Vec<&str> {
        [
            &self.id,
            &self.aggregate_type,
            &self.aggregate_id,
            &self.event_type,
            &self.payload,
        ]
        .into_iter()
        .chain(&self.timestamp)
        .chain(&self.others)
        .map(String::as_str)
        .collect()
    }
}

/// A column by its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Id,
    AggregateType,
    AggregateId,
    EventType,
    Payload,
    Other(String),
}

/// A column's value in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Text(&'a str),
    Int(i64),
    /// The payload column.
    Payload(Option<&'a [u8]>, PayloadType),
}

impl<'a> OutboxEvent<'a> {
    /// The value of `field`; an error when the event has no such column.
    pub fn get(&self, field: &Field) -> Result<Value<'a>, FormatError> {
        Ok(match field {
            Field::Id => Value::Text(self.id),
            Field::AggregateType => Value::Text(self.aggregate_type),
            Field::AggregateId => Value::Text(self.aggregate_id),
            Field::EventType => Value::Text(self.event_type),
            Field::Payload => Value::Payload(self.payload, self.payload_type),
            Field::Other(name) => match self.columns.iter().find(|(n, _)| n == name) {
                Some((_, Cell::Null)) => Value::Null,
                Some((_, Cell::Text(t))) => Value::Text(t),
                Some((_, Cell::Int(i))) => Value::Int(*i),
                None => return Err(FormatError(format!("the row has no column {name}"))),
            },
        })
    }
}

/// The record format of a source, with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordFormat {
    /// The relay's own records: the mapping of [`outbox::record`], which the sink applies
    /// to borrowed data itself (byte for byte what it always sent).
    Native,
    Debezium(EventRouter),
    CloudEvents(CloudEvents),
}

impl RecordFormat {
    /// The topic of `event`'s record (what the sink prepares before sending).
    pub fn topic(
        &self,
        event: &OutboxEvent<'_>,
        topic_template: &str,
    ) -> Result<String, FormatError> {
        match self {
            Self::Native | Self::CloudEvents(_) => Ok(outbox::record::topic(
                topic_template,
                event.aggregate_type,
                event.source,
            )),
            Self::Debezium(router) => router.topic(event),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub const ID: &str = "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11";
    pub const TIME: &str = "2026-12-01T08:00:00.123456Z";

    /// An event of the relay's table with `payload` (jsonb text).
    pub fn event<'a>(payload: &'a [u8], headers: &'a [(String, String)]) -> OutboxEvent<'a> {
        OutboxEvent {
            id: ID,
            aggregate_type: "order",
            aggregate_id: "o-1",
            event_type: "OrderCreated",
            payload: Some(payload),
            payload_type: PayloadType::Jsonb,
            time: TIME,
            source: "orders_db",
            headers,
            columns: &[],
        }
    }

    /// The record's headers as text, `None` values as "<null>".
    pub fn headers(r: &KafkaRecord) -> Vec<(String, String)> {
        r.headers
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_ref()
                    .map(|v| String::from_utf8(v.clone()).unwrap())
                    .unwrap_or_else(|| "<null>".into());
                (k.clone(), v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn columns_are_found_by_name_whatever_role_they_play() {
        let t = TableColumns::relay_outbox();
        assert_eq!(t.field("aggregate_type"), Some(Field::AggregateType));
        assert_eq!(t.field("aggregatetype"), None);
        let debezium_shaped = TableColumns {
            aggregate_type: "aggregatetype".into(),
            aggregate_id: "aggregateid".into(),
            event_type: "type".into(),
            others: vec!["partition_no".into()],
            ..TableColumns::relay_outbox()
        };
        assert_eq!(debezium_shaped.field("type"), Some(Field::EventType));
        assert_eq!(
            debezium_shaped.field("partition_no"),
            Some(Field::Other("partition_no".into()))
        );
        let e = event(b"{}", &[]);
        assert!(e.get(&Field::Other("partition_no".into())).is_err());
    }
}
