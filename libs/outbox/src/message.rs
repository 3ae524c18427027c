//! The outbox event as a logical decoding message: one binary envelope per event, which a
//! writer emits with `pg_logical_emit_message(true, prefix, envelope)` in the transaction
//! that makes the state change, instead of inserting an outbox row.
//!
//! PostgreSQL decodes a transactional message at its transaction's commit, in commit
//! order, and never when the transaction rolls back; `pgoutput` passes it on with the
//! option `messages 'true'` (PostgreSQL 14+) as a Message (`M`) carrying the prefix and
//! the content. The relay takes the transactional messages whose prefix is its own
//! ([`DEFAULT_PREFIX`] unless configured) and publishes each as the record an outbox row
//! with the same fields gives ([`crate::record`]).
//!
//! # Byte layout, version 1
//!
//! This is the contract between every writer and the relay. Integers are unsigned and
//! big-endian; a *string* is a `u32` byte length followed by that many bytes of UTF-8.
//!
//! | offset | size | field          | contents |
//! |--------|------|----------------|----------|
//! | 0      | 1    | version        | `0x01` ([`VERSION`]); any other value is refused |
//! | 1      | 1    | flags          | bit 0: a traceparent follows; bit 1: a tracestate follows; bits 2–7 are 0 |
//! | 2      | 16   | event id       | the UUID's 16 bytes in RFC 9562 order (as `Uuid::as_bytes`) |
//! | 18     | 4+n  | aggregate type | string |
//! | …      | 4+n  | aggregate id   | string |
//! | …      | 4+n  | event type     | string |
//! | …      | 4+n  | traceparent    | string, only when flag bit 0 is set |
//! | …      | 4+n  | tracestate     | string, only when flag bit 1 is set |
//! | …      | 4    | header count h | `u32` |
//! | …      | h × (4+n, 4+m) | headers | h pairs of strings: name, value |
//! | …      | 4+n  | payload        | `u32` length, then the payload's JSON text; it ends the envelope |
//!
//! Every byte belongs to a field: bytes after the payload are refused. The payload comes
//! last so that a reader finds it without scanning it and can borrow it as it is.
//!
//! # Rules
//!
//! An envelope carries exactly what an outbox row could (the table's checks in
//! `sql/outbox`), so [`encode`] refuses and [`decode`] reports:
//!
//! - aggregate type: 1–200 characters of `A-Z a-z 0-9 . _ -`;
//! - aggregate id and event type: 1–255 characters;
//! - traceparent: as [`crate::check_traceparent`]; tracestate: as [`crate::check_tracestate`];
//! - header names: none of [`crate::headers::RESERVED`], in strictly increasing byte order
//!   (so no name twice: a row's `headers` is a JSON object);
//! - no string contains U+0000 (PostgreSQL's `text` and `jsonb` cannot hold it).
//!
//! The payload is valid JSON when [`encode`] wrote it (it serialises a
//! `serde_json::Value` that holds no U+0000); [`decode`] does not parse it, since its cost
//! grows with the payload and the relay publishes it as written.
//!
//! [`decode`] never panics and never allocates for an event without headers: every field
//! of a [`MessageEvent`] borrows from the envelope.

use std::fmt;

use uuid::Uuid;

use crate::{check_traceparent, check_tracestate, headers, NewEvent};

/// The prefix the relay takes messages with unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "outbox";

/// The envelope version this build writes and reads: the first byte of every envelope.
pub const VERSION: u8 = 1;

const FLAG_TRACEPARENT: u8 = 1;
const FLAG_TRACESTATE: u8 = 2;

/// One event decoded from an envelope, every field borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent<'a> {
    /// The event id: the record's `event_id` header.
    pub id: Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub event_type: &'a str,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// The event's own headers, names in increasing byte order.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The payload's JSON text, as the writer wrote it.
    pub payload: &'a [u8],
}

impl<'a> MessageEvent<'a> {
    /// The record headers that come from the event rather than the relay, in the order a
    /// row gives them ([`crate::record::own_headers`]): traceparent, tracestate, then the
    /// event's own.
    pub fn own_headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        let trace = [
            self.traceparent.map(|v| (headers::TRACEPARENT, v)),
            self.tracestate.map(|v| (headers::TRACESTATE, v)),
        ];
        trace
            .into_iter()
            .flatten()
            .chain(self.headers.iter().copied())
    }
}

