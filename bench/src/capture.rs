//! `--capture`: how the bench's writers hand events to the relay (issue 30): as outbox
//! rows (`table`, the default) or as transactional logical decoding messages
//! (`messages`, prefix `outbox`, the envelope of `libs/outbox/src/message.rs`). Each
//! mode of the plan is measured on a database and topics of its own, one after another.

use clap::ValueEnum;

/// Where a writer puts its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Capture {
    /// A row in `outbox` per event, marked PROCESSED by the relay.
    Table,
    /// `pg_logical_emit_message(true, 'outbox', <envelope>)` per event: nothing to mark.
    Messages,
}

/// The relay's one source, as `RELAY_SOURCES__<NAME>__CAPTURE` names it.
const RELAY_CAPTURE: &str = "RELAY_SOURCES__BENCH__CAPTURE";

impl Capture {
    pub fn as_str(self) -> &'static str {
        match self {
            Capture::Table => "table",
            Capture::Messages => "messages",
        }
    }

    /// The relay's setting for this mode (relay-cdc's default is `table`).
    pub fn relay_env(self) -> (String, String) {
        (RELAY_CAPTURE.to_string(), self.as_str().to_string())
    }

    /// The services' setting for this mode.
    pub fn service_env(self) -> (&'static str, &'static str) {
        ("OUTBOX_CAPTURE", self.as_str())
    }

    /// The server-side load procedure of this mode ([`crate::db::LOAD_PROCEDURE`]'s).
    pub fn load_procedure(self) -> &'static str {
        match self {
            Capture::Table => "bench_load",
            Capture::Messages => "bench_load_messages",
        }
    }

    /// A system name's suffix: none for the table mode, so a default run reads as before.
    pub fn suffix(self) -> &'static str {
        match self {
            Capture::Table => "",
            Capture::Messages => " (messages)",
        }
    }

    /// Whether `name` is the setting this module owns.
    pub fn is_relay_setting(name: &str) -> bool {
        name.eq_ignore_ascii_case(RELAY_CAPTURE)
    }
}

impl std::fmt::Display for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_names_its_relay_and_service_setting() {
        assert_eq!(
            Capture::Messages.relay_env(),
            (
                "RELAY_SOURCES__BENCH__CAPTURE".to_string(),
                "messages".to_string()
            )
        );
        assert_eq!(Capture::Table.service_env(), ("OUTBOX_CAPTURE", "table"));
        assert_eq!(Capture::Table.suffix(), "");
        assert_eq!(Capture::Messages.suffix(), " (messages)");
    }
}
