//! `/api/v1/associations` and `/api/v1/compliance`: State Manager. An association runs with
//! its owner's permissions (whoever created or last changed it), checked again at every
//! application; creating or changing one checks now what every application will need, so bad
//! input is refused at once rather than failing on each tick.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{
    AssociationList, AssociationRequest, AssociationView, ComplianceList, ComplianceSummary,
    ComplianceSummaryRow, ComplianceView, ExecutionList, ExecutionView,
};
use drover_store::assoc::{Association, Execution};
use drover_store::NodeId;
use serde::Deserialize;

use super::audited::{note, AuditNote};
use super::commands::MAX_TARGETS;
use super::{rfc3339, rules, validate, ApiError, Body, Path, Query};
use crate::assoc::{new_execution, Schedule};
use crate::authz::{scoped, Action, Principal};
use crate::{secrets, AppState};

pub const ASSOCIATION_REF: &str = r"^(assoc-[0-9a-f]{16}|[A-Za-z0-9_.-]{3,128})$";
const VERSION_RULE: &str = r"^(\$DEFAULT|\$LATEST|[1-9][0-9]{0,17})$";
const SEVERITIES: [&str; 5] = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNSPECIFIED"];
/// Associations one server keeps.
const MAX_ASSOCIATIONS: usize = 10_000;

fn millis(ms: i64) -> String {
    rfc3339(ms.div_euclid(1000))
}

pub fn execution_view(e: Execution) -> ExecutionView {
    ExecutionView {
        id: e.id,
        association_id: e.association_id,
        revision: e.revision,
        trigger: e.trigger,
        nodes: e.nodes,
        command_id: e.command_id,
        status: e.status,
        detail: e.detail,
        created_at: rfc3339(e.created_at),
        finished_at: e.finished_at.map(rfc3339),
    }
}

async fn view(
    state: &AppState,
    who: &Principal,
    a: Association,
) -> Result<AssociationView, ApiError> {
    let last = state
        .store
        .list_executions(&a.id, 1)
        .await?
        .into_iter()
        .next();
    // Sensitive values are hidden as a command's are; the document may change meanwhile, so
    // its current version decides which are.
    let version = a.document_version.parse::<i64>().ok();
    let params = a.parameters.clone().into_iter().collect();
    let shown =
        super::commands::hide_sensitive(state, who, &a.document, version, i64::MAX, params).await?;
    let parameters = match shown {
        serde_json::Value::Object(m) => m.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    Ok(AssociationView {
        next_run_at: (a.next_run_ms < i64::MAX).then(|| millis(a.next_run_ms)),
        last_execution: last.map(execution_view),
        id: a.id,
        name: a.name,
        document: a.document,
        document_version: a.document_version,
        parameters,
        targets: a.targets,
        schedule: a.schedule,
        max_concurrency: a.max_concurrency,
        max_errors: a.max_errors,
        apply_only_at_cron_interval: a.apply_only_at_cron_interval,
        compliance_severity: a.severity,
        owner: a.owner,
        created_at: rfc3339(a.created_at),
        updated_at: rfc3339(a.updated_at),
        revision: a.revision,
    })
}

async fn find(state: &AppState, id: &str) -> Result<Association, ApiError> {
    validate::pattern("id", ASSOCIATION_REF, id, "an association ID or name")?;
    state
        .store
        .get_association(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("association {id} not found")))
}

/// Would an application of `a` as `who` be sent? What it would be refused is refused now.
async fn may_apply(state: &AppState, who: &Principal, a: &Association) -> Result<(), ApiError> {
    scoped(who, Action::SendCommand)?;
    let req = crate::assoc::request(state, a, None).await?;
    let document = state.commands.check(&req, who, &state.authz).await?;
    let nodes = state.commands.resolve_targets(&a.targets).await?;
    if !nodes.is_empty() {
        let ctx = drover_policy::Context {
            document: Some(document.clone()),
            kind: None,
        };
        let allowed = state
            .authz
            .nodes(who, Action::SendCommand, &nodes, &ctx)
            .await?;
        if !allowed.iter().any(|a| *a) {
            return Err(crate::authz::denied(
                who,
                Action::SendCommand,
                &format!("any of the targets with document {document:?}"),
            ));
        }
    }
    Ok(())
}