/// A field of the envelope, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Version,
    Flags,
    EventId,
    AggregateType,
    AggregateId,
    EventType,
    Traceparent,
    Tracestate,
    HeaderCount,
    /// The name of the header at this index (from 0).
    HeaderName(u32),
    /// The value of the header at this index (from 0).
    HeaderValue(u32),
    Payload,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Version => f.write_str("version"),
            Field::Flags => f.write_str("flags"),
            Field::EventId => f.write_str("event id"),
            Field::AggregateType => f.write_str("aggregate type"),
            Field::AggregateId => f.write_str("aggregate id"),
            Field::EventType => f.write_str("event type"),
            Field::Traceparent => f.write_str("traceparent"),
            Field::Tracestate => f.write_str("tracestate"),
            Field::HeaderCount => f.write_str("header count"),
            Field::HeaderName(i) => write!(f, "name of header {i}"),
            Field::HeaderValue(i) => write!(f, "value of header {i}"),
            Field::Payload => f.write_str("payload"),
        }
    }
}

/// Why bytes are not an envelope, or an event cannot become one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("unknown envelope version {0} (this build reads version {VERSION})")]
    UnknownVersion(u8),
    #[error("unknown flags {0:#04x} at offset 1 (known: traceparent 0x01, tracestate 0x02)")]
    UnknownFlags(u8),
    #[error("truncated at offset {offset}: {field} needs {needed} bytes, {available} left")]
    Truncated {
        field: Field,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("invalid UTF-8 in {field} at offset {offset}")]
    InvalidUtf8 { field: Field, offset: usize },
    #[error("{count} bytes after the payload at offset {offset}")]
    TrailingBytes { offset: usize, count: usize },
    #[error("{field} is {len} bytes, more than a u32 length can say")]
    TooLong { field: Field, len: usize },
    #[error("{field} is invalid: {reason}")]
    Invalid { field: Field, reason: String },
}

