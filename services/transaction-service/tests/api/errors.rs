//! Every documented error status, with the `{"code", "message", "errors"?}` body.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Connection;
use testkit::wait_for;
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// Asserts the status and the error envelope; returns the body.
async fn expect_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["code"], status, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

async fn transaction_rows(app: &TestApp) -> (i64, i64) {
    sqlx::query_as("select (select count(*) from transactions), (select count(*) from outbox)")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_json_is_rejected_with_400() {
    let app = spawn_app().await;
    for body in [r#"{"amount": 1,"#, "not json", ""] {
        let response = app.post_raw(body, Some("application/json")).await;
        let body = expect_error(response, 400).await;
        assert!(
            body["message"].as_str().unwrap().contains("not valid JSON"),
            "{body}"
        );
    }
    let response = app.post_raw("[1, 2]", Some("application/json")).await;
    expect_error(response, 400).await;
}

#[tokio::test]
async fn invalid_amounts_are_rejected_with_400_naming_the_field() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    for (amount, reason) in [
        ("1.001", "must have at most 2 fraction digits"),
        ("-5", "must be greater than 0"),
        ("0", "must be greater than 0"),
        ("0.00", "must be greater than 0"),
        ("1000000000", "must be less than 1000000000"),
        ("1000000000.5", "must be less than 1000000000"),
        (r#""ten""#, "must be a decimal number"),
        ("true", "must be a number"),
    ] {
        let body = format!(r#"{{"amount": {amount}, "toUserId": "{to}"}}"#);
        let response = app.post_raw(body, Some("application/json")).await;
        let body = expect_error(response, 400).await;
        assert_eq!(body["errors"]["amount"], reason, "amount {amount}: {body}");
    }
    let response = app.post_transaction(&json!({"toUserId": to})).await;
    let body = expect_error(response, 400).await;
    assert_eq!(body["errors"]["amount"], "is required");
    assert_eq!(transaction_rows(&app).await, (0, 0));
}

#[tokio::test]
async fn a_transfer_to_oneself_is_unprocessable_with_422() {
    // Each id fits the schema on its own; that they must differ is a rule between
    // fields no schema states, so it is a 422 like the other rules that need more than
    // the schema (schemathesis found it as "schema-valid request rejected" with 400).
    let app = spawn_app().await;
    let user = app.open_accounts(1).await[0];
    let response = app
        .post_transaction(&json!({"amount": 1, "fromUserId": user, "toUserId": user}))
        .await;
    let body = expect_error(response, 422).await;
    assert_eq!(body["message"], "a transfer needs two different accounts");
    assert_eq!(body["errors"]["toUserId"], "must differ from fromUserId");
    assert_eq!(transaction_rows(&app).await, (0, 0));
}

#[tokio::test]
async fn a_description_over_255_characters_is_rejected_with_400() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let response = app
        .post_transaction(&json!({"amount": 1, "toUserId": to, "description": "x".repeat(256)}))
        .await;
    let body = expect_error(response, 400).await;
    assert_eq!(
        body["errors"]["description"],
        "must be at most 255 characters"
    );
    // 255 multi-byte characters are fine.
    app.create(&json!({"amount": 1, "toUserId": to, "description": "é".repeat(255)}))
        .await;
}

#[tokio::test]
async fn malformed_ids_in_the_path_are_rejected_with_400() {
    let app = spawn_app().await;
    let body = expect_error(app.get("/api/v1/transactions/not-a-uuid").await, 400).await;
    assert_eq!(body["errors"]["id"], "must be a UUID");
    let body = expect_error(app.get("/api/v1/balance/42").await, 400).await;
    assert_eq!(body["errors"]["userId"], "must be a UUID");
}

#[tokio::test]
async fn unknown_transactions_accounts_and_routes_are_404() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    expect_error(app.get(&format!("/api/v1/transactions/{id}")).await, 404).await;
    expect_error(app.get(&format!("/api/v1/balance/{id}")).await, 404).await;
    expect_error(app.get("/api/v2/nothing").await, 404).await;
}

#[tokio::test]
async fn a_body_over_16_kib_is_rejected_with_413() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let body = format!(
        r#"{{"amount": 1, "toUserId": "{to}", "description": "{}"}}"#,
        "x".repeat(17 * 1024)
    );
    expect_error(app.post_raw(body, Some("application/json")).await, 413).await;
    assert_eq!(transaction_rows(&app).await, (0, 0));
}

