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

use crate::format::{PayloadType, TableColumns};

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

/// One inserted outbox row, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// The payload column's bytes: as written for text and JSON columns, the raw bytes
    /// for bytea.
    pub payload: Vec<u8>,
    /// Whether the payload column was null (the bytes are then empty).
    pub payload_null: bool,
    pub payload_type: PayloadType,
    /// The event's time from the table's timestamp column (RFC 3339, UTC), when one is
    /// mapped and set.
    pub time: Option<String>,
    /// The table's further mapped columns (`[sources.columns] extra`, the timestamp
    /// column), by name.
    pub columns: Vec<(String, Cell)>,
    /// Headers the row carries besides the relay's own: `traceparent` and `tracestate`
    /// from their columns, then the entries of the `headers` column, checked.
    pub headers: Vec<(String, String)>,
    /// Why the row's trace context or headers cannot be published as written, if they
    /// break the rules of [`outbox::check_headers`] and [`outbox::TraceContext`]: the
    /// row is poison (never sent without them).
    pub unsendable: Option<String>,
}

impl OutboxRow {
    /// A row of the relay's table (jsonb payload) without trace context or headers of
    /// its own.
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
            payload_null: false,
            payload_type: PayloadType::Jsonb,
            time: None,
            columns: Vec::new(),
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

    /// The payload as a format reads it (`None`: SQL null).
    pub fn payload(&self) -> Option<&[u8]> {
        (!self.payload_null).then_some(self.payload.as_slice())
    }
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RowError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("relation {schema}.{table} lacks column {column} (the {role})")]
    MissingColumn {
        schema: String,
        table: String,
        column: String,
        role: &'static str,
    },
    #[error("column {0} is null")]
    Null(String),
    #[error("column {0} is not valid utf-8 text")]
    NotText(String),
    #[error("payload column {column} has type oid {oid}: relay-cdc reads jsonb, json, text, varchar or bytea")]
    PayloadType { column: String, oid: u32 },
    #[error("column {column}: {why}")]
    Bytea { column: String, why: String },
}

/// The outbox table a stream carries: its name and its columns by role. Inserts into
/// other tables of the publication are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTable {
    pub schema: String,
    pub name: String,
    pub columns: TableColumns,
}

impl Default for OutboxTable {
    /// The relay's own table, `public.outbox`.
    fn default() -> Self {
        Self {
            schema: "public".into(),
            name: "outbox".into(),
            columns: TableColumns::relay_outbox(),
        }
    }
}

/// Keeps the Relation messages seen on a stream and turns Inserts into outbox rows.
#[derive(Debug, Default)]
pub struct RelationCache {
    /// `None`: no table carries events (`capture = "messages"`), every insert is skipped.
    table: Option<OutboxTable>,
    /// Relations of the outbox table (by id), with where its roles are.
    relations: HashMap<u32, (Relation, Result<OutboxColumns, RowError>)>,
    /// Relations of other tables in the publication: their inserts are skipped.
    others: HashMap<u32, Relation>,
}

impl RelationCache {
    /// A cache for the stream of `table` (`None`: no table's inserts are events).
    pub fn new(table: Option<OutboxTable>) -> Self {
        Self {
            table,
            ..Self::default()
        }
    }

    /// Remembers a relation, replacing an earlier shape for the same id.
    pub fn learn(&mut self, rel: Relation) {
        let Some(table) = self
            .table
            .as_ref()
            .filter(|t| rel.namespace == t.schema && rel.name == t.name)
        else {
            self.relations.remove(&rel.id);
            self.others.insert(rel.id, rel);
            return;
        };
        self.others.remove(&rel.id);
        let cols = locate(&rel, &table.columns);
        self.relations.insert(rel.id, (rel, cols));
    }

    /// The relation an id refers to.
    pub fn relation(&self, id: u32) -> Option<&Relation> {
        self.relations
            .get(&id)
            .map(|(r, _)| r)
            .or_else(|| self.others.get(&id))
    }

