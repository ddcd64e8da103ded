//! `/api/v1/sessions`: start a session, attach to its stream (a WebSocket of session frames,
//! the same for the CLI and the browser), list and show the history, terminate, and download
//! the recording.

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_api::{SessionEventView, SessionList, SessionView, StartSession};
use drover_proto::{Terminal, SESSION_FRAME_MAX};
use drover_store::{SessionQuery, SessionRecord};
use serde::Deserialize;

use super::{rfc3339, rules, validate, ApiError, Body, Path, Query};
use crate::authz::{Action, Principal};
use crate::sessions::OpenRequest;
use crate::AppState;
use drover_policy::Resource;

/// The WebSocket subprotocol of session streams.
pub const SUBPROTOCOL: &str = "drover.session.v1";
/// Longest command line a session may run, in characters.
pub const MAX_COMMAND: usize = 16 * 1024;
/// Most parameters a session document is given.
pub const MAX_PARAMETERS: usize = 100;

fn view(s: SessionRecord) -> SessionView {
    let attach = if s.kind == "Port" { "tunnel" } else { "stream" };
    SessionView {
        stream_path: format!("/api/v1/sessions/{}/{attach}", s.id),
        target: s.target,
        connections: s.connections,
        end_to_end: s.end_to_end,
        e2e: None,
        id: s.id,
        user: s.user,
        node: s.node_id,
        kind: s.kind,
        document: s.document,
        reason: s.reason,
        run_as: s.run_as,
        started_at: rfc3339(s.started_at),
        ended_at: s.ended_at.map(rfc3339),
        status: s.status,
        detail: s.detail,
        exit_code: s.exit_code,
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        recorded: s.recorded,
        events: Vec::new(),
    }
}

fn session_id(id: &str) -> Result<(), ApiError> {
    validate::pattern(
        "session ID",
        rules::SESSION_ID,
        id,
        "s- followed by hex digits",
    )
}

/// Checks a start request and turns it into what the session manager runs.
fn parse(req: &StartSession, node: drover_store::NodeId) -> Result<OpenRequest, ApiError> {
    let cols = validate::range("cols", req.cols.unwrap_or(80), 1..=1000)?;
    let rows = validate::range("rows", req.rows.unwrap_or(24), 1..=1000)?;
    let term = req.term.clone().unwrap_or_else(|| "xterm-256color".into());
    validate::pattern(
        "term",
        rules::TERM,
        &term,
        "1 to 64 letters, digits and _ . + -",
    )?;
    let reason = req.reason.clone().unwrap_or_default();
    validate::text("reason", &reason, 1024)?;
    if let Some(c) = &req.command {
        if !rules::matches(rules::COMMAND_LINE, c) || c.chars().count() > MAX_COMMAND {
            return Err(ApiError::BadRequest(format!(
                "invalid command: 1 to {MAX_COMMAND} characters, not blank, no NUL"
            )));
        }
    }
    if let Some(d) = &req.document {
        validate::pattern(
            "document",
            rules::DOCUMENT_REF,
            d,
            "NAME or NAME:VERSION (3 to 128 letters, digits, '_', '.' or '-')",
        )?;
    }
    if req.parameters.len() > MAX_PARAMETERS {
        return Err(ApiError::BadRequest(format!(
            "parameters: at most {MAX_PARAMETERS}"
        )));
    }
    Ok(OpenRequest {
        node,
        document: req.document.clone(),
        parameters: req.parameters.clone(),
        command: req.command.clone(),
        terminal: Terminal { cols, rows, term },
        pty: req.pty.unwrap_or(true),
        reason,
        e2e: req.e2e.unwrap_or(false),
        grant: None,
    })
}

