//! The `debezium` format: the record Debezium 3.x's outbox event router
//! (`io.debezium.transforms.outbox.EventRouter`) makes of an inserted outbox row, then
//! turned into bytes by the converters it runs with. One option table, the router's own
//! option names (`route.by.field`, ...) plus the converters (`key.converter`,
//! `value.converter`, `header.converter`), parsed by [`EventRouter::from_options`].
//!
//! What the router does, in the order it does it (`EventRouterDelegate.apply`):
//!
//! - header `id` = the `table.field.event.id` column;
//! - with `table.expand.json.payload`, a payload string starting with `{` or `[` becomes
//!   the JSON it holds (see [`super::connect_json`]), else stays a string; a document
//!   that does not fit the schema inferred from it stops Debezium's task, and is poison
//!   here;
//! - the value is the payload alone, or, when any column is placed in the `envelope`, a
//!   struct `{"payload": ..., <alias>: <column>...}` in placement order;
//! - `header` placements add headers `<alias>` after `id`, `partition` placements set the
//!   partition (an integer column);
//! - with `route.tombstone.on.empty.payload`, a null payload or one whose text is empty
//!   after Java's `trim()` makes the value a tombstone (headers and key stay);
//! - key = the `table.field.event.key` column; topic = `route.topic.replacement` with
//!   `${routedByValue}` replaced by the `route.by.field` column.
//!
//! Converters: `string` (`StringConverter`: a string's UTF-8, null stays null) or `json`
//! (`JsonConverter` with `schemas.enable=false`); headers through `SimpleHeaderConverter`
//! (a string's UTF-8, an integer's decimal text). A `bytea` payload is Connect `BYTES`:
//! JsonConverter writes it base64, StringConverter the Java object's `toString()`, which
//! relay-cdc refuses (poison) rather than imitate. Options Debezium has and relay-cdc does
//! not implement are refused by name unless set to Debezium's default.
//!
//! Unset column options name the table's column of that role (for the relay's table,
//! `route.by.field` unset is `aggregate_type`); on a Debezium-shaped table that is
//! Debezium's default column (`aggregatetype`).

use std::collections::BTreeMap;

use super::connect_json::{self, Data, Expansion, NullBehavior};
use super::{Field, FormatError, KafkaRecord, OutboxEvent, PayloadType, TableColumns, Value};

/// The router's options and the converters, resolved against a table.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRouter {
    id: Field,
    key: Field,
    payload: Field,
    route_by: Field,
    /// `route.topic.replacement`, split at its references to the routed value.
    topic: Vec<TopicPart>,
    placements: Vec<Placement>,
    expand_json: bool,
    nulls: NullBehavior,
    tombstone_on_empty: bool,
    key_converter: Converter,
    value_converter: Converter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicPart {
    Literal(String),
    RoutedValue,
}

/// A `table.fields.additional.placement` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub field: Field,
    pub column: String,
    pub to: PlaceTo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceTo {
    Header(String),
    Envelope(String),
    Partition,
}

/// A Kafka Connect converter for keys or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converter {
    /// `org.apache.kafka.connect.storage.StringConverter`.
    String,
    /// `org.apache.kafka.connect.json.JsonConverter` with `schemas.enable=false`.
    Json,
}

/// An option that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub option: String,
    pub message: String,
}

/// Options this format implements.
pub const SUPPORTED: [&str; 13] = [
    "table.field.event.id",
    "table.field.event.key",
    "table.field.event.payload",
    "route.by.field",
    "route.topic.replacement",
    "table.fields.additional.placement",
    "table.expand.json.payload",
    "table.json.payload.null.behavior",
    "route.tombstone.on.empty.payload",
    "key.converter",
    "value.converter",
    "header.converter",
    "route.topic.regex",
];

