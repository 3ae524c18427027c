//! The database side of a connector: its source's name, connection, password, TLS,
//! slot and publication, `snapshot.mode`, the outbox table and its marking.

use super::*;

impl Run<'_> {
    /// The source's name: `topic.prefix` (or 1.x's `database.server.name`), else the
    /// connector's name, else the database's, as letters, digits and `_`.
    pub(super) fn source_name(&mut self, connector: Option<&str>) -> String {
        let prefix = self.take("topic.prefix");
        let server = self.take("database.server.name");
        let own = self.take("name");
        let (raw, origin) = match (prefix, server, connector.or(own)) {
            (Some(p), _, _) => (p.to_string(), "topic.prefix"),
            (None, Some(s), _) => (s.to_string(), "database.server.name"),
            (None, None, Some(n)) => (n.to_string(), "the connector's name"),
            (None, None, None) => (
                self.opts
                    .get("database.dbname")
                    .cloned()
                    .unwrap_or_else(|| "debezium".into()),
                "database.dbname",
            ),
        };
        // `__` separates keys in RELAY_SOURCES__<NAME>__*: runs of `_` become one.
        let mut name = String::new();
        for c in raw.chars() {
            let c = if c.is_ascii_alphanumeric() { c } else { '_' };
            if !(c == '_' && (name.is_empty() || name.ends_with('_'))) {
                name.push(c);
            }
        }
        let mut name: String = name.trim_end_matches('_').chars().take(63).collect();
        if name.is_empty() {
            name = "debezium".into();
        }
        self.out.source.push(entry(
            "name",
            name.as_str(),
            format!("from {origin} ({raw:?}): the source's name in metrics, logs and RELAY_SOURCES__<NAME>__* variables"),
        ));
        name
    }

    pub(super) fn database(&mut self, name: &str) {
        match self.take("database.hostname") {
            Some(h) if !h.is_empty() => {
                self.out
                    .source
                    .push(entry("host", h, from("database.hostname", h)))
            }
            _ => self.refuse("database.hostname", "missing: the server to read from"),
        }
        let port = self.take("database.port").unwrap_or("5432");
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {
                self.out
                    .source
                    .push(entry("port", i64::from(p), from("database.port", port)))
            }
            _ => self.refuse("database.port", format!("{port:?} is not a port (1-65535)")),
        }
        match self.take("database.user") {
            Some(u) if !u.is_empty() => self.out.source.push(entry(
                "user",
                u,
                format!("{}; the role needs LOGIN REPLICATION, as the connector's does, and USAGE on the table's schema (with marking = \"status\" also sql/grants.sql's SELECT and UPDATE of status, processed_at)", from("database.user", u)),
            )),
            _ => self.refuse("database.user", "missing: the role the relay logs in as"),
        }
        self.password(name);
        match self.take("database.dbname") {
            Some(d) if !d.is_empty() => {
                self.out
                    .source
                    .push(entry("database", d, from("database.dbname", d)))
            }
            _ => self.refuse(
                "database.dbname",
                "missing: the database holding the outbox table",
            ),
        }
        self.tls();
    }

    /// Never copies a literal password; a Connect config provider reference becomes
    /// what the relay has for it.
    pub(super) fn password(&mut self, name: &str) {
        let var = format!("RELAY_SOURCES__{}__PASSWORD", name.to_ascii_uppercase());
        let Some(value) = self.take("database.password") else {
            self.out.source.push(note_only(
                "password",
                format!("none in the connector configuration (trust, or a client certificate); if one is needed: {var} or password_file"),
            ));
            return;
        };
        let reference = value
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .and_then(|r| r.split_once(':'));
        match reference {
            Some(("directory", path_key)) => match path_key.rsplit_once(':') {
                Some((dir, key)) => {
                    let file = format!("{}/{key}", dir.trim_end_matches('/'));
                    self.out.source.push(entry(
                        "password_file",
                        file.as_str(),
                        format!("database.password = {value} (DirectoryConfigProvider: the file holds the password; a trailing newline is dropped)"),
                    ));
                }
                None => self.out.source.push(note_only(
                    "password",
                    format!("database.password = {value}: set {var} or password_file"),
                )),
            },
            Some(("env", env)) => self.out.source.push(note_only(
                "password",
                format!("database.password = {value} (EnvVarConfigProvider): give the relay {var}=\"${env}\""),
            )),
            Some((provider, _)) => self.out.source.push(note_only(
                "password",
                format!("database.password = {value} ({provider} config provider): set {var}, or put the password alone in a file and set password_file"),
            )),
            None => self.out.source.push(note_only(
                "password",
                format!("database.password was given literally and is not copied (secrets stay out of this output): set {var} or password_file"),
            )),
        }
    }

    pub(super) fn tls(&mut self) {
        if let Some(mode) = self.take("database.sslmode") {
            match mode.to_ascii_lowercase().as_str() {
                m @ ("disable" | "prefer" | "require" | "verify-ca" | "verify-full") => self
                    .out
                    .source
                    .push(entry("sslmode", m, from("database.sslmode", mode))),
                "allow" => self.refuse(
                    "database.sslmode",
                    "allow (plaintext first, TLS only if refused) has no equivalent: relay-cdc's modes are disable, prefer, require, verify-ca, verify-full",
                ),
                other => self.refuse(
                    "database.sslmode",
                    format!("{other:?} is not a mode relay-cdc knows (disable, prefer, require, verify-ca, verify-full)"),
                ),
            }
        }
        for (option, key, note) in [
            ("database.sslrootcert", "sslrootcert", "CA certificates, PEM"),
            ("database.sslcert", "sslcert", "a client certificate, PEM"),
            ("database.sslkey", "sslkey", "the relay reads a PEM key; pgJDBC reads PKCS-8 DER (.pk8): convert it with `openssl pkcs8 -topk8 -nocrypt -inform DER -outform PEM`"),
        ] {
            if let Some(path) = self.take(option) {
                self.out
                    .source
                    .push(entry(key, path, format!("{}: {note}", from(option, path))));
            }
        }
    }

    pub(super) fn replication(&mut self) {
        match self.take("plugin.name") {
            Some(p) if p.eq_ignore_ascii_case("pgoutput") => {}
            Some(p) => self.refuse(
                "plugin.name",
                format!("{p}: relay-cdc decodes pgoutput only, so it cannot take this slot over; start it on a new slot, created while the connector still runs (README, \"Migrating from Debezium\")"),
            ),
            None => self.refuse(
                "plugin.name",
                "unset, so Debezium's default decoderbufs: relay-cdc decodes pgoutput only, so it cannot take this slot over; start it on a new slot, created while the connector still runs (README, \"Migrating from Debezium\")",
            ),
        }
        let slot = self.take("slot.name");
        let slot_value = slot.unwrap_or(DEFAULT_SLOT);
        if valid_slot(slot_value) {
            let origin = match slot {
                Some(s) => from("slot.name", s),
                None => format!("slot.name unset: Debezium's default, {DEFAULT_SLOT}"),
            };
            self.out.source.push(entry(
                "slot",
                slot_value,
                format!("{origin}; the connector's slot: the relay resumes where the connector last confirmed"),
            ));
        } else {
            self.refuse(
                "slot.name",
                format!(
                    "{slot_value:?}: a slot name is lower-case letters, digits and _ (at most 63)"
                ),
            );
        }
        match self.take("slot.drop.on.stop") {
            Some(v) if v.eq_ignore_ascii_case("true") => self.refuse(
                "slot.drop.on.stop",
                "true: the relay never drops its slot (dropping it loses the position, and rows committed meanwhile are found only by reconciliation)",
            ),
            Some(v) => self.ignore("slot.drop.on.stop", v, "the relay keeps its slot too"),
            None => {}
        }
        if let Some(v) = self.take("slot.failover") {
            match v.to_ascii_lowercase().as_str() {
                b @ ("true" | "false") => self.out.source.push(entry(
                    "failover_slot",
                    b == "true",
                    from("slot.failover", v),
                )),
                _ => self.refuse("slot.failover", format!("{v:?}: true or false")),
            }
        }
        if let Some(v) = self.take("lsn.flush.mode") {
            if v.eq_ignore_ascii_case("manual") {
                self.refuse(
                    "lsn.flush.mode",
                    "manual: the relay always confirms what Kafka acked to its slot",
                );
            } else {
                self.ignore(
                    "lsn.flush.mode",
                    v,
                    "the relay confirms what Kafka acked to its slot",
                );
            }
        }
        if let Some(v) = self.take("flush.lsn.source") {
            if v.eq_ignore_ascii_case("false") {
                self.refuse(
                    "flush.lsn.source",
                    "false: the relay always confirms what Kafka acked to its slot",
                );
            } else {
                self.ignore(
                    "flush.lsn.source",
                    v,
                    "the relay confirms what Kafka acked to its slot",
                );
            }
        }
        let publication = self.take("publication.name");
        let pub_value = publication.unwrap_or(DEFAULT_PUBLICATION);
        if valid_ident(pub_value) {
            let origin = match publication {
                Some(p) => from("publication.name", p),
                None => {
                    format!("publication.name unset: Debezium's default, {DEFAULT_PUBLICATION}")
                }
            };
            self.out
                .source
                .push(entry("publication", pub_value, origin));
        } else {
            self.refuse(
                "publication.name",
                format!(
                    "{pub_value:?}: relay-cdc takes publication names of letters, digits and _"
                ),
            );
        }
        let mode = self.take("publication.autocreate.mode");
        match mode.unwrap_or("all_tables").to_ascii_lowercase().as_str() {
            "disabled" => self.out.source.push(entry(
                "create_publication",
                false,
                "publication.autocreate.mode = disabled: the publication must exist, with the outbox table only",
            )),
            "filtered" => self.out.source.push(entry(
                "create_publication",
                true,
                format!("publication.autocreate.mode = filtered: when missing, the relay creates it for the outbox table (WITH publish = 'insert'). One the connector created publishes deletes too (relay-cdc check says so): each row deleted in the writer's transaction is then decoded for nothing; `alter publication {pub_value} set (publish = 'insert')` avoids that"),
            )),
            "all_tables" => {
                let origin = if mode.is_some() {
                    "publication.autocreate.mode = all_tables"
                } else {
                    "publication.autocreate.mode unset: Debezium's default, all_tables"
                };
                self.out.source.push(entry(
                    "create_publication",
                    true,
                    format!("{origin}: when missing, the relay creates it for the outbox table only. WARNING: if the connector created {pub_value} FOR ALL TABLES, the relay would read every table's inserts as outbox rows and stop at the first other one: check `select puballtables from pg_publication where pubname = '{pub_value}'` (README, \"Migrating from Debezium\")"),
                ));
            }
            "no_tables" => self.out.source.push(entry(
                "create_publication",
                false,
                "publication.autocreate.mode = no_tables: the publication is managed by hand; it must exist and hold the outbox table only",
            )),
            other => self.refuse(
                "publication.autocreate.mode",
                format!("{other:?} is not one of disabled, all_tables, filtered, no_tables"),
            ),
        }
        self.snapshot_mode();
    }

    /// `snapshot.mode` → whether the relay may create its slot. Under `marking = "none"`
    /// it never snapshots the table and a slot it creates begins at its creation, so no
    /// mode lets it create one unasked: a missing slot stops it rather than leave a gap.
    pub(super) fn snapshot_mode(&mut self) {
        let mode = self.take("snapshot.mode");
        let value = mode.unwrap_or("initial").to_ascii_lowercase();
        let origin = match mode {
            Some(m) => from("snapshot.mode", m),
            None => "snapshot.mode unset: Debezium's default, initial".into(),
        };
        match value.as_str() {
            "initial" | "when_needed" | "exported" => self.out.source.push(entry(
                "create_slot",
                false,
                format!("{origin}: Debezium snapshots the table when the connector has no offsets (every row still in it becomes an event; none where rows are deleted in the writer's transaction), else resumes its slot. Under marking = \"none\" the relay cannot snapshot (nothing tells a delivered row from another) and a slot it created would begin at its creation, missing the rows committed before it that the connector had not delivered: so it resumes the connector's slot only and stops if that is missing. To move to a new slot, create it while the connector still runs, or set create_slot = true and start the relay before stopping the connector (README, \"Migrating from Debezium\")"),
            )),
            "no_data" | "never" => self.out.source.push(entry(
                "create_slot",
                false,
                format!("{origin}: no snapshot, ever: the relay resumes the existing slot only and stops if it is missing"),
            )),
            "always" => self.refuse("snapshot.mode", "always: Debezium snapshots the whole table at every start; the relay takes no snapshot, it resumes from its slot"),
            "initial_only" => self.refuse("snapshot.mode", "initial_only: Debezium snapshots and never streams; the relay streams from its slot"),
            "configuration_based" | "custom" => self.refuse(
                "snapshot.mode",
                format!("{value}: the relay takes no snapshot of the table; it resumes its slot (snapshot.mode = initial or no_data)"),
            ),
            other => self.refuse("snapshot.mode", format!("{other:?} is not a snapshot mode of Debezium's PostgreSQL connector")),
        }
        let opts = self.opts;
        let keys: Vec<&String> = opts
            .keys()
            .filter(|k| {
                k.starts_with("snapshot.mode.")
                    || k.starts_with("snapshot.select.")
                    || k.starts_with("snapshot.include.")
            })
            .collect();
        for k in keys {
            self.take(k);
            self.refuse(
                k,
                "shapes Debezium's snapshot, which the relay does not take",
            );
        }
    }

    /// `table.include.list` → the source's `schema` and `table`: one table, named.
    pub(super) fn table(&mut self) {
        let include = self.take("table.include.list");
        let whitelist = self.take("table.whitelist");
        let (option, list) = match (include, whitelist) {
            (Some(l), _) => ("table.include.list", l),
            (None, Some(l)) => ("table.whitelist", l),
            (None, None) => {
                self.refuse(
                    "table.include.list",
                    "unset: the connector captures every table; relay-cdc reads one outbox table, named as schema.table",
                );
                return;
            }
        };
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let [one] = entries.as_slice() else {
            self.refuse(
                option,
                format!("{list:?}: relay-cdc reads one outbox table per source (convert one connector per table)"),
            );
            return;
        };
        let plain = one.replace("\\.", ".");
        let Some((schema, table)) = plain
            .split_once('.')
            .filter(|(s, t)| valid_ident(s) && valid_ident(t))
        else {
            self.refuse(
                option,
                format!(
                    "{one:?}: a table is named schema.table, letters, digits and _ (no pattern)"
                ),
            );
            return;
        };
        for key in ["schema.include.list", "schema.whitelist"] {
            match self.take(key) {
                Some(s) if s == schema => self.ignore(key, s, "the table's schema"),
                Some(s) => {
                    self.refuse(key, format!("{s:?}: the relay reads {schema}.{table} only"))
                }
                None => {}
            }
        }
        self.out
            .source
            .push(entry("schema", schema, from(option, one)));
        self.out
            .source
            .push(entry("table", table, from(option, one)));
    }

    /// `marking = "none"`: Debezium writes nothing back to the table, and its
    /// documented pattern deletes each row in the writer's transaction (no status column).
    pub(super) fn marking(&mut self) {
        self.out.source.push(entry(
            "marking",
            "none",
            "Debezium writes nothing back to the table, and its documented outbox pattern deletes each row in the writer's transaction (no status column): the relay writes nothing back either. That gives up what the relay's status column gives: a slot the relay creates does not publish the rows written before it (no reconciliation), a lost or invalidated slot halts the source instead of being recreated, no audit of the table against the slot, no retention. If the table has the relay's status columns (status, created_at, processed_at: sql/outbox/0001_outbox.sql), marking = \"status\" brings them back; the rows Debezium delivered are still PENDING there, so mark them PROCESSED first, or a slot the relay creates publishes them again (reconciliation)",
        ));
    }
}
