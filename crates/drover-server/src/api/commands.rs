//! `/api/v1/commands`: Run Command.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{CommandList, CommandView, InvocationList, InvocationView, SendCommand, StepView};
use drover_store::{Command, Invocation, InvocationQuery};
use serde::Deserialize;

use super::{rfc3339, rules, validate, ApiError, Body, Path, Query};
use crate::authz::{Action, Principal};
use crate::commands::SendRequest;
use crate::AppState;
use drover_policy::Resource;

pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;
/// Output shown per step and stream in listings; the output endpoint gives all of it.
const SUMMARY_CHARS: usize = 24_000;
/// The shortest time a long poll on a command takes to answer with progress: a client follows
/// a run at up to ten views a second, not one per stored batch (every 5 ms while a large
/// command runs, each view costing authorization, counts and a response).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What a secret parameter's value is shown as.
const HIDDEN: &str = "********";

/// The command's parameters, the values of those its document marks sensitive hidden from a
/// user not allowed `ReadSecrets` on the document. If the document version is gone, or is not
/// the one the command ran (a document deleted and made again, without the marks, after the
/// command), every value is taken for sensitive: nothing says which are not.
async fn shown_parameters(
    state: &AppState,
    who: &Principal,
    c: &Command,
) -> Result<serde_json::Value, ApiError> {
    let params: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&c.parameters).unwrap_or_default();
    let version = c.document_version.parse::<i64>().ok();
    hide_sensitive(state, who, &c.document_name, version, c.created_at, params).await
}

/// Parameter values for `document` (at `version`, or its default), the sensitive ones hidden
/// from a user not allowed `ReadSecrets` on it; a document version made after `made_by` is not
/// the one the values were for, and every value is then taken for sensitive.
pub(crate) async fn hide_sensitive(
    state: &AppState,
    who: &Principal,
    document: &str,
    version: Option<i64>,
    made_by: i64,
    mut params: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, ApiError> {
    // The built-in documents (RunShellScript, the one a `wait` long-poll shows most) mark
    // nothing sensitive: no store read nor parse on that path.
    if params.is_empty() || crate::commands::resolve::is_builtin(document) {
        return Ok(params.into());
    }
    let doc = state
        .store
        .get_document(document, version)
        .await?
        .filter(|d| d.created_at <= made_by)
        .and_then(|d| drover_docs::parse(&d.content).ok());
    let sensitive = |name: &str| match &doc {
        Some(d) => d.parameters.get(name).is_some_and(|p| p.sensitive),
        None => true,
    };
    if !params.keys().any(|k| sensitive(k)) {
        return Ok(params.into());
    }
    let resource = Resource::Document {
        name: document.to_string(),
    };
    let ctx = drover_policy::Context::default();
    if state
        .authz
        .check(who, Action::ReadSecrets, &resource, &ctx)
        .await
        .is_ok()
    {
        return Ok(params.into());
    }
    for (name, value) in params.iter_mut() {
        if sensitive(name) {
            *value = HIDDEN.into();
        }
    }
    Ok(params.into())
}

fn is_done(status: &str) -> bool {
    matches!(status, "Success" | "Failed" | "Incomplete" | "Cancelled")
}

async fn view(state: &AppState, who: &Principal, c: Command) -> Result<CommandView, ApiError> {
    let parameters = shown_parameters(state, who, &c).await?;
    let counts = state.store.status_counts(&c.id).await?;
    let target_count = counts.values().sum();
    let done = is_done(&c.status);
    Ok(CommandView {
        document: c.document_name,
        document_version: c.document_version,
        parameters,
        targets: c.targets,
        max_concurrency: c.max_concurrency,
        max_errors: c.max_errors,
        delivery_timeout_secs: c.delivery_timeout_secs,
        execution_timeout_secs: c.execution_timeout_secs,
        comment: c.comment,
        created_at: rfc3339(c.created_at),
        status: c.status,
        target_count,
        counts,
        done,
        version: state.commands.updates().version(),
        output_pruned: c.output_pruned,
        sender: c.sender,
        id: c.id,
    })
}

fn cut(s: String, full: bool) -> (String, bool) {
    if full || s.len() <= SUMMARY_CHARS {
        return (s, false);
    }
    let mut end = SUMMARY_CHARS;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s.get(..end).unwrap_or_default().to_string(), true)
}

