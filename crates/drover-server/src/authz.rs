//! Authorization, decided in one place. Every API handler asks [`Authz`] with the principal,
//! the action and the resource (a node, a command, a session, a document, the server) before
//! it changes or returns anything. The decision is Cedar's, over the stored policies; deny by
//! default. A token scoped to some actions is refused the others, whatever the policies say.
//!
//! Policies are cached: a change through this server reloads them at once, and a change
//! through another server sharing the database is seen within [`RECHECK`] (one small read of
//! the policy version).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use drover_policy::{Context, Decision, Engine, NodeFacts, PolicyFile, Resource, UserFacts};
use drover_store::access::AccessRequest;
use drover_store::{Node, Store};

use crate::api::ApiError;

pub use drover_policy::Action;

/// How often a server looks for policy changes made by another server.
const RECHECK: Duration = Duration::from_secs(1);

/// Who is asking: a user, through one of its tokens (or a console cookie).
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub token_name: String,
    pub user: UserFacts,
    /// The actions the token may take; empty for all of its user's.
    pub scope: Vec<Action>,
    /// Authenticated by a console cookie: changes need the CSRF token too.
    pub cookie: bool,
    /// When the token expires (Unix seconds); None: never.
    pub expires_at: Option<i64>,
    /// `api`, `login` or `console`.
    pub token_kind: String,
    /// The client's address, for the audit log.
    pub source: String,
}

impl Principal {
    pub fn name(&self) -> &str {
        &self.user.name
    }
}

pub fn node_facts(n: &Node) -> NodeFacts {
    NodeFacts {
        id: n.id.to_string(),
        name: n.name.clone(),
        platform: n.inventory.platform.clone(),
        tags: n.tags.clone(),
    }
}

struct Cached {
    version: i64,
    engine: Arc<Engine>,
    checked: Instant,
}

pub struct Authz {
    store: Arc<dyn Store>,
    cached: RwLock<Option<Arc<Cached>>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// When the version was last read, so that a burst of requests reads it once.
    last_check: Mutex<Instant>,
}

