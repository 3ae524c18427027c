//! `GET /users/{id}`.

use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    assert_error_envelope, sign_up, spawn_app, status_and_json, unique_email, PASSWORD,
};

#[tokio::test]
async fn a_created_user_reads_back_with_id_email_and_creation_time_only() {
    let app = spawn_app().await;
    let email = unique_email();
    let (_, created) = status_and_json(app.post_user(&sign_up(&email.to_uppercase())).await).await;
    let id = created["data"]["id"].as_str().unwrap();

    let response = app.get(&format!("/users/{id}")).await;
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();

    assert_eq!(body["code"], 200);
    assert_eq!(body["message"], "ok");
    let data = body["data"].as_object().unwrap();
    let keys: Vec<&String> = data.keys().collect();
    assert_eq!(keys, ["createdAt", "email", "id"]);
    assert_eq!(data["id"], id);
    assert_eq!(data["email"], email, "the normalised email");
    data["createdAt"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .expect("createdAt is an RFC 3339 timestamp");
    assert!(!text.to_lowercase().contains("password"));
    assert!(!text.contains("argon2"));
    assert!(!text.contains(PASSWORD));
}

#[tokio::test]
async fn an_unknown_user_id_is_404() {
    let app = spawn_app().await;
    let (status, body) =
        status_and_json(app.get(&format!("/users/{}", Uuid::now_v7())).await).await;
    assert_error_envelope(status, &body, 404);
    assert_eq!(body, json!({"code": 404, "message": "user not found"}));
}

#[tokio::test]
async fn a_malformed_user_id_is_400_naming_the_id() {
    let app = spawn_app().await;
    for bad in ["not-a-uuid", "123", "0190a3c1-zzzz-7000-8000-000000000000"] {
        let (status, body) = status_and_json(app.get(&format!("/users/{bad}")).await).await;
        assert_error_envelope(status, &body, 400);
        assert_eq!(body["errors"], json!({"id": "must be a UUID"}), "{bad}");
    }
}

#[tokio::test]
async fn a_user_id_spelled_other_than_hyphenated_is_400() {
    let app = spawn_app().await;
    let (_, created) = status_and_json(app.post_user(&sign_up(&unique_email())).await).await;
    let id: Uuid = created["data"]["id"].as_str().unwrap().parse().unwrap();
    for spelling in [
        format!("{{{id}}}"),
        id.urn().to_string(),
        id.simple().to_string(),
    ] {
        let (status, body) = status_and_json(app.get(&format!("/users/{spelling}")).await).await;
        assert_error_envelope(status, &body, 400);
        assert_eq!(
            body["errors"],
            json!({"id": "must be a UUID"}),
            "{spelling}"
        );
    }
    let upper = id.to_string().to_uppercase();
    let (status, _) = status_and_json(app.get(&format!("/users/{upper}")).await).await;
    assert_eq!(status, 200, "upper case is the same hyphenated spelling");
}
