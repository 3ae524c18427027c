//! The Kafka record relay-cdc makes of an outbox row, as plain data: the one mapping the
//! relay's sink and the tests that stand in for the relay both use.
//!
//! - topic: the relay's `kafka.topic_template` with `{aggregate_type}` and `{source}`
//!   replaced ([`topic`]);
//! - key: the aggregate id, so one aggregate's events keep their order;
//! - value: the payload exactly as written (the JSON text the database returned);
//! - headers: the relay's own first ([`RELAY_HEADERS`]: event id and type, aggregate type
//!   and id, source, commit LSN and time), then the row's own: `traceparent`,
//!   `tracestate` and the entries of its `headers` column ([`own_headers`]).
//!
//! Nothing here knows a Kafka client: the relay copies [`Row::headers`] into its
//! producer's header type, a test into whatever it produces with.

use crate::{check_headers, check_tracestate, headers, TraceContext};

/// The headers the relay sets on every record, in the order it sets them.
pub const RELAY_HEADERS: [&str; 7] = [
    headers::EVENT_ID,
    headers::EVENT_TYPE,
    headers::AGGREGATE_TYPE,
    headers::AGGREGATE_ID,
    headers::SOURCE,
    headers::COMMIT_LSN,
    headers::COMMIT_TIME,
];

/// One outbox row as the relay read it, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    /// The row's `id`: the event id.
    pub id: &'a str,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    /// The `payload` column as the database returned it (JSON text).
    pub payload: &'a [u8],
    /// The row's own headers, as [`own_headers`] made them.
    pub headers: &'a [(String, String)],
}

/// Where the row's transaction committed, and which source database it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit<'a> {
    /// The relay's name for the source database, e.g. `users_db`.
    pub source: &'a str,
    /// The LSN of the transaction's commit record, as `X/Y`.
    pub lsn: &'a str,
    /// The transaction's commit time, RFC 3339 with microseconds, UTC.
    pub time: &'a str,
}

/// A record as owned data: what a test publishes or compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// The topic for `aggregate_type` from the relay's `kafka.topic_template`.
pub fn topic(template: &str, aggregate_type: &str, source: &str) -> String {
    template
        .replace("{aggregate_type}", aggregate_type)
        .replace("{source}", source)
}

impl<'a> Row<'a> {
    /// The record key: the aggregate id.
    pub fn key(&self) -> &'a str {
        self.aggregate_id
    }

    /// The record value: the payload as written.
    pub fn value(&self) -> &'a [u8] {
        self.payload
    }

    /// The record's headers, in order: [`RELAY_HEADERS`], then the row's own.
    pub fn headers<'c>(&self, commit: &Commit<'c>) -> impl Iterator<Item = (&'c str, &'c str)> + 'c
    where
        'a: 'c,
    {
        let relay = [
            self.id,
            self.event_type,
            self.aggregate_type,
            self.aggregate_id,
            commit.source,
            commit.lsn,
            commit.time,
        ];
        RELAY_HEADERS.into_iter().zip(relay).chain(
            self.headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        )
    }

    /// The whole record, owned, its topic from `topic_template`.
    pub fn record(&self, topic_template: &str, commit: &Commit<'_>) -> Record {
        Record {
            topic: topic(topic_template, self.aggregate_type, commit.source),
            key: self.key().to_string(),
            value: self.value().to_vec(),
            headers: self
                .headers(commit)
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        }
    }
}

/// The row's own headers from its `traceparent`, `tracestate` and `headers` (JSON text)
/// columns, in that order, or why they cannot be published as written: the trace
/// context must follow [`TraceContext::parse`], the headers [`check_headers`].
pub fn own_headers(
    traceparent: Option<String>,
    tracestate: Option<String>,
    headers_json: Option<&[u8]>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match (&traceparent, &tracestate) {
        (Some(tp), ts) => {
            TraceContext::parse(tp, ts.as_deref())?;
        }
        (None, Some(ts)) => check_tracestate(ts)?,
        (None, None) => {}
    }
    out.extend(traceparent.map(|v| (headers::TRACEPARENT.to_string(), v)));
    out.extend(tracestate.map(|v| (headers::TRACESTATE.to_string(), v)));
    if let Some(json) = headers_json {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("headers is not JSON: {e}"))?;
        out.extend(check_headers(&value)?);
    }
    Ok(out)
}

