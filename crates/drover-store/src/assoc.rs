//! State Manager: associations (a document applied to targets on a schedule), their
//! executions (each linked to the command it sent) and compliance per node.

use std::collections::BTreeMap;

/// An association as stored. The scheduling state (`next_run_ms`) sits in its own column so
/// that one indexed query finds what is due.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Association {
    pub id: String,
    pub name: String,
    pub document: String,
    /// `$DEFAULT`, `$LATEST`, or a version number.
    pub document_version: String,
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub targets: Vec<String>,
    /// `rate(30 minutes)` or `cron(0 2 ? * SUN *)`.
    pub schedule: String,
    pub max_concurrency: String,
    pub max_errors: String,
    pub apply_only_at_cron_interval: bool,
    /// `CRITICAL`, `HIGH`, `MEDIUM`, `LOW` or `UNSPECIFIED`.
    pub severity: String,
    /// The user whose permissions every application runs with (checked again each time).
    pub owner: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped by every update: an update naming an older revision is a conflict.
    pub revision: i64,
    /// When the schedule next applies it (Unix milliseconds).
    #[serde(skip)]
    pub next_run_ms: i64,
}

/// One application of an association.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Execution {
    pub id: String,
    pub association_id: String,
    /// The association's revision it applied.
    pub revision: i64,
    /// `create`, `schedule`, `run-now`, `update` or `new-node`.
    pub trigger: String,
    /// The nodes a `new-node` execution is for; empty: the association's targets.
    pub nodes: Vec<String>,
    /// The command it sends is `cmd-` + the execution's key: known before it is sent, so that
    /// a restart between the two finds it rather than sending it again.
    pub command_id: String,
    /// `Pending` (not sent yet), `InProgress`, `Success`, `Failed` or `Skipped`.
    pub status: String,
    pub detail: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl Execution {
    pub fn finished(&self) -> bool {
        matches!(self.status.as_str(), "Success" | "Failed" | "Skipped")
    }
}

/// A node's compliance with one association.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Compliance {
    pub association_id: String,
    pub node_id: String,
    /// `Pending` (applied, no result yet), `Compliant` or `NonCompliant`.
    pub status: String,
    pub reason: String,
    pub execution_id: String,
    /// When the status was decided (Unix seconds).
    pub at: i64,
}

/// Counts for `compliance summary`: one row per association.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ComplianceCount {
    pub association_id: String,
    pub compliant: u64,
    pub non_compliant: u64,
    pub pending: u64,
}
