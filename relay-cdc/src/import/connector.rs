//! A Kafka Connect connector configuration as it is written down: JSON (the body POSTed
//! to Connect, `{"name": ..., "config": {...}}`, or the bare `{...}` config object) or a
//! Java `.properties` file (what `connect-standalone` reads). Either becomes one map of
//! option name → value as text, which is all Connect itself sees.
//!
//! The `.properties` reader is hand-written: it is Java's `Properties.load` grammar
//! (comments, `=`/`:`/blank separators, line continuations, backslash escapes), a page of
//! code, and no maintained crate reads exactly that grammar.

use std::collections::BTreeMap;

/// A connector's configuration: its name (when the input gives one) and its options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorConfig {
    pub name: Option<String>,
    pub options: BTreeMap<String, String>,
}

impl ConnectorConfig {
    /// Reads `text`: JSON when it starts with `{` (after blanks), else `.properties`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Ok(Self::from_properties(text))
        }
    }

    /// `{"name": ..., "config": {...}}` or a flat config object. Values may be strings,
    /// numbers or booleans (Connect takes each as its text).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let serde_json::Value::Object(mut top) = value else {
            return Err("a JSON object is expected".into());
        };
        let (name, object) = match top.remove("config") {
            Some(serde_json::Value::Object(config)) => {
                let name = match top.remove("name") {
                    Some(serde_json::Value::String(n)) => Some(n),
                    _ => None,
                };
                (name, config)
            }
            Some(_) => return Err("\"config\" must be an object".into()),
            None => (None, top),
        };
        let mut options = BTreeMap::new();
        for (key, value) in object {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => continue,
                other => return Err(format!("{key}: a string is expected (got {other})")),
            };
            options.insert(key, text);
        }
        let name = name.or_else(|| options.get("name").cloned());
        Ok(Self { name, options })
    }

    /// Java's `Properties.load`: `#`/`!` comments, `key=value`, `key: value` or
    /// `key value`, a trailing `\` continues the line, `\t \n \r \f \uXXXX` escapes,
    /// any other escaped character stands for itself. A later key wins.
    pub fn from_properties(text: &str) -> Self {
        let mut options = BTreeMap::new();
        let mut lines = text.lines();
        while let Some(first) = lines.next() {
            let mut line = first.trim_start().to_string();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            while ends_with_odd_backslashes(&line) {
                line.pop();
                match lines.next() {
                    Some(next) => line.push_str(next.trim_start()),
                    None => break,
                }
            }
            let (key, value) = split_key_value(&line);
            options.insert(unescape(key), unescape(value));
        }
        let name = options.get("name").cloned();
        Self { name, options }
    }
}

fn ends_with_odd_backslashes(line: &str) -> bool {
    line.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// The key ends at the first unescaped `=`, `:` or blank; blanks, then one `=` or `:`,
/// then blanks separate it from the value.
fn split_key_value(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' | b':' | b' ' | b'\t' | b'\x0c' => break,
            _ => i += 1,
        }
    }
    let key_end = i.min(bytes.len());
    let rest = &line[key_end..];
    let rest = rest.trim_start_matches([' ', '\t', '\x0c']);
    let rest = rest
        .strip_prefix(['=', ':'])
        .unwrap_or(rest)
        .trim_start_matches([' ', '\t', '\x0c']);
    (&line[..key_end], rest)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => {
                        out.push_str("\\u");
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_as_posted_to_connect_and_as_a_bare_config_read_alike() {
        let posted = r#"{"name": "orders", "config": {"database.port": 5432,
            "slot.drop.on.stop": false, "topic.prefix": "dbserver1"}}"#;
        let bare = r#"{"name": "orders", "database.port": "5432",
            "slot.drop.on.stop": "false", "topic.prefix": "dbserver1"}"#;
        let a = ConnectorConfig::parse(posted).unwrap();
        let b = ConnectorConfig::parse(bare).unwrap();
        assert_eq!(a.name.as_deref(), Some("orders"));
        assert_eq!(b.name.as_deref(), Some("orders"));
        for c in [&a, &b] {
            assert_eq!(c.options["database.port"], "5432");
            assert_eq!(c.options["slot.drop.on.stop"], "false");
        }
        assert!(ConnectorConfig::parse("{\"config\": 3}").is_err());
        assert!(ConnectorConfig::parse("{not json").is_err());
    }

    #[test]
    fn properties_follow_javas_grammar() {
        let text = "# a comment\n\
                    ! another\n\
                    name=orders\n\
                    database.hostname : db.internal\n\
                    topic.prefix dbserver1\n\
                    transforms.outbox.route.topic.replacement=outbox.${routedByValue}\n\
                    table.include.list=inventory.outboxevent,\\\n    \
                    inventory.other\n\
                    key\\=with\\:separators=a\\tb\\u00e9\n\
                    empty=\n";
        let c = ConnectorConfig::parse(text).unwrap();
        assert_eq!(c.name.as_deref(), Some("orders"));
        assert_eq!(c.options["database.hostname"], "db.internal");
        assert_eq!(c.options["topic.prefix"], "dbserver1");
        assert_eq!(
            c.options["transforms.outbox.route.topic.replacement"],
            "outbox.${routedByValue}"
        );
        assert_eq!(
            c.options["table.include.list"],
            "inventory.outboxevent,inventory.other"
        );
        assert_eq!(c.options["key=with:separators"], "a\tbé");
        assert_eq!(c.options["empty"], "");
        assert_eq!(c.options.len(), 7);
    }
}
