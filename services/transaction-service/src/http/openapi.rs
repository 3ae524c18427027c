//! `GET /openapi.json`: the OpenAPI 3 description of this API, written by hand next
//! to the handlers it describes (the integration tests check it lists every route).

use axum::Json;
use serde_json::{json, Value};

pub async fn serve() -> Json<Value> {
    Json(document())
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn uuid_path(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true, "description": description,
        "schema": {"type": "string", "format": "uuid"}
    })
}

/// The OpenAPI 3.0 document.
pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "transaction-service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Transfers and deposits between user accounts. A transaction is \
                accepted PENDING and settled asynchronously (COMPLETED or FAILED) from its \
                TransactionCreated event. Amounts are exact decimals with at most 2 fraction \
                digits; responses carry them as decimal strings."
        },
        "paths": {
            "/api/v1/transactions": {
                "post": {
                    "summary": "Create a transfer, or a deposit when fromUserId is absent",
                    "operationId": "createTransaction",
                    "parameters": [{
                        "name": "Idempotency-Key", "in": "header", "required": false,
                        "description": "1-255 visible ASCII characters. Repeating a request with \
                            the same key and the same body within 24 h returns the first \
                            response (with Idempotent-Replayed: true) and creates nothing; the \
                            same key with a different body is refused with 422.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255}
                    }],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/CreateTransaction"}
                        }}
                    },
                    "responses": {
                        "202": {
                            "description": "Accepted; settlement follows asynchronously",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/TransactionAccepted"}
                            }}
                        },
                        "400": error("Malformed JSON or invalid fields (named in errors)"),
                        "413": error("Body larger than 16 KiB"),
                        "415": error("Content-Type is not application/json"),
                        "422": error("Unknown account, or Idempotency-Key reused for another request"),
                        "503": error("Database unavailable; retry later")
                    }
                }
            },
            "/api/v1/transactions/{id}": {
                "get": {
                    "summary": "Read a transaction",
                    "operationId": "getTransaction",
                    "parameters": [uuid_path("id", "The transaction id")],
                    "responses": {
                        "200": {
                            "description": "The transaction",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Transaction"}
                            }}
                        },
                        "400": error("The id is not a UUID"),
                        "404": error("No such transaction"),
                        "503": error("Database unavailable; retry later")
                    }
                }
            },
            "/api/v1/balance/{userId}": {
                "get": {
                    "summary": "Read an account's balance",
                    "operationId": "getBalance",
                    "parameters": [uuid_path("userId", "The user id (accounts open on UserCreated)")],
                    "responses": {
                        "200": {
                            "description": "The balance",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Balance"}
                            }}
                        },
                        "400": error("The user id is not a UUID"),
                        "404": error("No account for this user"),
                        "503": error("Database unavailable; retry later")
                    }
                }
            },
            "/healthz": {"get": {
                "summary": "Liveness: the process serves HTTP",
                "operationId": "healthz",
                "responses": {"200": {"description": "Alive"}}
            }},
            "/readyz": {"get": {
                "summary": "Readiness: the database and Kafka are reachable",
                "operationId": "readyz",
                "responses": {
                    "200": {"description": "Ready"},
                    "503": error("Not ready; errors names the failing dependency")
                }
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {"200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}
                }}
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3 document"}}
            }}
        },
        "components": {"schemas": {
            "CreateTransaction": {
                "type": "object",
                "required": ["amount", "toUserId"],
                "properties": {
                    "amount": {
                        "oneOf": [{"type": "number"}, {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}],
                        "description": "Greater than 0, less than 1000000000, at most 2 fraction \
                            digits. Read from the JSON text exactly, never through a float.",
                        "example": 100
                    },
                    "fromUserId": {
                        "type": "string", "format": "uuid", "nullable": true,
                        "description": "The sender. Absent or null: a deposit from outside the system."
                    },
                    "toUserId": {"type": "string", "format": "uuid", "description": "The receiver; must differ from fromUserId"},
                    "description": {"type": "string", "maxLength": 255, "nullable": true}
                }
            },
            "TransactionAccepted": {
                "type": "object",
                "required": ["transactionId", "status"],
                "properties": {
                    "transactionId": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": ["PENDING"]}
                }
            },
            "Transaction": {
                "type": "object",
                "required": ["transactionId", "status", "amount", "fromUserId", "toUserId",
                             "description", "failureReason", "createdAt", "updatedAt"],
                "properties": {
                    "transactionId": {"type": "string", "format": "uuid"},
                    "status": {"type": "string", "enum": ["PENDING", "COMPLETED", "FAILED"]},
                    "amount": {"type": "string", "description": "Decimal, two fraction digits", "example": "100.00"},
                    "fromUserId": {"type": "string", "format": "uuid", "nullable": true},
                    "toUserId": {"type": "string", "format": "uuid"},
                    "description": {"type": "string", "nullable": true},
                    "failureReason": {"type": "string", "nullable": true, "example": "INSUFFICIENT_FUNDS"},
                    "createdAt": {"type": "string", "format": "date-time"},
                    "updatedAt": {"type": "string", "format": "date-time"}
                }
            },
            "Balance": {
                "type": "object",
                "required": ["userId", "balance", "updatedAt"],
                "properties": {
                    "userId": {"type": "string", "format": "uuid"},
                    "balance": {"type": "string", "description": "Decimal, two fraction digits", "example": "250.00"},
                    "updatedAt": {"type": "string", "format": "date-time"}
                }
            },
            "Error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status code"},
                    "message": {"type": "string"},
                    "errors": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Field (or header) name → what is wrong with it"
                    }
                }
            }
        }}
    })
}