/// Fills `a` from the request's fields and checks it whole, as `who` (its next owner).
async fn apply_request(
    state: &AppState,
    who: &Principal,
    a: &mut Association,
    req: AssociationRequest,
) -> Result<(), ApiError> {
    if let Some(v) = req.name {
        a.name = v;
    }
    if let Some(v) = req.document {
        a.document = v;
    }
    if let Some(v) = req.document_version {
        a.document_version = v;
    }
    if let Some(v) = req.parameters {
        a.parameters = v;
    }
    if let Some(v) = req.targets {
        a.targets = v;
    }
    if let Some(v) = req.schedule {
        a.schedule = v;
    }
    if let Some(v) = req.max_concurrency {
        a.max_concurrency = v;
    }
    if let Some(v) = req.max_errors {
        a.max_errors = v;
    }
    if let Some(v) = req.apply_only_at_cron_interval {
        a.apply_only_at_cron_interval = v;
    }
    if let Some(v) = req.compliance_severity {
        a.severity = v.to_ascii_uppercase();
    }
    validate::pattern(
        "name",
        rules::DOCUMENT_NAME,
        &a.name,
        "3 to 128 letters, digits and _.-",
    )?;
    if a.name.starts_with("assoc-") {
        return Err(ApiError::BadRequest(
            "name: may not start with assoc- (association IDs do)".into(),
        ));
    }
    validate::pattern(
        "document",
        rules::DOCUMENT_NAME,
        &a.document,
        "a document's name",
    )?;
    validate::pattern(
        "document_version",
        VERSION_RULE,
        &a.document_version,
        "$DEFAULT, $LATEST or a version number",
    )?;
    if a.targets.is_empty() || a.targets.len() > MAX_TARGETS {
        return Err(ApiError::BadRequest(format!(
            "targets: give 1 to {MAX_TARGETS} (node IDs, names, tag:KEY=VALUE or all)"
        )));
    }
    for t in &a.targets {
        validate::pattern(
            "targets",
            &rules::text(1, 256),
            t,
            "1 to 256 printable characters",
        )?;
    }
    let schedule: Schedule = a
        .schedule
        .parse()
        .map_err(|e: String| ApiError::BadRequest(format!("schedule: {e}")))?;
    validate::pattern(
        "max_concurrency",
        rules::RATE,
        &a.max_concurrency,
        "a number from 1, or a percentage of the targets from 1% to 100%",
    )?;
    validate::pattern(
        "max_errors",
        rules::RATE_OR_ZERO,
        &a.max_errors,
        "a number from 0, or a percentage of the targets from 0% to 100%",
    )?;
    if !SEVERITIES.contains(&a.severity.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "compliance_severity: {:?} is not one of {}",
            a.severity,
            SEVERITIES.join(", ")
        )));
    }
    may_apply(state, who, a).await?;
    let now_ms = crate::audit::now_ms();
    a.next_run_ms = schedule.next_after(now_ms).unwrap_or(i64::MAX);
    a.owner = who.user.name.clone();
    a.updated_at = secrets::now();
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/associations", request_body = AssociationRequest,
    responses((status = 201, body = AssociationView), (status = 400, body = drover_api::ErrorBody), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<AssociationRequest>,
) -> Result<
    (
        StatusCode,
        axum::Extension<AuditNote>,
        Json<AssociationView>,
    ),
    ApiError,
> {
    state
        .authz
        .check_server(&who, Action::ManageAssociations)
        .await?;
    if req.revision.is_some() {
        return Err(ApiError::BadRequest(
            "revision: only an update names one".into(),
        ));
    }
    for (field, given) in [
        ("name", req.name.is_some()),
        ("document", req.document.is_some()),
        ("targets", req.targets.is_some()),
        ("schedule", req.schedule.is_some()),
    ] {
        if !given {
            return Err(ApiError::BadRequest(format!("{field}: required")));
        }
    }
    if state.store.list_associations().await?.len() >= MAX_ASSOCIATIONS {
        return Err(ApiError::Conflict(format!(
            "this server has {MAX_ASSOCIATIONS} associations already; delete one first"
        )));
    }
    let now = secrets::now();
    let mut a = Association {
        id: format!("assoc-{}", secrets::random_hex(8)),
        name: String::new(),
        document: String::new(),
        document_version: "$DEFAULT".into(),
        parameters: BTreeMap::new(),
        targets: Vec::new(),
        schedule: String::new(),
        max_concurrency: "50".into(),
        max_errors: "100%".into(),
        apply_only_at_cron_interval: false,
        severity: "UNSPECIFIED".into(),
        owner: String::new(),
        created_at: now,
        updated_at: now,
        revision: 1,
        next_run_ms: 0,
    };
    apply_request(&state, &who, &mut a, req).await?;
    let first = (!a.apply_only_at_cron_interval).then(|| new_execution(&a, "create", Vec::new()));
    state.store.create_association(&a, first.as_ref()).await?;
    state.assoc.wake();
    tracing::info!(association = %a.id, name = %a.name, by = %who.user.name, "association created");
    let noted = note(format!("association/{} document/{}", a.id, a.document));
    Ok((
        StatusCode::CREATED,
        noted,
        Json(view(&state, &who, a).await?),
    ))
}

