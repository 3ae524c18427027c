//! How both HTTP services read their settings from the environment: the error that
//! names a variable (never its value, which may hold a password), the rule that an
//! empty value counts as unset, and the HTTP listen address every service has.
//!
//! | variable | meaning |
//! |---|---|
//! | `SERVER_HOST` | address to bind, default `0.0.0.0` |
//! | `SERVER_PORT` | port to bind, default 8080; 0 picks a free one (tests do) |
//!
//! The database part is `service-postgres`'s; each service adds its own variables
//! with [`Vars`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// A variable that is missing or unusable. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{variable} is invalid: {reason}")]
    Invalid {
        variable: &'static str,
        reason: &'static str,
    },
    /// A `*_FILE` variable names a file that cannot be read; the reason names the file
    /// and the system's error, never the content.
    #[error("{variable}: {reason}")]
    Unreadable {
        variable: &'static str,
        reason: String,
    },
}

impl ConfigError {
    /// The variable at fault.
    pub fn variable(&self) -> &'static str {
        match self {
            Self::Missing(variable)
            | Self::Invalid { variable, .. }
            | Self::Unreadable { variable, .. } => variable,
        }
    }
}

/// Settings read from variables: the process environment in a binary, a map in tests.
pub trait FromEnv: Sized {
    /// Reads the settings through `vars`.
    fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError>;

    /// Reads the process environment.
    fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::env())
    }
}

/// Variables read through a lookup (the process environment, or a map in tests).
/// Values are trimmed; empty ones count as unset.
pub struct Vars<L> {
    lookup: L,
}

impl Vars<fn(&str) -> Option<String>> {
    /// The process environment.
    pub fn env() -> Self {
        Self::new(|name| std::env::var(name).ok())
    }
}

/// A lookup over owned name/value pairs: what [`Vars::from_pairs`] reads.
pub type PairLookup = Box<dyn Fn(&str) -> Option<String>>;

impl Vars<PairLookup> {
    /// These name/value pairs and nothing else (tests).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Self::new(Box::new(move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, value)| value.clone())
        }))
    }
}

impl<L: Fn(&str) -> Option<String>> Vars<L> {
    pub fn new(lookup: L) -> Self {
        Self { lookup }
    }

    /// The raw lookup, for variables where an empty value means something
    /// (`DB_PASSWORD`).
    pub fn lookup(&self) -> &L {
        &self.lookup
    }

    /// The trimmed value, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    /// The value, or [`ConfigError::Missing`].
    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name).ok_or(ConfigError::Missing(name))
    }

    /// The value, or `default` when unset.
    pub fn or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    /// A secret from `name` or from the file `file_name` names (the Docker and
    /// Kubernetes secrets convention, e.g. `DB_PASSWORD_FILE`): one trailing newline of
    /// the file is dropped. `None` when neither is set; both set is an error. The value
    /// is taken as it is (not trimmed): a password may end in a space.
    pub fn secret(
        &self,
        name: &'static str,
        file_name: &'static str,
    ) -> Result<Option<String>, ConfigError> {
        let direct = (self.lookup)(name).filter(|v| !v.is_empty());
        match (direct, self.get(file_name)) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                variable: file_name,
                reason: "set the variable or its _FILE form, not both",
            }),
            (Some(v), None) => Ok(Some(v)),
            (None, None) => Ok(None),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Unreadable {
                    variable: file_name,
                    reason: format!("cannot read {path}: {e}"),
                })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                Ok(Some(text.to_string()))
            }
        }
    }

    /// The value parsed, `default` when unset, [`ConfigError::Invalid`] with `reason`
    /// when it does not parse.
    pub fn parse_or<T: FromStr>(
        &self,
        name: &'static str,
        default: T,
        reason: &'static str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|_| ConfigError::Invalid {
                variable: name,
                reason,
            }),
        }
    }
}

/// Where the HTTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `SERVER_HOST`, default `0.0.0.0`.
    pub host: IpAddr,
    /// `SERVER_PORT`, default 8080; `0` asks the OS for a free port (tests do).
    pub port: u16,
}

impl ServerSettings {
    pub const DEFAULT_PORT: u16 = 8080;

    /// Reads `SERVER_HOST` and `SERVER_PORT`.
    pub fn from_vars<L: Fn(&str) -> Option<String>>(vars: &Vars<L>) -> Result<Self, ConfigError> {
        Ok(Self {
            host: vars.parse_or(
                "SERVER_HOST",
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                "expected an IP address",
            )?,
            port: vars.parse_or(
                "SERVER_PORT",
                Self::DEFAULT_PORT,
                "expected a port number from 0 to 65535",
            )?,
        })
    }

    /// Localhost on a free port: what tests bind.
    pub fn local_ephemeral() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars<PairLookup> {
        Vars::from_pairs(pairs)
    }

    #[test]
    fn the_server_listens_on_all_interfaces_at_8080_by_default() {
        let server = ServerSettings::from_vars(&vars(&[])).unwrap();
        assert_eq!(server.addr().to_string(), "0.0.0.0:8080");
        let server = ServerSettings::from_vars(&vars(&[
            ("SERVER_HOST", "127.0.0.1"),
            ("SERVER_PORT", " 0 "),
        ]))
        .unwrap();
        assert_eq!(server, ServerSettings::local_ephemeral());
    }

    #[test]
    fn a_malformed_server_variable_is_named_without_its_value() {
        for (var, value) in [
            ("SERVER_PORT", "eighty"),
            ("SERVER_PORT", "70000"),
            ("SERVER_HOST", "localhost"),
        ] {
            let err = ServerSettings::from_vars(&vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.variable(), var);
            assert!(err.to_string().starts_with(&format!("{var} is invalid")));
            assert!(!err.to_string().contains(value), "{err}");
        }
    }

    #[test]
    fn empty_values_count_as_unset() {
        let v = vars(&[("A", "  "), ("B", " b ")]);
        assert_eq!(v.get("A"), None);
        assert_eq!(v.required("A"), Err(ConfigError::Missing("A")));
        assert_eq!(v.or("A", "x"), "x");
        assert_eq!(v.required("B").unwrap(), "b");
        assert_eq!(v.lookup()("A").as_deref(), Some("  "));
    }
}
