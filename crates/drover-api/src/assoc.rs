//! State Manager over the API: associations, their executions, compliance.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A new association, or (all fields optional but `name`'s meaning) an update of one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssociationRequest {
    /// Unique: letters, digits and `_.-`, 3 to 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A command document's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    /// `$DEFAULT` (the default), `$LATEST`, or a version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
    /// `all`, node IDs, node names, `tag:KEY=VALUE` (tag filters must all match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// `rate(30 minutes)` or `cron(0 2 ? * SUN *)` (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A number or a percentage of the targets (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<String>,
    /// A number or a percentage (default 100%: every node is tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<String>,
    /// Do not apply at creation (or update); only on the schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_only_at_cron_interval: Option<bool>,
    /// `CRITICAL`, `HIGH`, `MEDIUM`, `LOW` or `UNSPECIFIED` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance_severity: Option<String>,
    /// For an update: the revision it changes (an older one is a conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssociationView {
    pub id: String,
    pub name: String,
    pub document: String,
    pub document_version: String,
    #[schema(value_type = Object)]
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub targets: Vec<String>,
    pub schedule: String,
    pub max_concurrency: String,
    pub max_errors: String,
    pub apply_only_at_cron_interval: bool,
    pub compliance_severity: String,
    pub owner: String,
    pub created_at: String,
    pub updated_at: String,
    pub revision: i64,
    /// When the schedule applies it next (RFC 3339).
    pub next_run_at: Option<String>,
    /// The newest execution, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution: Option<ExecutionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssociationList {
    pub associations: Vec<AssociationView>,
}

/// One application of an association, and the command it sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionView {
    pub id: String,
    pub association_id: String,
    pub revision: i64,
    /// `create`, `schedule`, `run-now`, `update` or `new-node`.
    pub trigger: String,
    /// The nodes of a `new-node` execution.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    pub command_id: String,
    /// `Pending`, `InProgress`, `Success`, `Failed` or `Skipped`.
    pub status: String,
    pub detail: String,
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionView>,
}

/// A node's compliance with an association.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComplianceView {
    pub association_id: String,
    pub association_name: String,
    pub severity: String,
    pub node_id: String,
    pub node_name: String,
    /// `Compliant`, `NonCompliant`, or `Pending` (applied, no result yet).
    pub status: String,
    pub reason: String,
    pub execution_id: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComplianceList {
    pub items: Vec<ComplianceView>,
}

/// Counts per association.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComplianceSummaryRow {
    pub association_id: String,
    pub association_name: String,
    pub severity: String,
    pub compliant: u64,
    pub non_compliant: u64,
    pub pending: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ComplianceSummary {
    pub associations: Vec<ComplianceSummaryRow>,
}
