//! The HTTP API's request and response bodies, shared by the server (which documents them in
//! its OpenAPI document) and the typed client. Serialization only: no behaviour.
//!
//! **API Boundary:** `/api/v1` is versioned; fields are only ever added, as optional.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `invalid_request`, `unauthorized`, ...
    pub code: String,
    /// For people: what went wrong and what to do.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// A managed node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// `Online`, `ConnectionLost` or `Inactive` (deregistered).
    pub status: String,
    /// RFC 3339; absent when never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
    pub registered_at: String,
    #[serde(default)]
    pub activation_id: String,
    #[serde(flatten)]
    pub inventory: InventoryView,
}

/// What the agent reports about its machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InventoryView {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub os_name: String,
    #[serde(default)]
    pub os_version: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// RFC 3339; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time: Option<String>,
}

/// One page of nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Sets and removes tags in one change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TagUpdate {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateActivation {
    /// How many nodes may register with this activation.
    pub registration_limit: i64,
    /// Seconds until the activation expires.
    pub expires_in_secs: u64,
    /// Tags every node registered with it starts with.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    /// Name given to registered nodes that do not name themselves (default: their hostname).
    #[serde(default)]
    pub default_name: String,
}

/// The only time the code is ever shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActivationCreated {
    pub id: String,
    pub code: String,
    pub registration_limit: i64,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActivationView {
    pub id: String,
    pub description: String,
    pub default_name: String,
    pub tags: BTreeMap<String, String>,
    pub registration_limit: i64,
    pub registrations: i64,
    pub expires_at: String,
    pub created_at: String,
    pub expired: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActivationList {
    pub activations: Vec<ActivationView>,
}

/// A node asks to join. Authenticated by the activation code, not a token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterRequest {
    pub activation_id: String,
    pub activation_code: String,
    /// PEM PKCS#10 request for the key the node generated.
    pub csr_pem: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub inventory: InventoryView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    pub node_id: String,
    /// The node's client certificate (PEM).
    pub cert_pem: String,
    /// The server's agent CA (PEM).
    pub ca_pem: String,
    pub not_after: String,
}