/// Whether a record header came from the row rather than the relay: its trace context,
/// and every name the relay does not set. How a record is read back into its row.
pub fn is_own_header(name: &str) -> bool {
    name == headers::TRACEPARENT
        || name == headers::TRACESTATE
        || !headers::RESERVED.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    const COMMIT: Commit<'static> = Commit {
        source: "users_db",
        lsn: "0/16B3748",
        time: "2026-12-01T00:00:00.000000Z",
    };

    fn row<'a>(own: &'a [(String, String)]) -> Row<'a> {
        Row {
            id: "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11",
            aggregate_type: "user",
            aggregate_id: "u1",
            event_type: "UserCreated",
            payload: br#"{"id": "u1"}"#,
            headers: own,
        }
    }

    #[test]
    fn topics_come_from_the_template() {
        assert_eq!(
            topic("outbox.event.{aggregate_type}", "user", "users_db"),
            "outbox.event.user"
        );
        assert_eq!(
            topic("{source}.{aggregate_type}", "transaction", "tx"),
            "tx.transaction"
        );
    }

    #[test]
    fn a_row_becomes_a_record_keyed_by_aggregate_with_the_payload_as_written() {
        let r = row(&[]).record("outbox.event.{aggregate_type}", &COMMIT);
        assert_eq!(r.topic, "outbox.event.user");
        assert_eq!(r.key, "u1");
        assert_eq!(r.value, br#"{"id": "u1"}"#, "not re-serialised");
    }

    #[test]
    fn the_relays_headers_come_first_then_the_rows_own() {
        let own = own_headers(
            Some(TP.into()),
            Some("k=v".into()),
            Some(br#"{"x-tenant": "t1"}"#),
        )
        .unwrap();
        let r = row(&own).record("{aggregate_type}", &COMMIT);
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "event_type",
                "aggregate_type",
                "aggregate_id",
                "source",
                "commit_lsn",
                "commit_time",
                "traceparent",
                "tracestate",
                "x-tenant"
            ]
        );
        let values: Vec<&str> = r.headers.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            values,
            [
                "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11",
                "UserCreated",
                "user",
                "u1",
                "users_db",
                "0/16B3748",
                "2026-12-01T00:00:00.000000Z",
                TP,
                "k=v",
                "t1"
            ]
        );
    }

    #[test]
    fn a_row_without_trace_context_or_headers_carries_only_the_relays() {
        assert_eq!(own_headers(None, None, None).unwrap(), []);
        assert_eq!(row(&[]).headers(&COMMIT).count(), RELAY_HEADERS.len());
    }

    #[test]
    fn invalid_trace_context_or_headers_are_refused_with_a_reason() {
        for (tp, ts, json, why) in [
            (Some("00-nope"), None, None, "traceparent"),
            (None, Some("\u{7}"), None, "tracestate"),
            (Some(TP), None, Some(&b"{"[..]), "not JSON"),
            (Some(TP), None, Some(&br#"{"source": "x"}"#[..]), "reserved"),
            (None, None, Some(&br#"{"n": 1}"#[..]), "not a string"),
        ] {
            let e = own_headers(tp.map(Into::into), ts.map(Into::into), json).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn own_headers_are_told_from_the_relays() {
        for name in RELAY_HEADERS.into_iter().chain([headers::ERROR]) {
            assert!(!is_own_header(name), "{name}");
        }
        for name in [headers::TRACEPARENT, headers::TRACESTATE, "x-tenant"] {
            assert!(is_own_header(name), "{name}");
        }
    }
}
