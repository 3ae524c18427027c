//! What the comparison feeds both systems: Debezium-shaped outbox tables (one per payload
//! type and router variant), the rows by class, the converter settings, the router
//! options both systems get, and the differences relay-cdc documents (a row may show
//! one under a setting, and only that one).

use std::fmt::Write as _;

/// The type of a table's `payload` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadColumn {
    Jsonb,
    Json,
    Text,
    Bytea,
}

impl PayloadColumn {
    pub const ALL: [PayloadColumn; 4] = [Self::Jsonb, Self::Json, Self::Text, Self::Bytea];

    pub fn sql_type(self) -> &'static str {
        match self {
            Self::Jsonb => "jsonb",
            Self::Json => "json",
            Self::Text => "text",
            Self::Bytea => "bytea",
        }
    }

    /// The insert's payload parameter (text) as the column's type; bytea's is hex.
    fn cast(self) -> &'static str {
        match self {
            Self::Jsonb => "$5::text::jsonb",
            Self::Json => "$5::text::json",
            Self::Text => "$5::text",
            Self::Bytea => "decode($5::text, 'hex')",
        }
    }
}

/// Which router options a table is read with: none beyond the defaults, or placements
/// of the extra columns. One Debezium connector and one relay-cdc process per variant,
/// as the router's options are per connector (per relay process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Plain,
    Placed,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Self::Plain, Self::Placed];

    pub fn slug(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Placed => "placed",
        }
    }
}

/// The table of `variant` whose payload column is `column`.
pub fn table(variant: Variant, column: PayloadColumn) -> String {
    format!("outboxevent_{}_{}", variant.slug(), column.sql_type())
}

/// The extra columns every table has (`[sources.columns] extra`).
pub const EXTRA: [&str; 4] = ["tenant", "shard", "created_at", "created_ts"];

/// Debezium's outbox table (`id`, `aggregatetype`, `aggregateid`, `type`, `payload`),
/// without a status column, plus the extra columns: once per variant and payload type,
/// and once per row Debezium cannot write (its own connector stops on it); and one
/// publication of them all (inserts only) that both systems read.
pub fn schema_sql(publication: &str, rows: &[Row]) -> String {
    let mut sql = String::new();
    let mut tables: Vec<(String, PayloadColumn)> = Vec::new();
    for v in Variant::ALL {
        for c in PayloadColumn::ALL {
            tables.push((table(v, c), c));
        }
    }
    tables.extend(
        rows.iter()
            .filter(|r| r.unwritable())
            .map(|r| (r.table.clone(), r.column)),
    );
    for (t, c) in &tables {
        let _ = writeln!(
            sql,
            "create table {t} (id uuid primary key, aggregatetype varchar(255) not null, \
             aggregateid varchar(255) not null, type varchar(255) not null, payload {}, \
             tenant text, shard int4, created_at timestamptz, created_ts timestamp);",
            c.sql_type()
        );
    }
    let tables: Vec<&str> = tables.iter().map(|(t, _)| t.as_str()).collect();
    let _ = writeln!(
        sql,
        "create publication {publication} for table {} with (publish = 'insert');",
        tables.join(", ")
    );
    sql
}

/// The insert of one row into `table(variant, column)`: `$1` id, `$2` aggregate type,
/// `$3` aggregate id, `$4` type, `$5` payload (text; bytea as hex), `$6` tenant, `$7`
/// shard, `$8` created_at, `$9` created_ts (texts).
pub fn insert_sql(row: &Row) -> String {
    format!(
        "insert into {} (id, aggregatetype, aggregateid, type, payload, tenant, shard, created_at, created_ts) \
         values ($1::text::uuid, $2, $3, $4, {}, $6, $7, $8::text::timestamptz, $9::text::timestamp)",
        row.table,
        row.column.cast()
    )
}

/// A class of rows: a line of the result table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Unicode,
    Nested,
    Large,
    Text,
    Json,
    Bytea,
    Placed,
    Tombstone,
    /// Expansion Debezium cannot write: its task stops (JSON + expand only).
    Unwritable,
}

