//! The served OpenAPI document describes exactly the routes the service serves.

use std::collections::BTreeSet;

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{spawn_app, status_and_json};

/// Every (method, path) the router serves.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/readyz"),
    ("get", "/users/{id}"),
    ("post", "/users"),
];

#[tokio::test]
async fn the_served_openapi_document_parses_and_lists_every_route() {
    let app = spawn_app().await;
    let (status, doc) = status_and_json(app.get("/openapi.json").await).await;
    assert_eq!(status, 200);

    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc["info"]["title"], "user-service");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);

    // Every `$ref` points at a schema the document defines.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {r}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = spawn_app().await;
    let (_, doc) = status_and_json(app.get("/openapi.json").await).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", &Uuid::now_v7().to_string());
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let response = app
                .client
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}: {text}");
            assert!(!text.contains("route not found"), "{method} {path}: {text}");
        }
    }
}

#[tokio::test]
async fn the_limits_of_a_sign_up_and_the_link_to_the_user_are_in_the_document() {
    let app = spawn_app().await;
    let (_, doc) = status_and_json(app.get("/openapi.json").await).await;
    let request = &doc["components"]["schemas"]["CreateUserRequest"];
    assert_eq!(
        request["required"],
        serde_json::json!(["email", "password"])
    );
    let email = &request["properties"]["email"];
    assert_eq!(
        (&email["format"], &email["maxLength"]),
        (&"email".into(), &254.into())
    );
    let password = &request["properties"]["password"];
    assert_eq!(password["minLength"], 8);
    assert_eq!(password["maxLength"], 128);

    let post = &doc["paths"]["/users"]["post"];
    for status in ["201", "400", "409", "413", "415", "500", "503"] {
        assert!(post["responses"][status].is_object(), "POST lacks {status}");
    }
    // The stateful fuzzer follows this from the sign-up to the read.
    let link = &post["responses"]["201"]["links"]["GetUserById"];
    assert_eq!(link["operationId"], "getUser");
    assert_eq!(link["parameters"]["id"], "$response.body#/data/id");
    let get = &doc["paths"]["/users/{id}"]["get"];
    assert_eq!(get["operationId"], "getUser");
    assert_eq!(get["parameters"][0]["schema"]["format"], "uuid");
    assert_eq!(
        get["parameters"][0]["schema"]["pattern"],
        service_http::UUID_PATTERN
    );
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
