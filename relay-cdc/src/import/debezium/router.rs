//! The outbox event router's side of a connector: the transformation, its predicate,
//! its options as the user wrote them, the table mapping they imply (`columns.rs`) and
//! the converters, checked by the relay's own parser over that mapping.

use super::columns::TYPE_OPTION;
use super::*;

impl Run<'_> {
    /// `transforms`: exactly one transformation, Debezium's outbox event router; its
    /// options and the converters go to `[kafka.debezium]`, checked by the relay's parser.
    pub(super) fn router(&mut self) {
        let names: Vec<String> = self
            .take("transforms")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            self.refuse(
                "transforms",
                format!("no outbox event router: without {EVENT_ROUTER} the connector emits change events, which relay-cdc does not make"),
            );
        }
        let mut router: Option<String> = None;
        for n in &names {
            let key = format!("transforms.{n}.type");
            match self.take(&key) {
                Some(EVENT_ROUTER) if router.is_none() => router = Some(n.clone()),
                Some(EVENT_ROUTER) => self.refuse(&key, "a second outbox event router: relay-cdc applies one"),
                Some(other) => self.refuse(
                    &key,
                    format!("{other}: relay-cdc applies Debezium's outbox event router and no other transformation"),
                ),
                None => self.refuse(&key, "missing: the transformation's class"),
            }
        }
        self.out.kafka.push(entry(
            "format",
            "debezium",
            "what Debezium's outbox event router emits, through the converters below",
        ));
        let mut options: BTreeMap<String, String> = BTreeMap::new();
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        let mut table = TableColumns::relay_outbox();
        if let Some(n) = &router {
            self.predicate(n);
            let prefix = format!("transforms.{n}.");
            let keys: Vec<String> = self
                .opts
                .keys()
                .filter(|k| k.starts_with(&prefix) && !self.taken.contains(*k))
                .cloned()
                .collect();
            for key in keys {
                let value = self.take(&key).unwrap_or_default();
                let option = key[prefix.len()..].to_string();
                origins.insert(option.clone(), key);
                options.insert(option, value.to_string());
            }
            // It names the event type column; Debezium's router reads it for nothing and
            // the format knows it only at its default, so it goes to the mapping alone.
            let event_type = options.remove(TYPE_OPTION);
            table = self.columns(&prefix, &options, event_type.as_deref());
        }
        for conv in ["key.converter", "value.converter", "header.converter"] {
            if let Some(v) = self.take(conv) {
                origins.insert(conv.into(), conv.into());
                options.insert(conv.into(), v.to_string());
            }
        }
        self.schemas_enable(&options);
        if !options.contains_key("key.converter") || !options.contains_key("value.converter") {
            self.out.notes.push("The connector configuration does not set key.converter and value.converter, so the Connect worker's apply (not in this file). The relay's default is StringConverter for both; if the worker uses JsonConverter with schemas.enable=false, set \"key.converter\" / \"value.converter\" = \"json\" below.".into());
        }
        self.check_router(&options, &origins, &table);
        for (option, value) in options {
            let origin = &origins[&option];
            self.out.debezium.push(entry(
                &option,
                value.as_str(),
                from(origin, &self.opts[origin]),
            ));
        }
    }

    /// A predicate on the router: accepted when it selects records by topic (the outbox
    /// table's, as Debezium's docs advise); the relay reads that table only.
    pub(super) fn predicate(&mut self, router: &str) {
        let used = self.take(&format!("transforms.{router}.predicate"));
        if let Some(v) = self.take(&format!("transforms.{router}.negate")) {
            if !v.eq_ignore_ascii_case("false") {
                self.refuse(&format!("transforms.{router}.negate"), "a negated predicate routes what is not the outbox table; the relay reads the outbox table only");
            }
        }
        let declared: Vec<String> = self
            .take("predicates")
            .map(|p| {
                p.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        for p in declared {
            let type_key = format!("predicates.{p}.type");
            if Some(p.as_str()) != used {
                self.refuse(&format!("predicates.{p}"), "a predicate the outbox router does not use: relay-cdc has no other transformation");
                continue;
            }
            match self.take(&type_key) {
                Some(TOPIC_NAME_MATCHES) => {
                    let pattern_key = format!("predicates.{p}.pattern");
                    let pattern = self.take(&pattern_key).unwrap_or_default();
                    self.ignore(&pattern_key, pattern, "selects the outbox table's records for the router; the relay reads that table only");
                }
                Some(other) => self.refuse(&type_key, format!("{other}: only TopicNameMatches (selecting the outbox table's records) is accepted")),
                None => self.refuse(&type_key, "missing: the predicate's class"),
            }
        }
    }

    /// `*.converter.schemas.enable`: JsonConverter writes schemas unless told not to;
    /// the relay writes JSON without them.
    pub(super) fn schemas_enable(&mut self, options: &BTreeMap<String, String>) {
        for conv in ["key.converter", "value.converter"] {
            let json = options
                .get(conv)
                .is_some_and(|c| c == "json" || c == "org.apache.kafka.connect.json.JsonConverter");
            let key = format!("{conv}.schemas.enable");
            match (self.take(&key), json) {
                (Some(v), true) if v.eq_ignore_ascii_case("false") => self.ignore(&key, v, "the relay's JSON has no schemas"),
                (Some(v), true) => self.refuse(&key, format!("{v}: relay-cdc writes JSON without schemas (schemas.enable=false) only")),
                (None, true) => self.refuse(&key, "unset, so JsonConverter's default, true (a schema in every record): relay-cdc writes JSON without schemas; say schemas.enable=false if that is what consumers get"),
                (Some(v), false) => self.ignore(&key, v, "read by JsonConverter only"),
                (None, false) => {}
            }
        }
    }

    /// The relay's parser over the router's options and the table mapping: each alone
    /// (so every bad option is named), then all together (for rules between options).
    pub(super) fn check_router(
        &mut self,
        options: &BTreeMap<String, String>,
        origins: &BTreeMap<String, String>,
        table: &TableColumns,
    ) {
        let mut refused = BTreeSet::new();
        for (option, value) in options {
            let mut alone = BTreeMap::from([(option.clone(), value.clone())]);
            if option != "value.converter" {
                alone.insert("value.converter".into(), "json".into());
            }
            if let Err(e) = EventRouter::from_options(&alone, table) {
                refused.insert(e.option.clone());
                let origin = origins.get(&e.option).unwrap_or(&e.option);
                self.refuse(origin, e.message);
            }
        }
        if refused.is_empty() {
            if let Err(e) = EventRouter::from_options(options, table) {
                let origin = origins
                    .get(&e.option)
                    .cloned()
                    .unwrap_or_else(|| e.option.clone());
                self.refuse(&origin, e.message);
            }
        }
    }
}
