//! The event envelope every service and relay-cdc agree on, and the outbox insert.
//!
//! A service writes an outbox row with [`insert`] inside the transaction that makes the
//! state change; relay-cdc turns the row into one Kafka record: topic from the aggregate
//! type, key = aggregate id, value = the payload JSON as written, and the headers named
//! in [`headers`]. Consumers read the event id and type from those headers.
//!
//! An event may also carry the W3C trace context of the request that caused it
//! ([`TraceContext`]) and headers of its own ([`NewEvent::with_header`]); the outbox
//! stores them in nullable columns (`traceparent`, `tracestate`, `headers`) and the
//! relay copies them to the record. [`check_headers`] and [`TraceContext::parse`] are
//! the rules both the database's checks and the relay apply.
//!
//! [`record`] is the row → record mapping itself, as plain data: relay-cdc's Kafka sink
//! and the services' tests that publish the way the relay does share it.
//!
//! ## Rows or messages
//!
//! A writer may also hand its events to the relay without a table: as transactional
//! logical decoding messages (`pg_logical_emit_message(true, prefix, envelope)`), which
//! PostgreSQL decodes at commit, in commit order, and drops with a rolled-back
//! transaction. [`Capture`] says which (`table`, the default, or `messages[:<prefix>]`);
//! [`write()`] and [`write_all()`] write either way in the caller's transaction and return
//! the event ids. [`message`] owns the envelope: its byte layout (the contract with
//! the relay and any other writer), [`message::encode`] and the zero-copy
//! [`message::decode`]. An envelope holds exactly what a row could: [`message::encode`]
//! applies the table's checks. [`insert`] and [`insert_all`] stay table-only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod capture;
pub mod message;
pub mod record;

pub use capture::{Capture, CaptureParseError};

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
    /// W3C Trace Context of the request that wrote the event (`version-traceid-parentid-flags`).
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C Trace Context vendor state, when the request carried one.
    pub const TRACESTATE: &str = "tracestate";

    /// Names the relay sets itself: an event's own headers may not use them.
    pub const RESERVED: &[&str] = &[
        EVENT_ID,
        EVENT_TYPE,
        AGGREGATE_TYPE,
        AGGREGATE_ID,
        SOURCE,
        COMMIT_LSN,
        COMMIT_TIME,
        ERROR,
        TRACEPARENT,
        TRACESTATE,
    ];
}

/// The W3C Trace Context an event carries: `traceparent`, and `tracestate` when present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// A context from a request's (or record's) headers, or why it is not one. As the
    /// W3C rules say: `traceparent` is `vv-<32 hex>-<16 hex>-ff` in lower case, version
    /// `ff` and all-zero ids are invalid; `tracestate` is at most 512 printable ASCII
    /// characters. A receiver ignores an invalid context rather than failing.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, String> {
        check_traceparent(traceparent)?;
        if let Some(state) = tracestate {
            check_tracestate(state)?;
        }
        Ok(Self {
            traceparent: traceparent.to_string(),
            tracestate: tracestate.map(str::to_string),
        })
    }

    /// The trace id (32 hex digits) of this context.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }
}

/// Whether `traceparent` is a W3C `traceparent` as [`TraceContext::parse`] reads it:
/// `vv-<32 hex>-<16 hex>-ff` in lower case, not version `ff`, no all-zero id. Allocates
/// nothing unless it fails (the envelope decoder runs it per event).
pub fn check_traceparent(traceparent: &str) -> Result<(), String> {
    let b = traceparent.as_bytes();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let shaped = b.len() == 55
        && [2, 35, 52].iter().all(|&i| b[i] == b'-')
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
        && &b[0..2] != b"ff";
    if !shaped {
        return Err(format!(
            "traceparent {traceparent:?} is not version-traceid-parentid-flags in lower-case hex"
        ));
    }
    let zero = |r: std::ops::Range<usize>| b[r].iter().all(|&c| c == b'0');
    if zero(3..35) || zero(36..52) {
        return Err("traceparent has an all-zero trace or parent id".into());
    }
    Ok(())
}