fn invocation_view(i: Invocation, full: bool) -> InvocationView {
    InvocationView {
        id: i.id,
        command_id: i.command_id,
        node_id: i.node_id,
        node_name: i.node_name,
        status: i.status,
        status_detail: i.status_detail,
        exit_code: i.exit_code,
        requested_at: rfc3339(i.requested_at),
        started_at: i.started_at.map(rfc3339),
        finished_at: i.finished_at.map(rfc3339),
        steps: i
            .steps
            .into_iter()
            .map(|s| {
                let (stdout, a) = cut(s.stdout, full);
                let (stderr, b) = cut(s.stderr, full);
                StepView {
                    name: s.name,
                    status: s.status,
                    exit_code: s.exit_code,
                    stdout,
                    stderr,
                    truncated: s.truncated,
                    output_cut: a || b,
                }
            })
            .collect(),
    }
}

fn command_id(id: &str) -> Result<(), ApiError> {
    validate::pattern(
        "command ID",
        rules::COMMAND_ID,
        id,
        "cmd- followed by letters, digits or '-'",
    )
}

/// Invocation states a listing may filter on.
pub const INVOCATION_STATUSES: &[&str] = &[
    "Pending",
    "InProgress",
    "Cancelling",
    "Success",
    "Failed",
    "TimedOut",
    "Cancelled",
];

/// The most nodes one command may name.
pub const MAX_TARGETS: usize = 10_000;
/// Output kept per step and stream: at least 1 KiB, at most 1 GiB.
pub const OUTPUT_LIMITS: std::ops::RangeInclusive<u64> = 1024..=(1 << 30);
/// Delivery and execution timeouts, in seconds.
pub const TIMEOUTS: std::ops::RangeInclusive<u64> = 1..=172_800;

#[utoipa::path(post, path = "/api/v1/commands", request_body = SendCommand,
    responses((status = 201, body = CommandView), (status = 400, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn send(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<SendCommand>,
) -> Result<
    (
        StatusCode,
        axum::Extension<super::audited::AuditNote>,
        Json<CommandView>,
    ),
    ApiError,
> {
    validate::text("comment", &req.comment, 1024)?;
    validate::pattern(
        "document",
        rules::DOCUMENT_REF,
        &req.document,
        "NAME or NAME:VERSION",
    )?;
    if req.targets.is_empty() || req.targets.len() > MAX_TARGETS {
        return Err(ApiError::BadRequest(format!(
            "give 1 to {MAX_TARGETS} targets (node IDs, names, tag:KEY=VALUE or all)"
        )));
    }
    for t in &req.targets {
        validate::pattern(
            "target",
            &rules::text(1, 256),
            t,
            "1 to 256 printable characters",
        )?;
    }
    let max_concurrency = req.max_concurrency.unwrap_or_else(|| "50".into());
    let max_errors = req.max_errors.unwrap_or_else(|| "0".into());
    validate::pattern(
        "max_concurrency",
        rules::RATE,
        &max_concurrency,
        "a number from 1, or a percentage of the targets from 1% to 100%",
    )?;
    validate::pattern(
        "max_errors",
        rules::RATE_OR_ZERO,
        &max_errors,
        "a number from 0, or a percentage of the targets from 0% to 100%",
    )?;
    let output_limit = validate::range(
        "output_limit",
        req.output_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT),
        OUTPUT_LIMITS,
    )?;
    let secs = |v: Option<u64>, default: u64, what: &str| -> Result<Duration, ApiError> {
        let v = validate::range(what, v.unwrap_or(default), TIMEOUTS)?;
        Ok(Duration::from_secs(v))
    };
    let command = state
        .commands
        .send(
            SendRequest {
                key: None,
                document: req.document,
                parameters: req.parameters,
                targets: req.targets,
                max_concurrency,
                max_errors,
                delivery_timeout: secs(req.delivery_timeout_secs, 600, "delivery_timeout_secs")?,
                execution_timeout: secs(
                    req.execution_timeout_secs,
                    3600,
                    "execution_timeout_secs",
                )?,
                comment: req.comment,
                output_limit,
            },
            &who,
            &state.authz,
        )
        .await?;
    tracing::info!(command = %command.id, by = %who.user.name, document = %command.document_name, "command sent");
    let noted = super::audited::note(format!(
        "command/{} document/{}",
        command.id, command.document_name
    ));
    Ok((
        StatusCode::CREATED,
        noted,
        Json(view(&state, &who, command).await?),
    ))
}

#[derive(Deserialize)]
pub struct Page {
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/commands", params(("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = CommandList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(p): Query<Page>,
) -> Result<Json<CommandList>, ApiError> {
    let limit = validate::range("limit", p.limit.unwrap_or(50), 1..=1000)?;
    if let Some(c) = &p.cursor {
        command_id(c)?;
    }
    let rows = state
        .store
        .list_commands(p.cursor.as_deref(), limit + 1)
        .await?;
    let more = rows.len() > limit;
    let next_cursor = if more {
        rows.get(limit - 1).map(|c| c.id.clone())
    } else {
        None
    };
    // A page shows only the commands the user may read; the cursor still walks them all.
    let rows = state
        .authz
        .filter(
            &who,
            Action::ReadCommand,
            rows.into_iter().take(limit).collect(),
            resource,
        )
        .await?;
    let mut commands = Vec::new();
    for c in rows {
        commands.push(view(&state, &who, c).await?);
    }
    Ok(Json(CommandList {
        commands,
        next_cursor,
    }))
}

fn resource(c: &Command) -> Resource {
    Resource::Command {
        id: c.id.clone(),
        sender: c.sender.clone(),
        document: c.document_name.clone(),
    }
}

/// Loads a command `who` may take `action` on. One the user may not even read is "not found".
async fn load(
    state: &AppState,
    who: &Principal,
    action: Action,
    id: &str,
) -> Result<Command, ApiError> {
    command_id(id)?;
    let c = state
        .store
        .get_command(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("command {id} not found")))?;
    let ctx = Default::default();
    match state.authz.check(who, action, &resource(&c), &ctx).await {
        Ok(()) => Ok(c),
        Err(_)
            if action != Action::ReadCommand
                && state
                    .authz
                    .check(who, Action::ReadCommand, &resource(&c), &ctx)
                    .await
                    .is_ok() =>
        {
            Err(crate::authz::denied(who, action, &format!("command {id}")))
        }
        Err(_) => Err(ApiError::NotFound(format!("command {id} not found"))),
    }
}

