//! `GET /openapi.json`: the OpenAPI 3.0 description of this service, written by hand
//! next to the handlers it describes. The integration tests check that every route the
//! router serves is documented and every documented operation is served.

use axum::Json;
use serde_json::{json, Value};

use crate::domain::{email, password};
use service_http::BODY_LIMIT_BYTES;

/// `GET /openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}

/// The OpenAPI document.
pub fn document() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    let unavailable = json!({
        "description": "The database cannot be reached; retry later.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "user-service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Creates users. Each sign-up writes the user and a `UserCreated` \
                outbox event in one PostgreSQL transaction; relay-cdc publishes the event \
                to Kafka topic `outbox.event.user`."
        },
        "paths": {
            "/users": {
                "post": {
                    "operationId": "createUser",
                    "summary": "Register a user",
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateUserRequest"}}}
                    },
                    "responses": {
                        "201": {
                            "description": "Created. The event `UserCreated` is in the outbox.",
                            "headers": {"Location": {"schema": {"type": "string"}, "description": "`/users/{id}`"}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreatedUserResponse"}}}
                        },
                        "400": error("Malformed JSON, a missing or mistyped field, or an invalid email or password; `errors` names the fields."),
                        "409": error("The email is already registered (compared trimmed and case-insensitively)."),
                        "413": error(&format!("The body is larger than {BODY_LIMIT_BYTES} bytes.")),
                        "415": error("The content type is not `application/json`."),
                        "500": error("Unexpected failure; nothing was written."),
                        "503": unavailable.clone()
                    }
                }
            },
            "/users/{id}": {
                "get": {
                    "operationId": "getUser",
                    "summary": "Read a user",
                    "parameters": [{
                        "name": "id", "in": "path", "required": true,
                        "schema": {"type": "string", "format": "uuid"}
                    }],
                    "responses": {
                        "200": {
                            "description": "The user. Never any password material.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UserResponse"}}}
                        },
                        "400": error("`id` is not a UUID."),
                        "404": error("No user has this id."),
                        "500": error("Unexpected failure."),
                        "503": unavailable.clone()
                    }
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process serves HTTP",
                    "responses": {"200": {
                        "description": "Alive.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}
                    }}
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: the database answers",
                    "responses": {
                        "200": {
                            "description": "Ready.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}
                        },
                        "503": unavailable
                    }
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "description": "`http_requests_total` and `http_request_duration_seconds`, labelled by route template, method and status.",
                    "responses": {"200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}}
                    }}
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {
                        "description": "OpenAPI 3 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}}
                    }}
                }
            }
        },
        "components": {
            "schemas": {
                "CreateUserRequest": {
                    "type": "object",
                    "required": ["email", "password"],
                    "properties": {
                        "email": {
                            "type": "string", "format": "email", "maxLength": email::MAX_LEN,
                            "description": "Trimmed and lower-cased before it is stored; ASCII only."
                        },
                        "password": {
                            "type": "string", "format": "password",
                            "minLength": password::MIN_CHARS, "maxLength": password::MAX_CHARS,
                            "description": "Characters, not bytes. Stored only as an argon2id hash."
                        }
                    }
                },
                "CreatedUserResponse": {
                    "type": "object",
                    "required": ["code", "message", "data"],
                    "properties": {
                        "code": {"type": "integer", "example": 201},
                        "message": {"type": "string", "example": "user created successfully"},
                        "data": {
                            "type": "object", "required": ["id"],
                            "properties": {"id": {"type": "string", "format": "uuid"}}
                        }
                    }
                },
                "UserResponse": {
                    "type": "object",
                    "required": ["code", "message", "data"],
                    "properties": {
                        "code": {"type": "integer", "example": 200},
                        "message": {"type": "string", "example": "ok"},
                        "data": {
                            "type": "object",
                            "required": ["id", "email", "createdAt"],
                            "properties": {
                                "id": {"type": "string", "format": "uuid"},
                                "email": {"type": "string", "format": "email"},
                                "createdAt": {"type": "string", "format": "date-time"}
                            }
                        }
                    }
                },
                "Message": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "integer"},
                        "message": {"type": "string"}
                    }
                },
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "integer", "description": "The HTTP status."},
                        "message": {"type": "string"},
                        "errors": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "Field name to reason, when specific fields are at fault."
                        }
                    }
                }
            }
        }
    })
}