#[utoipa::path(patch, path = "/api/v1/associations/{id}", request_body = AssociationRequest,
    params(("id" = String, Path, description = "An association's ID or name")),
    responses((status = 200, body = AssociationView), (status = 400, body = drover_api::ErrorBody), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Body(req): Body<AssociationRequest>,
) -> Result<(axum::Extension<AuditNote>, Json<AssociationView>), ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageAssociations)
        .await?;
    let mut a = find(&state, &id).await?;
    let expected = req.revision.unwrap_or(a.revision);
    let schedule_before = a.schedule.clone();
    apply_request(&state, &who, &mut a, req).await?;
    // The same schedule keeps its phase (the store keeps the due time it has).
    let reschedule = a.schedule != schedule_before;
    a.revision = expected + 1;
    // A changed association is applied again at once, as SSM does.
    let first = (!a.apply_only_at_cron_interval).then(|| new_execution(&a, "update", Vec::new()));
    state
        .store
        .update_association(&a, expected, reschedule, first.as_ref())
        .await?;
    state.assoc.wake();
    let noted = note(format!("association/{} document/{}", a.id, a.document));
    let a = find(&state, &a.id).await?;
    Ok((noted, Json(view(&state, &who, a).await?)))
}

#[utoipa::path(get, path = "/api/v1/associations",
    responses((status = 200, body = AssociationList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<AssociationList>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ReadAssociations)
        .await?;
    let mut associations = Vec::new();
    for a in state.store.list_associations().await? {
        associations.push(view(&state, &who, a).await?);
    }
    Ok(Json(AssociationList { associations }))
}

#[utoipa::path(get, path = "/api/v1/associations/{id}",
    params(("id" = String, Path, description = "An association's ID or name")),
    responses((status = 200, body = AssociationView), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<Json<AssociationView>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ReadAssociations)
        .await?;
    let a = find(&state, &id).await?;
    Ok(Json(view(&state, &who, a).await?))
}

#[utoipa::path(delete, path = "/api/v1/associations/{id}",
    params(("id" = String, Path, description = "An association's ID or name")),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Extension<AuditNote>), ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageAssociations)
        .await?;
    let a = find(&state, &id).await?;
    state.store.delete_association(&a.id).await?;
    Ok((
        StatusCode::NO_CONTENT,
        note(format!("association/{} name/{}", a.id, a.name)),
    ))
}