/// Whether `who` may read the output of `node`'s invocation of `c`.
async fn may_read_output(
    state: &AppState,
    who: &Principal,
    c: &Command,
    node: &str,
) -> Result<bool, ApiError> {
    let Some(id) = drover_store::NodeId::parse(node) else {
        return Ok(false);
    };
    let Some(n) = state.store.get_node(&id).await? else {
        return Ok(false);
    };
    let ctx = drover_policy::Context {
        document: Some(c.document_name.clone()),
        kind: None,
    };
    let r = Resource::Node(crate::authz::node_facts(&n));
    Ok(state
        .authz
        .check(who, Action::ReadOutput, &r, &ctx)
        .await
        .is_ok())
}

/// The nodes among `nodes` whose output of command `c` `who` may read (a node that is gone is
/// not one of them): [`may_read_output`] for a page of a listing.
async fn readable_output(
    state: &AppState,
    who: &Principal,
    c: &Command,
    nodes: &[&str],
) -> Result<std::collections::HashSet<String>, ApiError> {
    let mut ids: Vec<drover_store::NodeId> = nodes
        .iter()
        .filter_map(|n| drover_store::NodeId::parse(n))
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let found = state.store.get_nodes(&ids).await?;
    let ctx = drover_policy::Context {
        document: Some(c.document_name.clone()),
        kind: None,
    };
    let allowed = state
        .authz
        .nodes(who, Action::ReadOutput, &found, &ctx)
        .await?;
    Ok(found
        .into_iter()
        .zip(allowed)
        .filter_map(|(n, ok)| ok.then(|| n.id.to_string()))
        .collect())
}

#[utoipa::path(get, path = "/api/v1/commands/{id}", params(("id" = String, Path)),
    responses((status = 200, body = CommandView), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn show(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    let c = load(&state, &who, Action::ReadCommand, &id).await?;
    Ok(Json(view(&state, &who, c).await?))
}

#[derive(Deserialize)]
pub struct WaitQuery {
    seen: Option<u64>,
    timeout_ms: Option<u64>,
}

/// Long poll: answers once progress newer than `seen` is stored, the command is done, or the
/// timeout (at most 30 s) passes; progress is answered no sooner than [`POLL_INTERVAL`] after
/// the request (a command that ends is answered at once).
#[utoipa::path(get, path = "/api/v1/commands/{id}/wait", params(("id" = String, Path), ("seen" = Option<u64>, Query), ("timeout_ms" = Option<u64>, Query)),
    responses((status = 200, body = CommandView)), security(("bearer" = [])))]
