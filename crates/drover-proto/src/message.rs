//! The messages of the agent protocol (versions 1 and 2: 2 adds `CertificateSaved`). Field names are the wire names; new optional fields get
//! `#[serde(default)]` so that an older peer's messages still parse.

use serde::{Deserialize, Serialize};

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Everything that travels in a frame. The first frame on every stream is [`Message::Open`],
/// which says what the stream is for; the agent's control stream then starts with
/// [`Message::Hello`], answered by [`Message::Welcome`] or [`Message::Refused`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// First frame on a new stream.
    Open(StreamOpen),
    /// Agent to server, first on the control stream.
    Hello(Hello),
    /// Server to agent: the connection is accepted.
    Welcome(Welcome),
    /// Server to agent: the connection is refused; the server closes it next.
    Refused(Refused),
    /// Heartbeat, either way; the peer answers with [`Message::Pong`] carrying the same `seq`.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Agent to server, on connect (inside Hello) and whenever it changes.
    Inventory(Inventory),
    /// Agent to server: please sign a certificate for this new key (PEM CSR).
    RenewCertificate {
        csr_pem: String,
    },
    /// Server to agent: the renewed certificate.
    CertificateIssued(CertificateIssued),
    /// Agent to server (version 2 on): the renewed certificate and its key are saved, so the
    /// server may retire the previous certificate at once.
    CertificateSaved,
    /// Either way: a request on this stream failed.
    Error {
        code: String,
        message: String,
    },
    /// Either way: an orderly close of the connection, with the reason.
    Goodbye {
        reason: String,
    },
    /// Server to agent, first on an invocation stream: run (or resume, or replay) this.
    Invoke(Invoke),
    /// Agent to server, on an invocation stream: what happened.
    Progress(Progress),
    /// Server to agent, on an invocation stream: stop the invocation, killing its processes.
    Cancel,
    /// Server to agent: the final result is stored; the agent may forget the invocation.
    Delivered,
    /// Server to agent, first on a session stream: start this session.
    SessionStart(SessionStart),
    /// Agent to server: the session's process runs; session frames follow
    /// ([`crate::SessionFrame`]), either way.
    SessionStarted,
    /// Server to agent (and client to server, on a forwarded connection's stream): connect
    /// this stream to a TCP port.
    ForwardConnect(crate::ForwardConnect),
    /// The connection is made; the stream carries its raw bytes from now on, either way.
    ForwardConnected,
    /// Server to agent, on the control stream: its settings parameter changed. Sent only to
    /// an agent that named one in its Hello.
    Settings(AgentSettings),
}

impl Message {
    /// A short name of the message's type, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "open",
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Settings(_) => "settings",
            Message::Refused(_) => "refused",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::Inventory(_) => "inventory",
            Message::RenewCertificate { .. } => "renew_certificate",
            Message::CertificateIssued(_) => "certificate_issued",
            Message::CertificateSaved => "certificate_saved",
            Message::Error { .. } => "error",
            Message::Goodbye { .. } => "goodbye",
            Message::Invoke(_) => "invoke",
            Message::Progress(_) => "progress",
            Message::Cancel => "cancel",
            Message::Delivered => "delivered",
            Message::SessionStart(_) => "session_start",
            Message::SessionStarted => "session_started",
            Message::ForwardConnect(_) => "forward_connect",
            Message::ForwardConnected => "forward_connected",
        }
    }
}

/// What a stream carries. Later versions add commands, sessions and forwarded connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Control,
    /// One invocation of a command on this node.
    Invocation,
    /// One session (a shell, a command with or without a PTY).
    Session,
    /// One TCP connection of a port forwarding (or SSH) session.
    Forward,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpen {
    pub kind: StreamKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The range of protocol versions the agent speaks.
    pub min_version: u32,
    pub max_version: u32,
    pub inventory: Inventory,
    /// The agent's end-to-end key, for sessions the server must not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_key: Option<crate::E2eKey>,
    /// A Parameter Store parameter (under `/drover/agents/`) holding the agent's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_parameter: Option<String>,
}

/// An agent's settings, kept centrally in a parameter (JSON) so that a fleet is configured
/// in one place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// A log filter: `error`, `warn`, `info`, `debug`, `trace`, or directives like
    /// `info,drover_agent=debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Seconds between heartbeats (5 to 600), from the next connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    /// `HOST:PORT` of an HTTP CONNECT proxy to reach the server, from the next connection
    /// (a proxy the agent was started with wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

