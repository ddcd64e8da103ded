//! End-to-end encryption, the server's part: it keeps an agent's key from its Hello, checks it
//! when a session would use it (not at Hello: a reconnect storm of thousands of agents should
//! not pay a certificate parse and a signature check each, for keys few sessions use; a key
//! that does not check out is logged and the session is not sealed), decides per session
//! whether it is sealed (the preference, the client's ability, the agent's key), and hands the
//! client what it needs to check the key itself. The server never holds a session key.

use base64::Engine;
use drover_api::E2eOffer;
use drover_docs::EndToEnd;
use drover_store::NodeId;

use crate::registry::NodeE2e;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The agent's key from its Hello, with the certificate it connected with; checked by
/// [`usable`] when a session would use it.
pub fn node_key(
    node: &NodeId,
    key: Option<&drover_proto::E2eKey>,
    certificate: &[u8],
) -> Option<NodeE2e> {
    let key = key?;
    let (Ok(public), Ok(signature)) = (B64.decode(&key.public), B64.decode(&key.signature)) else {
        tracing::warn!(%node, "the agent's end-to-end key is not base64; its sessions will not be sealed");
        return None;
    };
    Some(NodeE2e {
        public,
        signature,
        certificate: certificate.to_vec(),
    })
}

/// Whether the key proves to be the node's (`ca`: the CA certificate, DER).
pub fn usable(ca: &[u8], node: &str, key: &NodeE2e) -> bool {
    let now = crate::secrets::now();
    match drover_pki::verify_e2e_key(ca, &key.certificate, node, &key.public, &key.signature, now) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(%node, error = %e, "the agent's end-to-end key does not verify; its sessions will not be sealed");
            false
        }
    }
}

/// Whether a session is sealed: `Err` with the reason when the preference requires it and it
/// cannot be.
pub fn decide(mode: EndToEnd, client: bool, agent: bool) -> Result<bool, String> {
    match (mode, client, agent) {
        (EndToEnd::Off, _, _) => Ok(false),
        (_, true, true) => Ok(true),
        (EndToEnd::Optional, _, _) => Ok(false),
        (EndToEnd::Required, false, _) => Err(
            "sessions must be end-to-end encrypted (endToEndEncryption: required) and this client cannot: upgrade it"
                .into(),
        ),
        (EndToEnd::Required, true, false) => Err(
            "sessions must be end-to-end encrypted (endToEndEncryption: required) and the agent on this node has no end-to-end key: upgrade it"
                .into(),
        ),
    }
}

/// What the client checks the key with (`ca`: the CA certificate it pins, DER).
pub fn offer(ca: &[u8], key: &NodeE2e) -> E2eOffer {
    E2eOffer {
        public_key: B64.encode(&key.public),
        signature: B64.encode(&key.signature),
        node_certificate: B64.encode(&key.certificate),
        ca_certificate: B64.encode(ca),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_refuses_what_cannot_be_sealed_and_optional_never_does() {
        assert_eq!(decide(EndToEnd::Optional, true, true), Ok(true));
        assert_eq!(decide(EndToEnd::Optional, false, true), Ok(false));
        assert_eq!(decide(EndToEnd::Optional, true, false), Ok(false));
        assert_eq!(decide(EndToEnd::Off, true, true), Ok(false));
        assert_eq!(decide(EndToEnd::Required, true, true), Ok(true));
        assert!(decide(EndToEnd::Required, false, true).is_err());
        assert!(decide(EndToEnd::Required, true, false).is_err());
    }
}