fn invalid(field: Field, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The envelope of `event` with event id `id`, or why the event breaks a rule an outbox
/// row is held to (see the module docs).
pub fn encode(id: Uuid, event: &NewEvent) -> Result<Vec<u8>, EnvelopeError> {
    check_aggregate_type(&event.aggregate_type)?;
    check_text_1_255(&event.aggregate_id, Field::AggregateId)?;
    check_text_1_255(&event.event_type, Field::EventType)?;
    let (traceparent, tracestate) = match &event.trace {
        Some(t) => (Some(t.traceparent.as_str()), t.tracestate.as_deref()),
        None => (None, None),
    };
    if let Some(tp) = traceparent {
        check_traceparent(tp).map_err(|e| invalid(Field::Traceparent, e))?;
    }
    if let Some(ts) = tracestate {
        check_tracestate(ts).map_err(|e| invalid(Field::Tracestate, e))?;
    }
    // A BTreeMap's names are unique and in increasing byte order already.
    for (i, (name, value)) in event.headers.iter().enumerate() {
        let i = u32::try_from(i).map_err(|_| EnvelopeError::TooLong {
            field: Field::HeaderCount,
            len: event.headers.len(),
        })?;
        check_header(name, value, i)?;
    }
    if json_has_nul(&event.payload) {
        return Err(invalid(Field::Payload, "a string or key contains U+0000"));
    }

    let strings = [
        Some(event.aggregate_type.as_str()),
        Some(event.aggregate_id.as_str()),
        Some(event.event_type.as_str()),
        traceparent,
        tracestate,
    ];
    let header_bytes: usize = event
        .headers
        .iter()
        .map(|(n, v)| 8 + n.len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(
        2 + 16
            + strings.iter().flatten().map(|s| 4 + s.len()).sum::<usize>()
            + 4
            + header_bytes
            + 4
            + 64,
    );
    out.push(VERSION);
    out.push(
        if traceparent.is_some() {
            FLAG_TRACEPARENT
        } else {
            0
        } | if tracestate.is_some() {
            FLAG_TRACESTATE
        } else {
            0
        },
    );
    out.extend_from_slice(id.as_bytes());
    let fields = [
        Field::AggregateType,
        Field::AggregateId,
        Field::EventType,
        Field::Traceparent,
        Field::Tracestate,
    ];
    for (s, field) in strings.iter().zip(fields) {
        if let Some(s) = s {
            put_bytes(&mut out, s.as_bytes(), field)?;
        }
    }
    put_len(&mut out, event.headers.len(), Field::HeaderCount)?;
    for (i, (name, value)) in event.headers.iter().enumerate() {
        let i = i as u32; // checked above
        put_bytes(&mut out, name.as_bytes(), Field::HeaderName(i))?;
        put_bytes(&mut out, value.as_bytes(), Field::HeaderValue(i))?;
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut out, &event.payload)
        .map_err(|e| invalid(Field::Payload, e.to_string()))?;
    let len = out.len() - at - 4;
    let len = u32::try_from(len).map_err(|_| EnvelopeError::TooLong {
        field: Field::Payload,
        len,
    })?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// The event in `envelope`, borrowed from it, or what is wrong with it. Never panics.
pub fn decode(envelope: &[u8]) -> Result<MessageEvent<'_>, EnvelopeError> {
    let mut r = Reader {
        buf: envelope,
        pos: 0,
    };
    let version = r.take(1, Field::Version)?[0];
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion(version));
    }
    let flags = r.take(1, Field::Flags)?[0];
    if flags & !(FLAG_TRACEPARENT | FLAG_TRACESTATE) != 0 {
        return Err(EnvelopeError::UnknownFlags(flags));
    }
    let id: [u8; 16] = r
        .take(16, Field::EventId)?
        .try_into()
        .map_err(|_| invalid(Field::EventId, "not 16 bytes"))?;
    let aggregate_type = r.str(Field::AggregateType)?;
    check_aggregate_type(aggregate_type)?;
    let aggregate_id = r.str(Field::AggregateId)?;
    check_text_1_255(aggregate_id, Field::AggregateId)?;
    let event_type = r.str(Field::EventType)?;
    check_text_1_255(event_type, Field::EventType)?;
    let traceparent = if flags & FLAG_TRACEPARENT != 0 {
        let tp = r.str(Field::Traceparent)?;
        check_traceparent(tp).map_err(|e| invalid(Field::Traceparent, e))?;
        Some(tp)
    } else {
        None
    };
    let tracestate = if flags & FLAG_TRACESTATE != 0 {
        let ts = r.str(Field::Tracestate)?;
        check_tracestate(ts).map_err(|e| invalid(Field::Tracestate, e))?;
        Some(ts)
    } else {
        None
    };
    let count = r.u32(Field::HeaderCount)?;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if count > 0 {
        // Each header takes at least 8 bytes: a count beyond that is a truncated envelope,
        // and must not size an allocation.
        let available = r.remaining();
        let needed = (count as usize).saturating_mul(8);
        if needed > available {
            return Err(EnvelopeError::Truncated {
                field: Field::HeaderName(0),
                offset: r.pos,
                needed,
                available,
            });
        }
        headers.reserve_exact(count as usize);
        for i in 0..count {
            let name = r.str(Field::HeaderName(i))?;
            let value = r.str(Field::HeaderValue(i))?;
            check_header(name, value, i)?;
            if let Some((previous, _)) = headers.last() {
                if name.as_bytes() <= previous.as_bytes() {
                    return Err(invalid(
                        Field::HeaderName(i),
                        format!("{name:?} does not come after {previous:?} in byte order"),
                    ));
                }
            }
            headers.push((name, value));
        }
    }
    let payload = r.bytes(Field::Payload)?;
    if r.remaining() > 0 {
        return Err(EnvelopeError::TrailingBytes {
            offset: r.pos,
            count: r.remaining(),
        });
    }
    Ok(MessageEvent {
        id: Uuid::from_bytes(id),
        aggregate_type,
        aggregate_id,
        event_type,
        traceparent,
        tracestate,
        headers,
        payload,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: Field) -> Result<&'a [u8], EnvelopeError> {
        let available = self.remaining();
        if n > available {
            return Err(EnvelopeError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn u32(&mut self, field: Field) -> Result<u32, EnvelopeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self, field: Field) -> Result<&'a [u8], EnvelopeError> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }

    fn str(&mut self, field: Field) -> Result<&'a str, EnvelopeError> {
        let start = self.pos + 4;
        let bytes = self.bytes(field)?;
        std::str::from_utf8(bytes).map_err(|e| EnvelopeError::InvalidUtf8 {
            field,
            offset: start + e.valid_up_to(),
        })
    }
}

fn put_len(out: &mut Vec<u8>, len: usize, field: Field) -> Result<(), EnvelopeError> {
    let n = u32::try_from(len).map_err(|_| EnvelopeError::TooLong { field, len })?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8], field: Field) -> Result<(), EnvelopeError> {
    put_len(out, bytes.len(), field)?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// The table's `aggregate_type ~ '^[A-Za-z0-9._-]{1,200}$'`.
fn check_aggregate_type(s: &str) -> Result<(), EnvelopeError> {
    let ok = (1..=200).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            Field::AggregateType,
            format!("{s:?} is not 1-200 characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// The table's `length(x) between 1 and 255` (characters), and `text` holds no U+0000.
fn check_text_1_255(s: &str, field: Field) -> Result<(), EnvelopeError> {
    // A character is 1-4 bytes: 255 bytes are at most 255 characters.
    if s.is_empty() || (s.len() > 255 && s.chars().count() > 255) {
        return Err(invalid(field, "not 1-255 characters"));
    }
    check_no_nul(s, field)
}

fn check_no_nul(s: &str, field: Field) -> Result<(), EnvelopeError> {
    if s.as_bytes().contains(&0) {
        return Err(invalid(field, "contains U+0000"));
    }
    Ok(())
}

/// What the table's `headers` check and `jsonb` allow of one entry.
fn check_header(name: &str, value: &str, i: u32) -> Result<(), EnvelopeError> {
    if headers::RESERVED.contains(&name) {
        return Err(invalid(
            Field::HeaderName(i),
            format!("{name:?} is reserved for the relay"),
        ));
    }
    check_no_nul(name, Field::HeaderName(i))?;
    check_no_nul(value, Field::HeaderValue(i))
}

/// Whether a string or key anywhere in `v` holds U+0000, which `jsonb` refuses.
fn json_has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(json_has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::TraceContext;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn event() -> NewEvent {
        NewEvent::new(
            "user",
            "u-1",
            "UserCreated",
            &serde_json::json!({"id": "u-1"}),
        )
        .unwrap()
        .with_trace(Some(
            TraceContext::parse(TP, Some("congo=t61rcWkgMzE")).unwrap(),
        ))
        .with_header("x-tenant", "t1")
        .unwrap()
        .with_header("x-a", "")
        .unwrap()
    }

    fn id() -> Uuid {
        Uuid::parse_str("0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11").unwrap()
    }

    /// Asserts that `bytes` decode to `event` with `id`, the payload as JSON equal.
    fn assert_round_trip(id: Uuid, event: &NewEvent, bytes: &[u8]) {
        let m = decode(bytes).unwrap();
        assert_eq!(m.id, id);
        assert_eq!(m.aggregate_type, event.aggregate_type);
        assert_eq!(m.aggregate_id, event.aggregate_id);
        assert_eq!(m.event_type, event.event_type);
        let trace = event.trace.as_ref();
        assert_eq!(m.traceparent, trace.map(|t| t.traceparent.as_str()));
        assert_eq!(m.tracestate, trace.and_then(|t| t.tracestate.as_deref()));
        let headers: Vec<(&str, &str)> = event
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(m.headers, headers);
        assert_eq!(m.payload, serde_json::to_vec(&event.payload).unwrap());
        let payload: serde_json::Value = serde_json::from_slice(m.payload).unwrap();
        assert_eq!(payload, event.payload);
    }

    #[test]
    fn an_event_round_trips_with_trace_context_and_headers() {
        let e = event();
        let bytes = encode(id(), &e).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(bytes[1], FLAG_TRACEPARENT | FLAG_TRACESTATE);
        assert_eq!(&bytes[2..18], id().as_bytes());
        assert_round_trip(id(), &e, &bytes);
    }

    #[test]
    fn unicode_no_trace_no_headers_and_a_large_payload_round_trip() {
        let unicode = NewEvent::new(
            "order.line_item-v2",
            "Zürich/東京/🚀",
            "Commande créée ✓",
            &serde_json::json!({"name": "Ωμέγα 😀", "key \u{1F600}": [1, 2.5, null, true]}),
        )
        .unwrap()
        .with_header("x-ünïcode", "värde ☃")
        .unwrap();
        let bare = NewEvent::new("a", "1", "E", &serde_json::json!(null)).unwrap();
        let large = NewEvent::new("blob", "b", "Big", &"x".repeat(1 << 20)).unwrap();
        let state_only = NewEvent {
            trace: Some(TraceContext {
                traceparent: TP.into(),
                tracestate: None,
            }),
            ..bare.clone()
        };
        for e in [unicode, bare, large, state_only] {
            let bytes = encode(id(), &e).unwrap();
            assert_round_trip(id(), &e, &bytes);
        }
    }

    #[test]
    fn the_payload_ends_the_envelope_and_is_borrowed_from_it() {
        let bytes = encode(id(), &event()).unwrap();
        let m = decode(&bytes).unwrap();
        let end = bytes.as_ptr_range().end;
        assert_eq!(m.payload.as_ptr_range().end, end);
        assert_eq!(m.payload, br#"{"id":"u-1"}"#);
    }

    #[test]
    fn own_headers_come_in_a_rows_order() {
        let bytes = encode(id(), &event()).unwrap();
        let own: Vec<_> = decode(&bytes).unwrap().own_headers().collect();
        assert_eq!(
            own,
            [
                ("traceparent", TP),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-a", ""),
                ("x-tenant", "t1")
            ]
        );
    }

    #[test]
    fn encode_refuses_what_an_outbox_row_could_not_hold() {
        let e = event();
        let cases: Vec<(NewEvent, &str)> = vec![
            (
                NewEvent {
                    aggregate_type: "has space".into(),
                    ..e.clone()
                },
                "aggregate type is invalid",
            ),
            (
                NewEvent {
                    aggregate_type: "a".repeat(201),
                    ..e.clone()
                },
                "aggregate type is invalid",
            ),
            (
                NewEvent {
                    aggregate_id: String::new(),
                    ..e.clone()
                },
                "aggregate id is invalid",
            ),
            (
                NewEvent {
                    event_type: "é".repeat(256),
                    ..e.clone()
                },
                "event type is invalid: not 1-255 characters",
            ),
            (
                NewEvent {
                    event_type: "a\0b".into(),
                    ..e.clone()
                },
                "U+0000",
            ),
            (
                NewEvent {
                    trace: Some(TraceContext {
                        traceparent: "00-nope".into(),
                        tracestate: None,
                    }),
                    ..e.clone()
                },
                "traceparent is invalid",
            ),
            (
                NewEvent {
                    trace: Some(TraceContext {
                        traceparent: TP.into(),
                        tracestate: Some("\u{7}".into()),
                    }),
                    ..e.clone()
                },
                "tracestate is invalid",
            ),
            (
                NewEvent {
                    headers: BTreeMap::from([("source".into(), "x".into())]),
                    ..e.clone()
                },
                "name of header 0 is invalid: \"source\" is reserved",
            ),
            (
                NewEvent {
                    headers: BTreeMap::from([("a".into(), "x\0".into())]),
                    ..e.clone()
                },
                "value of header 0 is invalid",
            ),
            (
                NewEvent {
                    payload: serde_json::json!({"k": ["\u{0}"]}),
                    ..e.clone()
                },
                "payload is invalid",
            ),
        ];
        for (bad, why) in cases {
            let err = encode(id(), &bad).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
        // 255 characters of up to 4 bytes are fine.
        let wide = NewEvent {
            event_type: "😀".repeat(255),
            ..e
        };
        assert_round_trip(id(), &wide, &encode(id(), &wide).unwrap());
    }

    #[test]
    fn decode_errors_say_what_is_wrong_and_where() {
        let good = encode(id(), &event()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![],
                "truncated at offset 0: version needs 1 bytes, 0 left",
            ),
            (vec![2], "unknown envelope version 2"),
            (vec![1, 4], "unknown flags 0x04"),
            (
                good[..20].to_vec(),
                "truncated at offset 18: aggregate type needs 4 bytes, 2 left",
            ),
            (
                [&good[..18], &[0, 0, 0, 9, b'u']].concat(),
                "truncated at offset 22: aggregate type needs 9 bytes, 1 left",
            ),
            (
                [&good[..18], &[0, 0, 0, 2, b'u', 0xff]].concat(),
                "invalid UTF-8 in aggregate type at offset 23",
            ),
            ([&good[..], b"!"].concat(), "1 bytes after the payload"),
        ];
        for (bytes, why) in cases {
            let err = decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
    }

    /// An envelope of hand-written parts, for what `encode` never writes.
    fn raw(flags: u8, strings: &[&str], headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut out = vec![VERSION, flags];
        out.extend_from_slice(id().as_bytes());
        let mut put = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        for s in strings {
            put(s.as_bytes());
        }
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (n, v) in headers {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decode_holds_foreign_writers_to_the_rows_rules() {
        let base = ["user", "u1", "E"];
        assert!(decode(&raw(0, &base, &[("a", "1"), ("b", "2")], b"{}")).is_ok());
        for (bytes, why) in [
            (
                raw(0, &base, &[("b", "1"), ("a", "2")], b"{}"),
                "name of header 1 is invalid: \"a\" does not come after \"b\"",
            ),
            (
                raw(0, &base, &[("a", "1"), ("a", "2")], b"{}"),
                "does not come after",
            ),
            (
                raw(0, &base, &[("event_id", "x")], b"{}"),
                "reserved for the relay",
            ),
            (
                raw(0, &["no/slash", "u1", "E"], &[], b"{}"),
                "aggregate type",
            ),
            (raw(0, &["user", "", "E"], &[], b"{}"), "aggregate id"),
            (
                raw(FLAG_TRACEPARENT, &["user", "u1", "E", "00-x"], &[], b"{}"),
                "traceparent is invalid",
            ),
            (
                raw(FLAG_TRACESTATE, &["user", "u1", "E", "\u{7f}"], &[], b"{}"),
                "tracestate is invalid",
            ),
        ] {
            let err = decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
    }

    #[test]
    fn a_huge_header_count_is_truncation_not_an_allocation() {
        let mut bytes = raw(0, &["user", "u1", "E"], &[], b"{}");
        let at = 18 + 8 + 6 + 5;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = decode(&bytes).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Truncated { field: Field::HeaderName(0), offset, .. } if offset == at + 4),
            "{err}"
        );
    }

    /// SplitMix64: a small deterministic generator, so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn no_truncation_or_byte_flip_of_a_valid_envelope_panics() {
        let large = NewEvent::new("blob", "b", "Big", &"y".repeat(1 << 20)).unwrap();
        let plain = NewEvent::new("a", "1", "E", &serde_json::json!([])).unwrap();
        let envelopes: Vec<Vec<u8>> = [event(), plain, large]
            .iter()
            .map(|e| encode(id(), e).unwrap())
            .collect();
        let mut rng = Rng(0x5eed);
        for bytes in &envelopes {
            // Every strict prefix is truncated, and says so at or before its end.
            let cuts: Vec<usize> = if bytes.len() < 4096 {
                (0..bytes.len()).collect()
            } else {
                (0..300)
                    .chain((0..200).map(|_| rng.below(bytes.len())))
                    .collect()
            };
            for cut in cuts {
                match decode(&bytes[..cut]) {
                    Err(EnvelopeError::Truncated {
                        offset,
                        needed,
                        available,
                        ..
                    }) => {
                        assert!(offset <= cut && offset + available == cut && needed > available);
                    }
                    other => panic!("prefix of {cut} bytes: {other:?}"),
                }
            }
            // Flipped, overwritten, inserted and removed bytes: an error or an event, never a panic.
            // The large envelope's payload is 1 MiB: aim most changes at its first bytes.
            let span = bytes.len().min(200);
            for round in 0..20_000 {
                let mut b = bytes.clone();
                for _ in 0..1 + rng.below(3) {
                    let reach = if round % 4 == 0 {
                        b.len()
                    } else {
                        span.min(b.len())
                    };
                    let at = rng.below(reach);
                    match rng.below(4) {
                        0 => b[at] ^= 1 << rng.below(8),
                        1 => b[at] = rng.next() as u8,
                        2 => b.insert(at, rng.next() as u8),
                        _ => {
                            b.remove(at);
                        }
                    }
                }
                if let Ok(m) = decode(&b) {
                    assert_eq!(m.payload.as_ptr_range().end, b.as_ptr_range().end);
                }
                if bytes.len() > 4096 && round == 2_000 {
                    break; // copying 1 MiB per round: fewer rounds
                }
            }
        }
        // Random bytes, starting with the version byte half the time.
        for _ in 0..50_000 {
            let mut b: Vec<u8> = (0..rng.below(80)).map(|_| rng.next() as u8).collect();
            if !b.is_empty() && rng.below(2) == 0 {
                b[0] = VERSION;
            }
            let _ = decode(&b);
        }
    }
}
