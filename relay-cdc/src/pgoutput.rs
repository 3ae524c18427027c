//! Decoding of the pgoutput (protocol version 1) messages that pgwire-replication hands
//! over as raw bytes: Relation and Insert. Begin, Commit and logical messages arrive
//! already typed; Update, Delete, Truncate, Type and Origin are recognised and skipped
//! (the publication is insert-only, so they do not occur in practice).
//!
//! Columns are mapped by name through the latest Relation message for a relation id,
//! so `ALTER TABLE outbox ADD COLUMN ...` mid-stream keeps working: PostgreSQL sends a
//! fresh Relation before the first change that uses the new shape.

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("unterminated string at offset {0}")]
    UnterminatedString(usize),
    #[error("invalid utf-8 in {0}")]
    Utf8(&'static str),
    #[error("unknown tuple column kind {0:#04x}")]
    ColumnKind(u8),
    #[error("insert for relation {0} that no Relation message described")]
    UnknownRelation(u32),
    #[error("insert has {got} columns, relation {relation} has {want}")]
    ColumnCount {
        relation: u32,
        got: usize,
        want: usize,
    },
    #[error("expected a new tuple ('N') in insert, got {0:#04x}")]
    TupleTag(u8),
    #[error("empty message")]
    Empty,
}

/// A table as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// One column value of a tuple, in pgoutput's text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// An unchanged TOASTed value (only in updates; never in inserts).
    Unchanged,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// What one XLogData payload carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Relation(Relation),
    Insert {
        relation: u32,
        values: Vec<Value>,
    },
    /// A message kind the relay has no use for (update, delete, truncate, type, origin).
    Other(u8),
}

/// Decodes one pgoutput message.
pub fn decode(data: &[u8]) -> Result<Change, DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    let mut r = Reader { buf: rest, pos: 1 };
    match tag {
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let _replica_identity = r.u8()?;
            let n = r.u16()? as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let _flags = r.u8()?;
                let name = r.cstr("column name")?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push(Column { name, type_oid });
            }
            Ok(Change::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            }))
        }
        b'I' => {
            let relation = r.u32()?;
            let t = r.u8()?;
            if t != b'N' {
                return Err(DecodeError::TupleTag(t));
            }
            let values = r.tuple()?;
            Ok(Change::Insert { relation, values })
        }
        other => Ok(Change::Other(other)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        self.pos += n;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString(self.pos))?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::Utf8(what))?;
        let s = s.to_string();
        self.take(end + 1)?;
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.u16()? as usize;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                kind @ (b't' | b'b') => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?.to_vec();
                    if kind == b't' {
                        Value::Text(bytes)
                    } else {
                        Value::Binary(bytes)
                    }
                }
                other => return Err(DecodeError::ColumnKind(other)),
            });
        }
        Ok(values)
    }
}

/// The outbox columns the relay reads, located by name in the current Relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutboxColumns {
    id: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    event_type: usize,
    payload: usize,
    /// Optional columns (migration 0005): absent in older tables.
    traceparent: Option<usize>,
    tracestate: Option<usize>,
    headers: Option<usize>,
    width: usize,
}

/// One inserted outbox row, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    /// Headers the row carries besides the relay's own: `traceparent` and `tracestate`
    /// from their columns, then the entries of the `headers` column, checked.
    pub headers: Vec<(String, String)>,
    /// Why the row's trace context or headers cannot be published as written, if they
    /// break the rules of [`outbox::check_headers`] and [`outbox::TraceContext`]: the
    /// row is poison (never sent without them).
    pub unsendable: Option<String>,
}

impl OutboxRow {
    /// A row without trace context or headers of its own.
    pub fn new(
        id: String,
        aggregate_type: String,
        aggregate_id: String,
        event_type: String,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            id,
            aggregate_type,
            aggregate_id,
            event_type,
            payload,
            headers: Vec::new(),
            unsendable: None,
        }
    }

    /// Adds the row's `traceparent`, `tracestate` and `headers` (JSON text) columns.
    pub fn with_metadata(
        mut self,
        traceparent: Option<String>,
        tracestate: Option<String>,
        headers: Option<&[u8]>,
    ) -> Self {
        let checked = outbox::record::own_headers(traceparent, tracestate, headers);
        match checked {
            Ok(h) => self.headers = h,
            Err(why) => {
                self.unsendable = Some(format!("outbox row's trace context or headers: {why}"))
            }
        }
        self
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RowError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("relation {schema}.{table} lacks column {column}")]
    MissingColumn {
        schema: String,
        table: String,
        column: &'static str,
    },
    #[error("column {0} is null")]
    Null(&'static str),
    #[error("column {0} is not valid utf-8 text")]
    NotText(&'static str),
}

/// Keeps the Relation messages seen on a stream and turns Inserts into outbox rows.
#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, (Relation, Result<OutboxColumns, RowError>)>,
}

impl RelationCache {
    /// Remembers a relation, replacing an earlier shape for the same id.
    pub fn learn(&mut self, rel: Relation) {
        let cols = locate(&rel);
        self.relations.insert(rel.id, (rel, cols));
    }

