//! The event envelope every service and relay-cdc agree on, and the outbox insert.
//!
//! A service writes an outbox row with [`insert`] inside the transaction that makes the
//! state change; relay-cdc turns the row into one Kafka record: topic from the aggregate
//! type, key = aggregate id, value = the payload JSON as written, and the headers named
//! in [`headers`]. Consumers read the event id and type from those headers.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Kafka header names carried by every record relay-cdc publishes.
pub mod headers {
    /// The outbox row's id: the event id, identical on every re-send of the event.
    pub const EVENT_ID: &str = "event_id";
    /// The outbox row's `event_type`, e.g. `UserCreated`.
    pub const EVENT_TYPE: &str = "event_type";
    /// The outbox row's `aggregate_type`, e.g. `user`.
    pub const AGGREGATE_TYPE: &str = "aggregate_type";
    /// The outbox row's `aggregate_id` (also the record key).
    pub const AGGREGATE_ID: &str = "aggregate_id";
    /// The relay's name for the source database, e.g. `users_db`.
    pub const SOURCE: &str = "source";
    /// The LSN of the source transaction's commit record, as `X/Y`.
    pub const COMMIT_LSN: &str = "commit_lsn";
    /// The source transaction's commit time, RFC 3339 with microseconds, UTC.
    pub const COMMIT_TIME: &str = "commit_time";
    /// On dead-letter records only: why the record could not be published.
    pub const ERROR: &str = "error";
}

/// The name of the insert-only publication each database's migration creates.
pub const PUBLICATION: &str = "outbox_pub";

/// An event to be written to the outbox in the caller's transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// What kind of thing changed; decides the Kafka topic (`outbox.event.<aggregate_type>`).
    pub aggregate_type: String,
    /// Which thing changed; the Kafka key, so one aggregate's events keep their order.
    pub aggregate_id: String,
    /// What happened, e.g. `UserCreated`.
    pub event_type: String,
    /// The event body, published as written. Never put secrets here.
    pub payload: serde_json::Value,
}

impl NewEvent {
    /// An event for `aggregate_type`/`aggregate_id` with a serialisable payload.
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl ToString,
        event_type: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.to_string(),
            event_type: event_type.into(),
            payload: serde_json::to_value(payload)?,
        })
    }
}

/// A new event id: UUIDv7, so ids sort by creation time.
pub fn new_event_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg(feature = "store")]
pub use store::insert;

#[cfg(feature = "store")]
mod store {
    use super::{new_event_id, NewEvent};
    use uuid::Uuid;

    /// Writes `event` as a `PENDING` outbox row on `conn` and returns its event id.
    ///
    /// Pass the connection of the transaction that makes the state change: the row
    /// must commit or roll back with it, which is the whole point of the outbox.
    pub async fn insert(
        conn: &mut sqlx::PgConnection,
        event: &NewEvent,
    ) -> Result<Uuid, sqlx::Error> {
        let id = new_event_id();
        sqlx::query(
            "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload) \
             values ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(&event.event_type)
        .bind(&event.payload)
        .execute(conn)
        .await?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_version_7_and_increase() {
        let a = new_event_id();
        let b = new_event_id();
        assert_eq!(a.get_version_num(), 7);
        assert!(b > a);
    }

    #[test]
    fn new_event_serialises_the_payload() {
        #[derive(Serialize)]
        struct Body {
            id: u32,
        }
        let e = NewEvent::new("user", 7, "UserCreated", &Body { id: 7 }).unwrap();
        assert_eq!(e.aggregate_id, "7");
        assert_eq!(e.payload, serde_json::json!({"id": 7}));
    }
}
