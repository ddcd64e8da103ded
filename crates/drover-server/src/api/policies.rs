//! Policies: list, read, write (validated against the schema first), delete, validate, and
//! explain a decision.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{
    CheckRequest, CheckResponse, PolicyProblem, PolicyText, PolicyView, ValidateResponse,
};
use drover_policy::{Action, Context, PolicyError, PolicyFile, Resource};
use drover_store::StoredPolicy;

use super::{rfc3339, validate, ApiError, Body, Path};
use crate::authz::{node_facts, Principal};
use crate::{secrets, AppState};

use super::rules::{MAX_POLICY_CHARS, POLICY_NAME};

/// The kinds of session policies see (`context.kind`).
pub const SESSION_KINDS: &[&str] = &["shell", "command", "port", "ssh"];

fn too_long(text: &str) -> Result<(), ApiError> {
    if text.chars().count() > MAX_POLICY_CHARS {
        return Err(ApiError::BadRequest(format!(
            "text: a policy file has at most {MAX_POLICY_CHARS} characters"
        )));
    }
    Ok(())
}

fn view(p: StoredPolicy) -> PolicyView {
    PolicyView {
        name: p.name,
        text: p.text,
        created_at: rfc3339(p.created_at),
        updated_at: rfc3339(p.updated_at),
    }
}

fn name(n: &str) -> Result<(), ApiError> {
    validate::pattern(
        "policy name",
        POLICY_NAME,
        n,
        "1 to 64 letters, digits and . _ -",
    )
}

/// The problems of a policy file, line and column first; none when it is valid.
fn problems(name: &str, text: &str) -> Result<Vec<PolicyProblem>, ApiError> {
    let schema = drover_policy::schema().map_err(|e| ApiError::Internal(e.to_string()))?;
    let file = PolicyFile {
        name: name.into(),
        text: text.into(),
    };
    match drover_policy::parse(&file, &schema) {
        Ok(_) => Ok(Vec::new()),
        Err(PolicyError::Invalid { problems, .. }) => Ok(problems
            .into_iter()
            .map(|p| PolicyProblem {
                line: p.line,
                column: p.column,
                message: p.message,
            })
            .collect()),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

#[utoipa::path(get, path = "/api/v1/policies",
    responses((status = 200, body = [PolicyView])), security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<Vec<PolicyView>>, ApiError> {
    state.authz.check_server(&who, Action::ReadPolicies).await?;
    let (_, policies) = state.store.list_policies().await?;
    Ok(Json(policies.into_iter().map(view).collect()))
}

#[utoipa::path(get, path = "/api/v1/policies/{name}", params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = PolicyView), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(n): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    state.authz.check_server(&who, Action::ReadPolicies).await?;
    name(&n)?;
    let (_, policies) = state.store.list_policies().await?;
    policies
        .into_iter()
        .find(|p| p.name == n)
        .map(|p| Json(view(p)))
        .ok_or_else(|| ApiError::NotFound(format!("policy {n:?} not found")))
}

#[utoipa::path(put, path = "/api/v1/policies/{name}", params(("name" = String, Path, description = "Policy name")),
    request_body = PolicyText,
    responses((status = 200, body = PolicyView), (status = 400, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn put(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(n): Path<String>,
    Body(req): Body<PolicyText>,
) -> Result<Json<PolicyView>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ManagePolicies)
        .await?;
    name(&n)?;
    too_long(&req.text)?;
    let problems = problems(&n, &req.text)?;
    if let Some(p) = problems.first() {
        return Err(ApiError::BadRequest(format!(
            "policy {n:?} is invalid: line {}, column {}: {}{}",
            p.line,
            p.column,
            p.message,
            if problems.len() > 1 {
                format!(
                    " (and {} more problems; `drover policy validate` lists them)",
                    problems.len() - 1
                )
            } else {
                String::new()
            }
        )));
    }
    state
        .store
        .write_policy(&n, Some(&req.text), secrets::now())
        .await?;
    state.authz.reload().await?;
    tracing::info!(policy = %n, by = %who.user.name, "stored a policy");
    get(State(state), who, Path(n)).await
}

#[utoipa::path(delete, path = "/api/v1/policies/{name}", params(("name" = String, Path, description = "Policy name")),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn delete_policy(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(n): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .authz
        .check_server(&who, Action::ManagePolicies)
        .await?;
    name(&n)?;
    state.store.write_policy(&n, None, secrets::now()).await?;
    state.authz.reload().await?;
    tracing::info!(policy = %n, by = %who.user.name, "deleted a policy");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/policies/validate", request_body = PolicyText,
    responses((status = 200, body = ValidateResponse)), security(("bearer" = [])))]
