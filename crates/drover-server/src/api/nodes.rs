//! `/api/v1/nodes`: the node registry.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use drover_api::{InventoryView, NodeList, NodeView, TagUpdate};
use drover_store::{Node, NodeQuery, NodeStatus};

use super::{rules, validate, ApiError, Body, Path};
use crate::authz::{Action, Principal};
use crate::registry::Kick;
use crate::{secrets, AppState};

/// Default and largest page sizes: one page of 10,000 nodes is about 6 MB of JSON.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// Smallest batch read from the store for a page.
const READ_AT_LEAST: usize = 256;

pub fn view(node: Node, online_now: bool) -> NodeView {
    view_at(node, online_now, secrets::now())
}

/// [`view`] with the time it is now, for answers of many nodes that must agree on it.
pub fn view_at(node: Node, online_now: bool, now: i64) -> NodeView {
    let inv = node.inventory;
    // The store keeps connect and disconnect times; a node connected now was seen now.
    let last_seen = if online_now {
        Some(super::rfc3339(now))
    } else {
        (node.last_seen_at > 0).then(|| super::rfc3339(node.last_seen_at))
    };
    NodeView {
        id: node.id.to_string(),
        name: node.name,
        tags: node.tags,
        status: node.status.as_str().into(),
        last_seen_at: last_seen,
        registered_at: super::rfc3339(node.registered_at),
        activation_id: node.activation_id,
        inventory: InventoryView {
            hostname: inv.hostname,
            platform: inv.platform,
            os_name: inv.os_name,
            os_version: inv.os_version,
            kernel: inv.kernel,
            arch: inv.arch,
            agent_version: inv.agent_version,
            ip_addresses: inv.ip_addresses,
            boot_time: (inv.boot_time > 0).then(|| super::rfc3339(inv.boot_time)),
        },
    }
}

/// Parses one `filter` value: `tag:KEY=VALUE`, `platform=P`, `status=S` or `name=N`.
pub(super) fn apply_filter(q: &mut NodeQuery, f: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        ApiError::BadRequest(format!(
            "invalid filter {f:?}: {why}; use tag:KEY=VALUE, platform=linux|macos, \
             status=online|connectionlost|inactive or name=NAME"
        ))
    };
    // The specific complaints first; then the pattern the OpenAPI document declares, which
    // accepts exactly what is left.
    let shaped = || -> Result<(), ApiError> {
        if rules::matches(&rules::node_filter(), f) {
            Ok(())
        } else {
            Err(bad("values are at most 256 printable characters"))
        }
    };
    if let Some(tag) = f.strip_prefix("tag:") {
        let (k, v) = tag
            .split_once('=')
            .ok_or_else(|| bad("a tag filter needs KEY=VALUE"))?;
        validate::tag_key(k)?;
        validate::tag_value(k, v)?;
        q.tags.push((k.to_string(), v.to_string()));
        return shaped();
    }
    let (key, value) = f.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
    match key {
        "platform" => q.platform = Some(value.to_ascii_lowercase()),
        "status" => q.status = Some(NodeStatus::parse(value).ok_or_else(|| bad("unknown status"))?),
        "name" => q.name = Some(value.to_string()),
        _ => return Err(bad(&format!("unknown filter key {key:?}"))),
    }
    shaped()
}

/// What a listing asks beyond the store's query: only the nodes on which the user may also
/// take an action (the console offers what the user may do, and counts a run's reach).
#[derive(Default)]
struct Also {
    action: Option<Action>,
    ctx: drover_policy::Context,
}

fn parse_may(v: &str) -> Result<Action, ApiError> {
    v.parse::<Action>()
        .ok()
        .filter(|a| a.resource() == drover_policy::ResourceKind::Node)
        .ok_or_else(|| {
            let names: Vec<&str> = Action::all()
                .filter(|a| a.resource() == drover_policy::ResourceKind::Node)
                .map(Action::name)
                .collect();
            ApiError::BadRequest(format!(
                "invalid may {v:?}: one of the actions taken on a node ({})",
                names.join(", ")
            ))
        })
}

