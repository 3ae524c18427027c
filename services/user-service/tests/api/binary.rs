//! The compiled binary: configuration errors, start-up, logs, graceful shutdown, and
//! spans exported over OTLP (to a collector, or to none without delaying anything).

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

use serde_json::Value;
use testkit::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::helpers::{closed_port, sign_up, unique_email, PASSWORD};

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
        (
            &[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://collector.example:4318",
                ),
                (
                    "DATABASE_URL",
                    "postgres://user:pa55w0rd-secret@127.0.0.1/db",
                ),
            ],
            "OTEL_EXPORTER_OTLP_ENDPOINT is invalid",
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

/// The service on a free port over `db`, exporting spans to 127.0.0.1:`collector`,
/// with `env`; returns it, its stdout's lines and its port once it listens.
async fn start_exporting(
    db: &TestDb,
    collector: u16,
    env: &[(&str, &str)],
) -> (Child, Lines<BufReader<ChildStdout>>, u16) {
    let mut child = service()
        .env("SERVER_PORT", "0")
        .env("DATABASE_URL", &db.url)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector}"),
        )
        .envs(env.iter().copied())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = wait_for_log(&mut lines, "user-service listening", &mut String::new()).await;
    let port = listening["address"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (child, lines, port)
}

/// SIGTERM; the exit status and how long the exit took.
async fn terminate(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let pid = child.id().unwrap().to_string();
    let started = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(kill.await.unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .unwrap();
    (status, started.elapsed())
}

/// A fake OTLP/HTTP collector on 127.0.0.1: every request posted to it is decoded and
/// handed over, and answered 200.
fn collector() -> (u16, mpsc::Receiver<(String, ExportTraceServiceRequest)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sent, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let sent = sent.clone();
            std::thread::spawn(move || serve_otlp(stream, &sent));
        }
    });
    (port, received)
}

fn serve_otlp(stream: TcpStream, sent: &mpsc::Sender<(String, ExportTraceServiceRequest)>) {
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let path = request_line
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        let _ = sent.send((path, decoded));
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn spans_reach_an_otlp_collector_as_children_of_the_callers_span() {
    let db = TestDb::create("users", "users_db").await.unwrap();
    let (collector_port, exported) = collector();
    let (mut child, _lines, port) = start_exporting(
        &db,
        collector_port,
        &[
            ("OTEL_SERVICE_NAME", "users-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;

    let trace_id = "5b8efff798038103d269b633813fc60c";
    let caller_span = "eee19b7ec3c1b174";
    let response = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/users/{}",
            uuid::Uuid::now_v7()
        ))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let (path, request) = tokio::task::spawn_blocking(move || {
        exported
            .recv_timeout(Duration::from_secs(20))
            .expect("an export")
    })
    .await
    .unwrap();
    assert_eq!(path, "/v1/traces");
    let resource = request.resource_spans[0].resource.as_ref().unwrap();
    let service_name = resource
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref()?.value.clone());
    assert_eq!(
        service_name,
        Some(AnyValue::StringValue("users-under-test".into()))
    );
    let spans: Vec<_> = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let span = spans
        .iter()
        .find(|s| hex(&s.trace_id) == trace_id)
        .unwrap_or_else(|| panic!("no span of the caller's trace in {spans:?}"));
    assert_eq!(hex(&span.parent_span_id), caller_span);
    assert_ne!(hex(&span.span_id), caller_span);
    assert_eq!(span.name, "GET /users/{id}");

    let (status, _) = terminate(&mut child).await;
    assert!(status.success(), "{status}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Requests one after another; the slowest answer.
async fn slowest_of(port: u16, requests: usize) -> Duration {
    let client = reqwest::Client::new();
    let mut slowest = Duration::ZERO;
    for i in 0..requests {
        let path = if i % 2 == 0 {
            "/healthz".to_string()
        } else {
            format!("/users/{}", uuid::Uuid::now_v7())
        };
        let started = Instant::now();
        let response = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .header(
                "traceparent",
                "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01",
            )
            .send()
            .await
            .unwrap();
        assert!(matches!(response.status().as_u16(), 200 | 404), "{path}");
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test]
async fn requests_answer_promptly_and_the_binary_exits_while_the_collector_is_unreachable() {
    let db = TestDb::create("users", "users_db").await.unwrap();
    // Nothing listens on the first; the second accepts connections and never answers.
    let closed = closed_port().await;
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    for collector_port in [closed, silent.local_addr().unwrap().port()] {
        // Export after every span, so each request is followed by an attempt.
        let (mut child, _lines, port) = start_exporting(
            &db,
            collector_port,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "10"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
            ],
        )
        .await;
        let slowest = slowest_of(port, 40).await;
        assert!(
            slowest < Duration::from_secs(1),
            "port {collector_port}: slowest answer {slowest:?}"
        );

        let (status, took) = terminate(&mut child).await;
        assert!(status.success(), "{status}");
        assert!(
            took < service_telemetry::FLUSH_TIMEOUT + Duration::from_secs(3),
            "port {collector_port}: exit took {took:?}"
        );
    }
    drop(silent);
}
