//! State Manager: applies each association's document to its targets when it is created, on
//! its schedule, and to every node that comes to match its targets later; records each
//! application as an execution linked to the command it sent, and each node's compliance.
//!
//! Everything the scheduler knows is in the store: the next due time of each association
//! (claimed by compare-and-set, so a tick runs once even with two servers), the executions
//! (a command's ID is fixed before it is sent, so a restart in between finds it instead of
//! sending it again), and compliance rows (a node is claimed for a `new-node` application by
//! inserting its row, once).

pub mod schedule;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_store::assoc::{Association, Compliance, Execution};
use drover_store::{InvocationQuery, Node, NodeId, NodeStatus};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::authz::{Action, Principal};
use crate::commands::{SendRequest, MATCH_NO_NODE};
use crate::AppState;
pub use schedule::Schedule;

/// How long an association's command may wait for an offline node, and run.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(600);
const EXECUTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often open executions are looked at while any is open; and at most how long the
/// scheduler sleeps otherwise (it wakes earlier for a due run or a changed node).
const POLL_OPEN: Duration = Duration::from_secs(1);
const POLL_IDLE: Duration = Duration::from_secs(30);

/// Wakes the scheduler: a node registered or re-tagged, an association created or changed.
#[derive(Default)]
pub struct Scheduler {
    wake: Notify,
    changed: Mutex<BTreeSet<NodeId>>,
}

