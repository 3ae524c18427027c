//! The user's outbox table as it is: `[sources.columns]`, each role's column from the
//! router's option for it or from Debezium's default, and `extra` for the further
//! columns the placements name. The router's options keep the names the user wrote; the
//! loader resolves them against this mapping, so nothing is renamed and no table has to
//! be migrated.
//!
//! The relay's decoder needs a column for each of its five roles, where Debezium's
//! router reads only the columns its options name (Debezium 3 reads
//! `table.field.event.type` for nothing): a role no option names gets Debezium's default
//! column, or the relay's own name for it when the router's options already use the
//! relay's names (the bench's connector reads the relay's own table). `relay-cdc check`
//! names a mapped column the table lacks.

use super::*;

/// A role of `[sources.columns]`, the router option naming its column, Debezium's
/// default column for it and the relay's own table's.
struct Role {
    key: &'static str,
    option: &'static str,
    debezium: &'static str,
    relay: &'static str,
}

/// In the order columns are given to roles: a column the options name for two roles
/// goes to the earlier one (routing by the event type column is common; the aggregate
/// type then keeps its own column).
const ROLES: [Role; 5] = [
    Role {
        key: "id",
        option: "table.field.event.id",
        debezium: "id",
        relay: "id",
    },
    Role {
        key: "payload",
        option: "table.field.event.payload",
        debezium: "payload",
        relay: "payload",
    },
    Role {
        key: "aggregate_id",
        option: "table.field.event.key",
        debezium: "aggregateid",
        relay: "aggregate_id",
    },
    Role {
        key: "event_type",
        option: TYPE_OPTION,
        debezium: "type",
        relay: "event_type",
    },
    Role {
        key: "aggregate_type",
        option: "route.by.field",
        debezium: "aggregatetype",
        relay: "aggregate_type",
    },
];

/// The order of `[sources.columns]` in the output (the relay's documentation's).
const OUTPUT_ORDER: [&str; 5] = [
    "id",
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "payload",
];

/// Debezium 3's router declares this option (default `type`) and reads it for nothing;
/// here it names the event type column and is not repeated in `[kafka.debezium]`.
pub(super) const TYPE_OPTION: &str = "table.field.event.type";