/// Whether `state` can be a `tracestate`: at most 512 printable ASCII characters.
pub fn check_tracestate(state: &str) -> Result<(), String> {
    if state.len() > 512 || !state.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err("tracestate is longer than 512 characters or not printable ASCII".into());
    }
    Ok(())
}

/// An event's own headers, or why they cannot be Kafka headers: a JSON object whose
/// values are strings and whose names are not [`headers::RESERVED`].
pub fn check_headers(value: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    let serde_json::Value::Object(map) = value else {
        return Err("headers is not a JSON object".into());
    };
    map.iter()
        .map(|(k, v)| {
            if headers::RESERVED.contains(&k.as_str()) {
                return Err(format!("header {k:?} is reserved for the relay"));
            }
            match v {
                serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("header {k:?} is not a string")),
            }
        })
        .collect()
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
    /// The trace context of the request that caused it, carried to the record.
    pub trace: Option<TraceContext>,
    /// Headers of its own for the record (names outside [`headers::RESERVED`]).
    pub headers: BTreeMap<String, String>,
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
            trace: None,
            headers: BTreeMap::new(),
        })
    }

    /// The event with the trace context of the request that caused it.
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// The event with one more header of its own; a reserved name is refused.
    pub fn with_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, String> {
        let name = name.into();
        if headers::RESERVED.contains(&name.as_str()) {
            return Err(format!("header {name:?} is reserved for the relay"));
        }
        self.headers.insert(name, value.into());
        Ok(self)
    }
}

/// A new event id: UUIDv7, so ids sort by creation time.
pub fn new_event_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg(feature = "store")]
pub use store::{insert, insert_all, write, write_all, WriteError};

#[cfg(feature = "store")]
mod store {
    use super::{message, new_event_id, Capture, NewEvent};
    use uuid::Uuid;

    /// Why [`write_all`] wrote nothing.
    #[derive(Debug, thiserror::Error)]
    pub enum WriteError {
        /// An event breaks a rule of the outbox (message mode checks before writing; in
        /// table mode the table's checks refuse it as a [`WriteError::Database`] error).
        #[error("event {index} cannot be written: {source}")]
        Event {
            /// The event's index in the slice given.
            index: usize,
            #[source]
            source: message::EnvelopeError,
        },
        #[error(transparent)]
        Database(#[from] sqlx::Error),
    }

    /// Writes `event` the way `capture` says on `conn` and returns its event id; see
    /// [`write_all`].
    pub async fn write(
        conn: &mut sqlx::PgConnection,
        capture: &Capture,
        event: &NewEvent,
    ) -> Result<Uuid, WriteError> {
        let ids = write_all(conn, capture, std::slice::from_ref(event)).await?;
        Ok(ids[0])
    }

    /// Writes `events` the way `capture` says, in one statement on `conn`, and returns
    /// their event ids in the order given: as outbox rows ([`insert_all`]) or as one
    /// transactional logical decoding message each, with the capture's prefix and the
    /// event's [`message`] envelope as content.
    ///
    /// Either way the events reach the WAL, and so the relay, in the order given, and
    /// commit or roll back with the caller's transaction: pass the connection of the
    /// transaction that makes the state change. Outside a transaction each statement
    /// commits on its own. In message mode an event that breaks a rule of the outbox
    /// fails the call before anything is written.
    pub async fn write_all(
        conn: &mut sqlx::PgConnection,
        capture: &Capture,
        events: &[NewEvent],
    ) -> Result<Vec<Uuid>, WriteError> {
        let prefix = match capture {
            Capture::Table => return Ok(insert_all(conn, events).await?),
            Capture::Messages { prefix } => prefix,
        };
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = events.iter().map(|_| new_event_id()).collect();
        let envelopes = ids
            .iter()
            .zip(events)
            .enumerate()
            .map(|(index, (id, event))| {
                message::encode(*id, event).map_err(|source| WriteError::Event { index, source })
            })
            .collect::<Result<Vec<Vec<u8>>, _>>()?;
        // `with ordinality` + `order by`: messages are emitted (and reach the WAL) in
        // array order, as the table's rows are inserted.
        sqlx::query(
            "select pg_logical_emit_message(true, $1, m) \
             from unnest($2::bytea[]) with ordinality as e (m, n) order by n",
        )
        .bind(prefix)
        .bind(&envelopes)
        .execute(conn)
        .await?;
        Ok(ids)
    }

