//! `GET /api/v1/balance/{userId}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::transactions::money_text_schema;
use service_http::docs::{ByIdErrors, ServerErrors};

use super::{ApiError, AppState};
use crate::domain::money::format_decimal;
use crate::store::{accounts, StoreError};

/// `{userId}` of `/api/v1/balance/{userId}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct BalancePath {
    /// The account's user id, hyphenated.
    #[param(rename = "userId", schema_with = service_http::uuid_schema)]
    user_id: String,
}

/// An account's balance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Balance)]
pub struct BalanceResponse {
    pub user_id: Uuid,
    /// Decimal string, two fraction digits.
    #[schema(schema_with = money_text_schema)]
    pub balance: String,
    pub updated_at: DateTime<Utc>,
}

/// Read an account's balance
#[utoipa::path(get, path = "/api/v1/balance/{userId}", operation_id = "getBalance",
    description = "404 until the account exists: accounts open when user-service's UserCreated event arrives.",
    params(BalancePath),
    responses(
        (status = 200, description = "The balance.", body = BalanceResponse),
        ByIdErrors,
        ServerErrors,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<BalanceResponse>, ApiError> {
    let user_id = service_http::path_uuid(user_id, "userId")?;
    let mut conn = state
        .pool
        .acquire()
        .await
        .map_err(StoreError::unavailable)?;
    let account = accounts::get(&mut conn, user_id)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("no account for user {user_id}")))?;
    Ok(Json(BalanceResponse {
        user_id: account.user_id,
        balance: format_decimal(account.balance),
        updated_at: account.updated_at,
    }))
}
