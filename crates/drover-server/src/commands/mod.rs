//! Run Command on the server: sending a command (resolving its document, parameters and
//! targets), running it with rate control, cancelling it, and resuming unfinished commands after
//! a restart. Progress reaches the store through one batching writer.

mod output;
mod refs;
pub mod resolve;
mod run;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_store::{Command, Invocation, NodeId, NodeQuery, NodeStatus, Store};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::ApiError;
use crate::authz::{Action, Authz, Principal};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::secrets;
pub use writer::{UpdateWriter, Updates};

/// How a send whose targets match no node ends its refusal: an association waits for nodes
/// rather than failing.
pub const MATCH_NO_NODE: &str = "match no node";

/// The status detail of an invocation on a node the sender may not send the command to.
pub const ACCESS_DENIED: &str = "AccessDenied";

/// A command as the API asks for it.
pub struct SendRequest {
    /// The command's key (`cmd-KEY`), when the caller fixed it beforehand (an association's
    /// execution, so that a retry finds the command instead of sending another).
    pub key: Option<String>,
    pub document: String,
    pub parameters: BTreeMap<String, Value>,
    pub targets: Vec<String>,
    pub max_concurrency: String,
    pub max_errors: String,
    pub delivery_timeout: Duration,
    pub execution_timeout: Duration,
    pub comment: String,
    pub output_limit: u64,
}

pub struct Commands {
    ctx: Arc<run::Ctx>,
    active: Arc<Mutex<HashMap<String, CancellationToken>>>,
    tracker: TaskTracker,
}

/// `50` or `10%` of `n`: concurrency rounds up (at least 1), errors round down.
pub fn rate(what: &str, s: &str, n: usize, at_least_one: bool) -> Result<usize, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid {what} {s:?}: a number, or a percentage of the targets like 10%"
        ))
    };
    let s = s.trim();
    let v = if let Some(p) = s.strip_suffix('%') {
        let pct: usize = p.trim().parse().map_err(|_| bad())?;
        if pct > 100 {
            return Err(bad());
        }
        if at_least_one {
            (n * pct).div_ceil(100)
        } else {
            n * pct / 100
        }
    } else {
        s.parse().map_err(|_| bad())?
    };
    Ok(if at_least_one { v.max(1) } else { v })
}

