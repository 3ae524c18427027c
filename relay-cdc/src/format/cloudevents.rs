//! The `cloudevents` format: an outbox event as a CloudEvent (spec 1.0) in a Kafka record,
//! after the CloudEvents Kafka protocol binding.
//!
//! | CloudEvents attribute | from |
//! |---|---|
//! | `specversion` | `1.0` |
//! | `id` | the row's `id` (unique within its source, so `source` + `id` is unique) |
//! | `source` | `kafka.cloudevents.source`, `{source}` and `{aggregate_type}` replaced |
//! | `type` | `event_type` |
//! | `subject` | `aggregate_id` |
//! | `time` | the event's time (today its transaction's commit time), RFC 3339 |
//! | `datacontenttype` | from the payload column's type: jsonb/json `application/json`, text `text/plain; charset=utf-8`, bytea `application/octet-stream` |
//! | `data` | the payload |
//!
//! Topic and key are the native format's (`kafka.topic_template`, the aggregate id): one
//! aggregate's events stay in one partition, in order.
//!
//! - Binary mode: headers `ce_specversion`, `ce_id`, `ce_source`, `ce_type`,
//!   `ce_subject`, `ce_time`, `content-type` (the `datacontenttype`), then the row's own
//!   headers (trace context, its `headers` column); the value is the payload as written.
//! - Structured mode: header `content-type: application/cloudevents+json; charset=UTF-8`,
//!   then the row's own headers; the value is the JSON event format, with a JSON payload
//!   as `data` verbatim, text as a JSON string, bytea as `data_base64`.
//!
//! A row header named `content-type` or starting with `ce_` would be read as part of the
//! event: such a row is poison in this format.

use std::fmt::Write as _;

use super::{FormatError, KafkaRecord, OutboxEvent, PayloadType};

/// The binding's content mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudEventsMode {
    Binary,
    Structured,
}

/// The format with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvents {
    pub mode: CloudEventsMode,
    /// The `source` attribute's template (a URI-reference).
    pub source: String,
}

/// The structured mode's `content-type`.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

impl CloudEvents {
    /// Checks the `source` template: a non-empty URI-reference without spaces.
    pub fn new(mode: CloudEventsMode, source: &str) -> Result<Self, String> {
        if source.trim().is_empty() || source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "must be a URI-reference without spaces, e.g. \"/relay-cdc/{{source}}\" (got {source:?})"
            ));
        }
        Ok(Self {
            mode,
            source: source.to_string(),
        })
    }

    /// The record of `event`; its topic from `topic_template` as in the native format.
    pub fn record(
        &self,
        event: &OutboxEvent<'_>,
        topic_template: &str,
    ) -> Result<KafkaRecord, FormatError> {
        if let Some((name, _)) = event
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type") || n.starts_with("ce_"))
        {
            return Err(FormatError(format!(
                "the row's header {name:?} would be read as a CloudEvents attribute"
            )));
        }
        let source = self
            .source
            .replace("{source}", event.source)
            .replace("{aggregate_type}", event.aggregate_type);
        let content_type = match event.payload_type {
            PayloadType::Jsonb | PayloadType::Json => "application/json",
            PayloadType::Text => "text/plain; charset=utf-8",
            PayloadType::Bytea => "application/octet-stream",
        };
        let own = event
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone().into_bytes())));
        let (value, headers) = match self.mode {
            CloudEventsMode::Binary => {
                let attributes = [
                    ("ce_specversion", "1.0"),
                    ("ce_id", event.id),
                    ("ce_source", &source),
                    ("ce_type", event.event_type),
                    ("ce_subject", event.aggregate_id),
                    ("ce_time", event.time),
                    ("content-type", content_type),
                ];
                let headers = attributes
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
                    .chain(own)
                    .collect();
                (event.payload.map(<[u8]>::to_vec), headers)
            }
            CloudEventsMode::Structured => {
                let value = structured(event, &source, content_type)?;
                let headers = std::iter::once((
                    "content-type".to_string(),
                    Some(STRUCTURED_CONTENT_TYPE.as_bytes().to_vec()),
                ))
                .chain(own)
                .collect();
                (Some(value.into_bytes()), headers)
            }
        };
        Ok(KafkaRecord {
            topic: outbox::record::topic(topic_template, event.aggregate_type, event.source),
            partition: None,
            key: Some(event.aggregate_id.as_bytes().to_vec()),
            value,
            headers,
        })
    }
}

/// The JSON event format of `event`.
fn structured(
    event: &OutboxEvent<'_>,
    source: &str,
    content_type: &str,
) -> Result<String, FormatError> {
    let mut out = String::with_capacity(256 + event.payload.map_or(0, <[u8]>::len));
    let mut attr = |name: &str, value: &str| {
        let _ = write!(
            out,
            "{}:{},",
            serde_json::Value::from(name),
            serde_json::Value::from(value)
        );
    };
    attr("specversion", "1.0");
    attr("id", event.id);
    attr("source", source);
    attr("type", event.event_type);
    attr("subject", event.aggregate_id);
    attr("time", event.time);
    attr("datacontenttype", content_type);
    match event.payload {
        None => {
            out.pop();
        }
        Some(p) if event.payload_type.is_json() => {
            let text = std::str::from_utf8(p)
                .map_err(|_| FormatError("the payload is not valid UTF-8".into()))?;
            // json/jsonb columns hold valid JSON; anything else would break the envelope.
            serde_json::from_str::<serde::de::IgnoredAny>(text)
                .map_err(|e| FormatError(format!("the payload is not JSON: {e}")))?;
            out.push_str("\"data\":");
            out.push_str(text);
        }
        Some(p) if event.payload_type == PayloadType::Text => {
            let text = std::str::from_utf8(p)
                .map_err(|_| FormatError("the payload is not valid UTF-8".into()))?;
            let _ = write!(out, "\"data\":{}", serde_json::Value::from(text));
        }
        Some(p) => {
            let _ = write!(out, "\"data_base64\":\"{}\"", base64(p));
        }
    }
    Ok(format!("{{{out}}}"))
}

