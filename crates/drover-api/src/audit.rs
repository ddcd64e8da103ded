//! The audit log over the API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    pub seq: i64,
    /// RFC 3339, milliseconds.
    pub time: String,
    pub actor: String,
    /// `user`, `node`, `server` or `anonymous`.
    pub actor_kind: String,
    /// The ID of the token the actor used, if any.
    pub token: String,
    pub source: String,
    pub action: String,
    pub resource: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    pub reason: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// What checking the whole chain found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerify {
    pub ok: bool,
    /// Entries whose hash and link were checked.
    pub checked: u64,
    /// Signed checkpoints checked on the way.
    pub checkpoints: u64,
    /// The chain starts after this entry (0, or where retention cut it) and ends at `head`.
    pub anchor: i64,
    pub head: i64,
    /// The first problem, naming the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The entry the problem is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<i64>,
    /// The newest signed checkpoint: its entry, and when (RFC 3339). Entries after it are
    /// not under a signature yet; one much older than a minute on a running server means the
    /// newest checkpoints were removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_signed_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_signed_at: Option<String>,
    /// The key that signs checkpoints (`ssh-keygen -Y verify -n drover-audit` checks them too).
    pub signing_key: String,
}
