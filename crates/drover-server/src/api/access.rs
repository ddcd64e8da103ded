//! Temporary elevated access: ask (`RequestAccess` on each node), approve or deny (a second
//! user allowed `ApproveAccess` on each node, never the requester), revoke. An approved
//! request is a grant `Authz` consults when the policies alone say no.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{AccessDecisionView, AccessRequestView, AccessVerdict, CreateAccessRequest};
use drover_policy::{Action, Context, ResourceKind};
use drover_store::access::{AccessDecision, AccessRequest};
use serde::Deserialize;

use super::audited::{note, AuditNote};
use super::{rfc3339, rules, validate, ApiError, Body, Path, Query};
use crate::authz::{node_facts, Principal};
use crate::{secrets, AppState};

/// The longest a grant may run.
pub const MAX_DURATION_SECS: u64 = 7 * 86400;
/// The most nodes one request may name.
const MAX_NODES: usize = 1000;

fn view(r: AccessRequest) -> AccessRequestView {
    AccessRequestView {
        created_at: rfc3339(r.created_at),
        expires_at: (r.expires_at > 0).then(|| rfc3339(r.expires_at)),
        decisions: r
            .decisions
            .into_iter()
            .map(|d| AccessDecisionView {
                user: d.user,
                verdict: d.verdict,
                comment: d.comment,
                at: rfc3339(d.at),
            })
            .collect(),
        id: r.id,
        requester: r.requester,
        actions: r.actions,
        nodes: r.nodes,
        document: r.document,
        reason: r.reason,
        duration_secs: r.duration_secs,
        status: r.status,
        approvals_needed: r.approvals_needed,
        ended_by: r.ended_by,
        ended_reason: r.ended_reason,
    }
}

/// Decides `action` for `who` on each node: allowed or not, and the approvals the deciding
/// policies ask for (`@approvals("N")`, 1 by default).
async fn decide_each(
    state: &AppState,
    who: &Principal,
    action: Action,
    nodes: &[drover_store::Node],
) -> Result<Vec<(bool, i64)>, ApiError> {
    let engine = state.authz.engine().await?;
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let resource = drover_policy::Resource::Node(node_facts(node));
        let d = engine
            .decide(&who.user, action, &resource, &Context::default())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let needed = d
            .reasons
            .iter()
            .filter_map(|r| {
                engine
                    .annotation(r, "approvals")?
                    .trim()
                    .parse::<i64>()
                    .ok()
            })
            .fold(1, |a, n| a.max(n.clamp(1, 10)));
        out.push((d.allowed, needed));
    }
    Ok(out)
}

/// Decides `action` for `who` on every node of a request (by ID); the first refusal is the
/// answer. Returns the approvals the deciding policies ask for.
async fn on_every_node(
    state: &AppState,
    who: &Principal,
    action: Action,
    ids: &[String],
) -> Result<i64, ApiError> {
    crate::authz::scoped(who, action)?;
    let mut nodes = Vec::with_capacity(ids.len());
    for id in ids {
        let node = match drover_store::NodeId::parse(id) {
            Some(n) => state.store.get_node(&n).await?,
            None => None,
        };
        nodes.push(node.ok_or_else(|| ApiError::Conflict(format!("node {id} was deregistered")))?);
    }
    let mut needed = 1;
    for (node, (allowed, n)) in nodes
        .iter()
        .zip(decide_each(state, who, action, &nodes).await?)
    {
        if !allowed {
            return Err(crate::authz::denied(
                who,
                action,
                &format!("node {}", node.id),
            ));
        }
        needed = needed.max(n);
    }
    Ok(needed)
}

/// The most requests one user may have waiting, and how long one waits for its approvers.
const MAX_PENDING: usize = 20;
const PENDING_SECS: i64 = 86400;

#[utoipa::path(post, operation_id = "create_access_request", path = "/api/v1/access-requests", request_body = CreateAccessRequest,
    responses((status = 201, body = AccessRequestView), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<CreateAccessRequest>,
) -> Result<
    (
        StatusCode,
        axum::Extension<AuditNote>,
        Json<AccessRequestView>,
    ),
    ApiError,