impl Class {
    pub const ALL: [Class; 9] = [
        Self::Unicode,
        Self::Nested,
        Self::Large,
        Self::Text,
        Self::Json,
        Self::Bytea,
        Self::Placed,
        Self::Tombstone,
        Self::Unwritable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Unicode => "unicode text (jsonb)",
            Self::Nested => "nested JSON (jsonb)",
            Self::Large => "large payload (~500 KB)",
            Self::Text => "`text` payload",
            Self::Json => "`json` payload (kept as written)",
            Self::Bytea => "`bytea` payload",
            Self::Placed => "extra columns: header, envelope, partition",
            Self::Tombstone => "empty (null) payload, tombstone on",
            Self::Unwritable => "expansion Debezium cannot write (its task stops)",
        }
    }

    /// The aggregate type of its rows: what the topic is routed by.
    pub fn routed(self) -> &'static str {
        match self {
            Self::Unicode => "unicode",
            Self::Nested => "nested",
            Self::Large => "large",
            Self::Text => "text",
            Self::Json => "json",
            Self::Bytea => "bytea",
            Self::Placed => "placed",
            Self::Tombstone => "tombstone",
            Self::Unwritable => "unwritable",
        }
    }

    pub fn variant(self) -> Variant {
        match self {
            Self::Placed => Variant::Placed,
            _ => Variant::Plain,
        }
    }
}

/// The converters (and expansion) both systems run with: a column of the result table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    String,
    Json,
    JsonExpand,
    /// Expansion with `table.json.payload.null.behavior = optional_bytes`.
    JsonExpandNulls,
}

const STRING_CONVERTER: &str = "org.apache.kafka.connect.storage.StringConverter";
const JSON_CONVERTER: &str = "org.apache.kafka.connect.json.JsonConverter";

impl Setting {
    pub const ALL: [Setting; 4] = [
        Self::String,
        Self::Json,
        Self::JsonExpand,
        Self::JsonExpandNulls,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::String => "String",
            Self::Json => "JSON",
            Self::JsonExpand => "JSON + expand.json.payload",
            Self::JsonExpandNulls => "JSON + expand, optional_bytes",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Json => "json",
            Self::JsonExpand => "expand",
            Self::JsonExpandNulls => "expand-nulls",
        }
    }

    fn converter(self) -> &'static str {
        match self {
            Self::String => STRING_CONVERTER,
            Self::Json | Self::JsonExpand | Self::JsonExpandNulls => JSON_CONVERTER,
        }
    }

    fn expands(self) -> bool {
        matches!(self, Self::JsonExpand | Self::JsonExpandNulls)
    }

    /// The converter settings of a Debezium connector (Connect's own names; JSON without
    /// schemas, the only JSON relay-cdc writes).
    pub fn connector_converters(self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for side in ["key", "value"] {
            out.push((format!("{side}.converter"), self.converter().to_string()));
            if self != Self::String {
                out.push((format!("{side}.converter.schemas.enable"), "false".into()));
            }
        }
        out
    }

    /// The same converters as relay-cdc's `[kafka.debezium]` options.
    pub fn relay_converters(self) -> Vec<(String, String)> {
        vec![
            ("key.converter".into(), self.converter().into()),
            ("value.converter".into(), self.converter().into()),
        ]
    }
}

/// The router options (Debezium's names) both systems get for `variant` under `setting`,
/// apart from `route.topic.replacement`, which tells their topics apart.
pub fn router_options(variant: Variant, setting: Setting) -> Vec<(String, String)> {
    let mut out = vec![(
        "route.tombstone.on.empty.payload".to_string(),
        "true".to_string(),
    )];
    if setting.expands() {
        out.push(("table.expand.json.payload".into(), "true".into()));
    }
    if setting == Setting::JsonExpandNulls {
        out.push((
            "table.json.payload.null.behavior".into(),
            "optional_bytes".into(),
        ));
    }
    if variant == Variant::Placed {
        // An envelope makes the value a struct, which StringConverter writes as Java's
        // `Struct{...}` (relay-cdc refuses that): headers and the partition only there.
        let placement = match setting {
            Setting::String => "tenant:header,created_at:header,created_ts:header,shard:partition,type:header:eventType",
            Setting::Json | Setting::JsonExpand | Setting::JsonExpandNulls => {
                "tenant:header,created_at:header,created_ts:header,shard:partition,type:header:eventType,\
                 created_at:envelope:ts,created_ts:envelope:cts,tenant:envelope,aggregateid:envelope:aggregate"
            }
        };
        out.push((
            "table.fields.additional.placement".into(),
            placement.to_string(),
        ));
    }
    out
}

