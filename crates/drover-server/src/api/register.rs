//! `/api/v1/register`: a node redeems an activation code and gets its identity. This is the
//! one API endpoint without a token; the activation code is the credential.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{RegisterRequest, RegisterResponse};
use drover_store::{NewNode, NodeId, NodeInventory, RedeemError};

use super::{rfc3339, rules, validate, ApiError, Body};
use crate::{secrets, AppState};

pub const MAX_CSR_LEN: usize = 16 * 1024;
/// Addresses a node may report at registration (as many as its connection may report later).
pub const MAX_IPS: usize = 256;

#[utoipa::path(
    post, path = "/api/v1/register",
    request_body = RegisterRequest,
    responses(
        (status = 201, body = RegisterResponse),
        (status = 400, body = drover_api::ErrorBody),
        (status = 403, body = drover_api::ErrorBody, description = "wrong, expired or used-up activation"),
    )
)]
pub async fn register(
    State(state): State<Arc<AppState>>,
    Body(req): Body<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    validate::text("activation_id", &req.activation_id, 64)?;
    // Never echoed: it is a secret.
    if !rules::matches(&rules::text(1, 128), &req.activation_code) {
        return Err(ApiError::BadRequest(
            "invalid activation_code: 1 to 128 characters".into(),
        ));
    }
    if req.csr_pem.chars().count() > MAX_CSR_LEN {
        return Err(ApiError::BadRequest(format!(
            "csr_pem is too long (at most {MAX_CSR_LEN} bytes)"
        )));
    }
    validate::text("name", &req.name, 256)?;
    validate::tags(&req.tags)?;
    let inv = &req.inventory;
    for (field, v) in [
        ("hostname", &inv.hostname),
        ("platform", &inv.platform),
        ("os_name", &inv.os_name),
        ("os_version", &inv.os_version),
        ("kernel", &inv.kernel),
        ("arch", &inv.arch),
        ("agent_version", &inv.agent_version),
    ] {
        validate::text(field, v, 256)?;
    }
    if inv.ip_addresses.len() > MAX_IPS {
        return Err(ApiError::BadRequest(format!(
            "too many ip_addresses: {} (at most {MAX_IPS})",
            inv.ip_addresses.len()
        )));
    }
    for ip in &inv.ip_addresses {
        validate::text("ip_addresses", ip, 64)?;
    }
    let id = NodeId::random(&secrets::hex17())
        .ok_or_else(|| ApiError::Internal("generated an invalid node ID".into()))?;
    // Sign first: a bad CSR must not use up a registration.
    let (cert_pem, not_after) = state
        .ca
        .sign_node_csr(&req.csr_pem, id.as_str(), state.config.agent_cert_lifetime)
        .map_err(|e| ApiError::BadRequest(format!("invalid csr_pem: {e}")))?;
    let now = secrets::now();
    let node = NewNode {
        id: id.clone(),
        name: req.name,
        tags: req.tags,
        registered_at: now,
        inventory: NodeInventory {
            hostname: inv.hostname.clone(),
            platform: inv.platform.clone(),
            os_name: inv.os_name.clone(),
            os_version: inv.os_version.clone(),
            kernel: inv.kernel.clone(),
            arch: inv.arch.clone(),
            agent_version: inv.agent_version.clone(),
            ip_addresses: inv.ip_addresses.clone(),
            boot_time: 0,
        },
    };
    let created = state
        .store
        .redeem_activation(&req.activation_id, &secrets::hash(&req.activation_code), now, node)
        .await
        .map_err(|e| match e {
            RedeemError::Store(e) => ApiError::from(e),
            refused => {
                tracing::info!(activation = %req.activation_id, reason = %refused, "registration refused");
                ApiError::Forbidden(format!("registration refused: {refused}"))
            }
        })?;
    let fingerprint = drover_pki::cert_fingerprint_pem(&cert_pem)
        .map_err(|e| ApiError::Internal(format!("reading the certificate just issued: {e}")))?;
    state
        .store
        .certificate_issued(&created.id, &fingerprint, now, 0)
        .await?
        .map_err(|e| ApiError::Internal(format!("recording the first certificate: {e}")))?;
    tracing::info!(node = %created.id, name = %created.name, activation = %req.activation_id, "registered a node");
    state.assoc.node_changed(&created.id);
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            node_id: created.id.to_string(),
            cert_pem,
            ca_pem: state.ca.cert_pem().to_string(),
            not_after: rfc3339(not_after),
        }),
    ))
}
