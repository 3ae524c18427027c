//! The served OpenAPI document describes the routes the service serves.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/api/v1/transactions", "post"),
        ("/api/v1/transactions/{id}", "get"),
        ("/api/v1/balance/{userId}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    let responses = doc["paths"]["/api/v1/transactions"]["post"]["responses"]
        .as_object()
        .unwrap();
    for status in ["202", "400", "413", "415", "422", "503"] {
        assert!(responses.contains_key(status), "POST lacks {status}");
    }
}