pub async fn wait(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<CommandView>, ApiError> {
    let start = tokio::time::Instant::now();
    let settle = start + POLL_INTERVAL;
    let deadline = start + Duration::from_millis(q.timeout_ms.unwrap_or(10_000).min(30_000));
    let updates = state.commands.updates();
    let (mut changed, mut finished) = (updates.changed(), updates.finished());
    let c = load(&state, &who, Action::ReadCommand, &id).await?;
    if is_done(&c.status) {
        return Ok(Json(view(&state, &who, c).await?));
    }
    let mut progressed = q.seen.is_none_or(|s| s < *changed.borrow());
    // Progress is only noted; the store is read again only when some command has finished.
    loop {
        let until = if progressed { settle } else { deadline };
        tokio::select! {
            r = changed.changed() => {
                if r.is_err() {
                    break;
                }
                progressed = true;
                if tokio::time::Instant::now() >= settle {
                    break;
                }
            }
            r = finished.changed() => {
                let done = r.is_err()
                    || state.store.get_command(&id).await?.is_none_or(|c| is_done(&c.status));
                if done {
                    break;
                }
            }
            // The interval or the timeout passed.
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    let c = load(&state, &who, Action::ReadCommand, &id).await?;
    Ok(Json(view(&state, &who, c).await?))
}

#[utoipa::path(post, path = "/api/v1/commands/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = CommandView), (status = 409, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<CommandView>, ApiError> {
    load(&state, &who, Action::CancelCommand, &id).await?;
    let c = state.commands.cancel(&id).await?;
    tracing::info!(command = %id, by = %who.user.name, "cancel requested");
    Ok(Json(view(&state, &who, c).await?))
}

#[derive(Deserialize)]
pub struct InvocationsQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    status: Option<String>,
    node: Option<String>,
    /// Include step results and output (shortened to 24,000 characters per stream).
    output: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/commands/{id}/invocations",
    params(("id" = String, Path), ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query), ("status" = Option<String>, Query), ("node" = Option<String>, Query), ("output" = Option<bool>, Query)),
    responses((status = 200, body = InvocationList)), security(("bearer" = [])))]
pub async fn invocations(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<InvocationsQuery>,
) -> Result<Json<InvocationList>, ApiError> {
    let command = load(&state, &who, Action::ReadCommand, &id).await?;
    let limit = validate::range("limit", q.limit.unwrap_or(1000), 1..=10_000)?;
    if let Some(n) = &q.node {
        validate::node_id(n)?;
    }
    if let Some(c) = &q.cursor {
        validate::pattern("cursor", rules::INVOCATION_ID, c, "an invocation ID")?;
    }
    if let Some(s) = &q.status {
        if !INVOCATION_STATUSES.contains(&s.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "invalid status {s:?}: one of {}",
                INVOCATION_STATUSES.join(", ")
            )));
        }
    }
    let rows = state
        .store
        .list_invocations(&InvocationQuery {
            command_id: Some(id),
            node_id: q.node,
            status: q.status,
            after: q.cursor,
            limit: limit + 1,
            with_steps: q.output.unwrap_or(false),
            // A summary shows the first SUMMARY_CHARS; one more chunk tells it was cut.
            output_cap: Some(SUMMARY_CHARS + 1),
            id: None,
        })
        .await?;
    let more = rows.len() > limit;
    let rows: Vec<_> = rows.into_iter().take(limit).collect();
    // Output only from the nodes whose output the user may read, decided for the whole page at
    // once (one read of the nodes, one decision between the nodes that look alike).
    let with_output: Vec<&str> = rows
        .iter()
        .filter(|i| !i.steps.is_empty())
        .map(|i| i.node_id.as_str())
        .collect();
    let readable = readable_output(&state, &who, &command, &with_output).await?;
    let invocations: Vec<InvocationView> = rows
        .into_iter()
        .map(|i| {
            let mut i = invocation_view(i, false);
            if !readable.contains(i.node_id.as_str()) {
                i.steps.clear();
            }
            i
        })
        .collect();
    let next_cursor = if more {
        invocations.last().map(|i| i.id.clone())
    } else {
        None
    };
    Ok(Json(InvocationList {
        invocations,
        next_cursor,
    }))
}

/// The full output of one node's invocation.
#[utoipa::path(get, path = "/api/v1/commands/{id}/invocations/{node}",
    params(("id" = String, Path), ("node" = String, Path)),
    responses((status = 200, body = InvocationView), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn invocation(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path((id, node)): Path<(String, String)>,
) -> Result<Json<InvocationView>, ApiError> {
    let command = load(&state, &who, Action::ReadCommand, &id).await?;
    validate::node_id(&node)?;
    if !may_read_output(&state, &who, &command, &node).await? {
        return Err(crate::authz::denied(
            &who,
            Action::ReadOutput,
            &format!("node {node}"),
        ));
    }
    let rows = state
        .store
        .list_invocations(&InvocationQuery {
            command_id: Some(id.clone()),
            node_id: Some(node.clone()),
            limit: 1,
            with_steps: true,
            ..InvocationQuery::default()
        })
        .await?;
    let inv = rows.into_iter().next().ok_or_else(|| {
        ApiError::NotFound(format!("command {id} has no invocation on node {node}"))
    })?;
    Ok(Json(invocation_view(inv, true)))
}