pub async fn validate_text(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<PolicyText>,
) -> Result<Json<ValidateResponse>, ApiError> {
    state.authz.check_server(&who, Action::ReadPolicies).await?;
    too_long(&req.text)?;
    let problems = problems("policy", &req.text)?;
    Ok(Json(ValidateResponse {
        valid: problems.is_empty(),
        problems,
    }))
}

#[utoipa::path(post, path = "/api/v1/policies/check", request_body = CheckRequest,
    responses((status = 200, body = CheckResponse), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn check(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<CheckRequest>,
) -> Result<Json<CheckResponse>, ApiError> {
    state.authz.check_server(&who, Action::ReadPolicies).await?;
    validate::pattern("user", super::rules::USER_NAME, &req.user, "a user name")?;
    if let Some(o) = &req.owner {
        validate::pattern("owner", super::rules::USER_NAME, o, "a user name")?;
    }
    if let Some(n) = &req.node {
        validate::node_id(n)?;
    }
    if let Some(d) = &req.document {
        validate::pattern(
            "document",
            super::rules::DOCUMENT_NAME,
            d,
            "a document name",
        )?;
    }
    if let Some(k) = &req.kind {
        if !SESSION_KINDS.contains(&k.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "invalid kind {k:?}: one of {}",
                SESSION_KINDS.join(", ")
            )));
        }
    }
    if let Some(c) = &req.command {
        validate::pattern("command", super::rules::COMMAND_ID, c, "a command ID")?;
    }
    if let Some(s) = &req.session {
        validate::pattern("session", super::rules::SESSION_ID, s, "a session ID")?;
    }
    let action: Action = req.action.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "unknown action {:?}: one of {}",
            req.action,
            Action::all()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let user = state
        .store
        .get_user(&req.user)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {:?} not found", req.user)))?;
    let node = async |what: &str| -> Result<drover_policy::NodeFacts, ApiError> {
        let id = req
            .node
            .as_deref()
            .ok_or_else(|| ApiError::BadRequest(format!("{what} needs --node")))?;
        let id = validate::node_id(id)?;
        let n = state
            .store
            .get_node(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))?;
        Ok(node_facts(&n))
    };
    let document = req.document.clone().unwrap_or_default();
    let resource = match action.resource() {
        drover_policy::ResourceKind::Node => Resource::Node(node(action.name()).await?),
        drover_policy::ResourceKind::Document => Resource::Document {
            name: document.clone(),
        },
        // A parameter's name rides in the document field of a check.
        drover_policy::ResourceKind::Parameter => Resource::Parameter {
            name: document.clone(),
        },
        drover_policy::ResourceKind::Server => Resource::Server,
        drover_policy::ResourceKind::User => Resource::User {
            name: req.owner.clone().unwrap_or_else(|| req.user.clone()),
        },
        drover_policy::ResourceKind::Command => {
            let id = req
                .command
                .as_deref()
                .ok_or_else(|| ApiError::BadRequest(format!("{action} needs --command")))?;
            let c = state
                .store
                .get_command(id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("command {id} not found")))?;
            Resource::Command {
                id: c.id,
                sender: c.sender,
                document: c.document_name,
            }
        }
        drover_policy::ResourceKind::Session => {
            let id = req
                .session
                .as_deref()
                .ok_or_else(|| ApiError::BadRequest(format!("{action} needs --session")))?;
            let s = state
                .store
                .get_session(id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("session {id} not found")))?;
            super::sessions::resource(&state, &s).await?
        }
    };
    let ctx = Context {
        document: req.document.clone(),
        kind: req.kind.clone(),
    };
    let d = state
        .authz
        .explain(&super::identity::user_facts(&user), action, &resource, &ctx)
        .await?;
    Ok(Json(CheckResponse {
        decision: if d.allowed { "allow" } else { "deny" }.into(),
        reasons: d.reasons,
        errors: d.errors,
    }))
}