    /// Maps an insert's values to an outbox row by column name; `None` for an insert
    /// into another table of the publication.
    pub fn outbox_row(
        &self,
        relation: u32,
        values: Vec<Value>,
    ) -> Result<Option<OutboxRow>, RowError> {
        let Some((rel, cols)) = self.relations.get(&relation) else {
            return match self.others.contains_key(&relation) {
                true => Ok(None),
                false => Err(DecodeError::UnknownRelation(relation).into()),
            };
        };
        let cols = cols.as_ref().map_err(Clone::clone)?;
        if values.len() != rel.columns.len() {
            return Err(DecodeError::ColumnCount {
                relation,
                got: values.len(),
                want: rel.columns.len(),
            }
            .into());
        }
        let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
        let name = |i: usize| rel.columns[i].name.as_str();
        let mut take = |i: usize| -> Option<Vec<u8>> {
            match values[i].take() {
                Some(Value::Text(b)) | Some(Value::Binary(b)) => Some(b),
                _ => None,
            }
        };
        let mut required = |i: usize| -> Result<String, RowError> {
            let b = take(i).ok_or_else(|| RowError::Null(name(i).to_string()))?;
            String::from_utf8(b).map_err(|_| RowError::NotText(name(i).to_string()))
        };
        let id = required(cols.id)?;
        let aggregate_type = required(cols.aggregate_type)?;
        let aggregate_id = required(cols.aggregate_id)?;
        let event_type = required(cols.event_type)?;
        // Further columns first: the payload's `take` below may be the last use.
        let mut row = OutboxRow::new(id, aggregate_type, aggregate_id, event_type, Vec::new());
        for &(i, kind) in &cols.cells {
            let cell = match take(i) {
                None => Cell::Null,
                Some(b) => {
                    let text =
                        String::from_utf8(b).map_err(|_| RowError::NotText(name(i).to_string()))?;
                    kind.cell(text)
                }
            };
            if Some(i) == cols.timestamp {
                row.time = cell_time(&cell);
            }
            row.columns.push((name(i).to_string(), cell));
        }
        row.payload_type = cols.payload_type;
        match take(cols.payload) {
            None => row.payload_null = true,
            Some(b) if cols.payload_type == PayloadType::Bytea => {
                row.payload = bytea_hex(&b).map_err(|why| RowError::Bytea {
                    column: name(cols.payload).to_string(),
                    why,
                })?;
            }
            Some(b) => row.payload = b,
        }
        // Optional columns: absent from the table, or null, is none.
        let mut optional = |i: Option<usize>| i.and_then(&mut take);
        let (traceparent, tracestate, headers) = (
            optional(cols.traceparent),
            optional(cols.tracestate),
            optional(cols.headers),
        );
        if traceparent.is_none() && tracestate.is_none() && headers.is_none() {
            return Ok(Some(row));
        }
        let text = |b: Vec<u8>, column: &str| {
            String::from_utf8(b).map_err(|_| RowError::NotText(column.to_string()))
        };
        Ok(Some(row.with_metadata(
            traceparent.map(|b| text(b, "traceparent")).transpose()?,
            tracestate.map(|b| text(b, "tracestate")).transpose()?,
            headers.as_deref(),
        )))
    }
}

