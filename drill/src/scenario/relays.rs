//! The relays' settings in a scenario: where they read and write, as which role, and
//! what the scenario changes (scenario 5's slow marking, scenario 7's proxy and
//! failover slots, exactly-once's checkpoint topic and transactional ids). Every relay
//! audits the outbox table against its slot every [`AUDIT_INTERVAL_MS`], so an orphan
//! shows within a scenario (the relay's default, 30 s, outlasts a short scenario and
//! many of scenario 1's relay lifetimes). With message capture both sources read
//! messages with the capture's prefix (`capture`, `message_prefix`); the relay runs no
//! audit then, as there is no table.

use testkit::relay::kafka_properties_env;
use testkit::Delivery;

use super::catalog::Scenario;
use super::ctx::Names;
use crate::stack::StackConfig;

/// `pipeline.audit_interval_ms` of every drill relay.
pub(super) const AUDIT_INTERVAL_MS: u64 = 2000;
/// `pipeline.audit_grace_ms`: a round notes PENDING rows older than this. Shorter than
/// the relay's 5 s so rounds in a 10 s scenario have rows to check; a row in flight only
/// makes a round wait longer, never makes it wrong.
pub(super) const AUDIT_GRACE_MS: u64 = 1000;

/// The relays' environment; `pg_port` is where they reach PostgreSQL, `slot_sync`
/// whether scenario 7's slots are failover slots.
pub(super) fn relay_env(
    stack: &StackConfig,
    names: &Names,
    sc: Scenario,
    delivery: Delivery,
    (pg_port, slot_sync): (u16, bool),
    message_prefix: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = vec![
        ("RELAY_KAFKA__BROKERS".to_string(), stack.brokers()),
        (
            "RELAY_KAFKA__TOPIC_TEMPLATE".to_string(),
            format!("{}outbox.event.{{aggregate_type}}", names.prefix),
        ),
        ("RUST_LOG".to_string(), "info,rdkafka=warn".to_string()),
        (
            "RELAY_PIPELINE__AUDIT_INTERVAL_MS".to_string(),
            AUDIT_INTERVAL_MS.to_string(),
        ),
        (
            "RELAY_PIPELINE__AUDIT_GRACE_MS".to_string(),
            AUDIT_GRACE_MS.to_string(),
        ),
    ];
    // On the secured stack: its own principal, over SASL_SSL.
    env.extend(kafka_properties_env(stack.kafka_security("relay_cdc")?));
    let (user, password) = stack.relay_role()?;
    for (source, db) in [
        ("USERS_DB", &names.users_db),
        ("TRANSACTION_DB", &names.tx_db),
    ] {
        let p = format!("RELAY_SOURCES__{source}__");
        env.extend([
            (format!("{p}HOST"), stack.host().to_string()),
            (format!("{p}PORT"), pg_port.to_string()),
            (format!("{p}USER"), user.clone()),
            (format!("{p}PASSWORD"), password.clone()),
            (format!("{p}DATABASE"), db.clone()),
            (format!("{p}SLOT"), db.clone()),
        ]);
        for (k, v) in stack.pg_tls() {
            env.push((format!("{p}{}", k.to_uppercase()), v));
        }
        if let Some(prefix) = message_prefix {
            env.push((format!("{p}CAPTURE"), "messages".into()));
            env.push((format!("{p}MESSAGE_PREFIX"), prefix.to_string()));
        }
    }
    if sc == Scenario::PrimaryFailover && !slot_sync {
        for source in ["USERS_DB", "TRANSACTION_DB"] {
            env.push((
                format!("RELAY_SOURCES__{source}__FAILOVER_SLOT"),
                "false".into(),
            ));
        }
    }
    if sc == Scenario::AckBeforeMark {
        // Marking lags the acks by seconds: a crash lands between ack and PROCESSED.
        env.push(("RELAY_PIPELINE__MARK_INTERVAL_MS".into(), "3000".into()));
        env.push(("RELAY_PIPELINE__MARK_BATCH_SIZE".into(), "1000000".into()));
    }
    if delivery == Delivery::ExactlyOnce {
        env.extend([
            (
                "RELAY_KAFKA__DELIVERY".to_string(),
                delivery.as_str().to_string(),
            ),
            (
                "RELAY_KAFKA__CHECKPOINT_TOPIC".to_string(),
                names.checkpoint_topic.clone(),
            ),
            (
                "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX".to_string(),
                names.transactional_id_prefix.clone(),
            ),
        ]);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn stack() -> StackConfig {
        StackConfig {
            repo: PathBuf::from("/repo"),
            dir: PathBuf::from("/repo/.stack/drill"),
            pg_port: 55532,
            kafka_port: 59192,
            kafka_controller_port: 59193,
            secured: false,
        }
    }

    fn var<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn exactly_once_relays_get_the_mode_and_a_checkpoint_topic_of_the_scenario() {
        let names = Names::new("20261201120000", Scenario::Standby);
        let env = relay_env(
            &stack(),
            &names,
            Scenario::Standby,
            Delivery::ExactlyOnce,
            (55532, true),
            None,
        )
        .unwrap();
        assert_eq!(var(&env, "RELAY_KAFKA__DELIVERY"), Some("exactly-once"));
        assert_eq!(
            var(&env, "RELAY_KAFKA__CHECKPOINT_TOPIC"),
            Some("drill.20261201120000.s4.checkpoints")
        );
        assert_eq!(
            var(&env, "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX"),
            Some("drill.20261201120000.s4.relay-")
        );
        let other = Names::new("20261201120000", Scenario::RelayKill);
        assert_ne!(names.checkpoint_topic, other.checkpoint_topic);
        assert_ne!(names.transactional_id_prefix, other.transactional_id_prefix);
    }

    #[test]
    fn at_least_once_relays_run_with_the_relays_defaults() {
        let names = Names::new("20261201120000", Scenario::RelayKill);
        let env = relay_env(
            &stack(),
            &names,
            Scenario::RelayKill,
            Delivery::AtLeastOnce,
            (55532, true),
            None,
        )
        .unwrap();
        for key in [
            "RELAY_KAFKA__DELIVERY",
            "RELAY_KAFKA__CHECKPOINT_TOPIC",
            "RELAY_KAFKA__TRANSACTIONAL_ID_PREFIX",
        ] {
            assert_eq!(var(&env, key), None, "{key}");
        }
    }

    #[test]
    fn every_relay_audits_often_enough_to_find_an_orphan_within_a_short_scenario() {
        for sc in Scenario::ALL {
            let names = Names::new("20261201120000", sc);
            let env = relay_env(
                &stack(),
                &names,
                sc,
                Delivery::AtLeastOnce,
                (55532, true),
                None,
            )
            .unwrap();
            assert_eq!(
                var(&env, "RELAY_PIPELINE__AUDIT_INTERVAL_MS"),
                Some("2000"),
                "{sc:?}"
            );
            assert_eq!(var(&env, "RELAY_PIPELINE__AUDIT_GRACE_MS"), Some("1000"));
        }
    }

    #[test]
    fn scenario_7_reaches_postgresql_through_the_proxy_and_may_turn_failover_slots_off() {
        let names = Names::new("20261201120000", Scenario::PrimaryFailover);
        let env = relay_env(
            &stack(),
            &names,
            Scenario::PrimaryFailover,
            Delivery::AtLeastOnce,
            (40001, false),
            None,
        )
        .unwrap();
        assert_eq!(var(&env, "RELAY_SOURCES__USERS_DB__PORT"), Some("40001"));
        assert_eq!(
            var(&env, "RELAY_SOURCES__TRANSACTION_DB__FAILOVER_SLOT"),
            Some("false")
        );
        let synced = relay_env(
            &stack(),
            &names,
            Scenario::PrimaryFailover,
            Delivery::AtLeastOnce,
            (40001, true),
            None,
        )
        .unwrap();
        assert_eq!(var(&synced, "RELAY_SOURCES__USERS_DB__FAILOVER_SLOT"), None);
        assert_eq!(
            Scenario::from_number(7),
            Some(Scenario::PrimaryFailover),
            "chosen by number, not in the default set"
        );
        assert!(!Scenario::ALL.contains(&Scenario::PrimaryFailover));
    }

    #[test]
    fn message_capture_sets_both_sources_to_messages_with_the_prefix() {
        let names = Names::new("20261201120000", Scenario::RelayKill);
        let env = relay_env(
            &stack(),
            &names,
            Scenario::RelayKill,
            Delivery::AtLeastOnce,
            (55532, true),
            Some("outbox"),
        )
        .unwrap();
        for source in ["USERS_DB", "TRANSACTION_DB"] {
            assert_eq!(
                var(&env, &format!("RELAY_SOURCES__{source}__CAPTURE")),
                Some("messages")
            );
            assert_eq!(
                var(&env, &format!("RELAY_SOURCES__{source}__MESSAGE_PREFIX")),
                Some("outbox")
            );
        }
        let table = relay_env(
            &stack(),
            &names,
            Scenario::RelayKill,
            Delivery::AtLeastOnce,
            (55532, true),
            None,
        )
        .unwrap();
        assert_eq!(var(&table, "RELAY_SOURCES__USERS_DB__CAPTURE"), None);
    }
}