impl Scheduler {
    /// A node that may have come to match some association's targets.
    pub fn node_changed(&self, id: &NodeId) {
        self.changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        self.wake.notify_one();
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn take_changed(&self) -> BTreeSet<NodeId> {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A time-ordered key, shared by an execution (`exec-KEY`) and its command (`cmd-KEY`).
pub fn new_execution(a: &Association, trigger: &str, nodes: Vec<String>) -> Execution {
    let now = crate::secrets::now();
    let key = format!("{:010x}{}", now.max(0), crate::secrets::random_hex(5));
    Execution {
        id: format!("exec-{key}"),
        association_id: a.id.clone(),
        revision: a.revision,
        trigger: trigger.into(),
        nodes,
        command_id: format!("cmd-{key}"),
        status: "Pending".into(),
        detail: String::new(),
        created_at: now,
        finished_at: None,
    }
}

/// Does `node` come to match `targets` by its ID, `all` or its tags? Names are left to the
/// association's next run, where `Commands::resolve_targets` resolves them and refuses one
/// that several nodes bear: a node registering under a taken name must not get the
/// association (and the secrets it may carry) at once.
pub fn matches(targets: &[String], node: &Node) -> bool {
    if node.status == NodeStatus::Inactive {
        return false;
    }
    let mut all = false;
    let mut tags = Vec::new();
    for t in targets.iter().map(|t| t.trim()) {
        if t == "all" {
            all = true;
        } else if let Some((k, v)) = t.strip_prefix("tag:").and_then(|t| t.split_once('=')) {
            tags.push((k, v));
        } else if t == node.id.as_str() {
            return true;
        }
    }
    (all || !tags.is_empty())
        && tags
            .iter()
            .all(|(k, v)| node.tags.get(*k).is_some_and(|have| have == v))
}

/// The document reference an association sends: its version rule read now.
async fn document_ref(state: &AppState, a: &Association) -> Result<String, ApiError> {
    match a.document_version.as_str() {
        "$DEFAULT" => Ok(a.document.clone()),
        "$LATEST" => {
            let doc = crate::commands::resolve::find(&*state.store, &a.document).await?;
            Ok(format!("{}:{}", a.document, doc.latest_version))
        }
        n => Ok(format!("{}:{n}", a.document)),
    }
}

/// The principal an association acts as: its owner as the owner is now (a disabled or deleted
/// owner applies nothing), limited to what sending a command needs.
async fn acting_owner(state: &AppState, a: &Association) -> Result<Principal, ApiError> {
    let user = state
        .store
        .get_user(&a.owner)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(|| {
            ApiError::Forbidden(format!(
                "its owner {:?} no longer exists or is disabled",
                a.owner
            ))
        })?;
    Ok(Principal {
        token_id: format!("association:{}", a.id),
        token_name: format!("association {}", a.name),
        user: crate::api::user_facts(&user),
        scope: vec![
            Action::ReadNode,
            Action::SendCommand,
            Action::ReadParameter,
            Action::DecryptParameter,
        ],
        cookie: false,
        expires_at: None,
        token_kind: "association".into(),
        source: "scheduler".into(),
    })
}

/// What an association sends: its targets (or the nodes of a `new-node` execution).
pub async fn request(
    state: &AppState,
    a: &Association,
    exec: Option<&Execution>,
) -> Result<SendRequest, ApiError> {
    Ok(SendRequest {
        key: exec.and_then(|e| e.id.strip_prefix("exec-").map(str::to_string)),
        document: document_ref(state, a).await?,
        parameters: a.parameters.clone(),
        targets: match exec {
            Some(e) if !e.nodes.is_empty() => e.nodes.clone(),
            _ => a.targets.clone(),
        },
        max_concurrency: a.max_concurrency.clone(),
        max_errors: a.max_errors.clone(),
        delivery_timeout: DELIVERY_TIMEOUT,
        execution_timeout: EXECUTION_TIMEOUT,
        comment: match exec {
            Some(e) => format!("association {} ({}, {})", a.name, e.id, e.trigger),
            None => format!("association {}", a.name),
        },
        output_limit: crate::api::DEFAULT_OUTPUT_LIMIT,
    })
}

/// Test builds only: dies at the named point (`DROVER_TEST_CRASH_AT`), so that a test shows
/// what a restart from there does.
fn crash_point(_name: &str) {
    #[cfg(feature = "test-hooks")]
    if std::env::var("DROVER_TEST_CRASH_AT").is_ok_and(|v| v == _name) {
        eprintln!("crashing at {_name} (DROVER_TEST_CRASH_AT)");
        std::process::abort();
    }
}

/// Sends a Pending execution's command, unless a previous attempt already did. Returns
/// whether the execution is still open (its command runs).
async fn apply(state: &AppState, mut exec: Execution) -> Result<bool, drover_store::StoreError> {
    let store = &state.store;
    crash_point("assoc-before-send");
    if store.get_command(&exec.command_id).await?.is_none() {
        let Some(a) = store.get_association(&exec.association_id).await? else {
            return Ok(false);
        };
        let sent = match acting_owner(state, &a).await {
            Err(e) => Err(e),
            Ok(who) => match request(state, &a, Some(&exec)).await {
                Err(e) => Err(e),
                Ok(req) => state.commands.send(req, &who, &state.authz).await,
            },
        };
        // Another server applying the same execution sent it first: it is sent.
        let sent = match sent {
            Err(_) if store.get_command(&exec.command_id).await?.is_some() => Ok(()),
            other => other.map(|_| ()),
        };
        // Targets that match nothing yet are no failure, nor an action: the association waits
        // for nodes. Anything else is in the audit log as the owner's, through the association.
        let skipped = matches!(&sent, Err(ApiError::NotFound(m)) if m.ends_with(MATCH_NO_NODE));
        if !skipped {
            state.audit.record(audit_event(&a, &exec, &sent)).await;
        }
        if let Err(why) = sent {
            exec.status = if skipped { "Skipped" } else { "Failed" }.into();
            exec.detail = why.to_string();
            exec.finished_at = Some(crate::secrets::now());
            if skipped && exec.nodes.is_empty() {
                // No node matches the targets any more: none is compliant or not with it.
                store
                    .forget_compliance(&exec.association_id, &exec.id, &[])
                    .await?;
            }
            tracing::info!(execution = %exec.id, status = %exec.status, detail = %exec.detail, "association not applied");
            store.update_execution(&exec).await?;
            return Ok(false);
        }
    }
    crash_point("assoc-after-send");
    // Its nodes are Pending until the result, so a re-tag meanwhile does not apply it twice.
    let rows: Vec<Compliance> = invocations(state, &exec.command_id)
        .await?
        .into_iter()
        .map(|(node, _, _)| Compliance {
            association_id: exec.association_id.clone(),
            node_id: node,
            status: "Pending".into(),
            reason: String::new(),
            execution_id: exec.id.clone(),
            at: exec.created_at,
        })
        .collect();
    store.record_compliance(&rows, true).await?;
    exec.status = "InProgress".into();
    store.update_execution(&exec).await?;
    Ok(true)
}

/// The audit entry of an application: who it acted as, what it sent, and how that went.
fn audit_event(
    a: &Association,
    exec: &Execution,
    sent: &Result<(), ApiError>,
) -> drover_store::audit::AuditEvent {
    let (outcome, reason) = match sent {
        Ok(()) => ("success", exec.trigger.clone()),
        Err(e @ ApiError::Forbidden(_)) => ("denied", e.to_string()),
        Err(e) => ("failure", e.to_string()),
    };
    drover_store::audit::AuditEvent {
        at_ms: crate::audit::now_ms(),
        actor: a.owner.clone(),
        actor_kind: "user".into(),
        token: format!("association:{}", a.id),
        source: "scheduler".into(),
        action: "association.applied".into(),
        resource: format!(
            "association/{} command/{} document/{}",
            a.id, exec.command_id, a.document
        ),
        outcome: outcome.into(),
        reason,
    }
}

/// A command's invocations: node, status, and why.
async fn invocations(
    state: &AppState,
    command_id: &str,
) -> Result<Vec<(String, String, String)>, drover_store::StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = state
            .store
            .list_invocations(&InvocationQuery {
                command_id: Some(command_id.to_string()),
                after: after.clone(),
                limit: 5000,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        out.extend(page.into_iter().map(|i| {
            // `Failed: detail (exit code 3)`, each part only where it says something.
            let mut why = i.status.clone();
            if !i.status_detail.is_empty() && i.status_detail != i.status {
                why = format!("{why}: {}", i.status_detail);
            }
            if let (Some(code), false) = (i.exit_code, i.status == "Success") {
                why = format!("{why} (exit code {code})");
            }
            (i.node_id, i.status, why)
        }));
    }
    Ok(out)
}

/// Finishes an InProgress execution whose command finished: compliance for each node.
/// Returns whether it is still open (its command still runs).
async fn finish(state: &AppState, mut exec: Execution) -> Result<bool, drover_store::StoreError> {
    let Some(command) = state.store.get_command(&exec.command_id).await? else {
        exec.status = "Failed".into();
        exec.detail = format!("its command {} is gone", exec.command_id);
        exec.finished_at = Some(crate::secrets::now());
        state.store.update_execution(&exec).await?;
        return Ok(false);
    };
    if matches!(
        command.status.as_str(),
        "Pending" | "InProgress" | "Cancelling"
    ) {
        return Ok(true);
    }
    let now = crate::secrets::now();
    let results = invocations(state, &exec.command_id).await?;
    let rows: Vec<Compliance> = results
        .iter()
        .map(|(node, status, why)| {
            let ok = status == "Success";
            Compliance {
                association_id: exec.association_id.clone(),
                node_id: node.clone(),
                status: if ok { "Compliant" } else { "NonCompliant" }.into(),
                reason: if ok { String::new() } else { why.clone() },
                execution_id: exec.id.clone(),
                at: now,
            }
        })
        .collect();
    state.store.record_compliance(&rows, false).await?;
    if exec.nodes.is_empty() {
        // It covered the whole targets: nodes it did not reach have left them.
        let reached: Vec<String> = results.iter().map(|(n, _, _)| n.clone()).collect();
        state
            .store
            .forget_compliance(&exec.association_id, &exec.id, &reached)
            .await?;
    }
    let bad = rows.iter().filter(|r| r.status == "NonCompliant").count();
    let good = rows.len() - bad;
    exec.status = if bad > 0 { "Failed" } else { "Success" }.into();
    exec.detail = [(good, "compliant"), (bad, "non-compliant")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, k)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    exec.finished_at = Some(now);
    tracing::info!(execution = %exec.id, command = %exec.command_id, status = %exec.status, detail = %exec.detail, "association applied");
    state.store.update_execution(&exec).await?;
    Ok(false)
}

/// Claims the associations due now: one execution each, or a Skipped one while the previous
/// application is still under way (runs never pile up behind a slow one). Returns whether
/// one it sent is still running.
async fn claim_due(
    state: &AppState,
    open: &BTreeSet<String>,
) -> Result<bool, drover_store::StoreError> {
    let mut applying = false;
    let now = crate::audit::now_ms();
    for a in state.store.due_associations(now).await? {
        let next = match a.schedule.parse::<Schedule>() {
            Ok(s) => s.next_after_due(a.next_run_ms, now).unwrap_or(i64::MAX),
            Err(e) => {
                tracing::error!(association = %a.id, error = %e, "unreadable schedule");
                i64::MAX
            }
        };
        let mut exec = new_execution(&a, "schedule", Vec::new());
        if open.contains(&a.id) {
            exec.status = "Skipped".into();
            exec.detail = "the previous application is still in progress".into();
            exec.finished_at = Some(exec.created_at);
        }
        if state
            .store
            .claim_association_run(&a.id, a.next_run_ms, next, &exec)
            .await?
            && exec.status == "Pending"
        {
            applying |= apply(state, exec).await?;
        }
    }
    Ok(applying)
}

/// Applies associations to the nodes that came to match their targets. With `everything`
/// (at start), every matching node is looked at, which catches a change whose wake-up was
/// lost with the previous process.
async fn new_nodes(
    state: &AppState,
    changed: BTreeSet<NodeId>,
    everything: bool,
) -> Result<bool, drover_store::StoreError> {
    let mut applying = false;
    if changed.is_empty() && !everything {
        return Ok(false);
    }
    let mut nodes = Vec::new();
    for id in &changed {
        if let Some(n) = state.store.get_node(id).await? {
            nodes.push(n);
        }
    }
    for a in state.store.list_associations().await? {
        // One that applies only on its schedule waits for its first scheduled run.
        if a.apply_only_at_cron_interval && state.store.list_executions(&a.id, 1).await?.is_empty()
        {
            continue;
        }
        let mut ids: Vec<String> = nodes
            .iter()
            .filter(|n| matches(&a.targets, n))
            .map(|n| n.id.to_string())
            .collect();
        if everything {
            match state.commands.resolve_targets(&a.targets).await {
                Ok(all) => ids.extend(all.into_iter().map(|n| n.id.to_string())),
                Err(e) => tracing::debug!(association = %a.id, error = %e, "targets unresolved"),
            }
        }
        if ids.is_empty() {
            continue;
        }
        ids.sort();
        ids.dedup();
        let exec = new_execution(&a, "new-node", ids);
        let claimed = state
            .store
            .claim_new_nodes(&exec, crate::secrets::now())
            .await?;
        if !claimed.is_empty() {
            tracing::info!(association = %a.id, nodes = claimed.len(), "applying to new nodes");
            let exec = Execution {
                nodes: claimed,
                ..exec
            };
            applying |= apply(state, exec).await?;
        }
    }
    Ok(applying)
}

/// One pass: open executions first (so that a Pending one's nodes are claimed before the
/// new-node pass looks at them), then due runs, then changed nodes. Returns whether any
/// execution is still open.
async fn pass(state: &AppState, everything: bool) -> Result<bool, drover_store::StoreError> {
    let mut busy = false;
    // A tick waits only for the association's own runs, not for a new node's.
    let mut open = BTreeSet::new();
    for exec in state.store.open_executions().await? {
        let (association, own) = (exec.association_id.clone(), exec.trigger != "new-node");
        let still = if exec.status == "Pending" {
            apply(state, exec).await?
        } else {
            finish(state, exec).await?
        };
        busy |= still;
        if still && own {
            open.insert(association);
        }
    }
    busy |= claim_due(state, &open).await?;
    let changed = state.assoc.take_changed();
    match new_nodes(state, changed.clone(), everything).await {
        Ok(applying) => Ok(busy || applying),
        Err(e) => {
            // Looked at again on the next pass.
            for id in &changed {
                state.assoc.node_changed(id);
            }
            Err(e)
        }
    }
}

/// The scheduler's loop, until `stop`.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let mut everything = true;
    loop {
        let sleep = match pass(&state, everything).await {
            Ok(busy) => {
                everything = false;
                let now = crate::audit::now_ms();
                let mut sleep = if busy { POLL_OPEN } else { POLL_IDLE };
                if let Ok(Some(next)) = state.store.next_association_run().await {
                    sleep =
                        sleep.min(Duration::from_millis((next - now).clamp(0, i64::MAX) as u64));
                }
                sleep
            }
            // A store that fails is retried after a pause, never in a tight loop (a due run
            // that cannot be claimed would otherwise be due again at once).
            Err(e) => {
                tracing::warn!(error = %e, "association scheduler");
                POLL_OPEN
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = state.assoc.wake.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(name: &str, tags: &[(&str, &str)]) -> Node {
        Node {
            id: NodeId::parse("n-0123456789abcdef0").unwrap(),
            name: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: NodeStatus::Online,
            last_seen_at: 0,
            registered_at: 0,
            activation_id: String::new(),
            inventory: Default::default(),
        }
    }

    fn t(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn targets_match_as_a_command_resolves_them() {
        let web = node("web-1", &[("role", "web"), ("env", "prod")]);
        assert!(matches(&t(&["all"]), &web));
        assert!(matches(&t(&["tag:role=web"]), &web));
        // Tag filters must all match.
        assert!(matches(&t(&["tag:role=web", "tag:env=prod"]), &web));
        assert!(!matches(&t(&["tag:role=web", "tag:env=dev"]), &web));
        assert!(!matches(&t(&["tag:role=db"]), &web));
        assert!(!matches(&t(&["web-1"]), &web));
        assert!(!matches(&t(&["name:web-1"]), &web));
        assert!(matches(&t(&["n-0123456789abcdef0"]), &web));
        assert!(!matches(&t(&["web-2"]), &web));
        let mut gone = web.clone();
        gone.status = NodeStatus::Inactive;
        assert!(!matches(&t(&["all"]), &gone));
    }
}