/// A difference relay-cdc documents (relay-cdc/README.md, `debezium`), and what it
/// may change in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub what: &'static str,
    pub allows: Allowed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// relay-cdc makes no record (poison: dead-lettered here).
    RelayRefuses,
    /// Only the value's bytes differ.
    ValueDiffers,
}

pub const BYTES_THROUGH_STRING: Known = Known {
    what: "a bytea payload through StringConverter: Debezium writes the Java object's toString(), relay-cdc refuses the row (poison)",
    allows: Allowed::RelayRefuses,
};
pub const MERGE_ORDER: Known = Known {
    what: "expand.json.payload merges an array's object fields in HashSet order, relay-cdc in element order",
    allows: Allowed::ValueDiffers,
};
pub const JDK_DOUBLES: Known = Known {
    what:
        "Double.toString of JDK < 19 prints some doubles with more digits than JDK 19+ (relay-cdc)",
    allows: Allowed::ValueDiffers,
};

/// One row of a class.
#[derive(Debug, Clone)]
pub struct Row {
    pub class: Class,
    pub column: PayloadColumn,
    /// The table it is inserted into.
    pub table: String,
    /// What the row tests, for the details.
    pub label: &'static str,
    pub aggregate_id: String,
    pub event_type: String,
    /// jsonb / text: the text; bytea: hex digits. `None`: SQL null.
    pub payload: Option<String>,
    pub tenant: Option<String>,
    pub shard: Option<i32>,
    pub created_at: Option<String>,
    pub created_ts: Option<String>,
    /// Documented differences this row may show, by setting.
    pub known: Vec<(Setting, Known)>,
}

impl Row {
    fn new(
        class: Class,
        column: PayloadColumn,
        label: &'static str,
        payload: Option<&str>,
    ) -> Self {
        Self {
            class,
            column,
            table: table(class.variant(), column),
            label,
            aggregate_id: format!("{}-{}", class.routed(), label.len()),
            event_type: "Created".into(),
            payload: payload.map(str::to_string),
            tenant: None,
            shard: None,
            created_at: None,
            created_ts: None,
            known: Vec::new(),
        }
    }

    fn known(mut self, settings: &[Setting], known: Known) -> Self {
        self.known.extend(settings.iter().map(|s| (*s, known)));
        self
    }

    fn key(mut self, aggregate_id: &str, event_type: &str) -> Self {
        self.aggregate_id = aggregate_id.into();
        self.event_type = event_type.into();
        self
    }

    fn placed(
        mut self,
        tenant: Option<&str>,
        shard: i32,
        created_at: Option<&str>,
        created_ts: Option<&str>,
    ) -> Self {
        self.tenant = tenant.map(str::to_string);
        self.shard = Some(shard);
        self.created_at = created_at.map(str::to_string);
        self.created_ts = created_ts.map(str::to_string);
        self
    }

    /// A row Debezium's task stops on: in a table (and connector) of its own, inserted
    /// only with `table.expand.json.payload` (under other settings its payload is a
    /// string like any other).
    pub fn unwritable(&self) -> bool {
        self.class == Class::Unwritable
    }

    /// Whether the row is inserted in the round of `setting`.
    pub fn runs_with(&self, setting: Setting) -> bool {
        !self.unwritable() || setting == Setting::JsonExpand
    }

