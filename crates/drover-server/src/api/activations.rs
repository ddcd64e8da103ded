//! `/api/v1/activations`: codes that let nodes register, like SSM hybrid activations.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{ActivationCreated, ActivationList, ActivationView, CreateActivation};
use drover_store::Activation;

use super::{rfc3339, validate, ApiError, Body};
use crate::authz::{Action, Principal};
use crate::{secrets, AppState};

/// SSM allows up to 1,000 registrations and 30 days; a self-hosted fleet may need more nodes.
pub const MAX_REGISTRATIONS: i64 = 100_000;
pub const MAX_EXPIRY_SECS: u64 = 30 * 86400;

#[utoipa::path(
    post, path = "/api/v1/activations",
    request_body = CreateActivation,
    responses((status = 201, body = ActivationCreated), (status = 400, body = drover_api::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<CreateActivation>,
) -> Result<(StatusCode, Json<ActivationCreated>), ApiError> {
    state
        .authz
        .check_server(&who, Action::CreateActivation)
        .await?;
    if !(1..=MAX_REGISTRATIONS).contains(&req.registration_limit) {
        return Err(ApiError::BadRequest(format!(
            "invalid registration_limit {}: from 1 to {MAX_REGISTRATIONS}",
            req.registration_limit
        )));
    }
    if !(1..=MAX_EXPIRY_SECS).contains(&req.expires_in_secs) {
        return Err(ApiError::BadRequest(format!(
            "invalid expiry of {} seconds: from 1 second to 30 days",
            req.expires_in_secs
        )));
    }
    validate::tags(&req.tags)?;
    validate::text("description", &req.description, 256)?;
    validate::text("default_name", &req.default_name, 256)?;
    let code = secrets::new_activation_code();
    let now = secrets::now();
    let activation = Activation {
        id: format!("act-{}", secrets::random_hex(8)),
        code_hash: secrets::hash(&code),
        description: req.description,
        default_name: req.default_name,
        tags: req.tags,
        registration_limit: req.registration_limit,
        registrations: 0,
        expires_at: now + req.expires_in_secs as i64,
        created_at: now,
    };
    state.store.create_activation(&activation).await?;
    tracing::info!(id = %activation.id, by = %who.token_id, limit = activation.registration_limit, "created an activation");
    Ok((
        StatusCode::CREATED,
        Json(ActivationCreated {
            id: activation.id,
            code,
            registration_limit: activation.registration_limit,
            expires_at: rfc3339(activation.expires_at),
        }),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/activations",
    responses((status = 200, body = ActivationList)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<ActivationList>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ListActivations)
        .await?;
    let now = secrets::now();
    let activations = state
        .store
        .list_activations()
        .await?
        .into_iter()
        .map(|a| ActivationView {
            expired: now >= a.expires_at,
            id: a.id,
            description: a.description,
            default_name: a.default_name,
            tags: a.tags,
            registration_limit: a.registration_limit,
            registrations: a.registrations,
            expires_at: rfc3339(a.expires_at),
            created_at: rfc3339(a.created_at),
        })
        .collect();
    Ok(Json(ActivationList { activations }))
}
