//! The record format settings: `kafka.format` and a source's `format`, the `debezium`
//! format's option table (Debezium's own option names, so a connector's configuration
//! can be copied in) and the `cloudevents` format's options; and the one place they
//! become a [`RecordFormat`], for validation and for the sink alike.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::SourceSettings;
use super::{key_err, ConfigError, KafkaSettings};
use crate::format::{CloudEvents, CloudEventsMode, EventRouter, RecordFormat, TableColumns};

/// A record format by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    /// The relay's own records (topic template, key, payload, its headers).
    #[default]
    Native,
    /// What Debezium's outbox event router emits.
    Debezium,
    /// CloudEvents, binary or structured.
    Cloudevents,
}

/// `[kafka.debezium]`: option name → value, as text. In TOML the names may be written
/// bare (`route.by.field = "aggregate_type"`, which TOML reads as nested tables) or
/// quoted; both are flattened back to the dotted name. Booleans and numbers are taken as
/// their text, a list as its items joined with commas (Debezium's list syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebeziumOptions(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for DebeziumOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let mut out = BTreeMap::new();
        flatten("", &table, &mut out).map_err(D::Error::custom)?;
        Ok(Self(out))
    }
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for (k, v) in table {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let text = match v {
            toml::Value::Table(t) => {
                flatten(&name, t, out)?;
                continue;
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!("{name}: a list of strings expected, got {other}")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => return Err(format!("{name}: a string expected, got {other}")),
        };
        out.insert(name, text);
    }
    Ok(())
}

/// `[kafka.cloudevents]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsSettings {
    /// `binary` (attributes in `ce_` headers, the payload as the value) or `structured`
    /// (the JSON event format as the value).
    #[serde(default = "default_mode")]
    pub mode: CloudEventsMode,
    /// The `source` attribute: a URI-reference; `{source}` and `{aggregate_type}` are
    /// replaced.
    #[serde(default = "default_source")]
    pub source: String,
}

impl Default for CloudEventsSettings {
    fn default() -> Self {
        Self {
            mode: default_mode(),
            source: default_source(),
        }
    }
}

fn default_mode() -> CloudEventsMode {
    CloudEventsMode::Binary
}
fn default_source() -> String {
    "/relay-cdc/{source}".into()
}

impl KafkaSettings {
    /// The name of `source`'s format: its own, else `kafka.format`.
    pub fn format_name(&self, source: &str) -> FormatName {
        self.source_formats
            .get(source)
            .copied()
            .unwrap_or(self.format)
    }

    /// `source`'s record format with its options, over its table's columns; an error
    /// names the option at fault.
    pub fn record_format(&self, source: &SourceSettings) -> Result<RecordFormat, ConfigError> {
        self.record_format_named(
            self.format_name(&source.name),
            &source.columns.table_columns(),
        )
    }

    /// The format `name` with the options of `[kafka.debezium]` or `[kafka.cloudevents]`,
    /// over a table of `columns`.
    pub(super) fn record_format_named(
        &self,
        name: FormatName,
        columns: &TableColumns,
    ) -> Result<RecordFormat, ConfigError> {
        Ok(match name {
            FormatName::Native => RecordFormat::Native,
            FormatName::Debezium => RecordFormat::Debezium(self.event_router(columns)?),
            FormatName::Cloudevents => RecordFormat::CloudEvents(
                CloudEvents::new(self.cloudevents.mode, &self.cloudevents.source)
                    .map_err(|m| key_err("kafka.cloudevents.source", m))?,
            ),
        })
    }

    /// The `debezium` format over a table of `columns`.
    pub(super) fn event_router(&self, columns: &TableColumns) -> Result<EventRouter, ConfigError> {
        EventRouter::from_options(&self.debezium.0, columns)
            .map_err(|e| key_err(format!("kafka.debezium.{}", e.option), e.message))
    }
}