#[tokio::test]
async fn a_body_that_is_not_json_is_rejected_with_415() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let json = format!(r#"{{"amount": 1, "toUserId": "{to}"}}"#);
    expect_error(app.post_raw(json.clone(), Some("text/plain")).await, 415).await;
    expect_error(app.post_raw(json, None).await, 415).await;
    expect_error(
        app.post_raw("amount=1", Some("application/x-www-form-urlencoded"))
            .await,
        415,
    )
    .await;
}

#[tokio::test]
async fn unknown_accounts_are_rejected_with_422_naming_them() {
    let app = spawn_app().await;
    let known = app.open_accounts(1).await[0];
    let stranger = Uuid::now_v7();

    let response = app
        .post_transaction(&json!({"amount": 1, "fromUserId": stranger, "toUserId": known}))
        .await;
    let body = expect_error(response, 422).await;
    assert_eq!(
        body["errors"]["fromUserId"],
        "no account exists for this user"
    );
    assert!(body["errors"].get("toUserId").is_none());

    let response = app
        .post_transaction(&json!({"amount": 1, "toUserId": stranger}))
        .await;
    let body = expect_error(response, 422).await;
    assert_eq!(
        body["errors"]["toUserId"],
        "no account exists for this user"
    );
    // Both unknown: both named.
    let response = app
        .post_transaction(&json!({"amount": 1, "fromUserId": stranger, "toUserId": Uuid::now_v7()}))
        .await;
    let body = expect_error(response, 422).await;
    assert_eq!(
        body["errors"]["fromUserId"],
        "no account exists for this user"
    );
    assert_eq!(
        body["errors"]["toUserId"],
        "no account exists for this user"
    );
    assert_eq!(transaction_rows(&app).await, (0, 0));
}

