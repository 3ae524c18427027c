//! relay-cdc on the secured stack (`STACK_SECURITY=tls scripts/stack up`): TLS-only
//! PostgreSQL with the relay's least-privilege role, SASL_SSL-only Kafka with ACLs. What a
//! wrong setting looks like: refused by name, a halt with `/healthz` 503, never a restart
//! loop; and no secret in any log line or answer.
//!
//! These need that stack, so they are ignored on the plain one; `scripts/test` runs them
//! on the secured stack with `--include-ignored`.

use std::time::Duration;

use crate::helpers::{insert_txn, RelaySetup, Source, READY, STOP};
use crate::relay_cli;

const WAIT: Duration = Duration::from_secs(60);
const NEEDS: &str = "needs the secured stack: STACK_SECURITY=tls (scripts/test runs it there)";

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run on the secured stack"))
}

/// The CA that signed nothing of the stack's.
fn other_ca() -> String {
    format!("{}/other-ca.pem", var("STACK_TLS_DIR"))
}

/// `pairs` replacing the same keys in `env`.
fn with(env: Vec<(String, String)>, pairs: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| !pairs.iter().any(|(p, _)| p == k))
        .collect();
    env.extend(pairs.iter().cloned());
    env
}

fn source_key(src: &Source, key: &str) -> String {
    format!("RELAY_SOURCES__{}__{key}", src.name.to_uppercase())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the secured stack: STACK_SECURITY=tls (scripts/test runs it there)"]
async fn plaintext_and_a_wrong_ca_are_refused_by_name_in_check() {
    assert!(testkit::secured(), "{NEEDS}");
    let src = Source::new("tlscheck").await;
    let ok = relay_cli(&["check"], &src.env());
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "the secured source passes: {text}");

    let plaintext = with(
        src.env(),
        &[
            (source_key(&src, "SSLMODE"), "disable".into()),
            (
                "RELAY_KAFKA__PROPERTIES__SECURITY_PROTOCOL".into(),
                "plaintext".into(),
            ),
        ],
    );
    let out = relay_cli(&["check"], &plaintext);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no encryption") && text.contains("[FAIL] connect"),
        "PostgreSQL refuses plaintext by name: {text}"
    );
    assert!(text.contains("[FAIL] metadata"), "{text}");

    let wrong_ca = with(
        src.env(),
        &[
            (source_key(&src, "SSLROOTCERT"), other_ca()),
            (
                "RELAY_KAFKA__PROPERTIES__SSL_CA_LOCATION".into(),
                other_ca(),
            ),
        ],
    );
    let out = relay_cli(&["check"], &wrong_ca);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("TLS handshake") && text.contains("UnknownIssuer"),
        "PostgreSQL: the certificate does not verify, said so: {text}"
    );
    assert!(
        text.contains("kafka: TLS handshake failed") && text.contains("certificate verify failed"),
        "Kafka: the same, said so: {text}"
    );
}

