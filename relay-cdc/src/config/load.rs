//! Loading: the TOML file, then the `RELAY_` environment on top, merged and extracted
//! into [`Settings`] by `figment`; then secret files, then [`Settings::validate`].
//!
//! Every environment value is a string and the field it lands in decides its type
//! (figment's lossy extraction reads `"6543"` as a port and `"true"` as a bool, while a
//! numeric-looking password stays a string). Two things figment's own `Env` provider
//! cannot say, so this module's [`EnvLayer`] says them:
//!
//! - sources are a list in the file but addressed by name in the environment
//!   (`RELAY_SOURCES__USERS_DB__PORT`): both layers give `sources` as a map from
//!   position to source, the environment using the position of the file's source of
//!   that name (compared without case) or the next free one, and
//!   [`sources_in_order`] reads that map back as the list; a source's column mapping
//!   is one level deeper (`RELAY_SOURCES__ORDERS__COLUMNS__AGGREGATE_TYPE`);
//! - Kafka property names contain dots (`RELAY_KAFKA__PROPERTIES__LINGER_MS` sets
//!   `linger.ms`), which a figment key path would nest; so do Debezium's option names
//!   (`RELAY_KAFKA__DEBEZIUM__ROUTE_BY_FIELD` sets `kafka.debezium."route.by.field"`).
//!
//! A variable of no known shape (`RELAY_NOPE`) is refused naming it; an error in a value
//! names the key as the file writes it (`sources[0].port`) and the variable that set it.

use std::collections::BTreeMap;
use std::path::Path;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use super::{key_err, ConfigError, Settings, SourceSettings};

impl Settings {
    /// Reads `path` (if given), applies `RELAY_*` variables from `env`, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file = path.map(FileLayer::read).transpose()?;
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("RELAY_") && k != "RELAY_CONFIG")
            .collect();
        vars.sort();
        let names = file
            .as_ref()
            .map(FileLayer::source_names)
            .unwrap_or_default();
        let env = EnvLayer::new(&vars, &names)?;
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(file);
        }
        let mut settings: Settings = figment.merge(env).extract_lossy().map_err(from_figment)?;
        settings.read_secrets()?;
        settings.kafka.source_formats = settings
            .sources
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.format?)))
            .collect();
        settings.validate()?;
        Ok(settings)
    }

    /// Takes `sasl.password` out of `kafka.properties`, and reads `password_file` and
    /// `kafka.sasl_password_file` into the passwords they stand for. Errors name the key
    /// and the file, never the content.
    fn read_secrets(&mut self) -> Result<(), ConfigError> {
        for (i, s) in self.sources.iter_mut().enumerate() {
            let Some(path) = &s.password_file else {
                continue;
            };
            let key = format!("sources[{i}].password_file");
            if !s.password.is_empty() {
                return Err(key_err(key, "set password or password_file, not both"));
            }
            s.password = read_secret(path).map_err(|m| key_err(key, m))?.into();
        }
        let kafka = &mut self.kafka;
        kafka.sasl_password = kafka.properties.remove("sasl.password").map(Into::into);
        if let Some(path) = &kafka.sasl_password_file {
            let key = "kafka.sasl_password_file";
            if kafka.sasl_password.is_some() {
                return Err(key_err(
                    key,
                    "set kafka.properties.\"sasl.password\" or kafka.sasl_password_file, not both",
                ));
            }
            kafka.sasl_password = Some(read_secret(path).map_err(|m| key_err(key, m))?.into());
        }
        Ok(())
    }
}

/// A secret file's content without its trailing newline (what `echo` or an editor
/// leaves); the error names the file, never what is in it.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_string())
}

/// The configuration file, parsed (so that an unreadable or invalid file is refused
/// with its path before anything else).
struct FileLayer {
    path: std::path::PathBuf,
    table: toml::Table,
}