fn parse_query(raw: Option<&str>) -> Result<(NodeQuery, Also), ApiError> {
    let mut q = NodeQuery {
        limit: DEFAULT_LIMIT,
        ..NodeQuery::default()
    };
    let mut also = Also::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "filter" => apply_filter(&mut q, &v)?,
            "may" => also.action = Some(parse_may(&v)?),
            "document" => {
                validate::pattern(
                    "document",
                    rules::DOCUMENT_NAME,
                    &v,
                    "3 to 128 letters, digits and _ . -",
                )?;
                also.ctx.document = Some(v.into_owned());
            }
            "limit" => q.limit = validate::count("limit", &v, 1..=MAX_LIMIT)?,
            "cursor" => q.after = Some(validate::node_id(&v)?),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: use filter, limit, cursor, may or document"
                )))
            }
        }
    }
    Ok((q, also))
}

#[utoipa::path(
    get, path = "/api/v1/nodes",
    params(
        ("filter" = Option<Vec<String>>, Query, description = "Repeatable: tag:KEY=VALUE, platform=P, status=S, name=N"),
        ("limit" = Option<usize>, Query, description = "Page size, 1 to 10000 (default 1000)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("may" = Option<String>, Query, description = "Only the nodes on which the user may also take this action (SendCommand, StartSession, TagNode, ...)"),
        ("document" = Option<String>, Query, description = "The document the action of may is taken with (SendCommand)"),
    ),
    responses((status = 200, body = NodeList), (status = 400, body = drover_api::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Json<NodeList>, ApiError> {
    let (mut q, also) = parse_query(raw.as_deref())?;
    let limit = q.limit;
    // Read in batches of at least a few hundred, however small the page: a user who may see
    // few nodes of a big fleet reads past the others in a few queries, not one per node.
    q.limit = limit.max(READ_AT_LEAST);
    if crate::authz::scoped(&who, Action::ReadNode).is_err() {
        return Ok(Json(NodeList {
            nodes: Vec::new(),
            next_cursor: None,
        }));
    }
    // A page is `limit` nodes the user may see, read on past the ones it may not; the cursor
    // is the last node shown, so it never names a node the user may not see.
    let now = secrets::now();
    let mut nodes = Vec::new();
    let mut more = false;
    loop {
        let page = state.store.list_nodes(&q).await?;
        let mut shown = state
            .authz
            .nodes(&who, Action::ReadNode, &page.nodes, &Default::default())
            .await?;
        if let Some(action) = also.action {
            let allowed = state
                .authz
                .nodes(&who, action, &page.nodes, &also.ctx)
                .await?;
            for (v, a) in shown.iter_mut().zip(allowed) {
                *v &= a;
            }
        }
        let mut rest = page.nodes.into_iter().zip(shown);
        for (n, ok) in rest.by_ref() {
            if ok {
                let online = n.status == NodeStatus::Online;
                nodes.push(view_at(n, online, now));
                if nodes.len() == limit {
                    break;
                }
            }
        }
        if nodes.len() == limit {
            more = rest.next().is_some() || page.next.is_some();
            break;
        }
        match page.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    let next_cursor = if more {
        nodes.last().map(|n| n.id.clone())
    } else {
        None
    };
    Ok(Json(NodeList { nodes, next_cursor }))
}

/// Finds a node and checks that `who` may take `action` on it. A node the user may not even
/// see is "not found", so that IDs and names do not tell who has what.
pub(super) async fn authorized(
    state: &AppState,
    who: &Principal,
    id_or_name: &str,
    action: Action,
    ctx: &drover_policy::Context,
) -> Result<Node, ApiError> {
    let node = find(state, id_or_name).await?;
    let resource = drover_policy::Resource::Node(crate::authz::node_facts(&node));
    match state.authz.check(who, action, &resource, ctx).await {
        Ok(()) => Ok(node),
        Err(denied) => {
            // Denied a read, or denied something else on a node it may not even read.
            let visible = action != Action::ReadNode
                && state
                    .authz
                    .check(who, Action::ReadNode, &resource, &Default::default())
                    .await
                    .is_ok();
            if visible {
                Err(denied)
            } else {
                Err(ApiError::NotFound(format!("node {id_or_name} not found")))
            }
        }
    }
}

/// Finds a node by ID, or by name when the argument is not an ID and the name is unique.
pub(super) async fn find(state: &AppState, id_or_name: &str) -> Result<Node, ApiError> {
    if let Some(id) = drover_store::NodeId::parse(id_or_name) {
        return state
            .store
            .get_node(&id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("node {id_or_name} not found")));
    }
    validate::pattern(
        "node ID or name",
        &rules::text(1, 256),
        id_or_name,
        "1 to 256 characters, no control characters",
    )?;
    let page = state
        .store
        .list_nodes(&NodeQuery {
            name: Some(id_or_name.to_string()),
            limit: 2,
            ..NodeQuery::default()
        })
        .await?;
    let mut nodes = page.nodes.into_iter();
    match (nodes.next(), nodes.next()) {
        (Some(n), None) => Ok(n),
        (None, _) => Err(ApiError::NotFound(format!(
            "no node has the ID or name {id_or_name:?}"
        ))),
        (Some(_), Some(_)) => Err(ApiError::Conflict(format!(
            "several nodes are named {id_or_name:?}: use the node ID"
        ))),
    }
}

#[utoipa::path(
    get, path = "/api/v1/nodes/{id}",
    params(("id" = String, Path, description = "Node ID, or a unique node name")),
    responses((status = 200, body = NodeView), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    let node = authorized(&state, &who, &id, Action::ReadNode, &Default::default()).await?;
    let online = node.status == NodeStatus::Online;
    Ok(Json(view(node, online)))
}

#[utoipa::path(
    patch, path = "/api/v1/nodes/{id}/tags",
    params(("id" = String, Path, description = "Node ID, or a unique node name")),
    request_body = TagUpdate,
    responses((status = 200, body = NodeView), (status = 400, body = drover_api::ErrorBody), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn tag(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Body(update): Body<TagUpdate>,
) -> Result<Json<NodeView>, ApiError> {
    validate::tags(&update.set)?;
    for k in &update.remove {
        validate::tag_key(k)?;
    }
    // Nothing to set or remove is a valid, empty change: it answers the node as it is.
    let node = authorized(&state, &who, &id, Action::TagNode, &Default::default()).await?;
    let mut after = node.tags.clone();
    for k in &update.remove {
        after.remove(k);
    }
    after.extend(update.set.clone());
    if after.len() > validate::MAX_TAGS {
        return Err(ApiError::Conflict(format!(
            "node {} would have {} tags; at most {}",
            node.id,
            after.len(),
            validate::MAX_TAGS
        )));
    }
    let node = state
        .store
        .update_tags(&node.id, &update.set, &update.remove)
        .await?;
    state.assoc.node_changed(&node.id);
    let online = node.status == NodeStatus::Online;
    Ok(Json(view(node, online)))
}

#[utoipa::path(
    post, path = "/api/v1/nodes/{id}/deregister",
    params(("id" = String, Path, description = "Node ID, or a unique node name")),
    responses((status = 200, body = NodeView), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn deregister(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    let node = authorized(
        &state,
        &who,
        &id,
        Action::DeregisterNode,
        &Default::default(),
    )
    .await?;
    // Store first, then kick: a reconnect racing the kick then finds the node Inactive.
    let node = state
        .store
        .deregister_node(&node.id, secrets::now())
        .await?;
    if state.registry.kick(&node.id, Kick::Deregistered) {
        tracing::info!(node = %node.id, "deregistered; closed its open connection");
    } else {
        tracing::info!(node = %node.id, "deregistered");
    }
    Ok(Json(view(node, false)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filters_parse() {
        let (q, also) = parse_query(Some(
            "filter=tag%3Aenv%3Dprod&filter=platform%3Dlinux&filter=status%3Donline&limit=5&may=SendCommand&document=RunShellScript",
        ))
        .unwrap();
        assert_eq!(also.action, Some(Action::SendCommand));
        assert_eq!(also.ctx.document.as_deref(), Some("RunShellScript"));
        assert_eq!(q.tags, vec![("env".to_string(), "prod".to_string())]);
        assert_eq!(q.platform.as_deref(), Some("linux"));
        assert_eq!(q.status, Some(NodeStatus::Online));
        assert_eq!(q.limit, 5);
        for bad in [
            "filter=bogus",
            "filter=color%3Dred",
            "filter=status%3Dhappy",
            "limit=0",
            "limit=10001",
            "cursor=x",
            "page=2",
            // An action not taken on a node, an unknown one.
            "may=ManageUsers",
            "may=Everything",
            "may=SendCommand&document=a%20b",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
