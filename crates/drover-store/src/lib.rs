//! Persistence: the [`Store`] trait every table sits behind, and its embedded SQLite
//! implementation with schema migrations. A PostgreSQL implementation for a cluster of servers
//! implements the same trait.
//!
//! **Architecture Invariant:** nothing outside this crate writes SQL.

pub mod access;
pub mod alerts;
pub mod assoc;
pub mod audit;
mod commands;
mod identity;
mod model;
pub mod params;
mod sessions;
mod sqlite;
mod sqlite_access;
mod sqlite_alerts;
mod sqlite_assoc;
mod sqlite_audit;
mod sqlite_commands;
mod sqlite_documents;
mod sqlite_history;
mod sqlite_identity;
mod sqlite_params;
mod sqlite_sessions;

use std::collections::BTreeMap;

pub use commands::*;
pub use identity::*;
pub use model::*;
pub use sessions::*;
pub use sqlite::SqliteStore;

/// Store errors. `Conflict` and `NotFound` are the caller's to explain; the rest are faults.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// Something the request refers to (not the thing it acts on) does not exist: the
    /// request is at fault, not its target, so the API answers 400 rather than 404.
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database error while trying to {what}")]
    Database {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("could not open the database at {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("schema migration to version {version} failed")]
    Migration {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the database is newer (schema {found}) than this drover (schema {known}); upgrade drover"
    )]
    TooNew { found: usize, known: usize },
    #[error("corrupt {what} in the database")]
    Corrupt {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the database worker stopped")]
    WorkerGone,
}

/// Why an activation could not be redeemed. Shown to the registering operator as is.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("activation {0} does not exist")]
    UnknownActivation(String),
    #[error("the activation code is wrong for activation {0}")]
    WrongCode(String),
    #[error("activation {0} expired at {1}")]
    Expired(String, String),
    #[error("activation {id} is used up: its limit of {limit} registrations was reached")]
    UsedUp { id: String, limit: i64 },
    #[error(
        "tag {key}={asked} conflicts with activation {id}, which sets {key}={fixed}: an \
         activation's tags are fixed; registration may add only keys the activation leaves open"
    )]
    TagConflict {
        id: String,
        key: String,
        asked: String,
        fixed: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Store::check_certificate`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    Current,
    /// The renewed certificate, now current; the one before it is retired.
    Promoted,
    /// Replaced by a renewal: refuse it.
    Retired,
}

/// A renewal asked for too soon after the previous one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a certificate was issued to this node at {last_issued_at} (Unix time); renewals are allowed once every {min_interval} s")]
pub struct RenewalRefused {
    pub last_issued_at: i64,
    pub min_interval: i64,
}

/// Users, groups, API tokens and policies (see `identity.rs`).
#[async_trait::async_trait]
pub trait IdentityStore: Send + Sync {
    // --- users and groups
    async fn count_users(&self) -> Result<u64, StoreError>;
    async fn get_user(&self, name: &str) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Creates a user (Conflict if the name is taken) in its groups, which must exist.
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;
    /// Changes a user in one transaction: `change` gets the stored record and edits it (groups
    /// included, which must exist). With `create_as`, a missing user is created first from it,
    /// (a user an identity provider vouched for).
    async fn update_user(
        &self,
        name: &str,
        create_as: Option<User>,
        change: UserChange,
    ) -> Result<User, StoreError>;
    /// Deletes a user and its tokens.
    async fn delete_user(&self, name: &str) -> Result<(), StoreError>;
    async fn list_groups(&self) -> Result<Vec<Group>, StoreError>;
    async fn create_group(&self, group: &Group) -> Result<(), StoreError>;
    async fn delete_group(&self, name: &str) -> Result<(), StoreError>;

    // --- API tokens
    async fn create_token(&self, token: &ApiToken) -> Result<(), StoreError>;
    /// The token with this hash and its user, live or not.
    async fn find_token(&self, hash: &str) -> Result<Option<TokenOwner>, StoreError>;
    async fn list_tokens(&self, user: &str) -> Result<Vec<ApiToken>, StoreError>;
    /// Revokes a live token of `user`, named by ID or name.
    async fn revoke_token(&self, user: &str, token: &str, at: i64) -> Result<(), StoreError>;
    /// Records a token's use (for its idle limit).
    async fn touch_token(&self, id: &str, at: i64) -> Result<(), StoreError>;

    // --- policies
    /// Every policy file, with the policy version they are at.
    async fn list_policies(&self) -> Result<(i64, Vec<StoredPolicy>), StoreError>;
    /// Bumped by every policy change (0: none was ever written).
    async fn policy_version(&self) -> Result<i64, StoreError>;
    /// Creates or replaces a policy file, or deletes it (`text` None; NotFound if missing).
    async fn write_policy(&self, name: &str, text: Option<&str>, at: i64)
        -> Result<(), StoreError>;
}

/// Temporary elevated access: requests and the grants they become (see `access.rs`).
#[async_trait::async_trait]
pub trait AccessStore: Send + Sync {
    async fn create_access_request(&self, r: &access::AccessRequest) -> Result<(), StoreError>;
    async fn get_access_request(
        &self,
        id: &str,
    ) -> Result<Option<access::AccessRequest>, StoreError>;
    /// Newest first, narrowed by status and requester.
    async fn list_access_requests(
        &self,
        status: Option<&str>,
        requester: Option<&str>,
        limit: usize,
    ) -> Result<Vec<access::AccessRequest>, StoreError>;
    /// The grants in force for `user` at `now`.
    async fn live_grants(
        &self,
        user: &str,
        now: i64,
    ) -> Result<Vec<access::AccessRequest>, StoreError>;
    /// Approved grants whose time is up at `now`.
    async fn due_grants(&self, now: i64) -> Result<Vec<access::AccessRequest>, StoreError>;
    /// Changes a request in one transaction (the change may refuse: Conflict).
    async fn update_access_request(
        &self,
        id: &str,
        change: access::AccessChange,
    ) -> Result<access::AccessRequest, StoreError>;
}

/// The audit log (see `audit.rs`).
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends events, in order, each chained to the one before.
    async fn append_audit(
        &self,
        events: Vec<audit::AuditEvent>,
    ) -> Result<Vec<audit::AuditEntry>, StoreError>;
    /// Entries in sequence order, narrowed by the query.
    async fn list_audit(&self, q: &audit::AuditQuery)
        -> Result<Vec<audit::AuditEntry>, StoreError>;
    /// Where the chain starts (`GENESIS` at 0, or where retention cut it) and its last entry.
    async fn audit_ends(&self) -> Result<((i64, String), (i64, String)), StoreError>;
    async fn add_audit_checkpoint(&self, cp: &audit::AuditCheckpoint) -> Result<(), StoreError>;
    async fn audit_checkpoints(&self) -> Result<Vec<audit::AuditCheckpoint>, StoreError>;
    /// Removes the entries older than `before_ms`; returns how many.
    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// Webhooks, their delivery log, and change windows (see `alerts.rs`).
#[async_trait::async_trait]
pub trait AlertStore: Send + Sync {
    /// Creates a webhook at the audit log's head: it announces what happens from then on.
    async fn create_webhook(&self, hook: &alerts::Webhook) -> Result<alerts::Webhook, StoreError>;
    async fn list_webhooks(&self) -> Result<Vec<alerts::Webhook>, StoreError>;
    async fn get_webhook(&self, id: &str) -> Result<Option<alerts::Webhook>, StoreError>;
    /// Deletes a webhook and its delivery log.
    async fn delete_webhook(&self, id: &str) -> Result<(), StoreError>;
    /// Takes or renews, for `owner` until `until_ms`, the lease of every webhook whose lease
    /// is `owner`'s or ran out by `now_ms`; returns the webhooks `owner` holds. One server
    /// process delivers a webhook at a time, so that a cluster keeps its order.
    async fn lease_webhooks(
        &self,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<alerts::Webhook>, StoreError>;
    /// Stores a webhook's progress and logs the attempt behind it, in one transaction, if
    /// `owner` still holds its lease at `now_ms`; false if it does not (or the webhook is
    /// gone), so that a holder stalled past its lease cannot move a cursor back.
    async fn advance_webhook(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        state: &alerts::HookState,
        attempt: Option<&alerts::Delivery>,
    ) -> Result<bool, StoreError>;
    /// Logs an attempt that moves nothing (a test event).
    async fn log_delivery(&self, d: &alerts::Delivery) -> Result<(), StoreError>;
    /// A webhook's newest attempts, newest first.
    async fn list_deliveries(
        &self,
        hook_id: &str,
        limit: usize,
    ) -> Result<Vec<alerts::Delivery>, StoreError>;
    async fn create_change_window(&self, w: &alerts::ChangeWindow) -> Result<(), StoreError>;
    async fn list_change_windows(&self) -> Result<Vec<alerts::ChangeWindow>, StoreError>;
    async fn delete_change_window(&self, id: &str) -> Result<(), StoreError>;
}

/// Parameter Store (see `params.rs`).
#[async_trait::async_trait]
pub trait ParamStore: Send + Sync {
    /// Stores a new version (the first, or the next with `overwrite`); returns its number.
    async fn put_parameter(&self, p: &params::PutParameter) -> Result<i64, StoreError>;
    async fn get_parameter(
        &self,
        name: &str,
        selector: &params::Selector,
    ) -> Result<Option<params::ParameterVersion>, StoreError>;
    /// The newest version of each parameter under `path`, by name, at most `limit`.
    async fn parameters_by_path(
        &self,
        path: &str,
        recursive: bool,
        limit: usize,
    ) -> Result<Vec<params::ParameterVersion>, StoreError>;
    /// Every version kept, oldest first.
    async fn parameter_history(
        &self,
        name: &str,
    ) -> Result<Vec<params::ParameterVersion>, StoreError>;
    /// Deletes every version and label.
    async fn delete_parameter(&self, name: &str) -> Result<(), StoreError>;
    /// Puts labels on a version (moving them from any other version).
    async fn label_parameter(
        &self,
        name: &str,
        version: i64,
        labels: &[String],
    ) -> Result<(), StoreError>;
}

/// State Manager (see `assoc.rs`).
#[async_trait::async_trait]
pub trait AssocStore: Send + Sync {
    /// Creates an association (a name already taken is a conflict), with its first
    /// execution when it applies at once.
    async fn create_association(
        &self,
        a: &assoc::Association,
        first: Option<&assoc::Execution>,
    ) -> Result<(), StoreError>;
    /// Replaces an association whose revision is still `expected_revision`; its next due time
    /// only with `reschedule` (its schedule changed).
    async fn update_association(
        &self,
        a: &assoc::Association,
        expected_revision: i64,
        reschedule: bool,
        first: Option<&assoc::Execution>,
    ) -> Result<(), StoreError>;
    /// Deletes an association, its executions and its compliance.
    async fn delete_association(&self, id: &str) -> Result<(), StoreError>;
    async fn get_association(
        &self,
        id_or_name: &str,
    ) -> Result<Option<assoc::Association>, StoreError>;
    async fn list_associations(&self) -> Result<Vec<assoc::Association>, StoreError>;
    /// Associations whose next run is at or before `by_ms`.
    async fn due_associations(&self, by_ms: i64) -> Result<Vec<assoc::Association>, StoreError>;
    /// The earliest next run of any association.
    async fn next_association_run(&self) -> Result<Option<i64>, StoreError>;
    /// Moves an association's next run from `expected_ms` to `next_ms` and records `exec`,
    /// unless another claim moved it first (false).
    async fn claim_association_run(
        &self,
        id: &str,
        expected_ms: i64,
        next_ms: i64,
        exec: &assoc::Execution,
    ) -> Result<bool, StoreError>;
    /// Of `exec.nodes`, claims those the association never applied to (recording `exec` for
    /// them); returns the ones claimed.
    async fn claim_new_nodes(
        &self,
        exec: &assoc::Execution,
        at: i64,
    ) -> Result<Vec<String>, StoreError>;
    async fn update_execution(&self, e: &assoc::Execution) -> Result<(), StoreError>;
    /// Executions not finished: Pending (not sent) or InProgress.
    async fn open_executions(&self) -> Result<Vec<assoc::Execution>, StoreError>;
    /// An association's executions, newest first.
    async fn list_executions(
        &self,
        association_id: &str,
        limit: usize,
    ) -> Result<Vec<assoc::Execution>, StoreError>;
    /// Records compliance rows (a newer execution's result wins); with `only_new`, only adds
    /// rows where none exist.
    async fn record_compliance(
        &self,
        rows: &[assoc::Compliance],
        only_new: bool,
    ) -> Result<(), StoreError>;
    /// After an execution of the association's whole targets: drops the rows, older than it,
    /// of nodes not in `keep` (they left the targets).
    async fn forget_compliance(
        &self,
        association_id: &str,
        execution_id: &str,
        keep: &[String],
    ) -> Result<u64, StoreError>;
    async fn list_compliance(
        &self,
        association_id: Option<&str>,
        node_id: Option<&str>,
    ) -> Result<Vec<assoc::Compliance>, StoreError>;
    async fn compliance_summary(&self) -> Result<Vec<assoc::ComplianceCount>, StoreError>;
}

/// Everything Drover keeps. Methods are coarse (one call, one transaction) so that a remote
/// database costs one round trip per operation.
#[async_trait::async_trait]
pub trait Store:
    IdentityStore
    + AccessStore
    + AuditStore
    + AlertStore
    + ParamStore
    + AssocStore
    + Send
    + Sync
    + 'static
{
    // --- nodes
    async fn get_node(&self, id: &NodeId) -> Result<Option<Node>, StoreError>;
    /// The nodes among `ids` that exist, in no particular order: one round trip for a page
    /// of a listing instead of one per node.
    async fn get_nodes(&self, ids: &[NodeId]) -> Result<Vec<Node>, StoreError>;
    async fn list_nodes(&self, query: &NodeQuery) -> Result<NodePage, StoreError>;
    async fn update_tags(
        &self,
        id: &NodeId,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Node, StoreError>;
    async fn set_inventory(&self, id: &NodeId, inventory: &NodeInventory)
        -> Result<(), StoreError>;
    /// Applies a batch of connect and disconnect events in one transaction.
    async fn record_presence(&self, updates: &[Presence]) -> Result<(), StoreError>;
    /// At server start: no connection survived, so every Online node is ConnectionLost.
    async fn mark_all_disconnected(&self, at: i64) -> Result<u64, StoreError>;
    async fn deregister_node(&self, id: &NodeId, at: i64) -> Result<Node, StoreError>;

    // --- node certificates (SHA-256 fingerprints)
    /// May `id` connect with the certificate `fp`? Its current one may; the one issued by its
    /// last renewal may too, and becomes current (retiring the previous one); others may not.
    async fn check_certificate(&self, id: &NodeId, fp: &str) -> Result<CertCheck, StoreError>;
    /// Records a certificate issued to `id`: the first is current at once, a renewal's is next.
    /// A renewal sooner than `min_interval` seconds after the previous issue is refused.
    async fn certificate_issued(
        &self,
        id: &NodeId,
        fp: &str,
        at: i64,
        min_interval: i64,
    ) -> Result<Result<(), RenewalRefused>, StoreError>;
    /// The agent saved its renewed certificate: it becomes current, the previous one retired.
    /// False when no renewal was pending.
    async fn certificate_saved(&self, id: &NodeId) -> Result<bool, StoreError>;

    // --- activations
    async fn create_activation(&self, activation: &Activation) -> Result<(), StoreError>;
    async fn list_activations(&self) -> Result<Vec<Activation>, StoreError>;
    /// Checks the code, expiry and count, takes one registration and creates the node, all in
    /// one transaction, so that concurrent registrations never exceed the limit.
    async fn redeem_activation(
        &self,
        activation_id: &str,
        code_hash: &str,
        now: i64,
        node: NewNode,
    ) -> Result<Node, RedeemError>;

    // --- documents
    /// Creates version 1 of a new document (Conflict if the name exists).
    async fn create_document(&self, doc: &DocumentVersion) -> Result<DocumentVersion, StoreError>;
    /// Adds a new version of an existing document.
    async fn update_document(
        &self,
        name: &str,
        content: &str,
        format: &str,
        description: &str,
        at: i64,
    ) -> Result<DocumentVersion, StoreError>;
    /// The given version, or the default one.
    async fn get_document(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<DocumentVersion>, StoreError>;
    /// The default version of every document.
    async fn list_documents(&self) -> Result<Vec<DocumentVersion>, StoreError>;
    async fn document_versions(&self, name: &str) -> Result<Vec<DocumentVersion>, StoreError>;
    async fn set_default_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<DocumentVersion, StoreError>;
    async fn delete_document(&self, name: &str) -> Result<(), StoreError>;

    // --- commands
    /// Records a command and its invocations (all Pending) in one transaction.
    async fn create_command(
        &self,
        command: &Command,
        invocations: &[Invocation],
    ) -> Result<(), StoreError>;
    async fn get_command(&self, id: &str) -> Result<Option<Command>, StoreError>;
    /// Newest first.
    async fn list_commands(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Command>, StoreError>;
    async fn set_command_status(
        &self,
        id: &str,
        status: &str,
        cancel_requested: bool,
    ) -> Result<(), StoreError>;
    /// Commands not yet finished (to resume after a restart).
    async fn unfinished_commands(&self) -> Result<Vec<Command>, StoreError>;
    async fn status_counts(&self, command_id: &str) -> Result<StatusCounts, StoreError>;
    async fn list_invocations(
        &self,
        query: &InvocationQuery,
    ) -> Result<Vec<Invocation>, StoreError>;
    async fn apply_invocation_updates(
        &self,
        updates: &[InvocationUpdate],
    ) -> Result<(), StoreError>;
    /// One short transaction of pruning by `retention`: at most `budget` invocations lose their
    /// output or are deleted. Call again while [`Pruned::more`]; other calls run in between.
    async fn prune_history(
        &self,
        retention: &Retention,
        budget: usize,
    ) -> Result<Pruned, StoreError>;

    // --- sessions
    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError>;
    /// Sets the status of a session not yet ended.
    async fn set_session_status(&self, id: &str, status: &str) -> Result<(), StoreError>;
    /// Ends a session; false if it had already ended.
    async fn end_session(&self, id: &str, end: &SessionEnd) -> Result<bool, StoreError>;
    /// Ends every open session (at startup); how many there were.
    async fn end_open_sessions(&self, at: i64, detail: &str) -> Result<u64, StoreError>;
    async fn add_session_event(&self, event: &SessionEvent) -> Result<(), StoreError>;
    /// Deletes up to `limit` sessions that ended before `before` (and their events); returns
    /// their IDs.
    async fn prune_sessions(&self, before: i64, limit: usize) -> Result<Vec<String>, StoreError>;
    async fn session_events(&self, session_id: &str) -> Result<Vec<SessionEvent>, StoreError>;
}