    /// Writes `event` as a `PENDING` outbox row on `conn` and returns its event id.
    ///
    /// Pass the connection of the transaction that makes the state change: the row
    /// must commit or roll back with it, which is the whole point of the outbox.
    pub async fn insert(
        conn: &mut sqlx::PgConnection,
        event: &NewEvent,
    ) -> Result<Uuid, sqlx::Error> {
        let ids = insert_all(conn, std::slice::from_ref(event)).await?;
        Ok(ids[0])
    }

    /// Writes `events` as `PENDING` outbox rows on `conn` in one statement, in the
    /// order given (so relay-cdc publishes them in that order), and returns their event
    /// ids in the same order. The same rule as [`insert`]: the caller's transaction.
    pub async fn insert_all(
        conn: &mut sqlx::PgConnection,
        events: &[NewEvent],
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        let ids: Vec<Uuid> = events.iter().map(|_| new_event_id()).collect();
        let text = |f: fn(&NewEvent) -> &str| events.iter().map(f).collect::<Vec<_>>();
        let traces = events.iter().map(|e| e.trace.as_ref());
        let traceparents: Vec<Option<&str>> = traces
            .clone()
            .map(|t| Some(t?.traceparent.as_str()))
            .collect();
        let tracestates: Vec<Option<&str>> = traces.map(|t| t?.tracestate.as_deref()).collect();
        let headers: Vec<Option<serde_json::Value>> = events
            .iter()
            .map(|e| {
                (!e.headers.is_empty())
                    .then(|| serde_json::to_value(&e.headers).expect("strings serialise"))
            })
            .collect();
        let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
        // `with ordinality` + `order by`: rows go in (and reach the WAL) in array order.
        sqlx::query(
            "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload, \
             traceparent, tracestate, headers) \
             select id, aggregate_type, aggregate_id, event_type, payload, traceparent, \
             tracestate, headers \
             from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], \
             $6::text[], $7::text[], $8::jsonb[]) with ordinality as e (id, aggregate_type, \
             aggregate_id, event_type, payload, traceparent, tracestate, headers, n) \
             order by n",
        )
        .bind(&ids)
        .bind(text(|e| &e.aggregate_type))
        .bind(text(|e| &e.aggregate_id))
        .bind(text(|e| &e.event_type))
        .bind(&payloads)
        .bind(&traceparents)
        .bind(&tracestates)
        .bind(&headers)
        .execute(conn)
        .await?;
        Ok(ids)
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
        assert_eq!((e.trace, e.headers.len()), (None, 0));
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_traceparent_parses_and_gives_its_trace_id() {
        let t = TraceContext::parse(TP, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn invalid_trace_contexts_are_refused_with_a_reason() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad, None).is_err(), "{bad:?}");
        }
        assert!(TraceContext::parse(TP, Some(&"x".repeat(513))).is_err());
        assert!(TraceContext::parse(TP, Some("a=\u{7}")).is_err());
    }

    #[test]
    fn headers_are_an_object_of_strings_outside_the_reserved_names() {
        let ok = check_headers(&serde_json::json!({"x-tenant": "t1", "b": ""})).unwrap();
        assert_eq!(
            ok,
            [
                ("b".to_string(), String::new()),
                ("x-tenant".into(), "t1".into())
            ]
        );
        for (bad, why) in [
            (serde_json::json!([]), "not a JSON object"),
            (serde_json::json!({"n": 1}), "\"n\" is not a string"),
            (serde_json::json!({"event_id": "x"}), "reserved"),
            (serde_json::json!({"traceparent": TP}), "reserved"),
        ] {
            let e = check_headers(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = NewEvent::new("a", 1, "E", &1).unwrap();
        assert!(e.clone().with_header("source", "x").is_err());
        assert_eq!(e.with_header("x", "y").unwrap().headers.len(), 1);
    }
}