    /// The relation an id refers to.
    pub fn relation(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id).map(|(r, _)| r)
    }

    /// Maps an insert's values to an outbox row by column name.
    pub fn outbox_row(&self, relation: u32, values: Vec<Value>) -> Result<OutboxRow, RowError> {
        let (rel, cols) = self
            .relations
            .get(&relation)
            .ok_or(DecodeError::UnknownRelation(relation))?;
        let cols = cols.as_ref().map_err(Clone::clone)?;
        if values.len() != cols.width {
            return Err(DecodeError::ColumnCount {
                relation,
                got: values.len(),
                want: rel.columns.len(),
            }
            .into());
        }
        let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
        let mut take = |i: usize, name: &'static str| -> Result<Vec<u8>, RowError> {
            match values[i].take() {
                Some(Value::Text(b)) | Some(Value::Binary(b)) => Ok(b),
                _ => Err(RowError::Null(name)),
            }
        };
        let text = |b: Vec<u8>, name: &'static str| {
            String::from_utf8(b).map_err(|_| RowError::NotText(name))
        };
        let row = OutboxRow::new(
            text(take(cols.id, "id")?, "id")?,
            text(
                take(cols.aggregate_type, "aggregate_type")?,
                "aggregate_type",
            )?,
            text(take(cols.aggregate_id, "aggregate_id")?, "aggregate_id")?,
            text(take(cols.event_type, "event_type")?, "event_type")?,
            take(cols.payload, "payload")?,
        );
        // Optional columns: absent from the table, or null, is none.
        let mut optional = |i: Option<usize>| match i.and_then(|i| values[i].take()) {
            Some(Value::Text(b)) | Some(Value::Binary(b)) => Some(b),
            _ => None,
        };
        let (traceparent, tracestate, headers) = (
            optional(cols.traceparent),
            optional(cols.tracestate),
            optional(cols.headers),
        );
        if traceparent.is_none() && tracestate.is_none() && headers.is_none() {
            return Ok(row);
        }
        Ok(row.with_metadata(
            traceparent.map(|b| text(b, "traceparent")).transpose()?,
            tracestate.map(|b| text(b, "tracestate")).transpose()?,
            headers.as_deref(),
        ))
    }
}

