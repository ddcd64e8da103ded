//! `GET /api/v1/node-table`: the console's node table, paged, sorted and searched on the
//! server, so that a browser holds a screenful of a 10,000-node fleet rather than all of it.
//!
//! A page is cut from the whole ordered list of the nodes the user may see, so `total` and
//! `offset` are exact whatever the policies hide: the server reads the nodes that match the
//! filters, keeps those the user may read (decided once for nodes that look alike), searches
//! and sorts them, and answers one slice. Every request starts afresh, so nothing is held
//! between requests and any replica answers any page.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::Json;
use drover_api::{NodeTable, NodeView};
use drover_store::{NodeQuery, NodeStatus};

use super::nodes::{apply_filter, view_at};
use super::{validate, ApiError};
use crate::authz::{Action, Principal};
use crate::AppState;

/// The columns, as the console and its CSV report name them; sorting and search use the same
/// text the table shows.
pub const COLUMNS: [&str; 9] = [
    "id",
    "name",
    "status",
    "agent_version",
    "platform",
    "os",
    "ip",
    "tags",
    "last_seen",
];
/// Largest page: what the OpenAPI document declares.
pub const MAX_LIMIT: usize = 1000;
/// Largest offset: far past any fleet, and what the OpenAPI document declares.
pub const MAX_OFFSET: usize = u32::MAX as usize;
/// Nodes read from the store per query while collecting.
const READ_BATCH: usize = 10_000;
/// How long a request waits for its turn to read the fleet before it is told to retry.
const SCAN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct Query {
    store: NodeQuery,
    search: String,
    sort: usize,
    descending: bool,
    offset: usize,
    limit: usize,
}

fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query {
        store: NodeQuery::default(),
        search: String::new(),
        sort: 1,
        descending: false,
        offset: 0,
        limit: 100,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "filter" => apply_filter(&mut q.store, &v)?,
            "search" => {
                validate::text("search", &v, 256)?;
                q.search = v.to_lowercase();
            }
            "sort" => {
                q.sort = COLUMNS.iter().position(|c| *c == v).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "invalid sort {v:?}: one of {}",
                        COLUMNS.join(", ")
                    ))
                })?
            }
            "order" => {
                q.descending = match v.as_ref() {
                    "asc" => false,
                    "desc" => true,
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "invalid order {v:?}: asc or desc"
                        )))
                    }
                }
            }
            "offset" => q.offset = validate::count("offset", &v, 0..=MAX_OFFSET)?,
            "limit" => q.limit = validate::count("limit", &v, 1..=MAX_LIMIT)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: use filter, search, sort, order, offset or limit"
                )))
            }
        }
    }
    Ok(q)
}

/// A node's cells in [`COLUMNS`] order, as the table shows them.
pub fn cells(n: &NodeView) -> [String; 9] {
    let inv = &n.inventory;
    [
        n.id.clone(),
        n.name.clone(),
        n.status.clone(),
        inv.agent_version.clone(),
        inv.platform.clone(),
        format!("{} {}", inv.os_name, inv.os_version)
            .trim()
            .to_string(),
        inv.ip_addresses.join(" "),
        n.tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; "),
        n.last_seen_at.clone().unwrap_or_default(),
    ]
}

#[utoipa::path(
    get, path = "/api/v1/node-table",
    params(
        ("filter" = Option<Vec<String>>, Query, description = "Repeatable: tag:KEY=VALUE, platform=P, status=S, name=N"),
        ("search" = Option<String>, Query, description = "Only rows with this text in a cell (any case)"),
        ("sort" = Option<String>, Query, description = "id, name (default), status, agent_version, platform, os, ip, tags or last_seen"),
        ("order" = Option<String>, Query, description = "asc (default) or desc"),
        ("offset" = Option<usize>, Query, description = "Rows to skip"),
        ("limit" = Option<usize>, Query, description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses((status = 200, body = NodeTable), (status = 400, body = drover_api::ErrorBody), (status = 429, body = drover_api::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn table(
    State(state): State<Arc<AppState>>,
    who: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Json<NodeTable>, ApiError> {
    let mut q = parse(raw.as_deref())?;
    q.store.limit = READ_BATCH;
    // A token that may not read nodes sees none, without reading the fleet.
    if crate::authz::scoped(&who, Action::ReadNode).is_err() {
        return Ok(Json(NodeTable {
            total: 0,
            visible: 0,
            offset: q.offset,
            nodes: Vec::new(),
        }));
    }
    let _turn = tokio::time::timeout(SCAN_WAIT, state.fleet_scans.clone().acquire_owned())
        .await
        .map_err(|_| {
            ApiError::TooManyRequests(
                "the server is reading the fleet for other requests; try again in a moment".into(),
            )
        })?
        .map_err(|e| ApiError::Internal(format!("the fleet scan guard: {e}")))?;
    // One clock for the whole answer: a node online now is "seen now", the same for all.
    let now = crate::secrets::now();
    let mut rows: Vec<([String; 9], NodeView)> = Vec::new();
    let mut visible = 0;
    loop {
        let page = state.store.list_nodes(&q.store).await?;
        let allowed = state
            .authz
            .nodes(&who, Action::ReadNode, &page.nodes, &Default::default())
            .await?;
        for (n, ok) in page.nodes.into_iter().zip(allowed) {
            if !ok {
                continue;
            }
            visible += 1;
            let online = n.status == NodeStatus::Online;
            let v = view_at(n, online, now);
            let c = cells(&v);
            if q.search.is_empty() || c.iter().any(|cell| cell.to_lowercase().contains(&q.search)) {
                rows.push((c, v));
            }
        }
        match page.next {
            Some(next) => q.store.after = Some(next),
            None => break,
        }
    }
    // Ties by ID, so that pages cut from the same fleet never repeat or skip a row. Sorting
    // 10,000 rows takes milliseconds: off the async workers.
    let (key, descending, offset, limit) = (q.sort, q.descending, q.offset, q.limit);
    let (total, nodes) = tokio::task::spawn_blocking(move || {
        rows.sort_by(|(a, _), (b, _)| {
            let by = a
                .get(key)
                .cmp(&b.get(key))
                .then_with(|| a.first().cmp(&b.first()));
            if descending {
                by.reverse()
            } else {
                by
            }
        });
        let total = rows.len();
        let nodes: Vec<NodeView> = rows
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, v)| v)
            .collect();
        (total, nodes)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("sorting the node table: {e}")))?;
    Ok(Json(NodeTable {
        total,
        visible,
        offset: q.offset,
        nodes,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_are_named() {
        let q = parse(Some(
            "filter=status%3Donline&search=Web&sort=last_seen&order=desc&offset=200&limit=50",
        ))
        .unwrap();
        assert_eq!(q.search, "web");
        assert_eq!(COLUMNS.get(q.sort), Some(&"last_seen"));
        assert!(q.descending);
        assert_eq!((q.offset, q.limit), (200, 50));
        assert_eq!(q.store.status, Some(NodeStatus::Online));
        for (bad, names) in [
            ("sort=color", "sort"),
            ("order=up", "order"),
            ("offset=-1", "offset"),
            ("offset=4294967296", "offset"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("page=2", "page"),
            ("filter=bogus", "bogus"),
        ] {
            let err = parse(Some(bad)).err().unwrap().to_string();
            assert!(err.contains(names), "{bad}: {err}");
        }
    }
}
