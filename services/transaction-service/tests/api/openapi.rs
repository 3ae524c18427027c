//! The served OpenAPI document: generated from the router's own handlers, so it lists
//! exactly the served routes, and its schemas carry the limits validation enforces.

use serde_json::{json, Value};
use service_http::UUID_PATTERN;
use transaction_service::domain::Amount;
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

/// Every `METHOD path` the router serves.
const SERVED: [&str; 7] = [
    "GET /api/v1/balance/{userId}",
    "GET /api/v1/transactions/{id}",
    "GET /healthz",
    "GET /metrics",
    "GET /openapi.json",
    "GET /readyz",
    "POST /api/v1/transactions",
];

async fn document(app: &TestApp) -> Value {
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_routes_and_each_one_answers() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc["info"]["title"], "transaction-service");
    let mut documented: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap().keys();
            methods.map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    documented.sort();
    assert_eq!(documented, SERVED);

    for operation in SERVED {
        let (method, path) = operation.split_once(' ').unwrap();
        let id = Uuid::now_v7().to_string();
        let url = app.url(&path.replace("{id}", &id).replace("{userId}", &id));
        let response = app
            .client
            .request(method.parse().unwrap(), url)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(
            status != 405 && !body.contains("route not found"),
            "{operation}: {status} {body}"
        );
    }

    // Every schema reference resolves.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let refs: Vec<&str> = text
        .split("\"#/components/schemas/")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(!refs.is_empty());
    assert!(
        refs.iter().all(|name| schemas.contains_key(*name)),
        "{refs:?}"
    );
}

#[tokio::test]
async fn the_limits_of_a_transaction_request_are_in_the_schema() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let request = &doc["components"]["schemas"]["CreateTransactionRequest"];
    assert_eq!(request["required"], json!(["amount", "toUserId"]));
    let amount = &request["properties"]["amount"]["oneOf"];
    assert_eq!(amount[0]["type"], "number");
    assert_eq!(amount[0]["exclusiveMinimum"], 0);
    assert_eq!(amount[0]["maximum"], 999_999_999.99);
    assert_eq!(amount[0]["multipleOf"], 0.01);
    assert_eq!(amount[1]["type"], "string");
    assert_eq!(amount[1]["pattern"], Amount::PATTERN);
    for id in ["fromUserId", "toUserId"] {
        assert_eq!(request["properties"][id]["format"], "uuid", "{id}");
        assert_eq!(request["properties"][id]["pattern"], UUID_PATTERN, "{id}");
    }
    for path in ["/api/v1/transactions/{id}", "/api/v1/balance/{userId}"] {
        let param = &doc["paths"][path]["get"]["parameters"][0];
        assert_eq!(param["schema"]["pattern"], UUID_PATTERN, "{path}");
    }
    let description = &request["properties"]["description"];
    assert_eq!(description["maxLength"], 255);
    assert_eq!(description["pattern"], "^[^\\u0000]*$");

    let post = &doc["paths"]["/api/v1/transactions"]["post"];
    let key = &post["parameters"][0];
    assert_eq!(key["name"], "Idempotency-Key");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], false);
    assert_eq!(key["schema"]["pattern"], "^[!-~]{1,255}$");
    for status in ["202", "400", "413", "415", "422", "500", "503"] {
        assert!(post["responses"][status].is_object(), "POST lacks {status}");
    }
    // The stateful fuzzer follows these from the create to the reads.
    let links = &post["responses"]["202"]["links"];
    assert_eq!(links["GetTransactionById"]["operationId"], "getTransaction");
    assert_eq!(
        links["GetTransactionById"]["parameters"]["id"],
        "$response.body#/transactionId"
    );
    assert_eq!(links["GetReceiverBalance"]["operationId"], "getBalance");
}
