//! The HTTP API's request and response bodies, shared by the server (which documents them in
//! its OpenAPI document) and the typed client. Serialization only: no behaviour.
//!
//! **API Boundary:** `/api/v1` is versioned; fields are only ever added, as optional.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod access;
mod alerts;
mod assoc;
mod audit;
mod identity;
mod params;
mod sessions;
pub use access::*;
pub use alerts::*;
pub use assoc::*;
pub use audit::*;
pub use identity::*;
pub use params::*;
pub use sessions::*;

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

/// One page of the console's node table: sorted and searched on the server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeTable {
    /// Rows that match the filters and the search.
    pub total: usize,
    /// Nodes the user may see that match the filters (before the search).
    pub visible: usize,
    pub offset: usize,
    pub nodes: Vec<NodeView>,
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
    #[serde(deserialize_with = "lenient::i64")]
    pub registration_limit: i64,
    /// Seconds until the activation expires.
    #[serde(deserialize_with = "lenient::u64")]
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

/// A command document (one version).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocumentView {
    pub name: String,
    pub version: i64,
    pub latest_version: i64,
    pub is_default: bool,
    /// Versioned with the binary; cannot be changed.
    pub builtin: bool,
    /// `YAML` or `JSON`.
    pub format: String,
    pub description: String,
    pub created_at: String,
    /// Absent in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A command document's parameters as parsed (name to definition, SSM's field names),
    /// beside its content; absent in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocumentList {
    pub documents: Vec<DocumentView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateDocument {
    pub name: String,
    /// The document, YAML or JSON.
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateDocument {
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SetDefaultVersion {
    #[serde(deserialize_with = "lenient::i64")]
    pub version: i64,
}

/// Send a command.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct SendCommand {
    /// `NAME` or `NAME:VERSION`.
    pub document: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// `all`, node IDs, node names, `tag:KEY=VALUE` (tag filters must all match).
    pub targets: Vec<String>,
    /// A number or a percentage of the targets (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<String>,
    /// A number or a percentage (default 0: stop after the first error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_errors: Option<String>,
    /// How long an offline node may stay Pending (default 600).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u64"
    )]
    pub delivery_timeout_secs: Option<u64>,
    /// How long an invocation may run (default 3600).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u64"
    )]
    pub execution_timeout_secs: Option<u64>,
    #[serde(default)]
    pub comment: String,
    /// Output kept per step and stream, bytes (default 16 MiB).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u64"
    )]
    pub output_limit: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommandView {
    pub id: String,
    /// The user who sent it.
    #[serde(default)]
    pub sender: String,
    pub document: String,
    pub document_version: String,
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    pub targets: Vec<String>,
    pub max_concurrency: String,
    pub max_errors: String,
    pub delivery_timeout_secs: i64,
    pub execution_timeout_secs: i64,
    pub comment: String,
    pub created_at: String,
    /// `Pending`, `InProgress`, `Success`, `Failed`, `Incomplete`, `Cancelling`, `Cancelled`.
    pub status: String,
    pub target_count: i64,
    /// Invocations by status.
    pub counts: BTreeMap<String, i64>,
    /// True once the status is final.
    pub done: bool,
    /// Changes whenever progress is stored; pass as `seen` to `wait`.
    #[serde(default)]
    pub version: u64,
    /// The retention policy deleted this command's output; statuses and exit codes remain.
    #[serde(default)]
    pub output_pruned: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommandList {
    pub commands: Vec<CommandView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub name: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    /// The agent kept only the first output_limit bytes.
    pub truncated: bool,
    /// This response shortened the output (ask for the full output).
    #[serde(default)]
    pub output_cut: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationView {
    pub id: String,
    pub command_id: String,
    pub node_id: String,
    pub node_name: String,
    /// `Pending`, `InProgress`, `Delayed`, `Success`, `Cancelled`, `Failed`, `TimedOut`, `Cancelling`.
    pub status: String,
    /// `DeliveryTimedOut`, `ExecutionTimedOut`, `Undeliverable`, `Terminated`, ...
    pub status_detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub requested_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationList {
    pub invocations: Vec<InvocationView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Integers as JSON Schema reads them: `3.0` is the integer 3 (serde alone refuses it), so a
/// client that writes integral numbers with a fraction is understood.
mod lenient {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    fn integral(n: &serde_json::Number) -> Option<f64> {
        n.as_f64().filter(|f| f.fract() == 0.0)
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        n.as_u64()
            .or_else(|| {
                // 2^64 itself rounds into range as f64: refuse it and beyond.
                integral(&n)
                    .filter(|f| *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
                    .map(|f| f as u64)
            })
            .ok_or_else(|| D::Error::custom(format!("expected a non-negative integer, got {n}")))
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        n.as_i64()
            .or_else(|| {
                integral(&n)
                    .filter(|f| {
                        *f >= -9_223_372_036_854_775_808.0 && *f < 9_223_372_036_854_775_808.0
                    })
                    .map(|f| f as i64)
            })
            .ok_or_else(|| D::Error::custom(format!("expected an integer, got {n}")))
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            None => Ok(None),
            Some(n) => u64(serde_json::Value::Number(n))
                .map(Some)
                .map_err(D::Error::custom),
        }
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        #[test]
        fn integral_floats_are_integers_and_others_are_not() {
            let u = |s: &str| super::u64(&mut serde_json::Deserializer::from_str(s));
            assert_eq!(u("3").unwrap(), 3);
            assert_eq!(u("3.0").unwrap(), 3);
            assert_eq!(u("1e3").unwrap(), 1000);
            assert!(u("3.5").is_err() && u("-1").is_err() && u("1e30").is_err());
            let i = |s: &str| super::i64(&mut serde_json::Deserializer::from_str(s));
            assert_eq!(i("-2.0").unwrap(), -2);
            assert!(i("0.5").is_err());
        }
    }
}