/// The outbox row a transactional logical decoding message at `lsn` carries
/// (`capture = "messages"`, libs/outbox's envelope): the same row a table insert gives,
/// its payload JSON. A message that is not a valid envelope, or whose payload is not
/// JSON, is a poison row (its id derived from `lsn`, so a resend names the same event)
/// carrying the message's bytes, so that it halts or is dead-lettered, never dropped.
pub fn message_row(lsn: u64, content: &[u8]) -> OutboxRow {
    match outbox::message::decode(content) {
        Ok(m) => {
            let mut row = OutboxRow::new(
                m.id.to_string(),
                m.aggregate_type.to_string(),
                m.aggregate_id.to_string(),
                m.event_type.to_string(),
                m.payload.to_vec(),
            );
            row.payload_type = PayloadType::Json;
            row.headers = m
                .own_headers()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if serde_json::from_slice::<serde::de::IgnoredAny>(m.payload).is_err() {
                row.unsendable = Some("the message's payload is not JSON".into());
            }
            row
        }
        Err(e) => {
            let mut row = OutboxRow::new(
                uuid::Uuid::from_u128(u128::from(lsn)).to_string(),
                String::new(),
                String::new(),
                String::new(),
                content.to_vec(),
            );
            row.payload_type = PayloadType::Bytea;
            row.unsendable = Some(format!(
                "the logical message is not an outbox envelope: {e}"
            ));
            row
        }
    }
}

/// Where the roles are in the current Relation's columns, located by name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OutboxColumns {
    id: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    event_type: usize,
    payload: usize,
    payload_type: PayloadType,
    timestamp: Option<usize>,
    /// The timestamp and extra columns, with how their text reads.
    cells: Vec<(usize, CellKind)>,
    /// Optional columns of the relay's table (migration 0005): absent in older tables.
    traceparent: Option<usize>,
    tracestate: Option<usize>,
    headers: Option<usize>,
}

/// A further column's value, typed the way Debezium's converters type it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Text(String),
    /// int2, int4, int8; and `timestamp` (without time zone) as microseconds since
    /// the Unix epoch (Debezium's `MicroTimestamp`).
    Int(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellKind {
    Text,
    Int,
    /// timestamptz: RFC 3339 in UTC.
    Timestamptz,
    /// timestamp without time zone: microseconds since the epoch.
    Timestamp,
}

impl CellKind {
    fn of(oid: u32) -> Self {
        match oid {
            oid::INT2 | oid::INT4 | oid::INT8 => Self::Int,
            oid::TIMESTAMPTZ => Self::Timestamptz,
            oid::TIMESTAMP => Self::Timestamp,
            _ => Self::Text,
        }
    }

    /// The column's value from its text output; text that does not read as the type
    /// says stays text.
    fn cell(self, text: String) -> Cell {
        let parsed = match self {
            Self::Text => None,
            Self::Int => text.parse().ok().map(Cell::Int),
            Self::Timestamptz => timestamp_rfc3339(&text).map(Cell::Text),
            Self::Timestamp => chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| Cell::Int(t.and_utc().timestamp_micros())),
        };
        parsed.unwrap_or(Cell::Text(text))
    }
}

/// A further column's value from its text output (`None`: null), typed by its OID as
/// the stream types it.
pub fn cell(type_oid: u32, text: Option<String>) -> Cell {
    text.map_or(Cell::Null, |t| CellKind::of(type_oid).cell(t))
}

/// The event time a timestamp column's cell gives (RFC 3339, UTC).
pub fn cell_time(cell: &Cell) -> Option<String> {
    match cell {
        Cell::Text(t) if t.ends_with('Z') => Some(t.clone()),
        Cell::Text(t) => timestamp_rfc3339(t),
        Cell::Int(micros) => micros_rfc3339(*micros),
        Cell::Null => None,
    }
}

/// Type OIDs the decoder tells apart (`pg_type.oid`, fixed for built-in types).
mod oid {
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const JSONB: u32 = 3802;
}

/// The payload column's type, from its OID.
pub fn payload_type(type_oid: u32) -> Option<PayloadType> {
    Some(match type_oid {
        oid::JSONB => PayloadType::Jsonb,
        oid::JSON => PayloadType::Json,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR => PayloadType::Text,
        oid::BYTEA => PayloadType::Bytea,
        _ => return None,
    })
}

