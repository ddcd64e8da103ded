//! The audit log's side of the API: every change made through it is recorded in one place,
//! this middleware (who, from where, which operation on which path, and how it ended); and
//! the endpoints that list and check the log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};

use axum::body::Body as AxumBody;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Extensions, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_api::{AuditEntryView, AuditList, AuditVerify};
use drover_policy::Action;
use drover_store::audit::{AuditEntry, AuditEvent, AuditQuery, ChainBreak};
use serde::Deserialize;

use super::{validate, ApiError, Query};
use crate::authz::Principal;
use crate::AppState;

/// What a handler adds to its request's audit entry (the resource it made: `command/cmd-...`),
/// carried out in its response's extensions.
#[derive(Clone, Debug)]
pub struct AuditNote(pub String);

/// The response part that carries a note: `(StatusCode::CREATED, note(...), Json(v))`.
pub fn note(text: String) -> axum::Extension<AuditNote> {
    axum::Extension(AuditNote(text))
}

/// The principal a request turned out to be, filled in by the `Principal` extractor.
#[derive(Clone, Default)]
struct Actor(Arc<Mutex<Option<Principal>>>);

/// The client's address, as the listener recorded it.
pub fn source(ext: &Extensions) -> String {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

/// Tells the audit middleware who is acting (called once the principal is known).
pub fn attribute(ext: &Extensions, who: &Principal) {
    if let Some(a) = ext.get::<Actor>() {
        *a.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(who.clone());
    }
}

/// `(METHOD, /api/v1/path/{param})` to the operation's name in the OpenAPI document. A bare
/// verb (`create`, `send`) gets the collection it acts on (`create_activations`), so that every
/// action in the log names one operation.
static OPERATIONS: LazyLock<HashMap<(String, String), String>> = LazyLock::new(|| {
    let doc = super::openapi::build();
    let mut ops = HashMap::new();
    let paths = doc.get("paths").and_then(|p| p.as_object());
    for (path, methods) in paths.into_iter().flatten() {
        let noun = path
            .trim_start_matches("/api/v1/")
            .split('/')
            .next()
            .unwrap_or_default()
            .replace('-', "_");
        for (method, op) in methods.as_object().into_iter().flatten() {
            if let Some(id) = op.get("operationId").and_then(|i| i.as_str()) {
                let name = if id.contains('_') || id == noun {
                    id.to_string()
                } else {
                    format!("{id}_{noun}")
                };
                ops.insert((method.to_uppercase(), path.clone()), name);
            }
        }
    }
    ops
});

/// The longest error body read back for the entry's reason (error bodies are a few hundred
/// bytes; one past this would reach the client empty).
const REASON_BYTES: usize = 1024 * 1024;

/// Records every change made through the API (logins and logouts are recorded by their
/// handlers, which know the user): reads are not, except those refused.
pub async fn record(
    State(state): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let read = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !path.starts_with("/api/v1/") || path.starts_with("/api/v1/auth/") {
        return next.run(req).await;
    }
    let actor = Actor::default();
    req.extensions_mut().insert(actor.clone());
    let seen = Seen {
        actor,
        source: source(req.extensions()),
        method,
        path,
        route: matched.map(|m| m.as_str().to_string()),
    };
    if read {
        let resp = next.run(req).await;
        return seen.finish(&state, resp, true).await;
    }
    // A change runs to its end, and is recorded, even if its client goes away meanwhile (a
    // dropped request would otherwise leave the change made and no entry for it).
    let task = tokio::spawn(async move {
        let resp = next.run(req).await;
        seen.finish(&state, resp, false).await
    });
    match task.await {
        Ok(resp) => resp,
        Err(e) => ApiError::Internal(format!("the request's task failed: {e}")).into_response(),
    }
}

/// What the middleware knows of a request before it runs.
struct Seen {
    actor: Actor,
    source: String,
    method: Method,
    path: String,
    route: Option<String>,
}

/// The longest path an entry keeps (a path is the client's to make long).
const PATH_CHARS: usize = 256;

impl Seen {
    async fn finish(self, state: &AppState, resp: Response, read: bool) -> Response {
        let status = resp.status();
        let noted = resp
            .extensions()
            .get::<AuditNote>()
            .map(|n| n.0.clone())
            .filter(|n| !n.is_empty());
        let denied = status == axum::http::StatusCode::UNAUTHORIZED
            || status == axum::http::StatusCode::FORBIDDEN;
        let who = self
            .actor
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        // Reads are recorded only when refused, or when they revealed a secret (the handler
        // notes it); an anonymous caller's requests for paths that do not exist are noise
        // anyone could flood the log with.
        if (read && !denied && noted.is_none()) || (who.is_none() && self.route.is_none()) {
            return resp;
        }
        let (resp, reason) = if status.is_client_error() || status.is_server_error() {
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, REASON_BYTES)
                .await
                .unwrap_or_default();
            let reason = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    let m = v.get("error")?.get("message")?.as_str()?;
                    Some(m.chars().take(1024).collect())
                })
                .unwrap_or_else(|| status.to_string());
            (Response::from_parts(parts, AxumBody::from(bytes)), reason)
        } else {
            (resp, String::new())
        };
        let mut e = match &who {
            Some(w) => crate::audit::by(w),
            None => AuditEvent {
                actor: "anonymous".into(),
                actor_kind: "anonymous".into(),
                ..AuditEvent::default()
            },
        };
        let method = self.method;
        e.source = self.source;
        e.action = self
            .route
            .and_then(|r| OPERATIONS.get(&(method.to_string(), r)).cloned())
            .unwrap_or_else(|| {
                format!(
                    "{method} {}",
                    self.path.chars().take(PATH_CHARS).collect::<String>()
                )
            });
        e.resource = self.path.chars().take(PATH_CHARS).collect();
        if let Some(n) = noted {
            e.resource = format!("{} {n}", e.resource);
        }
        e.outcome = if denied {
            "denied"
        } else if status.is_success() || status.is_redirection() {
            "success"
        } else {
            "failure"
        }
        .into();
        e.reason = reason;
        state.audit.record(e).await;
        resp
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    since: Option<String>,
    until: Option<String>,
    user: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    after: Option<i64>,
    limit: Option<usize>,
}

