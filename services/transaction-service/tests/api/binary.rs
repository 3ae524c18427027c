//! The binary itself: configuration errors and SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use testkit::{unique_suffix, unique_topic, wait_for, Stack, TestDb};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_transaction-service");

#[tokio::test]
async fn a_missing_variable_stops_the_binary_with_a_message_naming_it() {
    let output = Command::new(BINARY)
        .env_clear()
        .env("DB_HOST", "127.0.0.1")
        .env("DB_USER", "outbox")
        .env("DB_PASSWORD", "hunter2-do-not-print")
        .env("DB_NAME", "transaction_db")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("KAFKA_BROKERS"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");

    let output = Command::new(BINARY)
        .env_clear()
        .env(
            "DATABASE_URL",
            "postgres://outbox:hunter2-do-not-print@h/db",
        )
        .env("KAFKA_BROKERS", "127.0.0.1:59092")
        .env("SERVER_PORT", "eighty")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("SERVER_PORT"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

#[tokio::test]
async fn sigterm_stops_the_binary_cleanly() {
    let db = TestDb::create("txbin", "transaction_db").await.unwrap();
    let stack = Stack::from_env();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut child = Command::new(BINARY)
        .env_clear()
        .env("SERVER_HOST", "127.0.0.1")
        .env("SERVER_PORT", port.to_string())
        .env("DB_HOST", &stack.pg_host)
        .env("DB_PORT", stack.pg_port.to_string())
        .env("DB_USER", &stack.pg_user)
        .env("DB_PASSWORD", &stack.pg_password)
        .env("DB_NAME", &db.name)
        .env("KAFKA_BROKERS", &stack.kafka_brokers)
        .env("KAFKA_GROUP_ID", format!("txbin-{}", unique_suffix()))
        .env("USER_EVENTS_TOPIC", unique_topic("user"))
        .env("TRANSACTION_EVENTS_TOPIC", unique_topic("transaction"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/healthz");
    wait_for("the binary to serve", Duration::from_secs(30), || async {
        Ok(client
            .get(&health)
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200))
    })
    .await
    .unwrap();

    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within 15 s after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    let mut log = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    for expected in ["received SIGTERM", "event consumer stopped", "stopped"] {
        assert!(log.contains(expected), "no {expected:?} in {log}");
    }
}
