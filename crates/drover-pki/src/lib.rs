//! Drover's private PKI: the certificate authority that signs agent identities, the server's own
//! certificate, agent key pairs and CSRs, SHA-256 fingerprints, and the TLS verifier that trusts a
//! server by the pinned fingerprint of a certificate in its chain. No I/O: callers store the PEM.

mod ca;
mod e2e;
mod pin;
mod ssh;

use std::sync::Arc;

pub use ca::{CertificateAuthority, IssuedCertificate, NodeKey, NODE_CERT_BACKDATE_SECS};
pub use e2e::{sign_e2e_key, verify_e2e_key};
pub use pin::{fingerprint, normalize_fingerprint, CaptureChain, PinnedServerVerifier};
pub use ssh::{
    generate_ssh_key, ssh_fingerprint, SshCa, SshKeyPair, SshSigner, UserCertRequest,
    SOURCE_ADDRESSES,
};

/// Errors of certificate work, each naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not {what}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid fingerprint {0:?}: expected 64 hexadecimal digits (SHA-256), colons allowed")]
    InvalidFingerprint(String),
    #[error("could not {what}: {detail}")]
    Ssh { what: &'static str, detail: String },
    #[error("invalid PEM in {what}")]
    Pem { what: &'static str },
}

/// The one crypto provider Drover uses (ring: small, fast AES-GCM on x86 and ARM).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM bundle.
pub fn certs_from_pem(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PkiError::Pem {
            what: "certificate",
        })
}

/// Parses a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::Pem {
        what: "private key",
    })
}

/// What a certificate says about its holder: the common name (a node ID for agent
/// certificates) and its validity window in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// The SHA-256 fingerprint of the first certificate in `pem`: what the server records to tell
/// a node's current certificate from the ones it replaced.
pub fn cert_fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    let certs = certs_from_pem(pem)?;
    let first = certs
        .first()
        .ok_or_else(|| PkiError::InvalidCertificate("no certificate in the PEM".into()))?;
    Ok(pin::fingerprint(first))
}

/// Reads the subject common name and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(CertInfo {
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}