impl Authz {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cached: RwLock::new(None),
            reloading: tokio::sync::Mutex::new(()),
            last_check: Mutex::new(Instant::now()),
        }
    }

    fn current(&self) -> Option<Arc<Cached>> {
        self.cached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The policy engine, reloaded when the stored policies changed.
    pub async fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        if let Some(c) = self.current() {
            let due = {
                let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
                let due = last.elapsed() >= RECHECK && c.checked.elapsed() >= RECHECK;
                if due {
                    *last = Instant::now();
                }
                due
            };
            if !due || self.store.policy_version().await? == c.version {
                return Ok(c.engine.clone());
            }
        }
        self.reload().await
    }

    /// Reads every policy and builds the engine again (after a change, or when stale).
    pub async fn reload(&self) -> Result<Arc<Engine>, ApiError> {
        let _one = self.reloading.lock().await;
        let (version, stored) = self.store.list_policies().await?;
        if let Some(c) = self.current().filter(|c| c.version == version) {
            return Ok(c.engine.clone());
        }
        let files: Vec<PolicyFile> = stored
            .into_iter()
            .map(|p| PolicyFile {
                name: p.name,
                text: p.text,
            })
            .collect();
        let engine =
            Arc::new(Engine::new(&files).map_err(|e| {
                ApiError::Internal(format!("the stored policies do not load: {e}"))
            })?);
        tracing::info!(version, policies = engine.policy_count(), "policies loaded");
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Cached {
            version,
            engine: engine.clone(),
            checked: Instant::now(),
        }));
        Ok(engine)
    }

    /// The full decision with the policies that made it (for `policy check`).
    pub async fn explain(
        &self,
        who: &UserFacts,
        action: Action,
        resource: &Resource,
        ctx: &Context,
    ) -> Result<Decision, ApiError> {
        self.engine()
            .await?
            .decide(who, action, resource, ctx)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Allows or denies `action` on `resource` for `who`.
    pub async fn check(
        &self,
        who: &Principal,
        action: Action,
        resource: &Resource,
        ctx: &Context,
    ) -> Result<(), ApiError> {
        self.check_granted(who, action, resource, ctx)
            .await
            .map(|_| ())
    }

    /// [`Authz::check`], telling which approved access request allowed it when the policies
    /// alone did not (a grant in force for exactly this action, node and document).
    pub async fn check_granted(
        &self,
        who: &Principal,
        action: Action,
        resource: &Resource,
        ctx: &Context,
    ) -> Result<Option<AccessRequest>, ApiError> {
        scoped(who, action)?;
        let d = self.explain(&who.user, action, resource, ctx).await?;
        if d.allowed {
            return Ok(None);
        }
        // A grant fills in where no policy allowed; it never overrides a `forbid` that matched
        // (a refusal names the policies that decided it only when one forbade it).
        if let (Resource::Node(node), true) = (resource, d.reasons.is_empty()) {
            let grants = self.grants(who).await?;
            if let Some(g) = grants
                .into_iter()
                .find(|g| g.grants(action.name(), &node.id, ctx.document.as_deref()))
            {
                return Ok(Some(g));
            }
        }
        Err(denied(who, action, &describe(resource)))
    }

    /// The grants in force for `who` (read only when the policies said no).
    async fn grants(&self, who: &Principal) -> Result<Vec<AccessRequest>, ApiError> {
        Ok(self
            .store
            .live_grants(&who.user.name, crate::secrets::now())
            .await?)
    }

    /// An action on the server itself (users, policies, metrics, activations).
    pub async fn check_server(&self, who: &Principal, action: Action) -> Result<(), ApiError> {
        self.check(who, action, &Resource::Server, &Context::default())
            .await
    }

    /// Decides `action` on each node, in order (a fan-out, a listing).
    pub async fn nodes(
        &self,
        who: &Principal,
        action: Action,
        nodes: &[Node],
        ctx: &Context,
    ) -> Result<Vec<bool>, ApiError> {
        if scoped(who, action).is_err() {
            return Ok(vec![false; nodes.len()]);
        }
        let facts: Vec<NodeFacts> = nodes.iter().map(node_facts).collect();
        let engine = self.engine().await?;
        let decide = {
            let (user, ctx) = (who.user.clone(), ctx.clone());
            move || engine.decide_nodes(&user, action, &facts, &ctx)
        };
        // Nodes that look alike to the policies share a decision, so a big fan-out usually
        // costs a few milliseconds; a policy that reads something unique to each node makes
        // it ~25 µs a node (BENCHMARKS.md §6), too long to hold an async worker.
        let decided = if nodes.len() > 256 {
            tokio::task::spawn_blocking(decide)
                .await
                .map_err(|e| ApiError::Internal(format!("deciding a fan-out: {e}")))?
        } else {
            decide()
        };
        let mut decided = decided.map_err(|e| ApiError::Internal(e.to_string()))?;
        // What the policies refused, a grant in force may allow (only the nodes it names, and
        // never where a `forbid` matched).
        if decided.iter().any(|a| !a) {
            let grants = self.grants(who).await?;
            if !grants.is_empty() {
                let engine = self.engine().await?;
                for (allowed, n) in decided.iter_mut().zip(nodes) {
                    let id = n.id.to_string();
                    if *allowed
                        || !grants
                            .iter()
                            .any(|g| g.grants(action.name(), &id, ctx.document.as_deref()))
                    {
                        continue;
                    }
                    let alone = engine
                        .decide(&who.user, action, &Resource::Node(node_facts(n)), ctx)
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                    *allowed = alone.reasons.is_empty();
                }
            }
        }
        Ok(decided)
    }

    /// Keeps the items `who` may take `action` on; `resource` describes each.
    pub async fn filter<T>(
        &self,
        who: &Principal,
        action: Action,
        items: Vec<T>,
        resource: impl Fn(&T) -> Resource,
    ) -> Result<Vec<T>, ApiError> {
        if scoped(who, action).is_err() {
            return Ok(Vec::new());
        }
        let engine = self.engine().await?;
        let ctx = Context::default();
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            let d = engine
                .decide(&who.user, action, &resource(&item), &ctx)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            if d.allowed {
                kept.push(item);
            }
        }
        Ok(kept)
    }
}

/// A token scoped to some actions may take only those.
pub fn scoped(who: &Principal, action: Action) -> Result<(), ApiError> {
    if who.scope.is_empty() || who.scope.contains(&action) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "token {:?} is scoped to {}; it may not {action}",
            who.token_name,
            who.scope
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn describe(r: &Resource) -> String {
    match r {
        Resource::Node(n) => format!("node {}", n.id),
        Resource::Command { id, .. } => format!("command {id}"),
        Resource::Session { id, .. } => format!("session {id}"),
        Resource::Document { name } => format!("document {name:?}"),
        Resource::Parameter { name } => format!("parameter {name}"),
        Resource::Server => "this server".into(),
        Resource::User { name } => format!("the tokens of user {name:?}"),
    }
}

pub fn denied(who: &Principal, action: Action, what: &str) -> ApiError {
    tracing::info!(user = %who.user.name, token = %who.token_id, %action, resource = %what, "denied");
    ApiError::Forbidden(format!(
        "user {:?} may not {action} on {what}: no policy allows it",
        who.user.name
    ))
}
