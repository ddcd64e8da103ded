//! Temporary elevated access: a request for named actions on named nodes, its approvals, and
//! the time-bound grant it becomes.

/// One approver's word on a request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessDecision {
    pub user: String,
    /// `approve` or `deny`.
    pub verdict: String,
    pub comment: String,
    pub at: i64,
}

/// A request, and once approved, the grant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessRequest {
    /// `ar-` and 16 hex digits.
    pub id: String,
    pub requester: String,
    /// Cedar action names (`StartSession`, `SendCommand`, ...).
    pub actions: Vec<String>,
    /// The node IDs, resolved when asked (a tag filter names the nodes it matched then).
    pub nodes: Vec<String>,
    /// Only with this document, if given.
    pub document: Option<String>,
    pub reason: String,
    pub duration_secs: i64,
    pub created_at: i64,
    /// `Pending`, `Approved`, `Denied`, `Revoked` or `Expired`.
    pub status: String,
    /// Approvals it takes (the deciding policies' `@approvals`, 1 by default).
    pub approvals_needed: i64,
    pub decisions: Vec<AccessDecision>,
    /// Set when approved: the grant runs from then for `duration_secs`.
    pub granted_at: i64,
    pub expires_at: i64,
    /// Who ended it and why (a denial, a revocation, the expiry).
    pub ended_by: String,
    pub ended_reason: String,
}

impl AccessRequest {
    /// A grant in force at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.status == "Approved" && self.expires_at > now
    }

    /// Whether it grants `action` on `node` (with `document`, when it names one). Seeing the
    /// node comes with it: a session needs the node to exist for its user.
    pub fn grants(&self, action: &str, node: &str, document: Option<&str>) -> bool {
        let action_ok = action == "ReadNode" || self.actions.iter().any(|a| a == action);
        let document_ok = action == "ReadNode"
            || match &self.document {
                Some(d) => document == Some(d.as_str()),
                None => true,
            };
        action_ok && document_ok && self.nodes.iter().any(|n| n == node)
    }
}

/// A change to a request, made in one transaction with the read it depends on.
pub type AccessChange =
    Box<dyn for<'a> FnOnce(&'a mut AccessRequest) -> Result<(), String> + Send + 'static>;