fn locate(rel: &Relation) -> Result<OutboxColumns, RowError> {
    let find = |column: &'static str| {
        rel.columns
            .iter()
            .position(|c| c.name == column)
            .ok_or_else(|| RowError::MissingColumn {
                schema: rel.namespace.clone(),
                table: rel.name.clone(),
                column,
            })
    };
    Ok(OutboxColumns {
        id: find("id")?,
        aggregate_type: find("aggregate_type")?,
        aggregate_id: find("aggregate_id")?,
        event_type: find("event_type")?,
        payload: find("payload")?,
        traceparent: find("traceparent").ok(),
        tracestate: find("tracestate").ok(),
        headers: find("headers").ok(),
        width: rel.columns.len(),
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Byte-exact pgoutput v1 messages, built the way the walsender writes them.

    pub fn relation(id: u32, columns: &[&str]) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(id.to_be_bytes());
        b.extend(b"public\0outbox\0");
        b.push(b'd');
        b.extend((columns.len() as u16).to_be_bytes());
        for c in columns {
            b.push(u8::from(*c == "id"));
            b.extend(c.as_bytes());
            b.push(0);
            b.extend(25u32.to_be_bytes());
            b.extend((-1i32).to_be_bytes());
        }
        b
    }

    pub fn insert(id: u32, values: &[Option<&str>]) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend(id.to_be_bytes());
        b.push(b'N');
        b.extend((values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                None => b.push(b'n'),
                Some(s) => {
                    b.push(b't');
                    b.extend((s.len() as u32).to_be_bytes());
                    b.extend(s.as_bytes());
                }
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{insert, relation};
    use super::*;

    const COLS: [&str; 8] = [
        "id",
        "aggregate_type",
        "aggregate_id",
        "event_type",
        "payload",
        "status",
        "created_at",
        "processed_at",
    ];

    fn row_values() -> Vec<Option<&'static str>> {
        vec![
            Some("0193a0c2-0000-7000-8000-000000000001"),
            Some("user"),
            Some("u-1"),
            Some("UserCreated"),
            Some(r#"{"id": "u-1"}"#),
            Some("PENDING"),
            Some("2026-11-27 08:00:00+00"),
            None,
        ]
    }

    fn cache_with(id: u32, cols: &[&str]) -> RelationCache {
        let mut cache = RelationCache::default();
        match decode(&relation(id, cols)).unwrap() {
            Change::Relation(r) => cache.learn(r),
            other => panic!("expected relation, got {other:?}"),
        }
        cache
    }

    #[test]
    fn relation_message_decodes_names_and_columns() {
        let Change::Relation(rel) = decode(&relation(16384, &COLS)).unwrap() else {
            panic!()
        };
        assert_eq!(rel.id, 16384);
        assert_eq!(
            (rel.namespace.as_str(), rel.name.as_str()),
            ("public", "outbox")
        );
        assert_eq!(
            rel.columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            COLS
        );
    }

    #[test]
    fn insert_maps_to_an_outbox_row_by_column_name() {
        let cache = cache_with(1, &COLS);
        let Change::Insert { relation, values } = decode(&insert(1, &row_values())).unwrap() else {
            panic!()
        };
        let row = cache.outbox_row(relation, values).unwrap();
        assert_eq!(row.id, "0193a0c2-0000-7000-8000-000000000001");
        assert_eq!(row.aggregate_type, "user");
        assert_eq!(row.aggregate_id, "u-1");
        assert_eq!(row.event_type, "UserCreated");
        assert_eq!(row.payload, br#"{"id": "u-1"}"#);
    }

    #[test]
    fn trace_context_and_headers_columns_become_the_rows_own_headers() {
        let mut cols = COLS.to_vec();
        cols.extend(["traceparent", "tracestate", "headers"]);
        let cache = cache_with(1, &cols);
        let row_with = |tp: Option<&'static str>, ts, h| {
            let mut vals = row_values();
            vals.extend([tp, ts, h]);
            let Change::Insert { relation, values } = decode(&insert(1, &vals)).unwrap() else {
                panic!()
            };
            cache.outbox_row(relation, values).unwrap()
        };
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let row = row_with(Some(TP), Some("k=v"), Some(r#"{"x-tenant": "t1"}"#));
        assert_eq!(
            row.headers,
            [
                ("traceparent".to_string(), TP.to_string()),
                ("tracestate".into(), "k=v".into()),
                ("x-tenant".into(), "t1".into())
            ]
        );
        assert_eq!(row.unsendable, None);
        // Null columns are no headers; so is a table without the columns.
        let plain = row_with(None, None, None);
        assert_eq!((plain.headers.len(), plain.unsendable), (0, None));
        // What breaks the rules makes the row poison, with the reason.
        let bad = row_with(Some("00-xyz"), None, None);
        assert!(bad.unsendable.unwrap().contains("traceparent"));
        let bad = row_with(None, None, Some(r#"{"event_id": "x"}"#));
        assert!(bad.unsendable.unwrap().contains("reserved"));
    }

    #[test]
    fn a_new_relation_shape_mid_stream_is_followed() {
        let mut cache = cache_with(1, &COLS);
        // ALTER TABLE outbox ADD COLUMN trace_id text, then a column order that differs.
        let mut cols: Vec<&str> = COLS.to_vec();
        cols.insert(0, "trace_id");
        let Change::Relation(rel) = decode(&relation(1, &cols)).unwrap() else {
            panic!()
        };
        cache.learn(rel);
        let mut vals = row_values();
        vals.insert(0, Some("trace-9"));
        let Change::Insert { relation, values } = decode(&insert(1, &vals)).unwrap() else {
            panic!()
        };
        let row = cache.outbox_row(relation, values).unwrap();
        assert_eq!(row.event_type, "UserCreated");
        assert_eq!(row.aggregate_id, "u-1");
    }

    #[test]
    fn insert_for_an_unknown_relation_is_an_error() {
        let cache = RelationCache::default();
        let Change::Insert { relation, values } = decode(&insert(9, &row_values())).unwrap() else {
            panic!()
        };
        assert_eq!(
            cache.outbox_row(relation, values),
            Err(RowError::Decode(DecodeError::UnknownRelation(9)))
        );
    }

    #[test]
    fn a_relation_without_the_outbox_columns_is_refused_on_insert() {
        let cache = cache_with(2, &["id", "name"]);
        let Change::Insert { relation, values } =
            decode(&insert(2, &[Some("x"), Some("y")])).unwrap()
        else {
            panic!()
        };
        assert!(matches!(
            cache.outbox_row(relation, values),
            Err(RowError::MissingColumn {
                column: "aggregate_type",
                ..
            })
        ));
    }

    #[test]
    fn a_null_required_column_is_an_error() {
        let cache = cache_with(1, &COLS);
        let mut vals = row_values();
        vals[3] = None;
        let Change::Insert { relation, values } = decode(&insert(1, &vals)).unwrap() else {
            panic!()
        };
        assert_eq!(
            cache.outbox_row(relation, values),
            Err(RowError::Null("event_type"))
        );
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let full = insert(1, &row_values());
        for cut in 1..full.len() {
            assert!(decode(&full[..cut]).is_err(), "cut at {cut} must fail");
        }
        let rel = relation(1, &COLS);
        for cut in 1..rel.len() {
            assert!(
                decode(&rel[..cut]).is_err(),
                "relation cut at {cut} must fail"
            );
        }
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn other_message_kinds_are_skipped() {
        assert_eq!(decode(b"Uxxxx").unwrap(), Change::Other(b'U'));
        assert_eq!(decode(b"Txxxx").unwrap(), Change::Other(b'T'));
    }

    #[test]
    fn an_unknown_column_kind_is_an_error() {
        let mut b = insert(1, &[Some("a")]);
        b[8] = b'x';
        assert_eq!(decode(&b), Err(DecodeError::ColumnKind(b'x')));
    }
}