/// Options of Debezium's router that relay-cdc does not implement, with Debezium's
/// default: accepted when set to it (a pasted configuration), refused otherwise.
const UNSUPPORTED: [(&str, Option<&str>); 8] = [
    ("table.field.event.timestamp", None),
    ("table.field.event.schema.version", None),
    ("table.field.event.type", Some("type")),
    ("table.fields.additional.error.on.missing", Some("true")),
    ("table.op.invalid.behavior", Some("warn")),
    ("tracing.span.context.field", Some("tracingspancontext")),
    ("tracing.operation.name", Some("debezium-read")),
    ("tracing.with.context.field.only", Some("false")),
];

const DEFAULT_REGEX: &str = "(?<routedByValue>.*)";
const DEFAULT_REPLACEMENT: &str = "outbox.event.${routedByValue}";

fn err(option: &str, message: impl Into<String>) -> OptionError {
    OptionError {
        option: option.to_string(),
        message: message.into(),
    }
}

impl EventRouter {
    /// The router over `table` with `options` (Debezium's names, values as text).
    pub fn from_options(
        options: &BTreeMap<String, String>,
        table: &TableColumns,
    ) -> Result<Self, OptionError> {
        for (name, value) in options {
            if SUPPORTED.contains(&name.as_str()) {
                continue;
            }
            match UNSUPPORTED.iter().find(|(n, _)| n == name) {
                Some((_, Some(default))) if value.trim().eq_ignore_ascii_case(default) => {}
                Some((_, default)) => {
                    let unless = default
                        .map(|d| format!(" (only its default, {d:?})"))
                        .unwrap_or_default();
                    return Err(err(
                        name,
                        format!("Debezium's option is not supported by relay-cdc{unless}"),
                    ));
                }
                None => {
                    return Err(err(
                        name,
                        format!(
                            "not an option of Debezium's outbox event router that relay-cdc knows (supported: {})",
                            SUPPORTED.join(", ")
                        ),
                    ))
                }
            }
        }
        let get = |name: &str| options.get(name).map(|v| v.trim());
        let column = |name: &str, role: Field| -> Result<Field, OptionError> {
            match get(name) {
                None => Ok(role),
                Some(c) => table.field(c).ok_or_else(|| {
                    err(
                        name,
                        format!(
                            "the outbox table has no column {c:?} (columns: {})",
                            table.names().join(", ")
                        ),
                    )
                }),
            }
        };
        let flag = |name: &str| -> Result<bool, OptionError> {
            match get(name) {
                None => Ok(false),
                Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
                Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
                Some(v) => Err(err(name, format!("must be true or false (got {v:?})"))),
            }
        };
        if let Some(regex) = get("route.topic.regex") {
            if regex != DEFAULT_REGEX {
                return Err(err(
                    "route.topic.regex",
                    format!("only Debezium's default {DEFAULT_REGEX:?} is supported"),
                ));
            }
        }
        let topic = topic_parts(get("route.topic.replacement").unwrap_or(DEFAULT_REPLACEMENT))
            .map_err(|m| err("route.topic.replacement", m))?;
        let placements = match get("table.fields.additional.placement") {
            None | Some("") => Vec::new(),
            Some(list) => {
                placements(list, table).map_err(|m| err("table.fields.additional.placement", m))?
            }
        };
        let nulls = match get("table.json.payload.null.behavior") {
            None => NullBehavior::Ignore,
            Some(v) if v.eq_ignore_ascii_case("ignore") => NullBehavior::Ignore,
            Some(v) if v.eq_ignore_ascii_case("optional_bytes") => NullBehavior::OptionalBytes,
            Some(v) => {
                return Err(err(
                    "table.json.payload.null.behavior",
                    format!("must be ignore or optional_bytes (got {v:?})"),
                ))
            }
        };
        if let Some(h) = get("header.converter") {
            if !matches!(
                h,
                "simple" | "org.apache.kafka.connect.storage.SimpleHeaderConverter"
            ) {
                return Err(err(
                    "header.converter",
                    format!("only Kafka Connect's default SimpleHeaderConverter (\"simple\") is supported (got {h:?})"),
                ));
            }
        }
        let router = Self {
            id: column("table.field.event.id", Field::Id)?,
            key: column("table.field.event.key", Field::AggregateId)?,
            payload: column("table.field.event.payload", Field::Payload)?,
            route_by: column("route.by.field", Field::AggregateType)?,
            topic,
            placements,
            expand_json: flag("table.expand.json.payload")?,
            nulls,
            tombstone_on_empty: flag("route.tombstone.on.empty.payload")?,
            key_converter: converter(get("key.converter")).map_err(|m| err("key.converter", m))?,
            value_converter: converter(get("value.converter"))
                .map_err(|m| err("value.converter", m))?,
        };
        let mut fields = vec!["payload"];
        for p in &router.placements {
            if let PlaceTo::Envelope(alias) = &p.to {
                if fields.contains(&alias.as_str()) {
                    return Err(err(
                        "table.fields.additional.placement",
                        format!("the envelope would have two fields named {alias:?}"),
                    ));
                }
                fields.push(alias);
            }
        }
        let envelope = fields.len() > 1;
        if router.value_converter == Converter::String && (router.expand_json || envelope) {
            let what = if router.expand_json {
                "table.expand.json.payload"
            } else {
                "an envelope placement"
            };
            return Err(err(
                "value.converter",
                format!("{what} makes the value a struct, which StringConverter writes as Java's Struct.toString(): set value.converter = \"json\""),
            ));
        }
        Ok(router)
    }

