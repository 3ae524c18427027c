//! `POST /api/v1/transactions` and `GET /api/v1/transactions/{id}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use service_http::{JsonBody, RequestTrace};

use service_http::docs::{ByIdErrors, JsonBodyErrors, ServerErrors};

use super::{ApiError, AppState, ErrorBody, FieldErrors};
use crate::app::create_transaction::{self, Created};
use crate::domain::{Amount, Description, IdempotencyKey, NewTransaction, TransactionStatus};
use crate::store::{transactions, StoreError};

/// The request header naming one logical request for safe retries.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set to `true` on a response replayed for a repeated `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

// Each field is kept as raw JSON so that validation can name every field at fault and
// read `amount`'s exact text; the schemas say what validation accepts.
/// A transfer from `fromUserId` to `toUserId`, or a deposit into `toUserId` when
/// `fromUserId` is absent or null.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateTransactionRequest {
    #[schema(schema_with = amount_schema, required = true)]
    amount: Option<Box<RawValue>>,
    #[schema(schema_with = from_schema)]
    from_user_id: Option<Box<RawValue>>,
    #[schema(schema_with = to_schema, required = true)]
    to_user_id: Option<Box<RawValue>>,
    #[schema(schema_with = description_schema)]
    description: Option<Box<RawValue>>,
}

/// `amount`: a JSON number or a decimal string, both held to [`Amount::PATTERN`].
fn amount_schema() -> OneOfBuilder {
    let number = ObjectBuilder::new()
        .schema_type(Type::Number)
        .exclusive_minimum(Some(0))
        .maximum(Some(999_999_999.99))
        .multiple_of(Some(0.01))
        .description(Some(
            "Written with at most 2 fraction digits and no exponent (`1.500` and `1e2` are refused); read from the JSON text exactly, never through a float.",
        ));
    let string = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(Amount::PATTERN))
        .description(Some("The same rule as decimal text, e.g. `\"30.25\"`."));
    OneOfBuilder::new()
        .item(number)
        .item(string)
        .description(Some(
            "Greater than 0, less than 1000000000, at most 2 fraction digits as written, no exponent.",
        ))
        .examples([serde_json::json!(30.25), serde_json::json!("100.00")])
}

fn from_schema() -> ObjectBuilder {
    service_http::uuid_schema()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
        .description(Some(
            "The sender (hyphenated UUID). Absent or null: a deposit from outside the system.",
        ))
}

fn to_schema() -> ObjectBuilder {
    service_http::uuid_schema()
        .schema_type(Type::String)
        .description(Some(
            "The receiver (hyphenated UUID); must differ from fromUserId.",
        ))
}

fn description_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
        .max_length(Some(Description::MAX_CHARS))
        .pattern(Some("^[^\\u0000]*$"))
        .description(Some("Free text, at most 255 characters, no NUL."))
}

/// `amount` and `balance` in answers: decimal strings with exactly two fraction digits.
pub fn money_text_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9]+\\.[0-9]{2}$"))
        .examples(["100.00"])
}

/// A transaction's status as the API spells it ([`TransactionStatus::as_str`]).
fn status_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(
            [
                TransactionStatus::Pending,
                TransactionStatus::Completed,
                TransactionStatus::Failed,
            ]
            .map(TransactionStatus::as_str),
        ))
}

fn pending_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([TransactionStatus::Pending.as_str()]))
}

/// What `create_transaction::Accepted` serialises to: documentation only.
#[derive(ToSchema)]
#[schema(as = TransactionAccepted, rename_all = "camelCase")]
#[allow(dead_code)]
struct AcceptedSchema {
    transaction_id: Uuid,
    #[schema(schema_with = pending_schema)]
    status: String,
}

/// `{id}` of `/api/v1/transactions/{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct TransactionPath {
    /// The transaction id, hyphenated.
    #[param(schema_with = service_http::uuid_schema)]
    id: String,
}

/// The `Idempotency-Key` header: documentation of what [`idempotency_key`] accepts.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IdempotencyHeader {
    /// 1-255 visible ASCII characters. The same key with the same request within 24 h
    /// returns the first response (with `Idempotent-Replayed: true`) and creates
    /// nothing; the same key with a different request is refused with 422.
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        pattern = "^[!-~]{1,255}$",
        min_length = 1,
        max_length = 255
    )]
    idempotency_key: Option<String>,
}