/// The columns a placement list names, as Debezium splits it (`column:placement[:alias]`).
fn placed_columns(list: &str) -> Vec<&str> {
    list.split(',')
        .filter_map(|entry| entry.split(':').next())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Whether the router's options name the relay's own columns (`aggregate_type`, ...)
/// and none of Debezium's default names.
fn relay_names(named: &[&str]) -> bool {
    let relay_only = |c: &&str| ROLES.iter().any(|r| r.relay != r.debezium && r.relay == *c);
    let debezium_only = |c: &&str| {
        ROLES
            .iter()
            .any(|r| r.relay != r.debezium && r.debezium == *c)
    };
    named.iter().any(relay_only) && !named.iter().any(debezium_only)
}

/// Roles given a column so far: role key, column, the note above it.
type Mapped = Vec<(&'static str, String, String)>;

/// The role `column` already plays.
fn owner(column: &str, mapped: &Mapped) -> Option<&'static str> {
    mapped
        .iter()
        .find(|(_, c, _)| c == column)
        .map(|(k, _, _)| *k)
}

impl Run<'_> {
    /// `[sources.columns]` for the router's `options` (Debezium's names, as written;
    /// `table.field.event.type` already taken out of them into `event_type`), pushed to
    /// the output; the mapping as the format reads it.
    pub(super) fn columns(
        &mut self,
        prefix: &str,
        options: &BTreeMap<String, String>,
        event_type: Option<&str>,
    ) -> TableColumns {
        let given = |role: &Role| -> Option<&str> {
            if role.option == TYPE_OPTION {
                event_type
            } else {
                options.get(role.option).map(|v| v.trim())
            }
        };
        let placement = options
            .get("table.fields.additional.placement")
            .map(String::as_str)
            .unwrap_or("");
        let mut named: Vec<&str> = ROLES.iter().filter_map(given).collect();
        named.extend(placed_columns(placement));
        let relay = relay_names(&named);

        let mut mapped: Mapped = Vec::new();
        for role in &ROLES {
            let origin = format!("{prefix}{}", role.option);
            let default = if relay { role.relay } else { role.debezium };
            let default_note = if relay && role.relay != role.debezium {
                format!("{origin} unset: Debezium's default would be {}, but the router's options name the relay's own columns, so the relay's {} is assumed", role.debezium, role.relay)
            } else if role.option == TYPE_OPTION {
                format!("{origin} unset: Debezium's default, {default} (Debezium's router does not read it; the relay needs the column)")
            } else {
                format!("{origin} unset: Debezium's default, {default}")
            };
            let (column, note) = match given(role) {
                Some(c) => match owner(c, &mapped) {
                    None if role.option == TYPE_OPTION => (
                        c.to_string(),
                        format!("{}: not repeated in [kafka.debezium] (Debezium's router does not read it; the relay needs the column)", from(&origin, c)),
                    ),
                    None => (c.to_string(), from(&origin, c)),
                    Some(other) => (
                        default.to_string(),
                        format!("{origin} = {c} names the {other} column, which plays that role; the {} role needs a column of its own: {default_note}", role.key),
                    ),
                },
                None => (default.to_string(), default_note),
            };
            if !valid_ident(&column) {
                self.refuse(
                    &origin,
                    format!("{column:?}: relay-cdc maps columns named with letters, digits and _ (at most 63)"),
                );
                continue;
            }
            if let Some(other) = owner(&column, &mapped) {
                self.refuse(
                    &origin,
                    format!("the {} role would take column {column}, already the {other}'s: relay-cdc maps each of id, aggregate_type, aggregate_id, event_type and payload to a column of its own", role.key),
                );
                continue;
            }
            mapped.push((role.key, column, note));
        }

        let column_of = |key: &str| {
            mapped
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, c, _)| c.clone())
                .unwrap_or_default()
        };
        let mut extra: Vec<String> = Vec::new();
        for c in placed_columns(placement) {
            // A name the loader would refuse stays out: the format refuses the placement by name.
            if valid_ident(c)
                && !mapped.iter().any(|(_, m, _)| m == c)
                && !extra.iter().any(|e| e == c)
            {
                extra.push(c.to_string());
            }
        }

        self.out.columns.push(note_only(
            "",
            "The outbox table's columns by role, as the connector's router names them: the router's options in [kafka.debezium] keep the names the connector gives and are resolved against this mapping. The relay reads a column for each of the five roles (Debezium's router only those its options name): `relay-cdc check` names one the table lacks.",
        ));
        for key in OUTPUT_ORDER {
            if let Some((_, column, note)) = mapped.iter().find(|(k, _, _)| *k == key) {
                self.out
                    .columns
                    .push(entry(key, column.as_str(), note.clone()));
            }
        }
        if !extra.is_empty() {
            let list = toml::Value::Array(
                extra
                    .iter()
                    .map(|c| toml::Value::from(c.as_str()))
                    .collect(),
            );
            self.out.columns.push(entry(
                "extra",
                list,
                format!("named by {prefix}table.fields.additional.placement and playing no role above: the columns the placements read"),
            ));
        }
        TableColumns {
            id: column_of("id"),
            aggregate_type: column_of("aggregate_type"),
            aggregate_id: column_of("aggregate_id"),
            event_type: column_of("event_type"),
            payload: column_of("payload"),
            timestamp: None,
            others: extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relays_own_names_are_told_from_debeziums() {
        assert!(relay_names(&["id", "aggregate_type", "aggregate_id"]));
        assert!(relay_names(&["event_type"]));
        assert!(!relay_names(&["aggregatetype"]));
        assert!(!relay_names(&["id", "payload"]));
        assert!(!relay_names(&["aggregate_type", "type"]));
        assert_eq!(
            placed_columns("id:header:event_id,created_at:header,x"),
            ["id", "created_at", "x"]
        );
    }
}
