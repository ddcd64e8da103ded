//! `/api/v1/ssh`: the SSH user certificate authority. `GET ca` gives its public key (public by
//! design, as a CA certificate is: nodes' sshd trust it), `POST certificate` certifies a
//! client's key for a few minutes, for one principal, usable only from a node's loopback.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use drover_api::{SshCertificate, SshCertificateRequest};

use super::{rfc3339, validate, ApiError, Body};
use crate::authz::{Action, Principal};
use crate::{secrets, AppState};

/// How long a certificate is valid. Enough to log in; the session itself may last longer.
pub const CERT_LIFETIME_SECS: i64 = 5 * 60;
/// Clock skew between the server and a node that a certificate tolerates.
const BACKDATE_SECS: i64 = 60;
/// The longest public key accepted (an RSA 16384-bit key is about 2.8 KB).
const MAX_PUBLIC_KEY: usize = 8 * 1024;

#[utoipa::path(get, path = "/api/v1/ssh/ca",
    responses((status = 200, description = "The SSH user CA's public key, one OpenSSH line",
        content_type = "text/plain")))]
pub async fn ca(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    let key = state
        .ssh_ca
        .public_openssh()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{key}\n"),
    ))
}

#[utoipa::path(post, path = "/api/v1/ssh/certificate", request_body = SshCertificateRequest,
    responses((status = 200, body = SshCertificate), (status = 400, body = drover_api::ErrorBody),
        (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn certificate(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<SshCertificateRequest>,
) -> Result<Json<SshCertificate>, ApiError> {
    state
        .authz
        .check_server(&who, Action::IssueSshCertificate)
        .await?;
    validate::text("public_key", &req.public_key, MAX_PUBLIC_KEY)?;
    // Only for a node the user may open an SSH session on.
    let ctx = drover_policy::Context {
        document: Some("StartSSHSession".into()),
        kind: Some("ssh".into()),
    };
    let node =
        super::nodes::authorized(&state, &who, &req.node, Action::StartSession, &ctx).await?;
    let fingerprint = drover_pki::ssh_fingerprint(&req.public_key)
        .map_err(|e| ApiError::BadRequest(format!("public_key: {e}")))?;
    let principal = state.sessions.ssh_principal().await?;
    let now = secrets::now();
    let valid_before = now.saturating_add(CERT_LIFETIME_SECS);
    let key_id = format!("drover:{}:{}", who.user.name, node.id);
    let certificate = state
        .ssh_ca
        .sign_user(&drover_pki::UserCertRequest {
            public_key: &req.public_key,
            principal: &principal,
            key_id: &key_id,
            valid_after: u64::try_from(now.saturating_sub(BACKDATE_SECS)).unwrap_or(0),
            valid_before: u64::try_from(valid_before).unwrap_or(0),
        })
        .map_err(|e| ApiError::BadRequest(format!("public_key: {e}")))?;
    let detail = format!("principal {principal}, key {fingerprint}, for {CERT_LIFETIME_SECS} s");
    state
        .sessions
        .ssh_certificate_issued(&who, node.id.as_str(), &detail)
        .await;
    Ok(Json(SshCertificate {
        certificate,
        principal,
        valid_before: rfc3339(valid_before),
        node: node.id.to_string(),
    }))
}