impl CreateTransactionRequest {
    /// Validates every field, reporting all faults at once.
    pub fn validate(&self) -> Result<NewTransaction, ApiError> {
        let mut errors = FieldErrors::new();
        let amount = field(
            &mut errors,
            "amount",
            required(&self.amount).and_then(parse_amount),
        );
        let from = field(
            &mut errors,
            "fromUserId",
            optional(&self.from_user_id, parse_uuid),
        );
        let to = field(
            &mut errors,
            "toUserId",
            required(&self.to_user_id).and_then(parse_uuid),
        );
        let description = field(
            &mut errors,
            "description",
            optional(&self.description, |raw| {
                let text: String =
                    serde_json::from_str(raw.get()).map_err(|_| "must be a string".to_string())?;
                Description::parse(text).map_err(|e| e.to_string())
            }),
        );
        match (amount, from, to, description) {
            (Some(amount), Some(from), Some(to), Some(description)) if errors.is_empty() => {
                // Each field fits the schema; a rule between fields is a 422.
                NewTransaction::new(amount, from, to, description).map_err(|e| {
                    ApiError::Unprocessable {
                        message: "a transfer needs two different accounts".into(),
                        errors: FieldErrors::from([("toUserId".into(), e.to_string())]),
                    }
                })
            }
            _ => Err(ApiError::Invalid(errors)),
        }
    }
}

/// The value, or `None` with the reason recorded against `name`.
fn field<T>(errors: &mut FieldErrors, name: &str, result: Result<T, String>) -> Option<T> {
    result
        .map_err(|reason| errors.insert(name.to_string(), reason))
        .ok()
}

fn required(raw: &Option<Box<RawValue>>) -> Result<&RawValue, String> {
    raw.as_deref().ok_or_else(|| "is required".to_string())
}

fn optional<T>(
    raw: &Option<Box<RawValue>>,
    parse: impl FnOnce(&RawValue) -> Result<T, String>,
) -> Result<Option<T>, String> {
    raw.as_deref().map(parse).transpose()
}

/// A JSON number, parsed from its literal text (never through `f64`), or a string
/// holding a decimal number.
fn parse_amount(raw: &RawValue) -> Result<Amount, String> {
    let text = raw.get();
    let literal = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|_| "must be a number".to_string())?
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        text.to_string()
    } else {
        return Err("must be a number".into());
    };
    Amount::parse(&literal).map_err(|e| e.to_string())
}

fn parse_uuid(raw: &RawValue) -> Result<Uuid, String> {
    let text: String =
        serde_json::from_str(raw.get()).map_err(|_| "must be a UUID string".to_string())?;
    service_http::parse_uuid(&text).ok_or_else(|| "must be a UUID".to_string())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| IdempotencyKey::parse(v).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid_field(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })
}

/// Create a transfer, or a deposit when fromUserId is absent
///
/// 202 with `{transactionId, status: "PENDING"}`; settlement follows from the
/// `TransactionCreated` event.
#[utoipa::path(post, path = "/api/v1/transactions", operation_id = "createTransaction",
    params(IdempotencyHeader),
    request_body = CreateTransactionRequest,
    responses(
        (status = 202, description = "Accepted `PENDING`; settlement follows asynchronously.",
            body = AcceptedSchema,
            headers(("Idempotent-Replayed" = String, description = "`true` on a response replayed for a repeated Idempotency-Key")),
            links(
                ("GetTransactionById" = (
                    operation_id = "getTransaction",
                    parameters(("id" = "$response.body#/transactionId"))
                )),
                ("GetReceiverBalance" = (
                    operation_id = "getBalance",
                    parameters(("userId" = "$request.body#/toUserId"))
                ))
            )),
        JsonBodyErrors,
        (status = 422, description = "Unknown account (`errors` names fromUserId/toUserId), fromUserId equal to toUserId, or the Idempotency-Key was used for a different request.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    RequestTrace(trace): RequestTrace,
    JsonBody(request): JsonBody<CreateTransactionRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let new = request.validate()?;
    let created =
        create_transaction::execute(&state.pool, &state.capture, &new, key.as_ref(), trace);
    match created.await? {
        Created::Accepted(accepted) => {
            tracing::info!(transaction_id = %accepted.transaction_id, "transaction accepted");
            Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
        }
        Created::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            let headers = [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (IDEMPOTENT_REPLAYED, HeaderValue::from_static("true")),
            ];
            Ok((status, headers, body).into_response())
        }
    }
}