> {
    if req.targets.is_empty() || req.targets.len() > 100 {
        return Err(ApiError::BadRequest(
            "targets: 1 to 100 node IDs, names or tag:KEY=VALUE filters".into(),
        ));
    }
    if req.actions.is_empty() {
        return Err(ApiError::BadRequest("actions: name at least one".into()));
    }
    let mut actions = Vec::new();
    for a in &req.actions {
        let action: Action = a.parse().map_err(|_| {
            ApiError::BadRequest(format!("unknown action {a:?} (see drover policy schema)"))
        })?;
        if action.resource() != ResourceKind::Node
            || matches!(action, Action::RequestAccess | Action::ApproveAccess)
        {
            return Err(ApiError::BadRequest(format!(
                "action {a}: only actions on nodes can be asked for (StartSession, \
                 SendCommand, ReadOutput, TagNode, ...)"
            )));
        }
        if !actions.contains(&action.name().to_string()) {
            actions.push(action.name().to_string());
        }
    }
    if let Some(d) = &req.document {
        validate::pattern("document", rules::DOCUMENT_NAME, d, "a document name")?;
    }
    validate::pattern(
        "reason",
        &rules::text(1, 1024),
        &req.reason,
        "why, in a few words",
    )?;
    let duration = validate::range("duration_secs", req.duration_secs, 1..=MAX_DURATION_SECS)?;
    crate::authz::scoped(&who, Action::RequestAccess)?;
    let waiting = state
        .store
        .list_access_requests(Some("Pending"), Some(&who.user.name), MAX_PENDING)
        .await?;
    if waiting.len() >= MAX_PENDING {
        return Err(ApiError::Conflict(format!(
            "{} has {MAX_PENDING} requests waiting already; revoke some first",
            who.user.name
        )));
    }
    // Only the nodes `who` may ask for are named; the others are as if they did not exist
    // (a tag filter skips them, a node named outright is "not found"), so that a request
    // tells nothing of nodes its maker may not know of.
    let hidden =
        || ApiError::NotFound("a target was not found (or is not yours to ask for)".into());
    let resolved = state
        .commands
        .resolve_targets(&req.targets)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) | ApiError::Conflict(_) => hidden(),
            other => other,
        })?;
    let decided = decide_each(&state, &who, Action::RequestAccess, &resolved).await?;
    let named_outright = req
        .targets
        .iter()
        .any(|t| t.trim() != "all" && !t.trim().starts_with("tag:"));
    if named_outright && decided.iter().any(|(allowed, _)| !allowed) {
        return Err(hidden());
    }
    let mut nodes = Vec::new();
    let mut approvals_needed = 1;
    for (node, (allowed, needed)) in resolved.iter().zip(decided) {
        if allowed {
            nodes.push(node.id.to_string());
            // How many approvers it takes is fixed now, from the policies that let the
            // requester ask (`@approvals("N")`), whoever approves later.
            approvals_needed = approvals_needed.max(needed);
        }
    }
    if nodes.is_empty() {
        return Err(ApiError::NotFound(
            "the targets match no node you may ask for".into(),
        ));
    }
    if nodes.len() > MAX_NODES {
        return Err(ApiError::BadRequest(format!(
            "the targets match {} nodes; a request may name at most {MAX_NODES}",
            nodes.len()
        )));
    }
    let r = AccessRequest {
        id: format!("ar-{}", secrets::random_hex(8)),
        requester: who.user.name.clone(),
        actions,
        nodes,
        document: req.document,
        reason: req.reason,
        duration_secs: duration as i64,
        created_at: secrets::now(),
        status: "Pending".into(),
        approvals_needed,
        decisions: Vec::new(),
        granted_at: 0,
        expires_at: 0,
        ended_by: String::new(),
        ended_reason: String::new(),
    };
    state.store.create_access_request(&r).await?;
    tracing::info!(request = %r.id, by = %who.user.name, nodes = r.nodes.len(), "access requested");
    let noted = note(format!("access-request/{} ({} nodes)", r.id, r.nodes.len()));
    Ok((StatusCode::CREATED, noted, Json(view(r))))
}

