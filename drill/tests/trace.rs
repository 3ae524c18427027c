//! One transfer followed by its W3C trace through the real binaries: user-service,
//! transaction-service and relay-cdc, on the local stack (`scripts/stack up`), with
//! databases, replication slots, topics and a consumer group of this test's own. The
//! caller's `traceparent` must come out of relay-cdc on the `TransactionCreated`
//! record, reach the settlement's log lines, and go on with `TransactionCompleted`;
//! a sign-up's trace must reach the account opening. The slots go with the test's
//! databases when they are dropped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::proc::{command, Process};
use testkit::{
    free_port, unique_suffix, wait_for, Record, RelayConfig, RelaySource, Stack, TestDb,
};

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(60);

/// Every JSON line `proc` logged so far.
fn json_lines(proc: &Process) -> Vec<Value> {
    std::fs::read_to_string(proc.log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Builds the three binaries in the profile of this test, next to its own binaries.
fn binaries() -> PathBuf {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_outbox-drill"))
        .parent()
        .unwrap()
        .to_path_buf();
    testkit::proc::build_service_binaries(&bin_dir);
    bin_dir
}

/// The innermost span field `name` of a JSON log line.
fn span_field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    line["spans"]
        .as_array()?
        .iter()
        .rev()
        .find_map(|s| s[name].as_str())
}

/// `(trace id, parent id)` of a `traceparent`.
fn ids(traceparent: &str) -> (&str, &str) {
    (&traceparent[3..35], &traceparent[36..52])
}

/// Waits until `proc` logged `message` in trace `trace_id`; returns the line.
async fn logged(proc: &Process, trace_id: &str, message: &str) -> Value {
    wait_for(message, STEP, || async {
        Ok(json_lines(proc)
            .into_iter()
            .find(|l| l["message"] == message && span_field(l, "trace_id") == Some(trace_id)))
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}; {} logged:\n{}",
            proc.log().display(),
            std::fs::read_to_string(proc.log()).unwrap_or_default()
        )
    })
}