/// A transaction; `failureReason` is set when `status` is `FAILED`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Transaction)]
pub struct TransactionResponse {
    pub transaction_id: Uuid,
    #[schema(schema_with = status_schema)]
    pub status: TransactionStatus,
    /// Decimal string, two fraction digits.
    #[schema(schema_with = money_text_schema)]
    pub amount: Amount,
    pub from_user_id: Option<Uuid>,
    pub to_user_id: Uuid,
    pub description: Option<String>,
    #[schema(example = "INSUFFICIENT_FUNDS")]
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<transactions::Transaction> for TransactionResponse {
    fn from(t: transactions::Transaction) -> Self {
        Self {
            transaction_id: t.id,
            status: t.status,
            amount: t.amount,
            from_user_id: t.from_user_id,
            to_user_id: t.to_user_id,
            description: t.description,
            failure_reason: t.failure_reason,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// Read a transaction
#[utoipa::path(get, path = "/api/v1/transactions/{id}", operation_id = "getTransaction", params(TransactionPath),
    responses(
        (status = 200, description = "The transaction.", body = TransactionResponse),
        ByIdErrors,
        ServerErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TransactionResponse>, ApiError> {
    let id = service_http::path_uuid(id, "id")?;
    let mut conn = state
        .pool
        .acquire()
        .await
        .map_err(StoreError::unavailable)?;
    let transaction = transactions::get(&mut conn, id)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("no transaction with id {id}")))?;
    Ok(Json(transaction.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(body: &str) -> Result<NewTransaction, FieldErrors> {
        let request: CreateTransactionRequest = serde_json::from_str(body).unwrap();
        request.validate().map_err(|e| match e {
            ApiError::Invalid(errors) | ApiError::Unprocessable { errors, .. } => errors,
            other => panic!("unexpected {other:?}"),
        })
    }

    const TO: &str = "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f11";
    const FROM: &str = "0195f1c2-7a55-7bd0-9c1e-6a0b1e9c8f22";

    #[test]
    fn a_deposit_needs_only_amount_and_receiver() {
        let t = validate(&format!(r#"{{"amount": 100, "toUserId": "{TO}"}}"#)).unwrap();
        assert!(t.is_deposit());
        assert_eq!(t.amount.minor_units(), 10_000);
    }

    #[test]
    fn the_amount_is_read_from_the_literal_text_not_a_float() {
        let t = validate(&format!(r#"{{"amount": 0.29, "toUserId": "{TO}"}}"#)).unwrap();
        assert_eq!(t.amount.minor_units(), 29);
        let errors = validate(&format!(
            r#"{{"amount": 0.1000000000000000001, "toUserId": "{TO}"}}"#
        ))
        .unwrap_err();
        assert_eq!(errors["amount"], "must have at most 2 fraction digits");
    }

    #[test]
    fn the_amount_may_be_a_decimal_string() {
        let t = validate(&format!(r#"{{"amount": "12.50", "toUserId": "{TO}"}}"#)).unwrap();
        assert_eq!(t.amount.minor_units(), 1_250);
    }

    #[test]
    fn every_faulty_field_is_named() {
        let errors = validate(&format!(
            r#"{{"amount": true, "fromUserId": 5, "toUserId": "nope", "description": "{}"}}"#,
            "x".repeat(256)
        ))
        .unwrap_err();
        assert_eq!(errors["amount"], "must be a number");
        assert_eq!(errors["fromUserId"], "must be a UUID string");
        assert_eq!(errors["toUserId"], "must be a UUID");
        assert_eq!(errors["description"], "must be at most 255 characters");
    }

    #[test]
    fn missing_and_null_required_fields_are_reported() {
        let errors = validate(r#"{"amount": null}"#).unwrap_err();
        assert_eq!(errors["amount"], "is required");
        assert_eq!(errors["toUserId"], "is required");
    }

    #[test]
    fn a_transfer_to_oneself_names_the_receiver() {
        let errors = validate(&format!(
            r#"{{"amount": 1, "fromUserId": "{TO}", "toUserId": "{TO}"}}"#
        ))
        .unwrap_err();
        assert_eq!(errors["toUserId"], "must differ from fromUserId");
        assert!(validate(&format!(
            r#"{{"amount": 1, "fromUserId": "{FROM}", "toUserId": "{TO}", "description": null}}"#
        ))
        .is_ok());
    }
}