    /// The record's topic.
    pub fn topic(&self, event: &OutboxEvent<'_>) -> Result<String, FormatError> {
        let routed = match event.get(&self.route_by)? {
            Value::Text(t) => t.to_string(),
            Value::Payload(Some(p), t) if t != PayloadType::Bytea => {
                String::from_utf8_lossy(p).into_owned()
            }
            other => {
                return Err(FormatError(format!(
                    "route.by.field must be a non-null string column (got {other:?})"
                )))
            }
        };
        Ok(self
            .topic
            .iter()
            .map(|p| match p {
                TopicPart::Literal(s) => s.as_str(),
                TopicPart::RoutedValue => routed.as_str(),
            })
            .collect())
    }

    /// The record Debezium's router and the converters make of `event`.
    pub fn record(&self, event: &OutboxEvent<'_>) -> Result<KafkaRecord, FormatError> {
        let mut headers = vec![("id".to_string(), header_value(event.get(&self.id)?))];
        let payload = self.payload_data(event.get(&self.payload)?)?;
        let mut envelope: Vec<(String, Data)> = Vec::new();
        let mut partition = None;
        for p in &self.placements {
            let v = event.get(&p.field)?;
            match &p.to {
                PlaceTo::Header(alias) => headers.push((alias.clone(), header_value(v))),
                PlaceTo::Envelope(alias) => envelope.push((alias.clone(), column_data(v)?)),
                PlaceTo::Partition => match v {
                    Value::Int(i) => {
                        partition = Some(i32::try_from(i).map_err(|_| {
                            FormatError(format!(
                                "partition column {} is {i}, beyond int32",
                                p.column
                            ))
                        })?)
                    }
                    other => {
                        return Err(FormatError(format!(
                            "partition column {} must be an int4 column (got {other:?})",
                            p.column
                        )))
                    }
                },
            }
        }
        let empty = match &payload {
            Data::Null => true,
            Data::Str(s) => s.trim_matches(|c: char| c <= ' ').is_empty(),
            _ => false,
        };
        let value = if empty && self.tombstone_on_empty {
            None
        } else if envelope.is_empty() {
            self.convert(self.value_converter, &payload)
        } else {
            let mut fields = vec![("payload".to_string(), payload)];
            fields.extend(envelope);
            self.convert(self.value_converter, &Data::Struct(fields))
        };
        let key = self.convert(self.key_converter, &column_data(event.get(&self.key)?)?);
        Ok(KafkaRecord {
            topic: self.topic(event)?,
            partition,
            key,
            value,
            headers,
        })
    }