#[utoipa::path(post, path = "/api/v1/sessions", request_body = StartSession,
    responses((status = 201, body = SessionView), (status = 400, body = drover_api::ErrorBody),
        (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn start(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<StartSession>,
) -> Result<
    (
        StatusCode,
        axum::Extension<super::audited::AuditNote>,
        Json<SessionView>,
    ),
    ApiError,
> {
    // A node the user may not see is "not found" by the name it was asked by.
    let node = super::nodes::authorized(
        &state,
        &who,
        &req.node,
        Action::ReadNode,
        &Default::default(),
    )
    .await?;
    let open = parse(&req, node.id)?;
    let (record, offer) = state.sessions.open(&who, open, &state.authz).await?;
    let mut v = view(record);
    v.e2e = offer;
    let noted = super::audited::note(format!("session/{} node/{}", v.id, v.node));
    Ok((StatusCode::CREATED, noted, Json(v)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    node: Option<String>,
    #[serde(default)]
    active: bool,
    before: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/sessions",
    params(("node" = Option<String>, Query, description = "Only this node's sessions"),
        ("active" = Option<bool>, Query, description = "Only sessions not ended"),
        ("before" = Option<String>, Query, description = "Sessions older than this ID (paging)"),
        ("limit" = Option<usize>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, body = SessionList), (status = 400, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(q): Query<ListQuery>,
) -> Result<Json<SessionList>, ApiError> {
    if let Some(n) = &q.node {
        validate::node_id(n)?;
    }
    if let Some(b) = &q.before {
        session_id(b)?;
    }
    let limit = validate::range("limit", q.limit.unwrap_or(100), 1..=1000)?;
    let rows = state
        .store
        .list_sessions(&SessionQuery {
            node_id: q.node,
            user: None,
            active: q.active,
            before: q.before,
            limit,
        })
        .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|s| s.id.clone()))
        .flatten();
    // A page shows only the sessions the user may see; `next` still walks them all.
    let mut sessions = Vec::with_capacity(rows.len());
    for s in rows {
        let r = resource(&state, &s).await?;
        if state
            .authz
            .check(&who, Action::ReadSession, &r, &Default::default())
            .await
            .is_ok()
        {
            sessions.push(s);
        }
    }
    Ok(Json(SessionList {
        sessions: sessions.into_iter().map(view).collect(),
        next,
    }))
}

/// A session as policies see it: with its owner, document, kind and node (the node's tags as
/// they are now; a deregistered node keeps its record).
pub async fn resource(state: &AppState, s: &SessionRecord) -> Result<Resource, ApiError> {
    let node = match drover_store::NodeId::parse(&s.node_id) {
        Some(id) => state.store.get_node(&id).await?,
        None => None,
    };
    let node = node
        .map(|n| crate::authz::node_facts(&n))
        .unwrap_or_else(|| drover_policy::NodeFacts {
            id: s.node_id.clone(),
            ..Default::default()
        });
    let kind = match s.kind.as_str() {
        "Shell" => "shell",
        "Port" if s.document == "StartSSHSession" => "ssh",
        "Port" => "port",
        _ => "command",
    };
    Ok(Resource::Session {
        id: s.id.clone(),
        owner: s.user.clone(),
        node,
        document: s.document.clone(),
        kind: kind.into(),
    })
}

/// Loads a session `who` may take `action` on. One the user may not even see is "not found".
async fn find(
    state: &AppState,
    who: &Principal,
    action: Action,
    id: &str,
) -> Result<SessionRecord, ApiError> {
    session_id(id)?;
    let s = state
        .store
        .get_session(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("session {id} not found")))?;
    let r = resource(state, &s).await?;
    let ctx = Default::default();
    match state.authz.check(who, action, &r, &ctx).await {
        Ok(()) => Ok(s),
        Err(denied)
            if action != Action::ReadSession
                && state
                    .authz
                    .check(who, Action::ReadSession, &r, &ctx)
                    .await
                    .is_ok() =>
        {
            Err(denied)
        }
        Err(_) => Err(ApiError::NotFound(format!("session {id} not found"))),
    }
}

#[utoipa::path(get, path = "/api/v1/sessions/{id}",
    params(("id" = String, Path, description = "Session ID")),
    responses((status = 200, body = SessionView), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let s = find(&state, &who, Action::ReadSession, &id).await?;
    let events = state.store.session_events(&id).await?;
    let mut v = view(s);
    v.events = events
        .into_iter()
        .map(|e| SessionEventView {
            at: rfc3339(e.at),
            event: e.event,
            actor: e.actor,
            detail: e.detail,
        })
        .collect();
    Ok(Json(v))
}

#[utoipa::path(post, path = "/api/v1/sessions/{id}/terminate",
    params(("id" = String, Path, description = "Session ID")),
    responses((status = 202, body = SessionView), (status = 404, body = drover_api::ErrorBody),
        (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn terminate(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    let s = find(&state, &who, Action::TerminateSession, &id).await?;
    if s.ended_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "session {id} has already ended ({})",
            s.status
        )));
    }
    state.sessions.terminate(&id, &who).await?;
    Ok((StatusCode::ACCEPTED, Json(view(s))))
}

/// Attaches to a live session: a WebSocket (subprotocol `drover.session.v1`) of binary session
/// frames. The client's first frame is an `Ack` saying how much output it has (zeros at first).
pub async fn stream(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Only the session's owner attaches (checked with the live session), with a token that
    // may start sessions.
    crate::authz::scoped(&who, Action::StartSession)?;
    session_id(&id)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::BadRequest(format!("expected a WebSocket upgrade: {}", e.body_text()))
    })?;
    let broker = state.sessions.attach_check(&id, &who)?;
    Ok(upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(SESSION_FRAME_MAX)
        .max_frame_size(SESSION_FRAME_MAX)
        .on_upgrade(move |socket| async move {
            let _ = broker.send(socket).await;
        }))
}

/// Attaches to a live port session: the HTTP/1.1 request is upgraded to
/// [`drover_proto::MUX_UPGRADE`], a yamux connection on which each stream the client opens is
/// one forwarded TCP connection.
pub async fn tunnel(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    mut req: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Only the session's owner attaches (checked with the live session), with a token that
    // may start sessions.
    crate::authz::scoped(&who, Action::StartSession)?;
    session_id(&id)?;
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(drover_proto::MUX_UPGRADE));
    if !wants {
        return Err(ApiError::BadRequest(format!(
            "expected an HTTP/1.1 request with Upgrade: {}",
            drover_proto::MUX_UPGRADE
        )));
    }
    let broker = state.sessions.attach_mux_check(&id, &who)?;
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(ApiError::BadRequest(
            "this connection cannot be upgraded (use HTTP/1.1)".into(),
        ));
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                let _ = broker.send(hyper_util::rt::TokioIo::new(io)).await;
            }
            Err(e) => tracing::debug!(error = %e, "a session tunnel upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, drover_proto::MUX_UPGRADE),
            (header::CONNECTION, "upgrade"),
        ],
    )
        .into_response())
}

/// The session's recording (asciicast v2), streamed from storage.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/recording",
    params(("id" = String, Path, description = "Session ID")),
    responses((status = 200, description = "asciicast v2", content_type = "application/x-asciicast"),
        (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn recording(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    find(&state, &who, Action::ReplaySession, &id).await?;
    let Some((len, reader)) = state
        .sessions
        .recordings()
        .open(&id)
        .await
        .map_err(|e| ApiError::Internal(format!("opening the recording of {id}: {e}")))?
    else {
        return Err(ApiError::NotFound(format!("session {id} has no recording")));
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.cast\""),
            ),
        ],
        body,
    )
        .into_response())
}