/// Waits until `url` answers 2xx.
async fn ready(client: &reqwest::Client, url: &str) {
    wait_for(url, STEP, || async {
        let answer = client.get(url).send().await;
        Ok(answer.is_ok_and(|r| r.status().is_success()).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transfer_keeps_its_callers_trace_through_relay_cdc_to_the_settlement() {
    let started = Instant::now();
    let bin = binaries();
    let stack = Stack::from_env();
    let users_db = TestDb::create("trace_users", "users_db").await.unwrap();
    let tx_db = TestDb::create("trace_tx", "transaction_db").await.unwrap();
    let dir = std::env::temp_dir().join(format!("outbox-trace-test-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("t.trace.{}.", unique_suffix());
    let (user_topic, tx_topic) = (
        format!("{prefix}outbox.event.user"),
        format!("{prefix}outbox.event.transaction"),
    );
    for topic in [&user_topic, &tx_topic] {
        testkit::create_topic(&stack.kafka_brokers, topic, 1)
            .await
            .unwrap();
    }
    let env = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };

    // As the admin, on the plain stack: the relay's own role and TLS are the drill's.
    let mut relay = [("users_db", &users_db), ("transaction_db", &tx_db)]
        .into_iter()
        .fold(
            RelayConfig::new(bin.join("relay-cdc"))
                .kafka(
                    &stack.kafka_brokers,
                    &format!("{prefix}outbox.event.{{aggregate_type}}"),
                )
                .log_to(dir.join("relay.log")),
            |config, (source, db)| {
                config.source(&RelaySource {
                    name: source.to_string(),
                    host: stack.pg_host.clone(),
                    port: stack.pg_port,
                    user: stack.pg_user.clone(),
                    password: stack.pg_password.clone(),
                    database: db.name.clone(),
                    slot: db.name.clone(),
                    extra: vec![],
                })
            },
        )
        .spawn()
        .unwrap();
    // One of the services on a free port over `db`, with `extra`; and its port.
    let service = |name: &str, db: &TestDb, extra: &[(&str, String)]| {
        let port = free_port();
        let mut vars = vec![
            ("SERVER_HOST", "127.0.0.1".to_string()),
            ("SERVER_PORT", port.to_string()),
            ("DATABASE_URL", db.url.clone()),
        ];
        vars.extend(extra.iter().cloned());
        let log = dir.join(format!("{name}.log"));
        let cmd = command(&bin.join(name), &[], &env(&vars));
        (Process::spawn(name, cmd, log).unwrap(), port)
    };
    let (users, user_port) = service("user-service", &users_db, &[]);
    let (transactions, tx_port) = service(
        "transaction-service",
        &tx_db,
        &[
            ("KAFKA_BROKERS", stack.kafka_brokers.clone()),
            ("KAFKA_GROUP_ID", format!("trace-test-{}", unique_suffix())),
            ("USER_EVENTS_TOPIC", user_topic.clone()),
            ("TRANSACTION_EVENTS_TOPIC", tx_topic.clone()),
            ("RUST_LOG", "info,rdkafka=warn,librdkafka=warn".into()),
        ],
    );
    let client = reqwest::Client::new();
    let (users_url, tx_url) = (
        format!("http://127.0.0.1:{user_port}"),
        format!("http://127.0.0.1:{tx_port}"),
    );
    ready(&client, &format!("{users_url}/readyz")).await;
    ready(&client, &format!("{tx_url}/readyz")).await;
    relay.wait_ready(STEP).await.unwrap();
    let booted = started.elapsed();

    // Two sign-ups, the first in a trace of its caller's.
    let signup_trace = uuid::Uuid::new_v4().simple().to_string();
    let mut accounts = Vec::new();
    for traceparent in [Some(format!("00-{signup_trace}-a1a1a1a1a1a1a1a1-01")), None] {
        let mut request = client.post(format!("{users_url}/users")).json(&json!({
            "email": format!("trace-{}@example.com", unique_suffix()),
            "password": "correct horse battery staple",
        }));
        if let Some(tp) = &traceparent {
            request = request.header("traceparent", tp);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        accounts.push(body["data"]["id"].as_str().unwrap().to_string());
    }
    for user in &accounts {
        ready(&client, &format!("{tx_url}/api/v1/balance/{user}")).await;
    }
    logged(&users, &signup_trace, "user created").await;
    logged(&transactions, &signup_trace, "account opened").await;

    let settle = |body: Value, traceparent: Option<String>| {
        let (client, tx_url) = (client.clone(), tx_url.clone());
        async move {
            let mut request = client
                .post(format!("{tx_url}/api/v1/transactions"))
                .json(&body);
            if let Some(tp) = traceparent {
                request = request.header("traceparent", tp);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
            let answered = response.headers()["traceresponse"]
                .to_str()
                .unwrap()
                .to_string();
            let id = response.json::<Value>().await.unwrap()["transactionId"]
                .as_str()
                .unwrap()
                .to_string();
            wait_for("the settlement", STEP, || async {
                let t: Value = client
                    .get(format!("{tx_url}/api/v1/transactions/{id}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok((t["status"] != "PENDING").then_some(t["status"].clone()))
            })
            .await
            .map(|status| (id, answered, status))
            .unwrap()
        }
    };
    let (_, _, deposited) = settle(json!({"amount": 100, "toUserId": accounts[0]}), None).await;
    assert_eq!(deposited, "COMPLETED");

    // The transfer, in the caller's trace.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let transfer = json!({"amount": "30.25", "fromUserId": accounts[0], "toUserId": accounts[1]});
    let (id, answered, status) = settle(transfer, Some(caller.clone())).await;
    assert_eq!(status, "COMPLETED");
    let (answered_trace, request_span) = ids(&answered);
    assert_eq!(answered_trace, trace_id);
    assert_ne!(request_span, ids(&caller).1);

    // What relay-cdc published for it.
    let consumer = testkit::consumer(&stack.kafka_brokers, &[&tx_topic]).unwrap();
    let mut records: Vec<Record> = Vec::new();
    while records.len() < 2 {
        let got = testkit::read_records(&consumer, 1, STEP).await.unwrap();
        records.extend(
            got.into_iter()
                .filter(|r| r.key.as_deref() == Some(id.as_str())),
        );
    }
    let traceparent_of = |event_type: &str| -> String {
        let record = records
            .iter()
            .find(|r| r.header("event_type") == Some(event_type))
            .unwrap_or_else(|| panic!("no {event_type} in {records:?}"));
        record
            .header("traceparent")
            .expect("a traceparent header")
            .to_string()
    };
    let created = traceparent_of("TransactionCreated");
    let completed = traceparent_of("TransactionCompleted");
    assert_eq!(
        created, answered,
        "TransactionCreated names the request's span"
    );
    let (completed_trace, settlement_span) = ids(&completed);
    assert_eq!(
        completed_trace, trace_id,
        "TransactionCompleted goes on in the trace"
    );
    assert_ne!(
        settlement_span, request_span,
        "the consumer's span is its own"
    );

    // The service's log lines of both spans carry the trace.
    let accepted = logged(&transactions, &trace_id, "transaction accepted").await;
    assert_eq!(span_field(&accepted, "span_id"), Some(request_span));
    let settled = logged(&transactions, &trace_id, "transaction completed").await;
    assert_eq!(span_field(&settled, "span_id"), Some(settlement_span));
    assert_eq!(settled["transaction_id"], id);

    drop((relay, users, transactions));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "trace test: binaries up after {:.1} s, done after {:.1} s",
        booted.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