impl Commands {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Registry,
        metrics: Metrics,
        sealer: Arc<crate::sealing::Sealer>,
    ) -> (Self, UpdateWriter) {
        let (updates, writer) = Updates::new(store.clone());
        (
            Self {
                ctx: Arc::new(run::Ctx {
                    store,
                    registry,
                    updates,
                    metrics,
                    sealer,
                    stop: CancellationToken::new(),
                }),
                active: Arc::new(Mutex::new(HashMap::new())),
                tracker: TaskTracker::new(),
            },
            writer,
        )
    }

    pub fn updates(&self) -> &Updates {
        &self.ctx.updates
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves the targets: `all`, node IDs, `name:N`, and `tag:K=V` filters (all of which must
    /// match). IDs and names add nodes; tag filters select among the registered nodes.
    pub(crate) async fn resolve_targets(
        &self,
        targets: &[String],
    ) -> Result<Vec<drover_store::Node>, ApiError> {
        let store = &self.ctx.store;
        let mut tags = Vec::new();
        let mut all = false;
        let mut picked: BTreeMap<NodeId, drover_store::Node> = BTreeMap::new();
        // Node IDs are read in one call, whatever their number.
        let ids: Vec<NodeId> = targets
            .iter()
            .filter_map(|t| NodeId::parse(t.trim()))
            .collect();
        let mut by_id: BTreeMap<NodeId, drover_store::Node> = if ids.is_empty() {
            BTreeMap::new()
        } else {
            store
                .get_nodes(&ids)
                .await?
                .into_iter()
                .map(|n| (n.id.clone(), n))
                .collect()
        };
        for t in targets.iter().map(|t| t.trim()) {
            let tag = t
                .strip_prefix("tag:")
                .and_then(|tag| tag.split_once('='))
                .filter(|(k, v)| crate::api::validate_tag(k, v).is_ok());
            if t == "all" {
                all = true;
            } else if let Some((k, v)) = tag {
                tags.push((k.to_string(), v.to_string()));
            } else if let Some(id) = NodeId::parse(t) {
                // A node named twice was taken out of `by_id` the first time.
                if let std::collections::btree_map::Entry::Vacant(slot) = picked.entry(id) {
                    let node = by_id
                        .remove(slot.key())
                        .ok_or_else(|| ApiError::NotFound(format!("target {t}: no such node")))?;
                    slot.insert(node);
                }
            } else {
                let name = t.strip_prefix("name:").unwrap_or(t);
                let page = store
                    .list_nodes(&NodeQuery {
                        name: Some(name.to_string()),
                        limit: 2,
                        ..NodeQuery::default()
                    })
                    .await?;
                match page.nodes.as_slice() {
                    [one] => {
                        picked.insert(one.id.clone(), one.clone());
                    }
                    [] => {
                        return Err(ApiError::NotFound(format!(
                            "target {t:?}: no node has this name (targets are all, node IDs, \
                             node names, or tag:KEY=VALUE)"
                        )))
                    }
                    _ => {
                        return Err(ApiError::Conflict(format!(
                            "target {t:?}: several nodes have this name; use node IDs"
                        )))
                    }
                }
            }
        }
        if all || !tags.is_empty() {
            let mut q = NodeQuery {
                tags,
                limit: 5000,
                ..NodeQuery::default()
            };
            loop {
                let page = store.list_nodes(&q).await?;
                for n in page.nodes {
                    if n.status != NodeStatus::Inactive {
                        picked.insert(n.id.clone(), n);
                    }
                }
                match page.next {
                    Some(next) => q.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(picked.into_values().collect())
    }

    /// Everything [`Commands::send`] checks of the document and its parameters, without
    /// targets: for an association, at creation, so that bad input is refused at once.
    pub async fn check(
        &self,
        req: &SendRequest,
        who: &Principal,
        authz: &Authz,
    ) -> Result<String, ApiError> {
        Ok(self.prepare(req, who, authz).await?.document.name)
    }

    /// Resolves the document, its parameters and references; refuses what no agent could run.
    async fn prepare(
        &self,
        req: &SendRequest,
        who: &Principal,
        authz: &Authz,
    ) -> Result<resolve::Payload, ApiError> {
        let mut payload = resolve::payload(
            &*self.ctx.store,
            &req.document,
            &req.parameters,
            req.execution_timeout.as_secs(),
            req.output_limit,
        )
        .await?;
        refs::resolve(
            &*self.ctx.store,
            authz,
            who,
            &req.parameters,
            &mut payload.invoke,
        )
        .await?;
        check_deliverable(&payload.invoke)?;
        Ok(payload)
    }

    /// Sends a command: validates everything first (nothing runs on bad input), decides per
    /// target node whether `who` may send it there (the others are recorded as Failed,
    /// `AccessDenied`, never dropped), records it and its invocations, and starts it.
    pub async fn send(
        &self,
        req: SendRequest,
        who: &Principal,
        authz: &Authz,
    ) -> Result<Command, ApiError> {
        if req.targets.is_empty() {
            return Err(ApiError::BadRequest(
                "no targets: give node IDs, names, tag:KEY=VALUE or all".into(),
            ));
        }
        let payload = self.prepare(&req, who, authz).await?;
        let nodes = self.resolve_targets(&req.targets).await?;
        // Nodes the sender may not even see are not its targets: like a listing, a fan-out
        // shows only what the user may see (their IDs and tags stay hidden). Among the ones it
        // sees, those it may not send this document to are reported as AccessDenied.
        let visible = authz
            .nodes(who, Action::ReadNode, &nodes, &Default::default())
            .await?;
        let nodes: Vec<_> = nodes
            .into_iter()
            .zip(visible)
            .filter_map(|(n, v)| v.then_some(n))
            .collect();
        if nodes.is_empty() {
            return Err(ApiError::NotFound(format!(
                "the targets {:?} {MATCH_NO_NODE}",
                req.targets
            )));
        }
        let ctx = drover_policy::Context {
            document: Some(payload.document.name.clone()),
            kind: None,
        };
        let allowed = authz.nodes(who, Action::SendCommand, &nodes, &ctx).await?;
        if !allowed.iter().any(|a| *a) {
            return Err(crate::authz::denied(
                who,
                Action::SendCommand,
                &format!(
                    "any of the targets with document {:?}",
                    payload.document.name
                ),
            ));
        }
        let n = nodes.len();
        let max_concurrency = rate("max concurrency", &req.max_concurrency, n, true)?;
        let max_errors = rate("max errors", &req.max_errors, n, false)?;
        let now = secrets::now();
        // IDs that sort by time, and a command's invocations next to each other: the store's
        // B-trees then take new rows at their right edge, and a batch of progress for one
        // command touches a few neighbouring pages instead of one random page per invocation.
        let key = req
            .key
            .clone()
            .unwrap_or_else(|| format!("{:010x}{}", now.max(0), secrets::random_hex(5)));
        let id = format!("cmd-{key}");
        let invocations: Vec<Invocation> = nodes
            .iter()
            .zip(&allowed)
            .enumerate()
            .map(|(i, (node, allowed))| {
                let gone = node.status == NodeStatus::Inactive;
                let detail = match (allowed, gone) {
                    (false, _) => ACCESS_DENIED,
                    (true, true) => "Undeliverable",
                    (true, false) => "",
                };
                Invocation {
                    id: format!("inv-{key}-{i:06}"),
                    command_id: id.clone(),
                    node_id: node.id.to_string(),
                    node_name: node.name.clone(),
                    status: if detail.is_empty() {
                        "Pending"
                    } else {
                        "Failed"
                    }
                    .into(),
                    status_detail: detail.into(),
                    exit_code: None,
                    requested_at: now,
                    started_at: None,
                    finished_at: (!detail.is_empty()).then_some(now),
                    steps: Vec::new(),
                }
            })
            .collect();
        let command = Command {
            id: id.clone(),
            document_name: payload.document.name.clone(),
            document_version: payload.document.version.to_string(),
            parameters: serde_json::to_string(&req.parameters).unwrap_or_default(),
            targets: req.targets.clone(),
            max_concurrency: req.max_concurrency.clone(),
            max_errors: req.max_errors.clone(),
            delivery_timeout_secs: req.delivery_timeout.as_secs() as i64,
            execution_timeout_secs: req.execution_timeout.as_secs() as i64,
            output_limit: req.output_limit as i64,
            comment: req.comment.clone(),
            created_at: now,
            status: "Pending".into(),
            payload: serde_json::to_string(&payload.invoke).unwrap_or_default(),
            cancel_requested: false,
            output_pruned: false,
            sender: who.user.name.clone(),
        };
        self.ctx
            .store
            .create_command(&command, &invocations)
            .await?;
        self.ctx.metrics.command_sent();
        // A node the sender may not reach was never going to run it: it is reported, but it
        // is no error of the run (max errors is about what ran), so the run never sees it.
        let pending = invocations
            .iter()
            .filter(|i| i.status_detail != ACCESS_DENIED)
            .filter_map(|i| {
                NodeId::parse(&i.node_id).map(|node| run::Pending {
                    invocation_id: i.id.clone(),
                    node,
                    status: i.status.clone(),
                })
            })
            .collect();
        self.start(run::Run {
            command_id: id,
            invocations: pending,
            max_concurrency,
            max_errors,
            delivery_timeout: req.delivery_timeout,
            execution_timeout: req.execution_timeout,
            invoke: payload.invoke,
            cancel: CancellationToken::new(),
        })
        .await;
        Ok(command)
    }

    async fn start(&self, run: run::Run) {
        let id = run.command_id.clone();
        self.active().insert(id.clone(), run.cancel.clone());
        let _ = self
            .ctx
            .store
            .set_command_status(&id, "InProgress", false)
            .await;
        let ctx = self.ctx.clone();
        let active = self.active.clone();
        self.tracker.spawn(async move {
            let cancelled = run.cancel.clone();
            if let Some(status) = run::run(ctx.clone(), run).await {
                // Everything queued for this command is stored before its final status.
                let _ = ctx
                    .store
                    .set_command_status(&id, &status, cancelled.is_cancelled())
                    .await;
                // Wakes the long polls: the last batch woke them before the status was final.
                ctx.updates.command_finished();
                tracing::info!(command = %id, %status, "command finished");
            }
            active.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
    }

    /// Cancels a command: Pending invocations never start, InProgress ones are killed.
    pub async fn cancel(&self, id: &str) -> Result<Command, ApiError> {
        let command = self
            .ctx
            .store
            .get_command(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("command {id} not found")))?;
        let token = self.active().get(id).cloned();
        match token {
            Some(t) => {
                self.ctx
                    .store
                    .set_command_status(id, "Cancelling", true)
                    .await?;
                t.cancel();
            }
            None => {
                return Err(ApiError::Conflict(format!(
                    "command {id} has already finished ({})",
                    command.status
                )))
            }
        }
        Ok(self.ctx.store.get_command(id).await?.unwrap_or(command))
    }

    /// Resumes the commands a previous run of the server left unfinished.
    pub async fn resume(&self) -> Result<(), drover_store::StoreError> {
        for command in self.ctx.store.unfinished_commands().await? {
            let invoke = match serde_json::from_str(&command.payload) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(command = %command.id, error = %e, "cannot resume: corrupt payload");
                    continue;
                }
            };
            let mut pending = Vec::new();
            let mut after = None;
            loop {
                let page = self
                    .ctx
                    .store
                    .list_invocations(&drover_store::InvocationQuery {
                        command_id: Some(command.id.clone()),
                        after: after.clone(),
                        limit: 5000,
                        ..Default::default()
                    })
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                pending.extend(
                    page.into_iter()
                        .filter(|i| i.status_detail != ACCESS_DENIED)
                        .filter_map(|i| {
                            NodeId::parse(&i.node_id).map(|node| run::Pending {
                                invocation_id: i.id,
                                node,
                                status: i.status,
                            })
                        }),
                );
            }
            let n = pending.len();
            let cancel = CancellationToken::new();
            if command.cancel_requested {
                cancel.cancel();
            }
            tracing::info!(command = %command.id, invocations = n, "resuming a command");
            self.start(run::Run {
                command_id: command.id.clone(),
                invocations: pending,
                max_concurrency: rate("", &command.max_concurrency, n, true).unwrap_or(50),
                max_errors: rate("", &command.max_errors, n, false).unwrap_or(0),
                delivery_timeout: Duration::from_secs(command.delivery_timeout_secs.max(1) as u64),
                execution_timeout: Duration::from_secs(command.execution_timeout_secs.max(1) as u64),
                invoke,
                cancel,
            })
            .await;
        }
        Ok(())
    }

    /// Server shutdown: stop delivering (the next start resumes) and wait for the tasks.
    pub async fn shutdown(&self, grace: Duration) {
        self.ctx.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
    }
}

/// Refuses, at send time, a command whose `Invoke` could not reach an agent: every frame is at
/// most `MAX_FRAME_LEN`. Measured on the largest form the message takes (IDs of full length,
/// a replay offset for every step), so a command accepted here is never stuck in delivery.
fn check_deliverable(invoke: &drover_proto::Invoke) -> Result<(), ApiError> {
    let mut worst = invoke.clone();
    worst.invocation_id = "i".repeat(64);
    worst.command_id = "c".repeat(64);
    if let Some(steps) = invoke.steps.as_array() {
        for (i, step) in steps.iter().enumerate() {
            let name = step
                .get("name")
                .and_then(|n| n.as_str())
                .map_or_else(|| i.to_string(), str::to_string);
            worst.received.insert(name, [u64::MAX, u64::MAX]);
        }
    }
    let mut buf = bytes::BytesMut::new();
    let too_big = |size: String| {
        ApiError::BadRequest(format!(
            "the command is {size} bytes once its document is resolved; an agent accepts at \
             most {} bytes (1 MiB) per command: have the command download a large script \
             (aws:downloadContent) instead of carrying it",
            drover_proto::MAX_FRAME_LEN
        ))
    };
    match drover_proto::encode(&drover_proto::Message::Invoke(worst), &mut buf) {
        Ok(()) => Ok(()),
        Err(drover_proto::FrameError::Oversize { len, .. }) => Err(too_big(len.to_string())),
        Err(e) => Err(too_big(format!("more than the limit ({e})"))),
    }
}
