//! Forwarded TCP connections. Each connection of a port forwarding or SSH session is a stream
//! of its own on the tunnel (so each has its own flow control and none blocks another): the
//! server opens it with [`crate::Message::Open`] of kind `Forward` and a
//! [`crate::Message::ForwardConnect`]; the agent answers `ForwardConnected` or an `Error`, and
//! from then on the stream carries the connection's bytes, unframed, either way.
//!
//! A client carries its connections to the server the same way: it upgrades one HTTP/1.1
//! request per session to [`MUX_UPGRADE`] (a yamux connection, as agents speak) and opens a
//! stream per connection; the server answers each with the agent's answer.

use serde::{Deserialize, Serialize};

/// The `Upgrade` token of a session's multiplexed connection from a client.
pub const MUX_UPGRADE: &str = "drover-mux/1";

/// `host:port`, an IPv6 address in brackets: how a target is shown in history and bound into
/// an end-to-end handshake (so both ends must write it the same way).
pub fn target_label(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connect to `host:port` from the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardConnect {
    pub session_id: String,
    /// A name or an address; the agent resolves it once and checks every address.
    pub host: String,
    pub port: u16,
    /// Networks (CIDR) the connection may not reach, beyond the agent's own list (the cloud
    /// metadata addresses and link-local ranges, always refused).
    #[serde(default)]
    pub deny: Vec<String>,
    /// The client seals the connection end to end (a Noise handshake first, on the stream):
    /// the agent answers it with its end-to-end key.
    #[serde(default)]
    pub e2e: bool,
}

/// An agent's end-to-end key (X25519, for Noise), signed with its node key so that a client
/// can check it against the node's certificate. Both base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2eKey {
    pub public: String,
    pub signature: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Message;

    #[test]
    fn a_connect_without_a_deny_list_parses() {
        let m: Message = serde_json::from_str(
            r#"{"type":"forward_connect","session_id":"s-1","host":"db","port":5432}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            Message::ForwardConnect(ForwardConnect {
                session_id: "s-1".into(),
                host: "db".into(),
                port: 5432,
                deny: vec![],
                e2e: false,
            })
        );
    }
}