#[tokio::test]
async fn a_database_outage_is_answered_with_503_and_the_service_recovers() {
    let app = spawn_app_with(|s| s.database.acquire_timeout = Duration::from_secs(1)).await;
    let to = app.open_accounts(1).await[0];
    let mut admin = sqlx::PgConnection::connect(&app.db.stack().database_url("postgres"))
        .await
        .unwrap();

    // The database refuses new connections and loses the existing ones.
    sqlx::query(&format!(
        "alter database \"{}\" allow_connections false",
        app.db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
        .bind(&app.db.name)
        .execute(&mut admin)
        .await
        .unwrap();

    let body = expect_error(
        app.post_transaction(&json!({"amount": 1, "toUserId": to}))
            .await,
        503,
    )
    .await;
    assert_eq!(body["message"], "the database is unavailable, retry later");
    expect_error(app.get(&format!("/api/v1/balance/{to}")).await, 503).await;
    let ready = expect_error(app.get("/readyz").await, 503).await;
    assert!(ready["errors"]["database"].is_string(), "{ready}");
    assert!(ready["errors"].get("kafka").is_none(), "{ready}");

    // The database comes back: the service recovers on its own.
    sqlx::query(&format!(
        "alter database \"{}\" allow_connections true",
        app.db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    wait_for(
        "the service to recover",
        Duration::from_secs(30),
        || async {
            let response = app
                .post_transaction(&json!({"amount": 1, "toUserId": to}))
                .await;
            Ok((response.status() == 202).then_some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn a_failing_outbox_insert_rolls_back_the_transaction_row() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    sqlx::raw_sql(
        "create function refuse_outbox() returns trigger language plpgsql as \
           $$ begin raise exception 'outbox insert refused by test'; end $$; \
         create trigger refuse_outbox before insert on outbox \
           for each row execute function refuse_outbox();",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let response = app
        .post_transaction(&json!({"amount": 5, "toUserId": to}))
        .await;
    let body = expect_error(response, 500).await;
    assert_eq!(body["message"], "internal server error");
    assert!(!body.to_string().contains("refused by test"), "{body}");
    assert_eq!(transaction_rows(&app).await, (0, 0));
}

#[tokio::test]
async fn a_description_with_a_nul_character_is_rejected_with_400_naming_it() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let response = app
        .post_transaction(&json!({"amount": 1, "toUserId": to, "description": "a\u{0}b"}))
        .await;
    let body = expect_error(response, 400).await;
    assert_eq!(
        body["errors"]["description"], "must not contain NUL characters",
        "{body}"
    );
    assert_eq!(transaction_rows(&app).await, (0, 0));
}

#[tokio::test]
async fn amounts_are_plain_decimals_with_at_most_two_fraction_digits_as_written() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    for (amount, reason) in [
        (r#""1e2""#, "must be written without an exponent"),
        ("1e2", "must be written without an exponent"),
        (r#""1E+2""#, "must be written without an exponent"),
        ("12.5e-1", "must be written without an exponent"),
        ("1.500", "must have at most 2 fraction digits"),
        (r#""1.500""#, "must have at most 2 fraction digits"),
        ("2.000", "must have at most 2 fraction digits"),
    ] {
        let body = format!(r#"{{"amount": {amount}, "toUserId": "{to}"}}"#);
        let response = app.post_raw(body, Some("application/json")).await;
        let body = expect_error(response, 400).await;
        assert_eq!(body["errors"]["amount"], reason, "amount {amount}: {body}");
    }
    assert_eq!(transaction_rows(&app).await, (0, 0));
    // Two fraction digits, or fewer, in either form are fine.
    for amount in [json!(1.5), json!("1.50"), json!(100)] {
        app.create(&json!({"amount": amount, "toUserId": to})).await;
    }
}

/// The same id as `id`, spelled every way `Uuid::parse_str` accepts but the
/// hyphenated form.
fn other_spellings(id: Uuid) -> [String; 3] {
    [
        format!("{{{id}}}"),
        id.urn().to_string(),
        id.simple().to_string(),
    ]
}

#[tokio::test]
async fn ids_spelled_other_than_hyphenated_are_rejected_with_400() {
    let app = spawn_app().await;
    let [from, to] = app.open_accounts(2).await[..] else {
        unreachable!()
    };
    let transaction = app.create(&json!({"amount": 1, "toUserId": to})).await;
    for spelling in other_spellings(transaction) {
        let body = expect_error(
            app.get(&format!("/api/v1/transactions/{spelling}")).await,
            400,
        )
        .await;
        assert_eq!(body["errors"]["id"], "must be a UUID", "{spelling}");
    }
    for spelling in other_spellings(to) {
        let body = expect_error(app.get(&format!("/api/v1/balance/{spelling}")).await, 400).await;
        assert_eq!(body["errors"]["userId"], "must be a UUID", "{spelling}");
        let response = app
            .post_transaction(&json!({"amount": 1, "toUserId": spelling}))
            .await;
        let body = expect_error(response, 400).await;
        assert_eq!(body["errors"]["toUserId"], "must be a UUID", "{spelling}");
    }
    for spelling in other_spellings(from) {
        let response = app
            .post_transaction(&json!({"amount": 1, "fromUserId": spelling, "toUserId": to}))
            .await;
        let body = expect_error(response, 400).await;
        assert_eq!(body["errors"]["fromUserId"], "must be a UUID", "{spelling}");
    }
    assert_eq!(transaction_rows(&app).await, (1, 1));
    // Upper case is the same hyphenated spelling.
    let upper = transaction.to_string().to_uppercase();
    let response = app.get(&format!("/api/v1/transactions/{upper}")).await;
    assert_eq!(response.status(), 200);
    app.create(&json!({"amount": 1, "toUserId": to.to_string().to_uppercase()}))
        .await;
}

#[tokio::test]
async fn json_media_types_other_than_application_json_are_rejected_with_415() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    let json = format!(r#"{{"amount": 1, "toUserId": "{to}"}}"#);
    for content_type in ["application/vnd.api+json", "application/merge-patch+json"] {
        let response = app.post_raw(json.clone(), Some(content_type)).await;
        expect_error(response, 415).await;
    }
    assert_eq!(transaction_rows(&app).await, (0, 0));
    let response = app
        .post_raw(json, Some("Application/JSON; charset=utf-8"))
        .await;
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_duplicated_key_is_rejected_with_400_naming_it() {
    let app = spawn_app().await;
    let to = app.open_accounts(1).await[0];
    for (body, key) in [
        (
            format!(r#"{{"amount": 1, "amount": 2, "toUserId": "{to}"}}"#),
            "amount",
        ),
        (
            format!(r#"{{"amount": 1, "toUserId": "{to}", "toUserId": "{to}"}}"#),
            "toUserId",
        ),
        (
            format!(r#"{{"amount": 1, "toUserId": "{to}", "note": 1, "note": 2}}"#),
            "note",
        ),
    ] {
        let response = app.post_raw(body, Some("application/json")).await;
        let body = expect_error(response, 400).await;
        assert_eq!(
            body["message"],
            format!("request body has a duplicate key: {key}"),
            "{body}"
        );
        assert_eq!(body["errors"][key], "is given more than once", "{body}");
    }
    assert_eq!(transaction_rows(&app).await, (0, 0));
}