    /// The payload as a Connect value: a string (or bytes), expanded when configured.
    fn payload_data(&self, v: Value<'_>) -> Result<Data, FormatError> {
        let (bytes, ty) = match v {
            Value::Payload(p, ty) => (p, ty),
            other => return column_data(other),
        };
        let Some(bytes) = bytes else {
            return Ok(Data::Null);
        };
        if ty == PayloadType::Bytea {
            // Debezium's value is BYTES: JsonConverter writes base64 (never expanded, as
            // only a string payload is); StringConverter writes the Java object's
            // `toString()`, not the bytes, which no consumer can use.
            return match self.value_converter {
                Converter::Json => Ok(Data::Bytes(bytes.to_vec())),
                Converter::String => Err(FormatError(
                    "a bytea payload through StringConverter: Debezium writes the Java object's toString(), not the bytes; use value.converter = \"json\" (base64)".into(),
                )),
            };
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| FormatError("the payload is not valid UTF-8 text".into()))?;
        if self.expand_json {
            match connect_json::expand(text, self.nulls) {
                Expansion::Expanded(d) => return Ok(d),
                Expansion::Kept => {}
                Expansion::Fails(why) => {
                    return Err(FormatError(format!(
                        "table.expand.json.payload: Debezium's expansion of this payload fails and its task stops ({why})"
                    )))
                }
            }
        }
        Ok(Data::Str(text.to_string()))
    }

    fn convert(&self, converter: Converter, data: &Data) -> Option<Vec<u8>> {
        match (converter, data) {
            (Converter::String, Data::Null) => None,
            (Converter::String, Data::Str(s)) => Some(s.clone().into_bytes()),
            (Converter::String, Data::Int(i)) => Some(i.to_string().into_bytes()),
            (Converter::String, other) => {
                // Refused at configuration: only struct values get here.
                let mut s = String::new();
                connect_json::write(other, &mut s);
                Some(s.into_bytes())
            }
            (Converter::Json, d) => {
                let mut s = String::new();
                connect_json::write(d, &mut s);
                Some(s.into_bytes())
            }
        }
    }
}

/// A column as a Connect value.
fn column_data(v: Value<'_>) -> Result<Data, FormatError> {
    Ok(match v {
        Value::Null => Data::Null,
        Value::Text(t) => Data::Str(t.to_string()),
        Value::Int(i) => Data::Int(i),
        Value::Payload(None, _) => Data::Null,
        Value::Payload(Some(p), PayloadType::Bytea) => {
            return Err(FormatError(format!(
                "a bytea column ({} bytes) cannot be placed by relay-cdc",
                p.len()
            )))
        }
        Value::Payload(Some(p), _) => Data::Str(
            std::str::from_utf8(p)
                .map_err(|_| FormatError("the payload is not valid UTF-8 text".into()))?
                .to_string(),
        ),
    })
}

