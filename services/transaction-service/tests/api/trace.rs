//! W3C Trace Context from the request to the settlement: the request's span continues
//! the caller's trace, its `TransactionCreated` carries the request span's context, the
//! consumer's span continues that, and the settlement's event carries the consumer
//! span's context. Records are relayed the way relay-cdc does (its trace headers
//! included); drill/tests/trace.rs runs the same path through the real relay.

use serde_json::{json, Value};
use service_telemetry::span_field;
use testkit::wait_for;
use uuid::Uuid;

use crate::helpers::{logs, spawn_app, TestApp, EVENT_TIMEOUT};

/// A caller's `traceparent` with a trace id of its own.
fn caller() -> (String, String) {
    let trace_id = Uuid::new_v4().simple().to_string();
    (format!("00-{trace_id}-b7ad6b7169203331-01"), trace_id)
}

/// `(trace id, span id)` of a `traceparent`.
fn ids(traceparent: &str) -> (&str, &str) {
    (&traceparent[3..35], &traceparent[36..52])
}

/// POSTs `body` with `headers`; returns the transaction id and the `traceresponse`.
async fn post(app: &TestApp, body: &Value, headers: &[(&str, &str)]) -> (Uuid, String) {
    let mut request = app.client.post(app.url("/api/v1/transactions")).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        202,
        "a trace header never makes an error"
    );
    let traceresponse = response
        .headers()
        .get("traceresponse")
        .expect("a traceresponse header")
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    (
        body["transactionId"].as_str().unwrap().parse().unwrap(),
        traceresponse,
    )
}

/// Waits for the line `message` in trace `trace_id`; returns it.
async fn line(trace_id: &str, message: &str) -> Value {
    wait_for(message, EVENT_TIMEOUT, || async {
        Ok(logs()
            .of_trace(trace_id)
            .into_iter()
            .find(|l| l["message"] == message))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_transfer_continues_its_callers_trace_through_its_events_and_its_settlement() {
    let app = spawn_app().await;
    let users = app.open_accounts(2).await;
    app.deposit(users[0], json!(50)).await;
    let (traceparent, trace_id) = caller();

    let (id, traceresponse) = post(
        &app,
        &json!({"amount": "20.00", "fromUserId": users[0], "toUserId": users[1]}),
        &[
            ("traceparent", &traceparent),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ],
    )
    .await;

    // The request's span: the caller's trace, a span id of its own.
    let (answered_trace, request_span) = ids(&traceresponse);
    assert_eq!(answered_trace, trace_id);
    assert_ne!(request_span, ids(&traceparent).1);
    let accepted = line(&trace_id, "transaction accepted").await;
    assert_eq!(
        span_field(&accepted, "span_id"),
        Some(request_span),
        "{accepted}"
    );
    assert_eq!(accepted["transaction_id"], id.to_string());

    // TransactionCreated names the request's span as its parent, in the same row.
    let created = app.created_event(id).await;
    let (created_parent, created_state) = app.trace_of(created).await;
    assert_eq!(created_parent.as_deref(), Some(traceresponse.as_str()));
    assert_eq!(created_state.as_deref(), Some("rojo=00f067aa0ba902b7"));

    // The settlement continues it from the record's headers.
    let record = app.record_of(created).await;
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("traceparent"), Some(traceresponse.as_str()));
    app.publish(&record).await;
    assert_eq!(app.settled(id).await["status"], "COMPLETED");
    let completed_line = line(&trace_id, "transaction completed").await;
    let settlement_span = span_field(&completed_line, "span_id").unwrap().to_string();
    assert_ne!(
        settlement_span, request_span,
        "the consumer's span is its own"
    );
    assert_eq!(completed_line["transaction_id"], id.to_string());

    // TransactionCompleted names the consumer's span.
    let events = app.events_of(id).await;
    let (completed_id, event_type, _) = events.last().unwrap();
    assert_eq!(event_type, "TransactionCompleted");
    let (completed_parent, completed_state) = app.trace_of(*completed_id).await;
    assert_eq!(
        completed_parent,
        Some(format!("00-{trace_id}-{settlement_span}-01"))
    );
    assert_eq!(completed_state.as_deref(), Some("rojo=00f067aa0ba902b7"));
}

#[tokio::test]
async fn a_malformed_or_repeated_traceparent_is_ignored_and_the_request_starts_a_trace() {
    let app = spawn_app().await;
    let user = app.open_accounts(1).await[0];
    let (good, good_trace) = caller();
    for headers in [
        vec![("traceparent", "00-not-a-trace-01")],
        vec![(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        )],
        vec![
            ("traceparent", good.as_str()),
            ("traceparent", good.as_str()),
        ],
        vec![("tracestate", "only=state")],
    ] {
        let (id, traceresponse) =
            post(&app, &json!({"amount": 1, "toUserId": user}), &headers).await;
        let (trace_id, _) = ids(&traceresponse);
        assert_ne!(trace_id, good_trace, "{headers:?}");
        assert!(!traceresponse.contains("4bf92f3577b34da6"), "{headers:?}");
        let (stored, state) = app.trace_of(app.created_event(id).await).await;
        assert_eq!(
            stored.as_deref(),
            Some(traceresponse.as_str()),
            "{headers:?}"
        );
        assert_eq!(
            state, None,
            "a tracestate without its traceparent is dropped"
        );
    }
}

#[tokio::test]
async fn a_record_without_or_with_a_malformed_traceparent_is_settled_in_a_new_trace() {
    let app = spawn_app().await;
    let user = app.open_accounts(1).await[0];
    for traceparent in [None, Some("00-garbage-01")] {
        let (id, traceresponse) = post(&app, &json!({"amount": 2, "toUserId": user}), &[]).await;
        let (request_trace, _) = ids(&traceresponse);
        let record = app.record_of(app.created_event(id).await).await;
        app.publish(&record.with_traceparent(traceparent)).await;
        assert_eq!(app.settled(id).await["status"], "COMPLETED");

        let (completed_id, event_type, _) = app.events_of(id).await.pop().unwrap();
        assert_eq!(event_type, "TransactionCompleted");
        let (parent, _) = app.trace_of(completed_id).await;
        let parent = parent.expect("the settlement's own trace");
        let (settlement_trace, settlement_span) = ids(&parent);
        assert_ne!(settlement_trace, request_trace, "{traceparent:?}");
        let settled = line(settlement_trace, "transaction completed").await;
        assert_eq!(span_field(&settled, "span_id"), Some(settlement_span));
    }
}

#[tokio::test]
async fn an_account_opens_in_the_trace_of_its_user_created_record() {
    let app = spawn_app().await;
    let (traceparent, trace_id) = caller();
    let user = Uuid::now_v7();
    app.announce_user_with(user, &[("traceparent", &traceparent)])
        .await;
    let opened = line(&trace_id, "account opened").await;
    assert_eq!(opened["user_id"], user.to_string());
    assert_ne!(span_field(&opened, "span_id"), Some(ids(&traceparent).1));
}