/// Standard base64 with padding (RFC 4648), what `data_base64` holds.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{event, headers, ID, TIME};
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ce(mode: CloudEventsMode) -> CloudEvents {
        CloudEvents::new(mode, "/relay-cdc/{source}").unwrap()
    }

    #[test]
    fn binary_mode_puts_the_attributes_in_ce_headers_and_the_payload_as_written() {
        let own = vec![("traceparent".to_string(), TP.to_string())];
        let r = ce(CloudEventsMode::Binary)
            .record(
                &event(br#"{"a": 1}"#, &own),
                "outbox.event.{aggregate_type}",
            )
            .unwrap();
        assert_eq!(r.topic, "outbox.event.order");
        assert_eq!(r.key.as_deref(), Some(&b"o-1"[..]));
        assert_eq!(r.value.as_deref(), Some(&br#"{"a": 1}"#[..]));
        let want: Vec<(String, String)> = [
            ("ce_specversion", "1.0"),
            ("ce_id", ID),
            ("ce_source", "/relay-cdc/orders_db"),
            ("ce_type", "OrderCreated"),
            ("ce_subject", "o-1"),
            ("ce_time", TIME),
            ("content-type", "application/json"),
            ("traceparent", TP),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(headers(&r), want);
    }

    #[test]
    fn structured_mode_writes_the_json_event_format_with_the_payload_as_data() {
        let own = vec![("traceparent".to_string(), TP.to_string())];
        let r = ce(CloudEventsMode::Structured)
            .record(&event(br#"{"a": "x\"y"}"#, &own), "t.{aggregate_type}")
            .unwrap();
        assert_eq!(
            String::from_utf8(r.value.clone().unwrap()).unwrap(),
            format!(
                r#"{{"specversion":"1.0","id":"{ID}","source":"/relay-cdc/orders_db","type":"OrderCreated","subject":"o-1","time":"{TIME}","datacontenttype":"application/json","data":{{"a": "x\"y"}}}}"#
            )
        );
        assert_eq!(
            headers(&r),
            [
                (
                    "content-type".to_string(),
                    STRUCTURED_CONTENT_TYPE.to_string()
                ),
                ("traceparent".into(), TP.into())
            ]
        );
        assert_eq!(r.key.as_deref(), Some(&b"o-1"[..]));
    }

    #[test]
    fn text_and_bytea_payloads_are_a_string_and_base64() {
        let text = OutboxEvent {
            payload_type: PayloadType::Text,
            ..event(b"hello \"you\"", &[])
        };
        let r = ce(CloudEventsMode::Structured).record(&text, "t").unwrap();
        let v = String::from_utf8(r.value.unwrap()).unwrap();
        assert!(
            v.contains(r#""datacontenttype":"text/plain; charset=utf-8","data":"hello \"you\"""#),
            "{v}"
        );
        let bytes = OutboxEvent {
            payload_type: PayloadType::Bytea,
            ..event(b"\x00\xffab", &[])
        };
        let r = ce(CloudEventsMode::Structured).record(&bytes, "t").unwrap();
        let v = String::from_utf8(r.value.unwrap()).unwrap();
        assert!(
            v.ends_with(
                r#""datacontenttype":"application/octet-stream","data_base64":"AP9hYg=="}"#
            ),
            "{v}"
        );
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"ab"), "YWI=");
    }

    #[test]
    fn the_source_template_names_the_source_and_aggregate_type() {
        let c = CloudEvents::new(
            CloudEventsMode::Binary,
            "urn:relay:{source}:{aggregate_type}",
        )
        .unwrap();
        let r = c.record(&event(b"{}", &[]), "t").unwrap();
        assert_eq!(
            headers(&r)[2],
            (
                "ce_source".to_string(),
                "urn:relay:orders_db:order".to_string()
            )
        );
        assert!(CloudEvents::new(CloudEventsMode::Binary, "a b").is_err());
        assert!(CloudEvents::new(CloudEventsMode::Binary, "").is_err());
    }

    #[test]
    fn a_row_header_that_would_read_as_an_attribute_is_poison() {
        for name in ["ce_type", "Content-Type"] {
            let own = vec![(name.to_string(), "x".to_string())];
            let e = ce(CloudEventsMode::Binary).record(&event(b"{}", &own), "t");
            assert!(e.unwrap_err().0.contains(name));
        }
    }

    #[test]
    fn a_json_payload_that_is_not_json_is_poison_in_structured_mode() {
        let e = ce(CloudEventsMode::Structured).record(&event(b"{nope", &[]), "t");
        assert!(e.is_err());
    }
}