/// A header value as `SimpleHeaderConverter` writes it.
fn header_value(v: Value<'_>) -> Option<Vec<u8>> {
    match v {
        Value::Null | Value::Payload(None, _) => None,
        Value::Text(t) => Some(t.as_bytes().to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Payload(Some(p), _) => Some(p.to_vec()),
    }
}

fn converter(name: Option<&str>) -> Result<Converter, String> {
    match name {
        None | Some("string" | "org.apache.kafka.connect.storage.StringConverter") => {
            Ok(Converter::String)
        }
        Some("json" | "org.apache.kafka.connect.json.JsonConverter") => Ok(Converter::Json),
        Some(other) => Err(format!(
            "must be \"string\" (StringConverter) or \"json\" (JsonConverter, schemas.enable=false) (got {other:?})"
        )),
    }
}

/// `route.topic.replacement` as Java's `Matcher.replaceFirst` reads it against the
/// default regex: `${routedByValue}`, `$0` and `$1` are the routed value, `\x` is `x`.
fn topic_parts(replacement: &str) -> Result<Vec<TopicPart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => literal.push(chars.next().ok_or("ends with a lone backslash")?),
            '$' => {
                let reference = match chars.peek() {
                    Some('{') => {
                        let name: String =
                            chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                        (name == "routedByValue").then_some(())
                    }
                    Some('0' | '1') => {
                        chars.next();
                        (chars.peek().is_none_or(|c| !c.is_ascii_digit())).then_some(())
                    }
                    _ => None,
                };
                reference.ok_or(
                    "the default route.topic.regex has one group: refer to it as ${routedByValue}, $0 or $1",
                )?;
                if !literal.is_empty() {
                    parts.push(TopicPart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(TopicPart::RoutedValue);
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(TopicPart::Literal(literal));
    }
    Ok(parts)
}

/// `column:placement[:alias]`, comma-separated, as Debezium splits them.
fn placements(list: &str, table: &TableColumns) -> Result<Vec<Placement>, String> {
    list.split(',')
        .map(|entry| {
            let parts: Vec<&str> = entry.split(':').collect();
            let (column, place, alias) = match parts.as_slice() {
                [c, p] => (*c, *p, *c),
                [c, p, a] => (*c, *p, *a),
                _ => return Err(format!("{entry:?} is not column:placement[:alias]")),
            };
            let field = table.field(column).ok_or_else(|| {
                format!(
                    "{entry:?}: the outbox table has no column {column:?} (columns: {})",
                    table.names().join(", ")
                )
            })?;
            let to = match place.trim().to_ascii_lowercase().as_str() {
                "header" => PlaceTo::Header(alias.to_string()),
                "envelope" => PlaceTo::Envelope(alias.to_string()),
                "partition" => {
                    if !matches!(field, Field::Other(_)) {
                        return Err(format!(
                            "{entry:?}: a partition placement needs an int4 column; {column} is text"
                        ));
                    }
                    PlaceTo::Partition
                }
                other => {
                    return Err(format!(
                        "{entry:?}: the placement must be header, envelope or partition (got {other:?})"
                    ))
                }
            };
            Ok(Placement {
                field,
                column: column.to_string(),
                to,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{event, headers, ID};
    use super::super::Cell;
    use super::*;

    fn router(options: &[(&str, &str)]) -> Result<EventRouter, OptionError> {
        let options = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EventRouter::from_options(&options, &TableColumns::relay_outbox())
    }

    const PAYLOAD: &[u8] = br#"{"id": 1, "note": "a \"quoted\" word"}"#;

    #[test]
    fn by_default_the_record_is_debeziums_topic_key_id_header_and_payload_as_written() {
        let r = router(&[]).unwrap().record(&event(PAYLOAD, &[])).unwrap();
        assert_eq!(r.topic, "outbox.event.order");
        assert_eq!(r.partition, None);
        assert_eq!(r.key.as_deref(), Some(&b"o-1"[..]));
        assert_eq!(r.value.as_deref(), Some(PAYLOAD));
        assert_eq!(headers(&r), [("id".to_string(), ID.to_string())]);
    }

    #[test]
    fn the_rows_own_headers_are_left_out_as_debezium_has_none() {
        let own = vec![("traceparent".to_string(), "00-x".to_string())];
        let r = router(&[]).unwrap().record(&event(PAYLOAD, &own)).unwrap();
        assert_eq!(r.headers.len(), 1);
    }

    #[test]
    fn json_converters_quote_the_key_and_the_unexpanded_payload() {
        let r = router(&[("key.converter", "json"), ("value.converter", "json")])
            .unwrap()
            .record(&event(PAYLOAD, &[]))
            .unwrap();
        assert_eq!(r.key.as_deref(), Some(&br#""o-1""#[..]));
        assert_eq!(
            String::from_utf8(r.value.unwrap()).unwrap(),
            r#""{\"id\": 1, \"note\": \"a \\\"quoted\\\" word\"}""#
        );
    }

    #[test]
    fn an_expanded_payload_is_the_json_it_holds() {
        let r = router(&[
            ("table.expand.json.payload", "true"),
            (
                "value.converter",
                "org.apache.kafka.connect.json.JsonConverter",
            ),
        ])
        .unwrap()
        .record(&event(PAYLOAD, &[]))
        .unwrap();
        assert_eq!(
            r.value.as_deref(),
            Some(&br#"{"id":1,"note":"a \"quoted\" word"}"#[..])
        );
        assert_eq!(
            r.key.as_deref(),
            Some(&b"o-1"[..]),
            "the key converter is still String"
        );
    }

    #[test]
    fn route_by_another_column_and_a_replacement_name_the_topic() {
        let r = router(&[
            ("route.by.field", "event_type"),
            ("route.topic.replacement", "events.${routedByValue}.v1"),
            ("table.field.event.key", "id"),
        ])
        .unwrap()
        .record(&event(PAYLOAD, &[]))
        .unwrap();
        assert_eq!(r.topic, "events.OrderCreated.v1");
        assert_eq!(r.key.as_deref(), Some(ID.as_bytes()));
        let dollar = router(&[("route.topic.replacement", "x.$1.\\$")]).unwrap();
        assert_eq!(dollar.topic(&event(PAYLOAD, &[])).unwrap(), "x.order.$");
    }

    #[test]
    fn placements_add_headers_after_id_and_an_envelope_after_payload() {
        let r = router(&[
            (
                "table.fields.additional.placement",
                "event_type:header:eventType,aggregate_type:envelope:type,aggregate_id:header",
            ),
            ("value.converter", "json"),
        ])
        .unwrap()
        .record(&event(PAYLOAD, &[]))
        .unwrap();
        assert_eq!(
            headers(&r),
            [
                ("id".to_string(), ID.to_string()),
                ("eventType".into(), "OrderCreated".into()),
                ("aggregate_id".into(), "o-1".into()),
            ]
        );
        assert_eq!(
            String::from_utf8(r.value.unwrap()).unwrap(),
            r#"{"payload":"{\"id\": 1, \"note\": \"a \\\"quoted\\\" word\"}","type":"order"}"#
        );
        let expanded = router(&[
            ("table.fields.additional.placement", "event_type:envelope"),
            ("table.expand.json.payload", "true"),
            ("value.converter", "json"),
        ])
        .unwrap()
        .record(&event(br#"{"a": [1, 2]}"#, &[]))
        .unwrap();
        assert_eq!(
            expanded.value.as_deref(),
            Some(&br#"{"payload":{"a":[1,2]},"event_type":"OrderCreated"}"#[..])
        );
    }

    #[test]
    fn a_partition_placement_takes_an_integer_column() {
        let table = TableColumns {
            others: vec!["shard".into()],
            ..TableColumns::relay_outbox()
        };
        let options = [(
            "table.fields.additional.placement".to_string(),
            "shard:partition".to_string(),
        )]
        .into_iter()
        .collect();
        let r = EventRouter::from_options(&options, &table).unwrap();
        let columns = [("shard".to_string(), Cell::Int(3))];
        let e = OutboxEvent {
            columns: &columns,
            ..event(PAYLOAD, &[])
        };
        assert_eq!(r.record(&e).unwrap().partition, Some(3));
        let text = [("shard".to_string(), Cell::Text("3".into()))];
        let e = OutboxEvent {
            columns: &text,
            ..event(PAYLOAD, &[])
        };
        assert!(r.record(&e).unwrap_err().0.contains("int4"));
        let e = router(&[(
            "table.fields.additional.placement",
            "aggregate_id:partition",
        )])
        .unwrap_err();
        assert!(e.message.contains("int4"), "{e:?}");
    }

    #[test]
    fn an_empty_payload_is_a_tombstone_only_when_asked() {
        let on = router(&[("route.tombstone.on.empty.payload", "true")]).unwrap();
        let off = router(&[]).unwrap();
        let text = |p: &'static [u8]| OutboxEvent {
            payload_type: PayloadType::Text,
            ..event(p, &[])
        };
        for empty in [&b""[..], b"  \n\t"] {
            let r = on.record(&text(empty)).unwrap();
            assert_eq!(r.value, None);
            assert_eq!(
                r.key.as_deref(),
                Some(&b"o-1"[..]),
                "a tombstone keeps its key"
            );
            assert_eq!(r.headers.len(), 1, "and its id header");
            assert_eq!(
                off.record(&text(empty)).unwrap().value.as_deref(),
                Some(empty)
            );
        }
        let null = OutboxEvent {
            payload: None,
            ..event(b"", &[])
        };
        assert_eq!(on.record(&null).unwrap().value, None);
        assert_eq!(
            off.record(&null).unwrap().value,
            None,
            "StringConverter keeps null"
        );
        let json = router(&[("value.converter", "json")]).unwrap();
        assert_eq!(
            json.record(&null).unwrap().value.as_deref(),
            Some(&b"null"[..])
        );
        assert!(on.record(&event(b"{}", &[])).unwrap().value.is_some());
    }

    #[test]
    fn options_relay_cdc_does_not_implement_are_refused_by_name() {
        for (option, value) in [
            ("table.field.event.timestamp", "created_at"),
            ("table.field.event.schema.version", "v"),
            ("table.op.invalid.behavior", "fatal"),
            ("table.fields.additional.error.on.missing", "false"),
            ("route.topic.regex", "(?<routedByValue>.*)_x"),
            ("tracing.span.context.field", "ctx"),
            ("route.by.fields", "x"),
        ] {
            let e = router(&[(option, value)]).unwrap_err();
            assert_eq!(e.option, option);
        }
        // Debezium's own defaults are accepted: they describe what relay-cdc does.
        router(&[
            ("table.op.invalid.behavior", "warn"),
            ("route.topic.regex", "(?<routedByValue>.*)"),
            ("table.fields.additional.error.on.missing", "true"),
            (
                "header.converter",
                "org.apache.kafka.connect.storage.SimpleHeaderConverter",
            ),
        ])
        .unwrap();
    }

    #[test]
    fn bad_values_are_refused_with_their_option() {
        for (option, value, says) in [
            ("route.by.field", "aggregatetype", "no column"),
            (
                "table.fields.additional.placement",
                "nope:header",
                "no column",
            ),
            (
                "table.fields.additional.placement",
                "event_type:body",
                "placement",
            ),
            (
                "table.fields.additional.placement",
                "event_type",
                "column:placement",
            ),
            (
                "table.fields.additional.placement",
                "id:envelope:payload",
                "two fields",
            ),
            ("route.topic.replacement", "t.${other}", "routedByValue"),
            ("route.topic.replacement", "t.$2", "routedByValue"),
            ("table.expand.json.payload", "yes", "true or false"),
            ("key.converter", "avro", "string"),
            ("header.converter", "json", "SimpleHeaderConverter"),
            ("table.json.payload.null.behavior", "drop", "optional_bytes"),
        ] {
            let e = router(&[(option, value)]).unwrap_err();
            assert_eq!(e.option, option, "{value}");
            assert!(e.message.contains(says), "{option}={value}: {}", e.message);
        }
        let e = router(&[("table.expand.json.payload", "true")]).unwrap_err();
        assert_eq!(e.option, "value.converter");
        let e =
            router(&[("table.fields.additional.placement", "event_type:envelope")]).unwrap_err();
        assert_eq!(e.option, "value.converter");
    }

    #[test]
    fn a_bytea_payload_is_base64_through_json_and_poison_through_string() {
        let e = OutboxEvent {
            payload_type: PayloadType::Bytea,
            ..event(b"\x00\xff\x10\xab", &[])
        };
        let e = router(&[]).unwrap().record(&e).unwrap_err();
        assert!(e.0.contains("toString"), "{e}");
        for expand in ["false", "true"] {
            let json = router(&[
                ("value.converter", "json"),
                ("table.expand.json.payload", expand),
                ("route.tombstone.on.empty.payload", "true"),
            ])
            .unwrap();
            let r = json
                .record(&OutboxEvent {
                    payload_type: PayloadType::Bytea,
                    ..event(b"\x00\xff\x10\xab", &[])
                })
                .unwrap();
            assert_eq!(
                r.value.as_deref(),
                Some(&br#""AP8Qqw==""#[..]),
                "expand {expand}"
            );
            // Bytes are never "empty" to the router: only a string is trimmed.
            let empty = json
                .record(&OutboxEvent {
                    payload_type: PayloadType::Bytea,
                    ..event(b"", &[])
                })
                .unwrap();
            assert_eq!(empty.value.as_deref(), Some(&br#""""#[..]));
        }
    }
}