/// A timestamptz's text output (`2026-12-01 09:00:00.5+01`, any offset, ISO DateStyle)
/// as RFC 3339 in UTC with microseconds, like the commit time.
pub fn timestamp_rfc3339(text: &str) -> Option<String> {
    let t = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

fn micros_rfc3339(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// bytea's text output (hex format, `\x0a1b...`) as the bytes it stands for.
pub fn bytea_hex(text: &[u8]) -> Result<Vec<u8>, String> {
    let hex = text
        .strip_prefix(b"\\x")
        .ok_or("bytea text output is not in hex format (bytea_output = 'escape'?)")?;
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{:?} is not a hex digit", c as char)),
    };
    hex.chunks_exact(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

fn locate(rel: &Relation, table: &TableColumns) -> Result<OutboxColumns, RowError> {
    let position = |column: &str| rel.columns.iter().position(|c| c.name == column);
    let find = |column: &str, role: &'static str| {
        position(column).ok_or_else(|| RowError::MissingColumn {
            schema: rel.namespace.clone(),
            table: rel.name.clone(),
            column: column.to_string(),
            role,
        })
    };
    let id = find(&table.id, "id")?;
    let aggregate_type = find(&table.aggregate_type, "aggregate type")?;
    let aggregate_id = find(&table.aggregate_id, "aggregate id")?;
    let event_type = find(&table.event_type, "event type")?;
    let payload = find(&table.payload, "payload")?;
    let payload_oid = rel.columns[payload].type_oid;
    let payload_type = payload_type(payload_oid).ok_or_else(|| RowError::PayloadType {
        column: table.payload.clone(),
        oid: payload_oid,
    })?;
    let timestamp = table
        .timestamp
        .as_deref()
        .map(|c| find(c, "timestamp"))
        .transpose()?;
    let mut cells = Vec::new();
    for c in timestamp
        .into_iter()
        .map(Ok)
        .chain(table.others.iter().map(|c| find(c, "extra column")))
    {
        let i = c?;
        if !cells.iter().any(|(j, _)| *j == i) {
            cells.push((i, CellKind::of(rel.columns[i].type_oid)));
        }
    }
    Ok(OutboxColumns {
        id,
        aggregate_type,
        aggregate_id,
        event_type,
        payload,
        payload_type,
        timestamp,
        cells,
        traceparent: position("traceparent"),
        tracestate: position("tracestate"),
        headers: position("headers"),
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Byte-exact pgoutput v1 messages, built the way the walsender writes them.

    pub fn relation(id: u32, columns: &[&str]) -> Vec<u8> {
        let typed: Vec<(&str, u32)> = columns.iter().map(|c| (*c, 25)).collect();
        relation_of(id, "public", "outbox", &typed)
    }

    /// A Relation message for `schema.table` with columns of the given type OIDs.
    pub fn relation_of(id: u32, schema: &str, table: &str, columns: &[(&str, u32)]) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(id.to_be_bytes());
        for name in [schema, table] {
            b.extend(name.as_bytes());
            b.push(0);
        }
        b.push(b'd');
        b.extend((columns.len() as u16).to_be_bytes());
        for (c, oid) in columns {
            b.push(u8::from(*c == "id"));
            b.extend(c.as_bytes());
            b.push(0);
            b.extend(oid.to_be_bytes());
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
    use super::fixtures::{insert, relation, relation_of};
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
        let mut cache = RelationCache::new(Some(OutboxTable::default()));
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
        let row = cache.outbox_row(relation, values).unwrap().unwrap();
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
            cache.outbox_row(relation, values).unwrap().unwrap()
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
        let row = cache.outbox_row(relation, values).unwrap().unwrap();
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
                role: "aggregate type",
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
            Err(RowError::Null("event_type".into()))
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

    /// Debezium's documented outbox table, with a text payload and two extra columns.
    fn debezium_table(cache: &mut RelationCache) {
        let rel = relation_of(
            7,
            "inventory",
            "outboxevent",
            &[
                ("id", 2950),
                ("aggregatetype", 1043),
                ("aggregateid", 1043),
                ("type", 1043),
                ("payload", 25),
                ("shard", 23),
                ("created_at", 1184),
                ("local_at", 1114),
            ],
        );
        let Change::Relation(r) = decode(&rel).unwrap() else {
            panic!()
        };
        cache.learn(r);
    }

    fn debezium_mapping() -> OutboxTable {
        OutboxTable {
            schema: "inventory".into(),
            name: "outboxevent".into(),
            columns: TableColumns {
                aggregate_type: "aggregatetype".into(),
                aggregate_id: "aggregateid".into(),
                event_type: "type".into(),
                timestamp: Some("created_at".into()),
                others: vec!["shard".into(), "local_at".into()],
                ..TableColumns::relay_outbox()
            },
        }
    }

    #[test]
    fn a_mapped_table_gives_its_roles_payload_type_time_and_typed_extra_columns() {
        let mut cache = RelationCache::new(Some(debezium_mapping()));
        debezium_table(&mut cache);
        let vals = [
            Some("0193a0c2-0000-7000-8000-000000000001"),
            Some("order"),
            Some("o-1"),
            Some("OrderCreated"),
            Some("plain text, ünïcode"),
            Some("3"),
            Some("2026-12-01 09:00:00.5+01"),
            Some("2026-12-01 08:00:00"),
        ];
        let Change::Insert { relation, values } = decode(&insert(7, &vals)).unwrap() else {
            panic!()
        };
        let row = cache.outbox_row(relation, values).unwrap().unwrap();
        assert_eq!(
            (
                row.aggregate_type.as_str(),
                row.aggregate_id.as_str(),
                row.event_type.as_str()
            ),
            ("order", "o-1", "OrderCreated")
        );
        assert_eq!(row.payload(), Some("plain text, ünïcode".as_bytes()));
        assert_eq!(row.payload_type, PayloadType::Text);
        assert_eq!(row.time.as_deref(), Some("2026-12-01T08:00:00.500000Z"));
        assert_eq!(
            row.columns,
            [
                (
                    "created_at".to_string(),
                    Cell::Text("2026-12-01T08:00:00.500000Z".into())
                ),
                ("shard".into(), Cell::Int(3)),
                ("local_at".into(), Cell::Int(1_796_112_000_000_000)),
            ]
        );
        // A null payload is none, not an empty one; a null extra column is a null cell.
        let mut vals = vals;
        vals[4] = None;
        vals[5] = None;
        let Change::Insert { relation, values } = decode(&insert(7, &vals)).unwrap() else {
            panic!()
        };
        let row = cache.outbox_row(relation, values).unwrap().unwrap();
        assert_eq!(row.payload(), None);
        assert_eq!(row.columns[1], ("shard".into(), Cell::Null));
    }

    #[test]
    fn inserts_into_other_tables_of_the_publication_are_skipped() {
        let mut cache = RelationCache::new(Some(debezium_mapping()));
        debezium_table(&mut cache);
        // The relay's own table name is just another table for this mapping.
        let Change::Relation(r) = decode(&relation(8, &COLS)).unwrap() else {
            panic!()
        };
        cache.learn(r);
        let Change::Insert { relation, values } = decode(&insert(8, &row_values())).unwrap() else {
            panic!()
        };
        assert_eq!(cache.outbox_row(relation, values), Ok(None));
        assert_eq!(cache.relation(8).map(|r| r.name.as_str()), Some("outbox"));
    }

    #[test]
    fn a_bytea_payload_is_its_bytes_and_other_payload_types_are_refused() {
        let typed = |payload_oid: u32| {
            let cols: Vec<(&str, u32)> = COLS
                .iter()
                .map(|c| (*c, if *c == "payload" { payload_oid } else { 25 }))
                .collect();
            let mut cache = RelationCache::new(Some(OutboxTable::default()));
            let Change::Relation(r) = decode(&relation_of(1, "public", "outbox", &cols)).unwrap()
            else {
                panic!()
            };
            cache.learn(r);
            cache
        };
        let with_payload = |cache: &RelationCache, payload: &str| {
            let mut vals = row_values();
            vals[4] = Some(payload);
            let Change::Insert { relation, values } = decode(&insert(1, &vals)).unwrap() else {
                panic!()
            };
            cache.outbox_row(relation, values)
        };
        let bytea = typed(17);
        let row = with_payload(&bytea, "\\x00ff10Ab").unwrap().unwrap();
        assert_eq!(
            (row.payload, row.payload_type),
            (vec![0, 255, 16, 171], PayloadType::Bytea)
        );
        assert!(matches!(
            with_payload(&bytea, "\\x0"),
            Err(RowError::Bytea { .. })
        ));
        assert!(matches!(
            with_payload(&bytea, "\\000"),
            Err(RowError::Bytea { .. })
        ));
        for (oid, ty) in [
            (3802, PayloadType::Jsonb),
            (114, PayloadType::Json),
            (1043, PayloadType::Text),
        ] {
            let row = with_payload(&typed(oid), "{}").unwrap().unwrap();
            assert_eq!((row.payload.as_slice(), row.payload_type), (&b"{}"[..], ty));
        }
        assert_eq!(
            with_payload(&typed(2950), "{}"),
            Err(RowError::PayloadType {
                column: "payload".into(),
                oid: 2950
            })
        );
    }

    #[test]
    fn a_message_envelope_is_the_row_a_table_gives_and_anything_else_is_poison() {
        let id = uuid::Uuid::now_v7();
        let event = outbox::NewEvent::new("order", "o-1", "OrderPlaced", &"ab")
            .unwrap()
            .with_header("x-tenant", "t1")
            .unwrap();
        let bytes = outbox::message::encode(id, &event).unwrap();
        let row = message_row(0x10, &bytes);
        assert_eq!(
            (
                row.id.as_str(),
                row.aggregate_type.as_str(),
                row.aggregate_id.as_str(),
                row.event_type.as_str()
            ),
            (id.to_string().as_str(), "order", "o-1", "OrderPlaced")
        );
        assert_eq!(
            (row.payload.as_slice(), row.payload_type),
            (&b"\"ab\""[..], PayloadType::Json)
        );
        assert_eq!(row.headers, [("x-tenant".to_string(), "t1".to_string())]);
        assert_eq!(row.unsendable, None);
        // The payload ends the envelope: the same length, no longer JSON.
        let mut not_json = bytes.clone();
        let n = not_json.len();
        not_json[n - 4..].copy_from_slice(b"{ab\"");
        assert!(message_row(0x10, &not_json)
            .unsendable
            .unwrap()
            .contains("not JSON"));
        // Not an envelope: poison with an id of its position, so a resend names it again.
        let junk = message_row(0x10, b"hello");
        assert!(junk.unsendable.unwrap().contains("not an outbox envelope"));
        assert_eq!(junk.id, message_row(0x10, b"hello").id);
        assert_ne!(junk.id, message_row(0x11, b"hello").id);
        assert_eq!(junk.payload, b"hello");
    }

    #[test]
    fn timestamps_read_any_offset_and_bad_text_stays_text() {
        assert_eq!(
            timestamp_rfc3339("2026-12-31 23:30:00-02:30").as_deref(),
            Some("2027-01-01T02:00:00.000000Z")
        );
        assert_eq!(timestamp_rfc3339("12/31/2026 23:30:00 PST"), None);
        assert_eq!(CellKind::Int.cell("x1".into()), Cell::Text("x1".into()));
    }

    #[test]
    fn an_unknown_column_kind_is_an_error() {
        let mut b = insert(1, &[Some("a")]);
        b[8] = b'x';
        assert_eq!(decode(&b), Err(DecodeError::ColumnKind(b'x')));
    }
}