/// Applies an association now, outside its schedule (which keeps its phase).
#[utoipa::path(post, path = "/api/v1/associations/{id}/run",
    params(("id" = String, Path, description = "An association's ID or name")),
    responses((status = 201, body = ExecutionView), (status = 404, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_now(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Extension<AuditNote>, Json<ExecutionView>), ApiError> {
    state
        .authz
        .check_server(&who, Action::ManageAssociations)
        .await?;
    // Whoever runs it must be allowed to send what it sends, as for an update; and runs do
    // not pile up behind one under way.
    let a = find(&state, &id).await?;
    may_apply(&state, &who, &a).await?;
    if state
        .store
        .open_executions()
        .await?
        .iter()
        .any(|e| e.association_id == a.id)
    {
        return Err(ApiError::Conflict(format!(
            "association {id} is being applied now; see drover assoc history"
        )));
    }
    // A tick moving the schedule meanwhile makes the claim fail: read again and retry.
    for _ in 0..3 {
        let a = find(&state, &id).await?;
        let exec = new_execution(&a, "run-now", Vec::new());
        if state
            .store
            .claim_association_run(&a.id, a.next_run_ms, a.next_run_ms, &exec)
            .await?
        {
            state.assoc.wake();
            let noted = note(format!("association/{} execution/{}", a.id, exec.id));
            return Ok((StatusCode::CREATED, noted, Json(execution_view(exec))));
        }
    }
    Err(ApiError::Conflict(format!(
        "association {id} is being applied on its schedule right now; try again"
    )))
}

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/associations/{id}/executions",
    params(("id" = String, Path, description = "An association's ID or name"), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = ExecutionList), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn executions(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<ExecutionList>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ReadAssociations)
        .await?;
    let a = find(&state, &id).await?;
    let limit = validate::range("limit", q.limit.unwrap_or(50), 1..=1000)?;
    let executions = state
        .store
        .list_executions(&a.id, limit)
        .await?
        .into_iter()
        .map(execution_view)
        .collect();
    Ok(Json(ExecutionList { executions }))
}

#[derive(Deserialize)]
pub struct ComplianceQuery {
    association: Option<String>,
    node: Option<String>,
}

/// Compliance per node and association, of the nodes the caller may see.
#[utoipa::path(get, path = "/api/v1/compliance",
    params(("association" = Option<String>, Query), ("node" = Option<String>, Query, description = "A node ID")),
    responses((status = 200, body = ComplianceList), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn compliance(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(q): Query<ComplianceQuery>,
) -> Result<Json<ComplianceList>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ReadAssociations)
        .await?;
    let association = match &q.association {
        Some(a) => Some(find(&state, a).await?.id),
        None => None,
    };
    if let Some(n) = &q.node {
        validate::pattern("node", rules::NODE_ID, n, "a node ID (n-...)")?;
    }
    let rows = state
        .store
        .list_compliance(association.as_deref(), q.node.as_deref())
        .await?;
    let associations: BTreeMap<String, Association> = state
        .store
        .list_associations()
        .await?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let mut nodes = BTreeMap::new();
    for r in &rows {
        if let (false, Some(id)) = (nodes.contains_key(&r.node_id), NodeId::parse(&r.node_id)) {
            if let Some(n) = state.store.get_node(&id).await? {
                nodes.insert(r.node_id.clone(), n);
            }
        }
    }
    let listed: Vec<drover_store::Node> = nodes.values().cloned().collect();
    let visible = state
        .authz
        .nodes(&who, Action::ReadNode, &listed, &Default::default())
        .await?;
    let visible: BTreeMap<String, String> = listed
        .into_iter()
        .zip(visible)
        .filter_map(|(n, v)| v.then(|| (n.id.to_string(), n.name)))
        .collect();
    let items = rows
        .into_iter()
        .filter_map(|r| {
            let name = visible.get(&r.node_id)?.clone();
            let a = associations.get(&r.association_id)?;
            Some(ComplianceView {
                association_name: a.name.clone(),
                severity: a.severity.clone(),
                node_name: name,
                association_id: r.association_id,
                node_id: r.node_id,
                status: r.status,
                reason: r.reason,
                execution_id: r.execution_id,
                at: rfc3339(r.at),
            })
        })
        .collect();
    Ok(Json(ComplianceList { items }))
}

/// Counts by association (and so by severity).
#[utoipa::path(get, path = "/api/v1/compliance/summary",
    responses((status = 200, body = ComplianceSummary)), security(("bearer" = [])))]
pub async fn summary(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<ComplianceSummary>, ApiError> {
    state
        .authz
        .check_server(&who, Action::ReadAssociations)
        .await?;
    let counts: BTreeMap<String, drover_store::assoc::ComplianceCount> = state
        .store
        .compliance_summary()
        .await?
        .into_iter()
        .map(|c| (c.association_id.clone(), c))
        .collect();
    let associations = state
        .store
        .list_associations()
        .await?
        .into_iter()
        .map(|a| {
            let c = counts.get(&a.id).cloned().unwrap_or_default();
            ComplianceSummaryRow {
                association_id: a.id,
                association_name: a.name,
                severity: a.severity,
                compliant: c.compliant,
                non_compliant: c.non_compliant,
                pending: c.pending,
            }
        })
        .collect();
    Ok(Json(ComplianceSummary { associations }))
}
