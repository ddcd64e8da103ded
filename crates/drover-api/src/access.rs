//! Temporary elevated access over the API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Ask for access: these actions on these nodes (IDs, names, `tag:K=V`), for this long.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccessRequest {
    pub targets: Vec<String>,
    /// Action names (`StartSession`, `SendCommand`, `ReadOutput`, ...): actions on nodes.
    pub actions: Vec<String>,
    /// Only with this document (a session or command document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    pub reason: String,
    pub duration_secs: u64,
}

/// An approver's (or the requester's) word.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessVerdict {
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessDecisionView {
    pub user: String,
    /// `approve` or `deny`.
    pub verdict: String,
    pub comment: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessRequestView {
    pub id: String,
    pub requester: String,
    pub actions: Vec<String>,
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    pub reason: String,
    pub duration_secs: i64,
    pub created_at: String,
    /// `Pending`, `Approved`, `Denied`, `Revoked` or `Expired`.
    pub status: String,
    pub approvals_needed: i64,
    pub decisions: Vec<AccessDecisionView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub ended_by: String,
    #[serde(default)]
    pub ended_reason: String,
}