/// Starts a relay for `src` with `env` over its usual settings and waits until
/// `/healthz` says the source halted; returns the reason and the relay.
async fn halted(
    src: &Source,
    cfg: &RelaySetup,
    env: &[(String, String)],
) -> (String, testkit::RelayProcess) {
    let cfg = RelaySetup {
        brokers: cfg.brokers.clone(),
        topic_template: cfg.topic_template.clone(),
        extra: env.to_vec(),
    };
    let mut relay = cfg.start(&[src]);
    let h = relay
        .wait_health("the source halted", WAIT, |h| {
            h.status == 503 && h.source(&src.name)["state"] == "halted"
        })
        .await
        .unwrap();
    let reason = h.source(&src.name)["reason"].as_str().unwrap().to_string();
    (reason, relay)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the secured stack: STACK_SECURITY=tls (scripts/test runs it there)"]
async fn a_wrong_password_halts_the_source_with_healthz_503_and_no_restart_loop() {
    assert!(testkit::secured(), "{NEEDS}");
    let src = Source::new("badpw").await;
    let (cfg, _) = RelaySetup::new("badpw");

    let (reason, relay) = halted(
        &src,
        &cfg,
        &[(source_key(&src, "PASSWORD"), "not-the-password".into())],
    )
    .await;
    assert!(
        reason.contains("password authentication failed") && reason.contains("28P01"),
        "{reason}"
    );
    // Halted, not looping: no restart counted, and it stays so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = relay.metrics().await.unwrap();
    assert_eq!(m.get(&src.series("relay_source_halted")), Some(1.0));
    assert_eq!(
        m.get(&src.series("relay_source_restarts_total"))
            .unwrap_or(0.0),
        0.0,
        "a refused password is not retried"
    );
    assert!(
        relay.log_tail(200).contains("source halted"),
        "a log line says so"
    );
    drop(relay);

    let (reason, _relay) = halted(
        &src,
        &cfg,
        &[(
            "RELAY_KAFKA__PROPERTIES__SASL_PASSWORD".into(),
            "not-the-password".into(),
        )],
    )
    .await;
    assert!(
        reason.contains("kafka: SASL authentication failed"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the secured stack: STACK_SECURITY=tls (scripts/test runs it there)"]
async fn a_principal_without_the_topic_acl_halts_not_authorized() {
    assert!(testkit::secured(), "{NEEDS}");
    let src = Source::new("noacl").await;
    let (cfg, _) = RelaySetup::new("noacl");
    insert_txn(&mut src.conn().await, "evt", "k", 3, "noacl").await;
    let no_acls = [
        (
            "RELAY_KAFKA__PROPERTIES__SASL_USERNAME".into(),
            var("KAFKA_NO_ACLS_USERNAME"),
        ),
        (
            "RELAY_KAFKA__PROPERTIES__SASL_PASSWORD".into(),
            var("KAFKA_NO_ACLS_PASSWORD"),
        ),
    ];
    let (reason, _relay) = halted(&src, &cfg, &no_acls).await;
    assert!(
        reason.to_lowercase().contains("authorization failed"),
        "{reason}"
    );
    assert_eq!(src.count("PENDING").await, 3, "nothing marked as published");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the secured stack: STACK_SECURITY=tls (scripts/test runs it there)"]
async fn secrets_from_files_never_appear_in_logs_probes_or_command_output() {
    assert!(testkit::secured(), "{NEEDS}");
    let src = Source::new("secrets").await;
    let (cfg, _) = RelaySetup::new("secrets");
    let dir = std::env::temp_dir().join(format!("relay-secrets-{}", testkit::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let pg_file = dir.join("pg");
    let kafka_file = dir.join("kafka");
    let pg_password = var("PG_RELAY_PASSWORD");
    let kafka_password = var("KAFKA_RELAY_PASSWORD");
    std::fs::write(&pg_file, format!("{pg_password}\n")).unwrap();
    std::fs::write(&kafka_file, format!("{kafka_password}\n")).unwrap();
    // The passwords only as files (an empty value unsets what the helpers would set).
    let files = vec![
        (source_key(&src, "PASSWORD"), String::new()),
        (
            source_key(&src, "PASSWORD_FILE"),
            pg_file.display().to_string(),
        ),
        (
            "RELAY_KAFKA__PROPERTIES__SASL_PASSWORD".into(),
            String::new(),
        ),
        (
            "RELAY_KAFKA__SASL_PASSWORD_FILE".into(),
            kafka_file.display().to_string(),
        ),
    ];
    let run_cfg = RelaySetup {
        extra: files.clone(),
        ..cfg
    };
    let mut relay = run_cfg.start(&[&src]);
    relay.wait_ready(READY).await.unwrap();
    let mut c = src.conn().await;
    insert_txn(&mut c, "evt", "k", 5, "secret").await;
    testkit::wait_for("rows PROCESSED", WAIT, || async {
        Ok((src.count("PENDING").await == 0).then_some(()))
    })
    .await
    .unwrap();

    let mut seen = String::new();
    for path in ["/healthz", "/readyz"] {
        seen.push_str(&relay.probe(path).await.unwrap().body.to_string());
    }
    seen.push_str(
        &reqwest::get(format!("{}/metrics", relay.admin()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let cli_env = [src.env(), files.clone()].concat();
    for command in ["check", "status"] {
        let out = relay_cli(&[command], &cli_env);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command} passes with secrets from files: {text}"
        );
        seen.push_str(&text);
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // A bad setting's error output too: both a password and its file.
    let both = with(
        cli_env.clone(),
        &[(source_key(&src, "PASSWORD"), pg_password.clone())],
    );
    let out = relay_cli(&["check"], &both);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("password_file"),
        "{err}"
    );
    seen.push_str(&err);
    let log = relay.log().to_path_buf();
    assert!(relay.stop(STOP).await.unwrap().success());
    seen.push_str(&std::fs::read_to_string(log).unwrap());
    for (what, secret) in [("database", &pg_password), ("kafka", &kafka_password)] {
        assert!(
            !seen.contains(secret.as_str()),
            "the {what} password appears in a log line, probe answer or command output"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the secured stack: STACK_SECURITY=tls (scripts/test runs it there)"]
async fn check_names_each_privilege_the_relays_role_lacks() {
    assert!(testkit::secured(), "{NEEDS}");
    let src = Source::new("grants").await;
    let mut admin = src.db.connect_admin().await.unwrap();
    let relay = src.db.stack().relay_user.clone();
    sqlx::query(&format!(
        "revoke update, delete on table public.outbox from \"{relay}\""
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let out = relay_cli(&["check"], &src.env());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("missing UPDATE (status), UPDATE (processed_at)")
            && text.contains("sql/grants.sql"),
        "{text}"
    );
    assert!(
        text.contains("[WARN] DELETE on public.outbox"),
        "retention's right is a warning: {text}"
    );
}
