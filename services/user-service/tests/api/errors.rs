//! Every documented error answer of `POST /users`, and of routes that do not exist,
//! uses the envelope `{"code", "message", "errors"?}` with the documented status.

use serde_json::json;

use crate::helpers::{
    assert_error_envelope, sign_up, spawn_app, status_and_json, unique_email, PASSWORD,
};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let (status, body) = status_and_json(
        app.post_raw(r#"{"email": "a@example.com", "#, Some("application/json"))
            .await,
    )
    .await;
    assert_error_envelope(status, &body, 400);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("request body is not valid JSON: "),
        "{body}"
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_400() {
    let app = spawn_app().await;
    for raw in [r#"["a@example.com"]"#, r#""a@example.com""#, "42"] {
        let (status, body) =
            status_and_json(app.post_raw(raw, Some("application/json")).await).await;
        assert_error_envelope(status, &body, 400);
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("request body must be a JSON object"),
            "{raw}: {body}"
        );
    }
}

#[tokio::test]
async fn a_missing_field_is_400_naming_the_field() {
    let app = spawn_app().await;
    let (status, body) =
        status_and_json(app.post_user(&json!({"email": unique_email()})).await).await;
    assert_error_envelope(status, &body, 400);
    assert_eq!(body["errors"], json!({"password": "is required"}));

    let (status, body) = status_and_json(app.post_user(&json!({})).await).await;
    assert_error_envelope(status, &body, 400);
    assert_eq!(
        body["errors"],
        json!({"email": "is required", "password": "is required"})
    );
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_400_naming_the_field() {
    let app = spawn_app().await;
    let (status, body) = status_and_json(
        app.post_user(&json!({"email": 42, "password": PASSWORD}))
            .await,
    )
    .await;
    assert_error_envelope(status, &body, 400);
    assert_eq!(body["errors"], json!({"email": "must be a string"}));

    let (status, body) = status_and_json(
        app.post_user(&json!({"email": unique_email(), "password": ["a", "b"]}))
            .await,
    )
    .await;
    assert_error_envelope(status, &body, 400);
    assert_eq!(body["errors"], json!({"password": "must be a string"}));
}

#[tokio::test]
async fn an_invalid_email_is_400_with_errors_email() {
    let app = spawn_app().await;
    let too_long = format!("{}@example.com", "a".repeat(250));
    for (email, reason) in [
        ("not-an-email", "must be a valid email address"),
        ("ada@localhost", "must be a valid email address"),
        ("ada@@example.com", "must be a valid email address"),
        ("   ", "must not be empty"),
        (too_long.as_str(), "must be at most 254 characters"),
    ] {
        let (status, body) = status_and_json(app.post_user(&sign_up(email)).await).await;
        assert_error_envelope(status, &body, 400);
        assert_eq!(body["message"], "the request has invalid fields");
        assert_eq!(body["errors"], json!({"email": reason}), "{email}");
    }
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn a_password_out_of_bounds_is_400_with_errors_password() {
    let app = spawn_app().await;
    let too_long = "p".repeat(129);
    for (password, reason) in [
        ("seven77", "must be at least 8 characters"),
        ("", "must be at least 8 characters"),
        (too_long.as_str(), "must be at most 128 characters"),
    ] {
        let (status, body) = status_and_json(
            app.post_user(&json!({"email": unique_email(), "password": password}))
                .await,
        )
        .await;
        assert_error_envelope(status, &body, 400);
        assert_eq!(body["errors"], json!({"password": reason}));
        assert!(password.is_empty() || !body.to_string().contains(password));
    }
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn a_body_over_16_kib_is_413() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&json!({
        "email": unique_email(),
        "password": PASSWORD,
        "padding": "x".repeat(16 * 1024),
    }))
    .unwrap();
    let (status, body) = status_and_json(app.post_raw(body, Some("application/json")).await).await;
    assert_error_envelope(status, &body, 413);
    assert_eq!(body["message"], "request body must be at most 16384 bytes");
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn a_body_that_is_not_declared_as_json_is_415() {
    let app = spawn_app().await;
    let json_text = sign_up(&unique_email()).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (status, body) =
            status_and_json(app.post_raw(json_text.clone(), content_type).await).await;
        assert_error_envelope(status, &body, 415);
        assert_eq!(
            body,
            json!({"code": 415, "message": "content type must be application/json"}),
            "{content_type:?}"
        );
    }
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn an_email_registered_before_is_409_whatever_its_case_or_whitespace() {
    let app = spawn_app().await;
    let email = unique_email();
    let (status, _) = status_and_json(app.post_user(&sign_up(&email)).await).await;
    assert_eq!(status, 201);

    let (status, body) = status_and_json(
        app.post_user(&sign_up(&format!(" {} ", email.to_uppercase())))
            .await,
    )
    .await;
    assert_error_envelope(status, &body, 409);
    assert_eq!(
        body,
        json!({
            "code": 409,
            "message": "email is already registered",
            "errors": {"email": "is already registered"}
        })
    );
    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("outbox").await, 1, "a conflict writes no event");
}

#[tokio::test]
async fn an_unknown_route_is_404_and_a_wrong_method_is_405_in_the_envelope() {
    let app = spawn_app().await;
    let (status, body) = status_and_json(app.get("/no/such/route").await).await;
    assert_error_envelope(status, &body, 404);
    assert_eq!(body, json!({"code": 404, "message": "route not found"}));

    let response = app.client.delete(app.url("/users")).send().await.unwrap();
    let (status, body) = status_and_json(response).await;
    assert_error_envelope(status, &body, 405);
    assert_eq!(body, json!({"code": 405, "message": "method not allowed"}));
}

#[tokio::test]
async fn json_media_types_other_than_application_json_are_415() {
    let app = spawn_app().await;
    let json_text = sign_up(&unique_email()).to_string();
    for content_type in ["application/vnd.api+json", "application/merge-patch+json"] {
        let (status, body) =
            status_and_json(app.post_raw(json_text.clone(), Some(content_type)).await).await;
        assert_error_envelope(status, &body, 415);
    }
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn a_duplicated_key_is_400_naming_it() {
    let app = spawn_app().await;
    let email = unique_email();
    for (raw, key) in [
        (
            format!(r#"{{"email": "{email}", "email": "x{email}", "password": "{PASSWORD}"}}"#),
            "email",
        ),
        (
            format!(
                r#"{{"email": "{email}", "password": "{PASSWORD}", "password": "{PASSWORD}"}}"#
            ),
            "password",
        ),
    ] {
        let (status, body) =
            status_and_json(app.post_raw(raw, Some("application/json")).await).await;
        assert_error_envelope(status, &body, 400);
        assert_eq!(
            body["message"],
            format!("request body has a duplicate key: {key}"),
            "{body}"
        );
        assert_eq!(body["errors"], json!({key: "is given more than once"}));
        assert!(!body.to_string().contains(PASSWORD));
    }
    assert_eq!(app.count("users").await, 0);
}