impl AgentSettings {
    /// Checks what a parameter (or a peer) says, naming what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(l) = &self.log_level {
            let ok = !l.is_empty()
                && l.len() <= 200
                && l.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '_' | '=' | ',' | ':' | '.' | '-')
                });
            if !ok {
                return Err(format!("log_level {l:?}: a level or log directives"));
            }
        }
        if let Some(h) = self.heartbeat_secs {
            if !(5..=600).contains(&h) {
                return Err(format!("heartbeat_secs {h}: from 5 to 600"));
            }
        }
        if let Some(p) = &self.proxy {
            let ok = p.len() <= 255
                && p.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty()
                        && !host.contains(['/', '@', ' '])
                        && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
            if !ok {
                return Err(format!("proxy {p:?}: HOST:PORT"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides speak from now on.
    pub version: u32,
    pub node_id: String,
    /// How often each side sends a heartbeat; a peer silent for three intervals is gone.
    pub heartbeat_secs: u64,
    /// The settings from the parameter the agent named in its Hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<AgentSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseCode {
    /// The node was deregistered: the agent must not retry.
    Deregistered,
    /// No protocol version in common: the agent must be upgraded.
    Version,
    /// The certificate names no node this server knows.
    UnknownNode,
    /// Anything else; the agent retries later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub code: RefuseCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateIssued {
    pub cert_pem: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// What a node says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    /// "linux" or "macos".
    pub platform: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub agent_version: String,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// Unix seconds.
    #[serde(default)]
    pub boot_time: i64,
}

/// Picks the protocol version for a peer that speaks `min..=max`: the newest both sides speak,
/// or `None` when the ranges do not meet.
pub fn negotiate(peer_min: u32, peer_max: u32) -> Option<u32> {
    let version = peer_max.min(PROTOCOL_VERSION);
    (version >= peer_min.max(MIN_PROTOCOL_VERSION) && peer_min <= peer_max).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_agent_is_spoken_to_in_our_version() {
        assert_eq!(negotiate(1, 5), Some(PROTOCOL_VERSION));
    }

    #[test]
    fn disjoint_ranges_do_not_negotiate() {
        assert_eq!(negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3), None);
        assert_eq!(negotiate(0, 0), None);
        assert_eq!(negotiate(3, 1), None);
    }

    #[test]
    fn an_unknown_refuse_code_reads_as_other() {
        let r: Refused =
            serde_json::from_str(r#"{"code":"quota","message":"x"}"#).unwrap_or(Refused {
                code: RefuseCode::Deregistered,
                message: String::new(),
            });
        assert_eq!(r.code, RefuseCode::Other);
    }
}

/// One invocation: a command's document, resolved for this node. The same invocation may be
/// sent again (after a lost connection or a server restart); the agent runs it at most once and
/// replays what it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoke {
    pub invocation_id: String,
    pub command_id: String,
    /// The resolved steps (`drover_docs::ResolvedStep`s), opaque to the protocol.
    pub steps: serde_json::Value,
    /// Environment for every script (ENV_VAR parameters).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Documents that `runDocument` steps of type SSMDocument refer to, resolved by the server,
    /// by document path.
    #[serde(default)]
    pub documents: std::collections::BTreeMap<String, serde_json::Value>,
    /// Files that `downloadContent` steps of type SSMDocument fetch, by document name.
    #[serde(default)]
    pub contents: std::collections::BTreeMap<String, String>,
    pub execution_timeout_secs: u64,
    /// Output kept per step and stream, in bytes.
    pub output_limit: u64,
    /// What the server already has, per step name: `[stdout bytes, stderr bytes]`. A replay
    /// starts there, so nothing is stored twice.
    #[serde(default)]
    pub received: std::collections::BTreeMap<String, [u64; 2]>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Agent to server: one event of an invocation. Output carries its offset, so a replay after
/// a reconnect appends only what the server does not have yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    StepStarted {
        step: String,
    },
    Output {
        step: String,
        stream: OutputStream,
        /// Byte offset of this chunk in the step's output, and its length in bytes (`data` is
        /// the same bytes as text, with invalid UTF-8 replaced).
        offset: u64,
        len: u64,
        data: String,
    },
    StepFinished {
        step: String,
        /// `Success`, `Failed`, `Skipped`, `TimedOut` or `Cancelled`.
        status: String,
        exit_code: i32,
        /// The agent kept only the first `output_limit` bytes.
        #[serde(default)]
        truncated: bool,
    },
    /// The node will reboot (exit code 194) and resume after the step that asked for it.
    Rebooting,
    Finished {
        /// `Success`, `Failed`, `TimedOut` or `Cancelled`.
        status: String,
        exit_code: i32,
    },
}

/// What a session runs on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// The login shell of the session's user, in a PTY.
    Shell,
    /// One command line, run by the user's shell, in a PTY.
    Interactive,
    /// One command line, run by the user's shell, stdout and stderr apart, no PTY.
    NonInteractive,
}

/// A terminal's size and type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminal {
    pub cols: u16,
    pub rows: u16,
    /// `TERM` for the session (`xterm-256color` when the client does not say).
    pub term: String,
}

/// Server to agent: start a session. The server has authorized it and resolved its document;
/// the agent runs exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStart {
    pub session_id: String,
    pub kind: SessionKind,
    /// The command line for `Interactive` and `NonInteractive`, given to the user's shell as
    /// `-c`. Parameters are never spliced into it: they arrive in `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The PTY, for `Shell` and `Interactive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<Terminal>,
    /// The OS user to run as; none: the agent's default (`drover-user` when the agent is root,
    /// else the agent's own user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Extra environment (the shell profile's variables, a document's parameters).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory; none: the user's home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Commands the shell runs first (the shell profile), for `Shell` only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub profile: String,
}
