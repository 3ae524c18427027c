//! A [`Conversion`] as the TOML file the relay loads, with a comment above each key
//! saying which connector option it came from. Values are written by the `toml` crate
//! (quoting and escaping are its business); the comments are the only hand-made text.

use std::fmt::Write as _;

use super::debezium::{Conversion, Entry};

const WIDTH: usize = 92;

/// The configuration file for `c`, converted from the file named `input`.
pub fn render(c: &Conversion, input: &str) -> String {
    let mut out = String::new();
    let what = match &c.connector {
        Some(name) => format!("Debezium connector {name:?} ({input})"),
        None => input.to_string(),
    };
    comment(
        &mut out,
        "",
        &format!("relay-cdc configuration converted from {what} by `relay-cdc import-debezium`. Check it with `relay-cdc check --config <this file>`; the switch itself: relay-cdc/README.md, \"Migrating from Debezium\"."),
    );
    for note in &c.notes {
        out.push_str("#\n");
        comment(&mut out, "", note);
    }
    if !c.ignored.is_empty() {
        out.push_str("#\n# Accepted and ignored (nothing for the relay to do):\n");
        for (option, value, why) in &c.ignored {
            comment(&mut out, "    ", &format!("{option} = {value}: {why}"));
        }
    }
    section(&mut out, "[kafka]", &c.kafka, false);
    section(&mut out, "[kafka.debezium]", &c.debezium, true);
    section(&mut out, "[kafka.properties]", &c.properties, true);
    section(&mut out, "[pipeline]", &c.pipeline, false);
    section(&mut out, "[[sources]]", &c.source, false);
    section(&mut out, "[sources.columns]", &c.columns, false);
    out
}

fn section(out: &mut String, header: &str, entries: &[Entry], quoted: bool) {
    if entries.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{header}");
    for e in entries {
        match &e.value {
            None if e.key.is_empty() => comment(out, "", &e.note),
            None => comment(out, "", &format!("{}: {}", e.key, e.note)),
            Some(value) => {
                comment(out, "", &e.note);
                let key = if quoted {
                    toml::Value::String(e.key.clone()).to_string()
                } else {
                    e.key.clone()
                };
                let _ = writeln!(out, "{key} = {value}");
            }
        }
    }
}

/// `text` as `#` lines of at most [`WIDTH`] characters where words allow; lines after
/// the first of an indented item are indented two more.
fn comment(out: &mut String, indent: &str, text: &str) {
    let more = format!("{indent}  ");
    let mut indent = indent;
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && 2 + indent.len() + line.len() + 1 + word.len() > WIDTH {
            let _ = writeln!(out, "# {indent}{line}");
            line.clear();
            if !indent.is_empty() {
                indent = &more;
            }
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "# {indent}{line}");
    }
}
