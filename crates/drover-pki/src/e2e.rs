//! End-to-end encryption's trust: an agent's Noise static key is bound to its node identity by
//! a signature with the node's private key (the one its certificate certifies). A client checks
//! the node certificate against the CA it pins, that it names the node, and the signature, so a
//! server that relays the session cannot swap in a key of its own without issuing a false node
//! certificate (which the CA's holder can do: the server is trusted not to, and the client's
//! one line at session start names the key it got).

use ring::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;

fn bad(detail: impl Into<String>) -> PkiError {
    PkiError::InvalidCertificate(detail.into())
}

/// What the node signs: a fixed label, the node's ID and the key.
fn message(node_id: &str, noise_public: &[u8]) -> Vec<u8> {
    let mut m = b"drover end-to-end key v1\0".to_vec();
    m.extend_from_slice(node_id.as_bytes());
    m.push(0);
    m.extend_from_slice(noise_public);
    m
}

/// Signs `noise_public` with the node's private key (PKCS#8 PEM, ECDSA P-256).
pub fn sign_e2e_key(
    node_key_pem: &str,
    node_id: &str,
    noise_public: &[u8],
) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(node_key_pem.as_bytes())
        .map_err(|_| PkiError::Pem { what: "node key" })?;
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|e| bad(format!("node key: {e}")))?;
    key.sign(&rng, &message(node_id, noise_public))
        .map(|s| s.as_ref().to_vec())
        .map_err(|e| bad(format!("signing the end-to-end key: {e}")))
}

/// Checks that `noise_public` is the key of node `node_id`: its certificate (DER) was issued
/// by the CA (`ca_cert_der`, which the caller has matched to its pinned fingerprint), names the
/// node, is valid now, and its key signed `noise_public`.
pub fn verify_e2e_key(
    ca_cert_der: &[u8],
    node_cert_der: &[u8],
    node_id: &str,
    noise_public: &[u8],
    sig: &[u8],
    now: i64,
) -> Result<(), PkiError> {
    if noise_public.len() != 32 {
        return Err(bad(format!(
            "an end-to-end key is 32 bytes (X25519), not {}",
            noise_public.len()
        )));
    }
    let (_, ca) = X509Certificate::from_der(ca_cert_der).map_err(|e| bad(format!("CA: {e}")))?;
    let (_, node) =
        X509Certificate::from_der(node_cert_der).map_err(|e| bad(format!("node: {e}")))?;
    node.verify_signature(Some(ca.public_key()))
        .map_err(|_| bad("the node certificate was not issued by the pinned CA"))?;
    let cn = node
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default();
    if cn != node_id {
        return Err(bad(format!(
            "the node certificate names {cn:?}, not {node_id:?}"
        )));
    }
    let validity = node.validity();
    if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
        return Err(bad("the node certificate is not valid now"));
    }
    let key = UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        node.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(&message(node_id, noise_public), sig)
        .map_err(|_| bad("the node's end-to-end key is not signed by the node"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::CertificateAuthority;

    #[test]
    fn a_key_signed_by_the_node_verifies_and_nothing_else_does() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let node = crate::NodeKey::generate().unwrap();
        let (cert_pem, _) = ca
            .sign_node_csr(&node.csr_pem, "n-1", std::time::Duration::from_secs(3600))
            .unwrap();
        let cert_der = crate::certs_from_pem(&cert_pem).unwrap().remove(0);
        let ca_der = ca.cert_der().unwrap();
        let key = [7u8; 32];
        let sig = sign_e2e_key(&node.key_pem, "n-1", &key).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        verify_e2e_key(&ca_der, &cert_der, "n-1", &key, &sig, now).unwrap();
        // Another key, another node's name, another CA, a later time: refused.
        assert!(verify_e2e_key(&ca_der, &cert_der, "n-1", &[8u8; 32], &sig, now).is_err());
        assert!(verify_e2e_key(&ca_der, &cert_der, "n-2", &key, &sig, now).is_err());
        let other = CertificateAuthority::generate("other").unwrap();
        let e = verify_e2e_key(
            &other.cert_der().unwrap(),
            &cert_der,
            "n-1",
            &key,
            &sig,
            now,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not issued by the pinned CA"), "{e}");
        assert!(verify_e2e_key(&ca_der, &cert_der, "n-1", &key, &sig, now + 7200).is_err());
    }
}
