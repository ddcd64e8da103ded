//! Sessions: start one, list and show the history, terminate, and (outside JSON) attach to its
//! stream over a WebSocket and download its recording.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Starts a session. Without `command`: the login shell (`SessionManagerRunShell`). With it:
/// that command line, in a PTY (`StartInteractiveCommand`) or, with `pty: false`, with stdout
/// and stderr apart (`StartNonInteractiveCommand`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// The node's ID, or its unique name.
    pub node: String,
    /// A session document (`NAME` or `NAME:VERSION`); none: the shell, or the built-in for
    /// `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    /// The document's parameters.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub parameters: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Give the command a PTY (default true; a shell always has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<bool>,
    /// The client terminal's size and `TERM` (default 80x24, `xterm-256color`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// Why: kept in the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The client can seal a port or SSH session end to end (it then gets the node's key in
    /// `e2e`, and must use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e: Option<bool>,
}

/// A session in the history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub user: String,
    pub node: String,
    /// `Shell`, `Interactive`, `NonInteractive`, `Port` (port forwarding and SSH).
    pub kind: String,
    pub document: String,
    pub reason: String,
    /// The OS user on the node; empty for the agent's default.
    pub run_as: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// `Connecting`, `Connected`, `Terminated`, `Failed`, `TimedOut`.
    pub status: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub recorded: bool,
    /// Where to attach: a WebSocket of session frames, or for a `Port` session an HTTP/1.1
    /// request upgraded to `drover-mux/1`.
    pub stream_path: String,
    /// Where a `Port` session leads, `host:port` as the node connects to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Connections a `Port` session carried.
    #[serde(default)]
    pub connections: i64,
    /// The session is sealed between client and agent: the server relayed bytes it could not
    /// read.
    #[serde(default)]
    pub end_to_end: bool,
    /// For the client that starts an end-to-end session: the node's key and what vouches for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e: Option<E2eOffer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SessionEventView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionEventView {
    pub at: String,
    /// `started`, `ended`, `refused`, `terminate_requested`.
    pub event: String,
    pub actor: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
    /// Pass as `before` for the next (older) page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Asks for an SSH user certificate for one node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshCertificateRequest {
    /// The node's ID, or its unique name.
    pub node: String,
    /// The key to certify, in OpenSSH's format (`ssh-ed25519 AAAA...`).
    pub public_key: String,
}

/// A short-lived OpenSSH user certificate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SshCertificate {
    /// `ssh-ed25519-cert-v01@openssh.com AAAA...`, for `ssh -o CertificateFile=...`.
    pub certificate: String,
    /// The OS user it logs in as.
    pub principal: String,
    pub valid_before: String,
    /// The node's ID (the certificate itself is valid on any node that trusts the authority,
    /// from the node's loopback only, that is through a Drover session).
    pub node: String,
}

/// The agent's end-to-end key and its proof: the node's certificate (issued by the CA the
/// client pins) signed the key. All base64 (DER for certificates).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct E2eOffer {
    pub public_key: String,
    pub signature: String,
    pub node_certificate: String,
    pub ca_certificate: String,
}
