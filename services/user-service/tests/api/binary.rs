//! The compiled binary: configuration errors, start-up, logs, graceful shutdown.

use std::process::Stdio;

use serde_json::Value;
use testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::helpers::{sign_up, unique_email, PASSWORD};

fn service() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_user-service"));
    cmd.env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn bad_configuration_exits_non_zero_naming_the_variable_but_never_a_password() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "DB_HOST is not set"),
        (
            &[("DB_HOST", "127.0.0.1"), ("DB_PORT", "not-a-port")],
            "DB_PORT is invalid",
        ),
        (
            &[("DATABASE_URL", "mysql://user:pa55w0rd-secret@127.0.0.1/db")],
            "DATABASE_URL is invalid",
        ),
        (
            &[
                ("SERVER_PORT", "eighty"),
                (
                    "DATABASE_URL",
                    "postgres://user:pa55w0rd-secret@127.0.0.1/db",
                ),
            ],
            "SERVER_PORT is invalid",
        ),
    ];
    for (vars, expected) in cases {
        let output = service().envs(vars.iter().copied()).output().await.unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{vars:?}: {out}");
        assert!(out.contains(expected), "{vars:?}: {out}");
        assert!(!out.contains("pa55w0rd-secret"), "{out}");
    }
}

/// Reads JSON log lines until one has `message == wanted`; returns it and every line read.
async fn wait_for_log(
    lines: &mut Lines<BufReader<ChildStdout>>,
    wanted: &str,
    seen: &mut String,
) -> Value {
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push_str(&line);
        seen.push('\n');
        let event: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if event["message"] == wanted {
            return event;
        }
    }
    panic!("the service exited before logging {wanted:?}; it logged:\n{seen}");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_sign_up_finish_then_exits_zero() {
    let db = TestDb::create("users", "users_db").await.unwrap();
    let stack = db.stack().clone();
    let mut child: Child = service()
        .env("SERVER_PORT", "0")
        .env("DB_HOST", &stack.pg_host)
        .env("DB_PORT", stack.pg_port.to_string())
        .env("DB_USER", &stack.pg_user)
        .env("DB_PASSWORD", &stack.pg_password)
        .env("DB_NAME", &db.name)
        .env("RUST_LOG", "info,tower_http=debug")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut logs = String::new();

    let listening = wait_for_log(&mut lines, "user-service listening", &mut logs).await;
    let port = listening["address"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let url = format!("http://127.0.0.1:{port}/users");

    let request = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(url)
            .json(&sign_up(&unique_email()))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    // The request is in the service once tower-http logs it; then ask it to stop.
    wait_for_log(&mut lines, "started processing request", &mut logs).await;
    let pid = child.id().unwrap().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(kill.await.unwrap().success(), "kill -TERM {pid}");

    let (status, body) = request.await.unwrap();
    assert_eq!(status, 201, "the in-flight sign-up completed: {body}");
    wait_for_log(&mut lines, "user-service stopped", &mut logs).await;
    let exit = child.wait().await.unwrap();
    assert!(exit.success(), "{exit:?}");

    while let Some(line) = lines.next_line().await.unwrap() {
        logs.push_str(&line);
    }
    assert!(logs.contains("\"signal\":\"SIGTERM\""), "{logs}");
    assert!(!logs.contains(PASSWORD), "the password never reaches a log");
    assert!(!logs.contains("$argon2"), "nor does its hash");
}
