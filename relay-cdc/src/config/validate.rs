//! The rules a loaded configuration must follow beyond its types: each broken rule is
//! an error naming its key (`sources[0].slot`, `kafka.transaction_max_ms`).

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{
    key_err, Capture, ConfigError, Endpoint, FormatName, Marking, Settings,
    FIXED_PRODUCER_PROPERTIES,
};
use crate::format::TableColumns;

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.trim().is_empty() {
            return Err(key_err(
                "kafka.brokers",
                "must list at least one broker (host:port)",
            ));
        }
        if !self.kafka.topic_template.contains("{aggregate_type}") {
            return Err(key_err(
                "kafka.topic_template",
                "must contain {aggregate_type}",
            ));
        }
        if let Err(e) = self.admin.listen.parse::<SocketAddr>() {
            return Err(key_err(
                "admin.listen",
                format!("not a socket address ({e})"),
            ));
        }
        for (key, value) in [
            ("kafka.topic_partitions", self.kafka.topic_partitions),
            (
                "kafka.topic_replication_factor",
                self.kafka.topic_replication_factor,
            ),
        ] {
            if value == 0 || value < -1 {
                return Err(key_err(key, "must be -1 (broker default) or at least 1"));
            }
        }
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.transaction_max_ms", k.transaction_max_ms),
            (
                "kafka.transaction_max_records",
                k.transaction_max_records as u64,
            ),
            ("kafka.transaction_timeout_ms", k.transaction_timeout_ms),
        ] {
            if value == 0 {
                return Err(key_err(key, "must be greater than 0"));
            }
        }
        if k.transaction_max_ms.saturating_mul(2) > k.transaction_timeout_ms {
            return Err(key_err(
                "kafka.transaction_max_ms",
                format!(
                    "must be at most half of kafka.transaction_timeout_ms ({})",
                    k.transaction_timeout_ms
                ),
            ));
        }
        if k.checkpoint_topic.trim().is_empty() {
            return Err(key_err("kafka.checkpoint_topic", "must not be empty"));
        }
        if k.transactional_id_prefix.contains(char::is_whitespace) {
            return Err(key_err(
                "kafka.transactional_id_prefix",
                "must not contain whitespace",
            ));
        }
        // Each format in use, and the Debezium options whenever given (a typo is named
        // even while no source uses them yet).
        // Over each source's own columns; without a source in that format, over the
        // relay's table.
        let relay_table = TableColumns::relay_outbox();
        let uses = |f: FormatName| {
            self.sources
                .iter()
                .any(|s| self.kafka.format_name(&s.name) == f)
        };
        if !uses(self.kafka.format) {
            self.kafka
                .record_format_named(self.kafka.format, &relay_table)?;
        }
        if !self.kafka.debezium.0.is_empty() && !uses(FormatName::Debezium) {
            self.kafka.event_router(&relay_table)?;
        }
        for s in &self.sources {
            self.kafka.record_format(s)?;
        }
        for (k, v) in &self.kafka.properties {
            if FIXED_PRODUCER_PROPERTIES.contains(&k.as_str()) {
                return Err(key_err(
                    format!("kafka.properties.{k}"),
                    format!("is fixed by the relay for safety and cannot be set (got {v:?})"),
                ));
            }
        }
        let p = &self.pipeline;
        for (key, value) in [
            (
                "pipeline.max_in_flight_records",
                p.max_in_flight_records as u64,
            ),
            ("pipeline.max_in_flight_bytes", p.max_in_flight_bytes as u64),
            ("pipeline.mark_batch_size", p.mark_batch_size as u64),
            ("pipeline.status_interval_ms", p.status_interval_ms),
            ("pipeline.heartbeat_interval_ms", p.heartbeat_interval_ms),
            ("pipeline.mark_interval_ms", p.mark_interval_ms),
            ("pipeline.mark_connections", p.mark_connections as u64),
            ("pipeline.stall_timeout_ms", p.stall_timeout_ms),
            (
                "pipeline.mark_statement_timeout_ms",
                p.mark_statement_timeout_ms,
            ),
            ("pipeline.mark_lock_timeout_ms", p.mark_lock_timeout_ms),
            ("pipeline.audit_max_rows", p.audit_max_rows as u64),
        ] {
            if value == 0 {
                return Err(key_err(key, "must be greater than 0"));
            }
        }
        if self.sources.is_empty() {
            return Err(ConfigError::Invalid(
                "no sources: add a [[sources]] table or RELAY_SOURCES__<NAME>__* variables".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut slots = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = |f: &str| format!("sources[{i}].{f}");
            if !valid_ident(&s.name) {
                return Err(key_err(key("name"), "use letters, digits and _ only"));
            }
            if !names.insert(s.name.clone()) {
                return Err(key_err(
                    key("name"),
                    format!("duplicate source name {:?}", s.name),
                ));
            }
            let slot = s.slot_name();
            if !valid_slot_name(&slot) {
                return Err(key_err(
                    key("slot"),
                    "a slot name is lower-case letters, digits and _ (at most 63)",
                ));
            }
            for (j, h) in s.hosts.iter().enumerate() {
                if let Err(why) = Endpoint::parse(h) {
                    return Err(key_err(key(&format!("hosts[{j}]")), why));
                }
            }
            if !slots.insert((s.endpoints(), slot.clone())) {
                return Err(key_err(
                    key("slot"),
                    format!("slot {slot:?} is used by two sources"),
                ));
            }
            if let Err(why) = s.tls().client_config() {
                let field = ["sslrootcert", "sslcert", "sslkey"]
                    .into_iter()
                    .find(|f| why.starts_with(f))
                    .unwrap_or("sslmode");
                return Err(key_err(key(field), why));
            }
            for (field, v) in [
                ("user", &s.user),
                ("database", &s.database),
                ("host", &s.host),
            ] {
                if v.trim().is_empty() {
                    return Err(key_err(key(field), "must not be empty"));
                }
            }
            for (field, v) in [
                ("publication", &s.publication),
                ("schema", &s.schema),
                ("table", &s.table),
            ] {
                if !valid_ident(v) {
                    return Err(key_err(key(field), "use letters, digits and _ only"));
                }
            }
            if s.capture == Capture::Messages {
                if s.marking == Some(Marking::Status) {
                    return Err(key_err(
                        key("marking"),
                        "capture = \"messages\" writes no row to mark: leave marking unset (or \"none\")",
                    ));
                }
                if !s.columns.is_default() {
                    return Err(key_err(
                        key("columns"),
                        "capture = \"messages\" reads no table: the envelope names every field",
                    ));
                }
                let p = &s.message_prefix;
                if p.is_empty() || p.contains('\0') || p == crate::source::HEARTBEAT_PREFIX {
                    return Err(key_err(
                        key("message_prefix"),
                        format!("must be non-empty, without NUL, and not the relay's heartbeat prefix {:?}", crate::source::HEARTBEAT_PREFIX),
                    ));
                }
            }
            let mut mapped: Vec<(&str, &str)> = Vec::new();
            for (role, column) in s.columns.named() {
                let field = key(&format!("columns.{role}"));
                if !valid_ident(column) {
                    return Err(key_err(field, "use letters, digits and _ only"));
                }
                if let Some((other, _)) = mapped.iter().find(|(_, c)| *c == column) {
                    return Err(key_err(
                        field,
                        format!("column {column:?} is already mapped as {other}; a column plays one role (formats can place a role's column by its name)"),
                    ));
                }
                mapped.push((role, column));
            }
        }
        Ok(())
    }
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_slot_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
