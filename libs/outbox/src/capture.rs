//! How a writer hands its events to the relay: as outbox rows ([`Capture::Table`], the
//! default) or as transactional logical decoding messages ([`Capture::Messages`], see
//! [`crate::message`]). Either way the events commit or roll back with the caller's
//! transaction and the relay publishes the same records, in commit order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::message::DEFAULT_PREFIX;

/// Where the writer puts its events. As text (configuration, command lines): `table`,
/// `messages` (prefix [`DEFAULT_PREFIX`]) or `messages:<prefix>`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Capture {
    /// A row in the `outbox` table per event, which the relay reads as an insert.
    #[default]
    Table,
    /// A `pg_logical_emit_message(true, prefix, envelope)` per event: no table, no row to
    /// mark or delete. Needs `wal_level = logical` and PostgreSQL 14+ on the relay's side.
    Messages {
        /// The message prefix the relay takes; not empty, no U+0000.
        prefix: String,
    },
}

impl Capture {
    /// Messages with the relay's default prefix.
    pub fn messages() -> Self {
        Self::Messages {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }

    /// `table`, `messages` or `messages:<prefix>`, or why `s` is none of them.
    pub fn parse(s: &str) -> Result<Self, CaptureParseError> {
        match s.split_once(':') {
            None if s == "table" => Ok(Self::Table),
            None if s == "messages" => Ok(Self::messages()),
            Some(("messages", "")) => Err(CaptureParseError::EmptyPrefix),
            Some(("messages", prefix)) if prefix.contains('\0') => {
                Err(CaptureParseError::NulInPrefix)
            }
            Some(("messages", prefix)) => Ok(Self::Messages {
                prefix: prefix.to_string(),
            }),
            _ => Err(CaptureParseError::Unknown(s.to_string())),
        }
    }
}

/// Why a text is not a [`Capture`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureParseError {
    #[error("unknown capture {0:?}: expected \"table\", \"messages\" or \"messages:<prefix>\"")]
    Unknown(String),
    #[error("capture \"messages:\" has an empty prefix: write \"messages\" for the default")]
    EmptyPrefix,
    #[error("the message prefix contains U+0000")]
    NulInPrefix,
}

impl FromStr for Capture {
    type Err = CaptureParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Capture {
    type Error = CaptureParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl fmt::Display for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table => f.write_str("table"),
            Self::Messages { prefix } => write!(f, "messages:{prefix}"),
        }
    }
}

impl From<Capture> for String {
    fn from(c: Capture) -> Self {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_the_default_and_both_modes_parse() {
        assert_eq!(Capture::default(), Capture::Table);
        assert_eq!("table".parse(), Ok(Capture::Table));
        assert_eq!(
            "messages".parse(),
            Ok(Capture::Messages {
                prefix: "outbox".into()
            })
        );
        assert_eq!(
            "messages:billing:v2".parse(),
            Ok(Capture::Messages {
                prefix: "billing:v2".into()
            })
        );
    }

    #[test]
    fn a_capture_prints_as_it_parses() {
        for c in [
            Capture::Table,
            Capture::messages(),
            Capture::Messages { prefix: "p".into() },
        ] {
            assert_eq!(Capture::parse(&c.to_string()), Ok(c.clone()));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Capture>(&json).unwrap(), c);
        }
    }

    #[test]
    fn other_texts_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "unknown capture \"\""),
            ("Table", "expected \"table\", \"messages\""),
            ("rows", "unknown capture"),
            ("table:x", "unknown capture"),
            ("messages:", "empty prefix"),
            ("messages:a\0", "U+0000"),
        ] {
            let e = Capture::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(serde_json::from_str::<Capture>("\"nope\"").is_err());
    }
}
