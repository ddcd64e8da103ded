//! Records of sessions: who opened what on which node, how it ended, and the events around it
//! (start, end, refusal), kept so that the audit log can take them over.

/// One session, as its history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    /// Who opened it (the API token's name until users exist).
    pub user: String,
    pub node_id: String,
    /// `Shell`, `Interactive` or `NonInteractive`.
    pub kind: String,
    pub document: String,
    pub reason: String,
    /// The OS user it runs as on the node; empty for the agent's default.
    pub run_as: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// `Connecting`, `Connected`, `Terminated`, `Failed`, `TimedOut`.
    pub status: String,
    /// Why it ended, in words (`idle for 20 minutes`, `terminated by admin`, ...).
    pub detail: String,
    pub exit_code: Option<i64>,
    /// Bytes from the client to the node, and from the node to the client.
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub recorded: bool,
    /// Where a port forwarding or SSH session leads (`host:port`); empty for other kinds.
    pub target: String,
    /// Connections a port forwarding or SSH session carried.
    pub connections: i64,
    /// Sealed between client and agent: the server relayed what it could not read.
    pub end_to_end: bool,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    pub status: String,
    pub detail: String,
    pub exit_code: Option<i64>,
    pub ended_at: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub connections: i64,
}

/// Something that happened to a session: `started`, `ended`, `refused`, `terminate_requested`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub at: i64,
    /// Empty for a refusal before any session existed.
    pub session_id: String,
    pub event: String,
    pub actor: String,
    pub node_id: String,
    pub detail: String,
}

/// Which sessions to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    pub node_id: Option<String>,
    pub user: Option<String>,
    /// Only those not ended.
    pub active: bool,
    /// Sessions started before this one (the previous page's last ID).
    pub before: Option<String>,
    pub limit: usize,
}
