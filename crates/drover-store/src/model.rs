//! The records the store keeps, in the product's own words.

use std::collections::BTreeMap;
use std::fmt;

/// A node's ID: `n-` and 17 lowercase hex digits, like SSM's `mi-` IDs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// Accepts only the canonical form, so IDs from users and peers can be trusted afterwards.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("n-")?;
        (hex.len() == 17
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_string()))
    }

    /// A new random ID (68 bits of randomness).
    pub fn random(rng_hex17: &str) -> Option<Self> {
        Self::parse(&format!("n-{rng_hex17}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node's connection status, as SSM calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    /// The agent's connection is open now.
    Online,
    /// Registered, not connected.
    ConnectionLost,
    /// Deregistered: refused from then on.
    Inactive,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Online => "Online",
            NodeStatus::ConnectionLost => "ConnectionLost",
            NodeStatus::Inactive => "Inactive",
        }
    }

    /// Parses any case: `online`, `Online`, `connectionlost`, `connection_lost`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
            "online" => Some(Self::Online),
            "connectionlost" => Some(Self::ConnectionLost),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// What the agent reports about its machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInventory {
    pub hostname: String,
    pub platform: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub agent_version: String,
    pub ip_addresses: Vec<String>,
    pub boot_time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub status: NodeStatus,
    /// Unix seconds; 0 when never seen.
    pub last_seen_at: i64,
    pub registered_at: i64,
    pub activation_id: String,
    pub inventory: NodeInventory,
}

/// A node about to be created by registration.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub id: NodeId,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub registered_at: i64,
    pub inventory: NodeInventory,
}

/// A connect or disconnect, applied in batches.
#[derive(Debug, Clone)]
pub struct Presence {
    pub id: NodeId,
    pub online: bool,
    pub at: i64,
}

/// Which nodes to list, one page at a time in ID order.
#[derive(Debug, Clone, Default)]
pub struct NodeQuery {
    /// Every tag must match.
    pub tags: Vec<(String, String)>,
    pub platform: Option<String>,
    pub status: Option<NodeStatus>,
    pub name: Option<String>,
    /// Start after this ID.
    pub after: Option<NodeId>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default)]
pub struct NodePage {
    pub nodes: Vec<Node>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<NodeId>,
}

/// A hybrid activation: a code that lets up to `registration_limit` nodes register until
/// `expires_at`. Only the code's hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub id: String,
    pub code_hash: String,
    pub description: String,
    pub default_name: String,
    pub tags: BTreeMap<String, String>,
    pub registration_limit: i64,
    pub registrations: i64,
    pub expires_at: i64,
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_strict() {
        assert!(NodeId::parse("n-0123456789abcdef0").is_some());
        assert!(NodeId::parse("n-0123456789ABCDEF0").is_none());
        assert!(NodeId::parse("n-0123456789abcdef").is_none());
        assert!(NodeId::parse("mi-0123456789abcdef0").is_none());
        assert!(NodeId::parse("n-0123456789abcdefg").is_none());
    }
}