fn millis(field: &str, v: Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let t = time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            ApiError::BadRequest(format!(
                "invalid {field} {v:?}: an RFC 3339 time, such as 2026-11-27T09:00:00Z ({e})"
            ))
        })?;
    Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
}

fn millis_rfc3339(at_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(at_ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// An entry as the API (and a webhook's payload) shows it.
pub fn view(e: AuditEntry) -> AuditEntryView {
    let time = millis_rfc3339(e.event.at_ms);
    AuditEntryView {
        seq: e.seq,
        time,
        actor: e.event.actor,
        actor_kind: e.event.actor_kind,
        token: e.event.token,
        source: e.event.source,
        action: e.event.action,
        resource: e.event.resource,
        outcome: e.event.outcome,
        reason: e.event.reason,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

#[utoipa::path(get, operation_id = "list_audit", path = "/api/v1/audit",
    params(("since" = Option<String>, Query), ("until" = Option<String>, Query),
        ("user" = Option<String>, Query), ("action" = Option<String>, Query),
        ("resource" = Option<String>, Query), ("after" = Option<i64>, Query),
        ("limit" = Option<usize>, Query)),
    responses((status = 200, body = AuditList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(q): Query<ListQuery>,
) -> Result<Json<AuditList>, ApiError> {
    state.authz.check_server(&who, Action::ReadAudit).await?;
    let limit = validate::range("limit", q.limit.unwrap_or(100), 1..=10_000)?;
    let after = validate::range("after", q.after.unwrap_or(0), 0..=i64::MAX)?;
    for (field, v) in [
        ("user", &q.user),
        ("action", &q.action),
        ("resource", &q.resource),
    ] {
        if let Some(v) = v {
            validate::pattern(field, &super::rules::text(1, 256), v, "1 to 256 characters")?;
        }
    }
    let entries = state
        .store
        .list_audit(&AuditQuery {
            since_ms: millis("since", q.since)?,
            until_ms: millis("until", q.until)?,
            actor: q.user,
            action: q.action,
            resource: q.resource,
            after: Some(after),
            limit,
        })
        .await?;
    let next_after = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditList {
        entries: entries.into_iter().map(view).collect(),
        next_after,
    }))
}

#[utoipa::path(get, operation_id = "verify_audit", path = "/api/v1/audit/verify",
    responses((status = 200, body = AuditVerify)), security(("bearer" = [])))]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<AuditVerify>, ApiError> {
    state.authz.check_server(&who, Action::ReadAudit).await?;
    let r = state.audit.verify().await?;
    let first_bad = r.problem.as_ref().map(|p| match p {
        ChainBreak::Missing { expected, .. } => *expected,
        ChainBreak::Changed { seq }
        | ChainBreak::Unlinked { seq, .. }
        | ChainBreak::Rewritten { seq }
        | ChainBreak::BadSignature { seq }
        | ChainBreak::Truncated { seq } => *seq,
    });
    Ok(Json(AuditVerify {
        ok: r.problem.is_none(),
        checked: r.checked,
        checkpoints: r.checkpoints,
        anchor: r.anchor,
        head: r.head,
        problem: r.problem.map(|p| p.to_string()),
        first_bad,
        last_signed_seq: r.last_signed.map(|(seq, _)| seq),
        last_signed_at: r.last_signed.map(|(_, at)| millis_rfc3339(at)),
        signing_key: state.audit.public_key(),
    }))
}

/// The client's address, for handlers that record their own entries.
pub struct Source(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Source(source(&parts.extensions)))
    }
}

/// The user an identity provider's answer names (made or brought up to date), the login
/// recorded whichever way it went.
pub async fn federated(
    state: &AppState,
    source: &Source,
    how: &str,
    answer: Result<crate::oidc::Identity, ApiError>,
) -> Result<drover_store::User, ApiError> {
    let user = match answer {
        Ok(who) => crate::accounts::federated(&state.store, who).await,
        Err(e) => Err(e),
    };
    let name = user.as_ref().map(|u| u.name.clone()).unwrap_or_default();
    login(
        state,
        source,
        "login",
        &name,
        how,
        user.as_ref().map(|_| ()),
    )
    .await;
    user
}

/// A login (`how`: password, console, oidc, oidc console, oidc device) or logout, and how it
/// ended. `user` is whom it was for: the name asked for, or the provider's user.
pub async fn login(
    state: &AppState,
    source: &Source,
    action: &str,
    user: &str,
    how: &str,
    result: Result<(), &ApiError>,
) {
    let (outcome, reason) = match result {
        Ok(()) => ("success", how.to_string()),
        Err(e) => ("denied", format!("{how}: {e}")),
    };
    // A refused login is nobody's yet: the name it claimed is its resource.
    let known = result.is_ok() && !user.is_empty();
    state
        .audit
        .record(AuditEvent {
            actor: if known { user } else { "anonymous" }.into(),
            actor_kind: if known { "user" } else { "anonymous" }.into(),
            source: source.0.clone(),
            action: action.into(),
            resource: format!("user/{user}"),
            outcome: outcome.into(),
            reason,
            ..AuditEvent::default()
        })
        .await;
}
