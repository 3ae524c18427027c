//! W3C Trace Context: a sign-up continues the caller's trace, and its `UserCreated`
//! row names the request's span as the parent (transaction-service opens the account
//! in that trace).

use serde_json::Value;
use service_telemetry::span_field;
use uuid::Uuid;

use crate::helpers::{logs, sign_up, spawn_app, unique_email, TestApp};

/// POSTs a sign-up with `headers`; returns the status, the user id and the
/// `traceresponse` header.
async fn sign_up_with(app: &TestApp, headers: &[(&str, &str)]) -> (u16, Uuid, String) {
    let mut request = app
        .client
        .post(app.url("/users"))
        .json(&sign_up(&unique_email()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let traceresponse = traceresponse(&response);
    let body: Value = response.json().await.unwrap();
    let id = body["data"]["id"].as_str().unwrap().parse().unwrap();
    (status, id, traceresponse)
}

fn traceresponse(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("traceresponse")
        .expect("a traceresponse header")
        .to_str()
        .unwrap()
        .to_string()
}

async fn stored_trace(app: &TestApp, user: Uuid) -> (Option<String>, Option<String>) {
    sqlx::query_as("select traceparent, tracestate from outbox where aggregate_id = $1")
        .bind(user.to_string())
        .fetch_one(&mut app.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sign_up_continues_the_callers_trace_into_its_user_created_event() {
    let app = spawn_app().await;
    let trace_id = Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");

    let (status, user, answered) = sign_up_with(
        &app,
        &[
            ("traceparent", &traceparent),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(&answered[3..35], trace_id, "the caller's trace");
    let request_span = &answered[36..52];
    assert_ne!(request_span, "b7ad6b7169203331", "a span of its own");

    let (stored, state) = stored_trace(&app, user).await;
    assert_eq!(stored.as_deref(), Some(answered.as_str()));
    assert_eq!(state.as_deref(), Some("congo=t61rcWkgMzE"));

    let created = logs()
        .of_trace(&trace_id)
        .into_iter()
        .find(|l| l["message"] == "user created")
        .expect("the handler's line carries the trace");
    assert_eq!(created["user_id"], user.to_string());
    assert_eq!(span_field(&created, "span_id"), Some(request_span));
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored_and_every_answer_names_its_own_trace() {
    let app = spawn_app().await;
    let (status, user, answered) = sign_up_with(
        &app,
        &[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-xyz-01")],
    )
    .await;
    assert_eq!(status, 201, "a malformed traceparent is no error");
    assert_ne!(&answered[3..35], "0af7651916cd43dd8448eb211c80319c");
    let (stored, state) = stored_trace(&app, user).await;
    assert_eq!(
        stored.as_deref(),
        Some(answered.as_str()),
        "a new trace, stored"
    );
    assert_eq!(state, None);

    let mut traces = vec![answered[3..35].to_string()];
    for path in ["/users/not-a-uuid", "/no/such/route"] {
        let response = app.get(path).await;
        assert!(response.status().is_client_error());
        traces.push(traceresponse(&response)[3..35].to_string());
    }
    traces.sort();
    traces.dedup();
    assert_eq!(
        traces.len(),
        3,
        "each request starts its own trace: {traces:?}"
    );
}