    /// The documented difference this row may show under `setting`.
    pub fn known_for(&self, setting: Setting) -> Option<Known> {
        self.known
            .iter()
            .find(|(s, _)| *s == setting)
            .map(|(_, k)| *k)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// About 500 KB of JSON: a long string of mixed scripts and escapes, and an array of
/// objects (same fields) with numbers.
fn large_json() -> String {
    let mut s = String::from("{\"blob\": \"");
    while s.len() < 300_000 {
        s.push_str("lorem ipsum ✓ Zoë 漢字 😀 \\\"quoted\\\" tab\\t back\\\\slash ");
    }
    s.push_str("\", \"items\": [");
    for i in 0..2_500 {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(
            s,
            "{{\"i\": {i}, \"sku\": \"sku-{i}\", \"qty\": {}, \"price\": {}.25, \"tags\": [\"a\", \"b\"]}}",
            i % 7,
            i % 100
        );
    }
    s.push_str("]}");
    s
}

fn large_text() -> String {
    let mut s = String::new();
    while s.len() < 500_000 {
        s.push_str("plain text line ✓ Zoë 漢字 😀 \"quoted\" \\ back\tslash\n");
    }
    s
}

/// Every row of the comparison, each inserted once per setting.
pub fn rows() -> Vec<Row> {
    use Class as C;
    use PayloadColumn as P;
    use Setting as S;
    let expand = [S::JsonExpand, S::JsonExpandNulls];
    let string = [S::String];
    vec![
        // Unicode: every script, astral characters (Jackson escapes them as surrogate
        // pairs), combining marks, controls; a key and event type outside ASCII.
        Row::new(
            C::Unicode,
            P::Jsonb,
            "scripts and astral characters",
            Some(r#"{"name": "Zoë Ångström", "emoji": "😀👍🏽", "cjk": "漢字かな", "rtl": "שלום مرحبا", "combining": "é", "zwj": "👨‍👩‍👧"}"#),
        )
        .key("ключ-1 ✓", "Créé"),
        Row::new(
            C::Unicode,
            P::Jsonb,
            "escapes and control characters",
            Some(r#"{"ctl": "\u0001\u001f", "ws": "tab\there\nnew\r", "quote": "\"q\" \\ /", "bell": "\u0007", "del": "\u007f", "ls": "\u2028", "bom": "\ufeff"}"#),
        ),
        // Nested JSON: objects in arrays in objects, numbers of each width, nulls and
        // empty arrays (left out by the expansion), what Debezium cannot expand.
        Row::new(
            C::Nested,
            P::Jsonb,
            "orders with lines and a customer",
            Some(r#"{"order": {"id": 1, "lines": [{"sku": "a", "qty": 2, "price": 39.98}, {"sku": "b", "qty": 1, "price": 5.0}], "customer": {"name": "x", "tags": ["vip", "new"], "address": {"city": "Oslo", "geo": {"lat": 59.91, "lon": 10.75}}}}, "empty": [], "nothing": null, "flag": true, "count": 2147483648, "neg": -1}"#),
        ),
        Row::new(
            C::Nested,
            P::Jsonb,
            "arrays of arrays",
            Some(r#"{"matrix": [[1, 2], [3, 4]], "objs": [[{"a": 1}], [{"a": 2}]], "strs": [["x"], []]}"#),
        ),
        // jsonb keeps numbers as numeric: 1e21 comes out as 1000000000000000000000 (an
        // integer beyond 64 bits); doubles in exponent form are in the text class.
        Row::new(
            C::Nested,
            P::Jsonb,
            "doubles (jsonb's decimal form)",
            Some(r#"{"d1": 0.1, "d2": 1.5e-7, "d3": 12345678.9, "d5": 282879384806159008.0, "d6": 0.30000000000000004, "d7": 100.0, "d8": 1.0E-5, "d9": 0.001, "d10": -2.5}"#),
        )
        .known(&expand, JDK_DOUBLES),
        Row::new(
            C::Nested,
            P::Jsonb,
            "array of objects with different fields",
            Some(r#"{"items": [{"a": 1}, {"b": "x"}, {"a": 2, "c": true}]}"#),
        )
        .known(&expand, MERGE_ORDER),
        Row::new(
            C::Nested,
            P::Jsonb,
            "an array mixing types (not expanded)",
            Some(r#"{"mixed": [1, "a"], "ints": [1, 10000000000]}"#),
        ),
        Row::new(
            C::Nested,
            P::Jsonb,
            "an array at the top mixing types (not expanded)",
            Some(r#"[1, 2, {"a": 1}]"#),
        ),
        Row::new(
            C::Nested,
            P::Jsonb,
            "an empty array first in an array (not expanded)",
            Some(r#"{"a": [[], [1]]}"#),
        ),
        Row::new(
            C::Nested,
            P::Jsonb,
            "a null field, then an int, in an array of objects",
            Some(r#"{"xs": [{"a": null}, {"a": 1}], "ys": [{"b": 2}, {"b": null}]}"#),
        ),
        Row::new(
            C::Nested,
            P::Jsonb,
            "nulls only in an array",
            Some(r#"{"a": [null, null], "b": {"c": null}, "d": 1}"#),
        ),
        // Large: about 500 KB in each payload type.
        Row::new(C::Large, P::Jsonb, "jsonb, ~500 KB", Some(&large_json())),
        Row::new(C::Large, P::Text, "text, ~500 KB", Some(&large_text())),
        Row::new(
            C::Large,
            P::Bytea,
            "bytea, ~500 KB",
            Some(&hex(&(0..500_000u32).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>())),
        )
        .known(&string, BYTES_THROUGH_STRING),
        // text: as written (no jsonb normalisation): document order, duplicate names,
        // whitespace, text that is not JSON.
        Row::new(
            C::Text,
            P::Text,
            "plain text",
            Some("  plain text é 😀 \"quoted\" \\ end  "),
        ),
        Row::new(
            C::Text,
            P::Text,
            "JSON in document order",
            Some(r#"{"b": 1, "a": [1, 2], "nested": {"z": null, "y": "é"}, "d": 1.5}"#),
        ),
        Row::new(
            C::Text,
            P::Text,
            "JSON after a space (not expanded)",
            Some(r#" {"a": 1}"#),
        ),
        Row::new(
            C::Text,
            P::Text,
            "a repeated field name",
            Some(r#"{"a": 1, "b": 2, "a": 3}"#),
        ),
        Row::new(
            C::Text,
            P::Text,
            "objects with other fields in document order",
            Some(r#"{"items": [{"b": 1}, {"a": 2}]}"#),
        )
        .known(&expand, MERGE_ORDER),
        Row::new(C::Text, P::Text, "not JSON though it starts with {", Some("{nope")),
        Row::new(
            C::Text,
            P::Text,
            "doubles in exponent form",
            Some(r#"{"e1": 1e21, "e2": 1.0E23, "e3": 2.82879384806159E17, "e4": 5e-324, "e5": 1.5e-7, "e6": 2.0E-3, "e7": 1E+2, "e8": 4.35E-10}"#),
        )
        .known(&expand, JDK_DOUBLES),
        Row::new(C::Text, P::Text, "empty text", Some("")),
        Row::new(C::Text, P::Text, "whitespace and controls only", Some(" \t\n\u{1}\u{1f} ")),
        // json: the text as written (order, spacing, repeated names, escapes kept).
        Row::new(
            C::Json,
            P::Json,
            "spacing, order and a repeated name",
            Some("{ \"b\" : 1,\n  \"a\": [1,2],  \"a\": {\"z\": null, \"y\": 2.5},\t\"é\": \"😀\" }"),
        ),
        Row::new(
            C::Json,
            P::Json,
            "escapes as written",
            Some(r#"{"s": "\u00e9\ud83d\ude00\/\n", "n": -0.0, "e": 1E2}"#),
        ),
        Row::new(
            C::Json,
            P::Json,
            "objects with other fields",
            Some(r#"{"xs": [{"b": 1}, {"a": 2, "b": 3}]}"#),
        )
        .known(&expand, MERGE_ORDER),
        // bytea: binary, UTF-8 JSON as bytes, empty.
        Row::new(C::Bytea, P::Bytea, "binary", Some("00ff10ab80")).known(&string, BYTES_THROUGH_STRING),
        Row::new(
            C::Bytea,
            P::Bytea,
            "UTF-8 JSON as bytes",
            Some(&hex(r#"{"a": 1, "é": "😀"}"#.as_bytes())),
        )
        .known(&string, BYTES_THROUGH_STRING),
        Row::new(C::Bytea, P::Bytea, "empty bytes", Some("")).known(&string, BYTES_THROUGH_STRING),
        // Placements: a text header (null too), timestamptz (ZonedTimestamp) and
        // timestamp (MicroTimestamp) as headers and envelope fields, an int4 partition.
        Row::new(
            C::Placed,
            P::Jsonb,
            "jsonb, offset +01, half a second",
            Some(r#"{"a": 1}"#),
        )
        .placed(
            Some("acme"),
            2,
            Some("2026-12-01 09:00:00.5+01"),
            Some("2026-12-01 09:00:00.123456"),
        ),
        Row::new(C::Placed, P::Jsonb, "jsonb, nulls, whole seconds", Some(r#"{"b": [1]}"#))
            .placed(None, 0, Some("2026-12-01 09:00:00+00"), None),
        Row::new(C::Placed, P::Jsonb, "jsonb, null payload", None).placed(
            Some("t"),
            1,
            None,
            Some("2026-12-01 09:00:00"),
        ),
        Row::new(
            C::Placed,
            P::Text,
            "text, before the epoch",
            Some("plain ✓"),
        )
        .placed(
            Some("Zürich ✓"),
            3,
            Some("1969-12-31 23:59:59.999999+00"),
            Some("1969-12-31 23:59:59.999999"),
        ),
        Row::new(
            C::Placed,
            P::Text,
            "text, offset -02:30, far future",
            Some(r#"{"x": "y"}"#),
        )
        .placed(
            Some(""),
            1,
            Some("2026-06-30 23:30:00.000001-02:30"),
            Some("9999-12-31 23:59:59.999999"),
        ),
        Row::new(C::Placed, P::Bytea, "bytea", Some("0102"))
            .placed(
                Some("b"),
                0,
                Some("2000-01-01 00:00:00+00"),
                Some("2000-01-01 00:00:00"),
            )
            .known(&string, BYTES_THROUGH_STRING),
        // Empty payloads with route.tombstone.on.empty.payload.
        Row::new(C::Tombstone, P::Jsonb, "jsonb null", None),
        Row::new(C::Tombstone, P::Text, "text null", None),
        Row::new(C::Tombstone, P::Bytea, "bytea null", None),
        Row::new(C::Tombstone, P::Jsonb, "jsonb \"\" (not empty)", Some(r#""""#)),
        Row::new(C::Tombstone, P::Jsonb, "jsonb null literal (not empty)", Some("null")),
        // Schemas Debezium infers that the document does not fit: its task stops.
        Row::new(
            C::Unwritable,
            P::Jsonb,
            "an array at the top",
            Some(r#"[{"a": 1}, {"a": 2}]"#),
        ),
        Row::new(
            C::Unwritable,
            P::Jsonb,
            "an integer beyond 64 bits",
            Some(r#"{"big": 123456789012345678901234567890, "ok": 1}"#),
        ),
        Row::new(
            C::Unwritable,
            P::Jsonb,
            "objects whose field types differ in an array",
            Some(r#"{"a": [{"b": 1}, {"b": 1.5}]}"#),
        ),
        Row::new(
            C::Unwritable,
            P::Text,
            "inner arrays of other types",
            Some(r#"{"a": [[1], ["x"]]}"#),
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, mut r)| {
        if r.unwritable() {
            r.table = format!("outboxevent_unwritable_{i}");
        }
        r
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_rows_and_the_large_ones_are_about_half_a_megabyte() {
        let rows = rows();
        for c in Class::ALL {
            assert!(rows.iter().any(|r| r.class == c), "{c:?}");
        }
        for r in rows.iter().filter(|r| r.class == Class::Large) {
            let len = r.payload.as_ref().unwrap().len();
            let bytes = if r.column == PayloadColumn::Bytea {
                len / 2
            } else {
                len
            };
            assert!((400_000..600_000).contains(&bytes), "{}: {bytes}", r.label);
        }
    }

    #[test]
    fn each_unwritable_row_has_a_table_of_its_own_and_runs_only_expanded() {
        let rows = rows();
        let unwritable: Vec<&Row> = rows.iter().filter(|r| r.unwritable()).collect();
        assert!(unwritable.len() >= 2);
        for (i, r) in unwritable.iter().enumerate() {
            assert!(unwritable[i + 1..].iter().all(|o| o.table != r.table));
            assert!(r.runs_with(Setting::JsonExpand) && !r.runs_with(Setting::Json));
        }
        let sql = schema_sql("p", &rows);
        assert!(sql.contains(&format!("create table {} (", unwritable[0].table)));
    }

    #[test]
    fn placed_rows_have_a_partition_and_others_none() {
        for r in rows() {
            assert_eq!(r.shard.is_some(), r.class == Class::Placed, "{}", r.label);
            assert!(r.shard.is_none_or(|s| (0..4).contains(&s)));
        }
    }

    #[test]
    fn an_envelope_is_placed_only_with_the_json_converter() {
        let placed = |s| {
            router_options(Variant::Placed, s)
                .into_iter()
                .find(|(k, _)| k == "table.fields.additional.placement")
                .unwrap()
                .1
        };
        assert!(!placed(Setting::String).contains("envelope"));
        assert!(placed(Setting::Json).contains("created_at:envelope:ts"));
        assert!(router_options(Variant::Plain, Setting::Json)
            .iter()
            .all(|(k, _)| k != "table.fields.additional.placement"));
    }
}