/// A request `who` may see: their own, or one they may decide on.
async fn visible(state: &AppState, who: &Principal, id: &str) -> Result<AccessRequest, ApiError> {
    validate::pattern("id", r"^ar-[0-9a-f]{16}$", id, "an access request ID")?;
    let not_found = || ApiError::NotFound(format!("access request {id} not found"));
    let r = state
        .store
        .get_access_request(id)
        .await?
        .ok_or_else(not_found)?;
    if r.requester == who.user.name
        || on_every_node(state, who, Action::ApproveAccess, &r.nodes)
            .await
            .is_ok()
    {
        Ok(r)
    } else {
        Err(not_found())
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, operation_id = "list_access_requests", path = "/api/v1/access-requests",
    params(("status" = Option<String>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = Vec<AccessRequestView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<AccessRequestView>>, ApiError> {
    let limit = validate::range("limit", q.limit.unwrap_or(100), 1..=1000)?;
    if let Some(s) = &q.status {
        validate::pattern(
            "status",
            "^(Pending|Approved|Denied|Revoked|Expired)$",
            s,
            "Pending, Approved, Denied, Revoked or Expired",
        )?;
    }
    let all = state
        .store
        .list_access_requests(q.status.as_deref(), None, limit)
        .await?;
    let mut shown = Vec::new();
    for r in all {
        if r.requester == who.user.name
            || on_every_node(&state, &who, Action::ApproveAccess, &r.nodes)
                .await
                .is_ok()
        {
            shown.push(view(r));
        }
    }
    Ok(Json(shown))
}

#[utoipa::path(get, operation_id = "show_access_request", path = "/api/v1/access-requests/{id}", params(("id" = String, Path)),
    responses((status = 200, body = AccessRequestView), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<AccessRequestView>, ApiError> {
    Ok(Json(view(visible(&state, &who, &id).await?)))
}

/// Approve or deny: by a user allowed ApproveAccess on every node, never the requester.
async fn decide(
    state: &AppState,
    who: &Principal,
    id: &str,
    verdict: &'static str,
    comment: String,
) -> Result<AccessRequest, ApiError> {
    validate::text("comment", &comment, 1024)?;
    let r = visible(state, who, id).await?;
    if r.requester == who.user.name {
        return Err(ApiError::Forbidden(format!(
            "{} may not {verdict} their own request: another approver must",
            who.user.name
        )));
    }
    on_every_node(state, who, Action::ApproveAccess, &r.nodes).await?;
    let user = who.user.name.clone();
    let now = secrets::now();
    let r = state
        .store
        .update_access_request(
            id,
            Box::new(move |r| {
                if r.status != "Pending" {
                    return Err(format!("access request {} is {}", r.id, r.status));
                }
                if r.decisions.iter().any(|d| d.user == user) {
                    return Err(format!("{user} has decided on {} already", r.id));
                }
                r.decisions.push(AccessDecision {
                    user: user.clone(),
                    verdict: verdict.into(),
                    comment: comment.clone(),
                    at: now,
                });
                if verdict == "deny" {
                    r.status = "Denied".into();
                    r.ended_by = user;
                    r.ended_reason = comment;
                } else {
                    let approvals = r.decisions.iter().filter(|d| d.verdict == "approve");
                    if approvals.count() as i64 >= r.approvals_needed {
                        r.status = "Approved".into();
                        r.granted_at = now;
                        r.expires_at = now + r.duration_secs;
                    }
                }
                Ok(())
            }),
        )
        .await?;
    tracing::info!(request = %r.id, by = %who.user.name, verdict, status = %r.status, "access request decided");
    Ok(r)
}

#[utoipa::path(post, operation_id = "approve_access_request", path = "/api/v1/access-requests/{id}/approve", params(("id" = String, Path)),
    request_body = AccessVerdict,
    responses((status = 200, body = AccessRequestView), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Body(v): Body<AccessVerdict>,
) -> Result<Json<AccessRequestView>, ApiError> {
    Ok(Json(view(
        decide(&state, &who, &id, "approve", v.comment).await?,
    )))
}

#[utoipa::path(post, operation_id = "deny_access_request", path = "/api/v1/access-requests/{id}/deny", params(("id" = String, Path)),
    request_body = AccessVerdict,
    responses((status = 200, body = AccessRequestView), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn deny(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Body(v): Body<AccessVerdict>,
) -> Result<Json<AccessRequestView>, ApiError> {
    Ok(Json(view(
        decide(&state, &who, &id, "deny", v.comment).await?,
    )))
}

/// Ends a request or its grant: the requester (withdrawing it) or an approver. The sessions
/// opened under it end at once.
#[utoipa::path(post, operation_id = "revoke_access_request", path = "/api/v1/access-requests/{id}/revoke", params(("id" = String, Path)),
    request_body = AccessVerdict,
    responses((status = 200, body = AccessRequestView), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Body(v): Body<AccessVerdict>,
) -> Result<Json<AccessRequestView>, ApiError> {
    validate::text("comment", &v.comment, 1024)?;
    visible(&state, &who, &id).await?;
    let user = who.user.name.clone();
    let comment = v.comment;
    let r = state
        .store
        .update_access_request(
            &id,
            Box::new(move |r| {
                if r.status != "Pending" && r.status != "Approved" {
                    return Err(format!("access request {} is {} already", r.id, r.status));
                }
                r.status = "Revoked".into();
                r.ended_by = user;
                r.ended_reason = comment;
                Ok(())
            }),
        )
        .await?;
    let ended = state
        .sessions
        .end_for_grant(
            &r.id,
            &format!("access request {} was revoked by {}", r.id, who.user.name),
        )
        .await;
    tracing::info!(request = %r.id, by = %who.user.name, sessions_ended = ended, "access request revoked");
    Ok(Json(view(r)))
}

/// Ends the grants whose time is up, and the sessions opened under them; run every second.
pub async fn expire_due(state: &AppState) -> Result<usize, ApiError> {
    let now = secrets::now();
    // Requests nobody answered within a day end too (looked for once a minute).
    static STALE_CHECKED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let last = STALE_CHECKED.load(std::sync::atomic::Ordering::Relaxed);
    if now - last >= 60 {
        STALE_CHECKED.store(now, std::sync::atomic::Ordering::Relaxed);
        let pending = state
            .store
            .list_access_requests(Some("Pending"), None, 1000)
            .await?;
        for r in pending
            .iter()
            .filter(|r| r.created_at + PENDING_SECS <= now)
        {
            let expired = state
                .store
                .update_access_request(
                    &r.id,
                    Box::new(|r| {
                        if r.status != "Pending" {
                            return Err("decided meanwhile".into());
                        }
                        r.status = "Expired".into();
                        r.ended_by = "server".into();
                        r.ended_reason = "no approver answered within a day".into();
                        Ok(())
                    }),
                )
                .await;
            if expired.is_ok() {
                record_expired(state, r, "no approver answered within a day".into()).await;
            }
        }
    }
    let due = state.store.due_grants(now).await?;
    for g in &due {
        let expired = state
            .store
            .update_access_request(
                &g.id,
                Box::new(move |r| {
                    if r.status != "Approved" || r.expires_at > now {
                        return Err("no longer due".into());
                    }
                    r.status = "Expired".into();
                    r.ended_by = "server".into();
                    r.ended_reason = "its time ran out".into();
                    Ok(())
                }),
            )
            .await;
        if expired.is_err() {
            continue;
        }
        let ended = state
            .sessions
            .end_for_grant(&g.id, &format!("access request {} expired", g.id))
            .await;
        record_expired(state, g, format!("{ended} session(s) ended")).await;
        tracing::info!(request = %g.id, sessions_ended = ended, "access grant expired");
    }
    Ok(due.len())
}

/// The audit entry (and so the webhook event) of a request or grant that ran out of time.
async fn record_expired(state: &AppState, r: &AccessRequest, reason: String) {
    state
        .audit
        .record(drover_store::audit::AuditEvent {
            actor: "server".into(),
            actor_kind: "server".into(),
            action: "access.expired".into(),
            resource: format!("access-request/{} user/{}", r.id, r.requester),
            outcome: "success".into(),
            reason,
            ..Default::default()
        })
        .await;
}