impl FileLayer {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Parse {
                path: path.display().to_string(),
                message: e.message().to_string(),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            table,
        })
    }

    /// The file's source names by position (`None` where one has no name).
    fn source_names(&self) -> Vec<Option<String>> {
        let Some(toml::Value::Array(sources)) = self.table.get("sources") else {
            return Vec::new();
        };
        sources
            .iter()
            .map(|s| Some(s.get("name")?.as_str()?.to_string()))
            .collect()
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from("config file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut table = self.table.clone();
        // `[[sources]]` as a map from position to source, as the environment gives it.
        if let Some(toml::Value::Array(sources)) = table.remove("sources") {
            let by_position = sources
                .into_iter()
                .enumerate()
                .map(|(i, s)| (i.to_string(), s))
                .collect();
            table.insert("sources".into(), toml::Value::Table(by_position));
        }
        let dict = Value::serialize(table)?
            .into_dict()
            .expect("a table serialises as a dict");
        Ok(Profile::Default.collect(dict))
    }
}

/// The `RELAY_` variables as one layer: each value a string at the key path its name
/// gives, and for each key path the variable that set it (for error messages).
struct EnvLayer {
    dict: Dict,
    vars: BTreeMap<Vec<String>, String>,
}

impl EnvLayer {
    /// `vars` sorted by name; `file_sources` the file's source names by position.
    fn new(
        vars: &[(String, String)],
        file_sources: &[Option<String>],
    ) -> Result<Self, ConfigError> {
        let mut layer = Self {
            dict: Dict::new(),
            vars: BTreeMap::new(),
        };
        // Sources the environment adds, after the file's, in the order first named.
        let mut added: Vec<String> = Vec::new();
        for (var, raw) in vars {
            let env_err = |message: &str| ConfigError::Env {
                var: var.clone(),
                message: message.to_string(),
            };
            let path: Vec<String> = var["RELAY_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                return Err(env_err("empty key segment (use __ between keys)"));
            }
            let key: Vec<String> = match path.as_slice() {
                // A source's field, or one of its columns (`..__COLUMNS__AGGREGATE_TYPE`).
                [section, name, field @ ..]
                    if section == "sources"
                        && (field.len() == 1 || (field.len() == 2 && field[0] == "columns")) =>
                {
                    let file = file_sources
                        .iter()
                        .position(|n| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name)));
                    let position = match file {
                        Some(i) => i,
                        None => {
                            let new = added.iter().position(|n| n == name).unwrap_or_else(|| {
                                added.push(name.clone());
                                added.len() - 1
                            });
                            let position = file_sources.len() + new;
                            let at = vec![section.clone(), position.to_string(), "name".into()];
                            layer.set(at, name, var);
                            position
                        }
                    };
                    let mut key = vec![section.clone(), position.to_string()];
                    key.extend(field.iter().cloned());
                    key
                }
                // Kafka properties and Debezium's options are dotted names.
                [section, sub, property]
                    if section == "kafka" && (sub == "properties" || sub == "debezium") =>
                {
                    vec![section.clone(), sub.clone(), property.replace('_', ".")]
                }
                [section, sub, field] if section == "kafka" && sub == "cloudevents" => {
                    vec![section.clone(), sub.clone(), field.clone()]
                }
                [section, field] if section != "sources" => vec![section.clone(), field.clone()],
                _ => return Err(env_err(
                    "not a known setting (expected RELAY_<SECTION>__<KEY> or RELAY_SOURCES__<NAME>__<KEY>)",
                )),
            };
            layer.set(key, raw, var);
        }
        Ok(layer)
    }

    /// Sets `value` at `key`, remembering that `var` set it.
    fn set(&mut self, key: Vec<String>, value: &str, var: &str) {
        let (last, parents) = key.split_last().expect("a key has a name");
        let mut dict = &mut self.dict;
        for parent in parents {
            let entry = dict
                .entry(parent.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            let Value::Dict(_, inner) = entry else {
                unreachable!("made a dict above")
            };
            dict = inner;
        }
        dict.insert(last.clone(), Value::from(value.to_string()));
        self.vars.entry(key).or_insert_with(|| var.to_string());
    }

    /// The variable that set `path` or the value `path` lies in; else the first that
    /// set something inside it.
    fn var_for(vars: &BTreeMap<Vec<String>, String>, path: &[&str]) -> Option<String> {
        let path: Vec<String> = path.iter().map(|p| p.to_string()).collect();
        (1..=path.len())
            .rev()
            .find_map(|n| vars.get(&path[..n]))
            .or_else(|| {
                vars.iter()
                    .find(|(k, _)| k.starts_with(&path))
                    .map(|(_, v)| v)
            })
            .cloned()
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        let vars = self.vars.clone();
        Metadata::named(ENV_NAME)
            .interpolater(move |_, path| Self::var_for(&vars, path).unwrap_or_default())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

const ENV_NAME: &str = "RELAY_ environment";

/// A figment error as the relay words it: the key as the file writes it, what is wrong,
/// and where the value came from. A secret's value is never repeated.
fn from_figment(e: figment::Error) -> ConfigError {
    let key = display_key(&e.path);
    let secret = e
        .path
        .last()
        .is_some_and(|k| k == "password" || k.ends_with(".password"));
    let message = match &e.kind {
        figment::error::Kind::InvalidType(_, expected) if secret => {
            format!("invalid type: expected {expected}")
        }
        figment::error::Kind::InvalidValue(_, expected) if secret => {
            format!("invalid value: expected {expected}")
        }
        figment::error::Kind::UnknownVariant(found, allowed) => {
            format!("must be one of {allowed:?} (got {found:?})")
        }
        figment::error::Kind::UnknownField(found, allowed) => {
            format!("unknown key {found:?} (known: {})", allowed.join(", "))
        }
        kind => kind.to_string(),
    };
    let origin = match (&e.metadata, &e.profile) {
        (_, _) if matches!(e.kind, figment::error::Kind::MissingField(_)) => String::new(),
        (Some(md), Some(profile)) if md.name == ENV_NAME => {
            let var = md.interpolate(profile, &e.path);
            if var.is_empty() {
                String::new()
            } else {
                format!(" (set by {var})")
            }
        }
        (Some(md), _) => match &md.source {
            Some(source) => format!(" (in {source})"),
            None => String::new(),
        },
        (None, _) => String::new(),
    };
    if key.is_empty() {
        ConfigError::Invalid(format!("{message}{origin}"))
    } else {
        key_err(key, format!("{message}{origin}"))
    }
}

/// `["sources", "0", "hosts", "1"]` as `sources[0].hosts[1]`.
fn display_key(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if !key.is_empty() && part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// [`Settings::sources`]: a list, or a map from position (`"0"`, `"1"`, ...) to source,
/// read in the order of the positions.
pub(super) fn sources_in_order<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<SourceSettings>, D::Error> {
    struct Sources;
    impl<'de> Visitor<'de> for Sources {
        type Value = Vec<SourceSettings>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of sources ([[sources]] tables)")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut sources = Vec::new();
            while let Some(s) = seq.next_element()? {
                sources.push(s);
            }
            Ok(sources)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut sources = Vec::new();
            while let Some(position) = map.next_key::<String>()? {
                let Ok(position) = position.parse::<usize>() else {
                    return Err(de::Error::invalid_value(
                        de::Unexpected::Str(&position),
                        &self,
                    ));
                };
                sources.push((position, map.next_value::<SourceSettings>()?));
            }
            sources.sort_by_key(|(position, _)| *position);
            Ok(sources.into_iter().map(|(_, s)| s).collect())
        }
    }
    d.deserialize_any(Sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_the_file_writes_them() {
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            display_key(&path(&["sources", "0", "hosts", "1"])),
            "sources[0].hosts[1]"
        );
        assert_eq!(
            display_key(&path(&["kafka", "properties", "linger.ms"])),
            "kafka.properties.linger.ms"
        );
        assert_eq!(display_key(&[]), "");
    }
}
