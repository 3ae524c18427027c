//! `GET /api/v1/balance/{userId}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::domain::money::format_decimal;
use crate::store::{accounts, StoreError};

/// An account's balance as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceResponse {
    pub user_id: Uuid,
    /// Decimal string, two fraction digits.
    pub balance: String,
    pub updated_at: DateTime<Utc>,
}

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
