//! Trust by pinned fingerprint: a client (agent or CLI) trusts the server when some certificate
//! in the chain it presents has the SHA-256 fingerprint the operator pinned, and the leaf chains
//! to it and names the host. This works for Drover's private CA and for a public CA alike.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::PkiError;

/// The SHA-256 fingerprint of a DER certificate, as 64 lowercase hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Accepts a fingerprint as operators paste it (any case, with or without colons or a
/// `sha256:` prefix) and returns the canonical form.
pub fn normalize_fingerprint(input: &str) -> Result<String, PkiError> {
    let trimmed = input.trim();
    let body = trimmed
        .strip_prefix("sha256:")
        .or_else(|| trimmed.strip_prefix("SHA256:"))
        .unwrap_or(trimmed);
    let hex: String = body.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(PkiError::InvalidFingerprint(input.to_string()))
    }
}

/// Verifies a server by a pinned certificate fingerprint.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedServerVerifier {
    pub fn new(pin: &str, provider: Arc<CryptoProvider>) -> Result<Self, PkiError> {
        Ok(Self {
            pin: normalize_fingerprint(pin)?,
            provider,
        })
    }
}

fn tls_error(msg: String) -> rustls::Error {
    rustls::Error::General(msg)
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(anchor) = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .or_else(|| (fingerprint(end_entity) == self.pin).then_some(end_entity))
        else {
            return Err(tls_error(format!(
                "the server's certificate chain does not contain the pinned CA fingerprint {} \
                 (it presented {}); check --ca-fingerprint",
                self.pin,
                std::iter::once(end_entity)
                    .chain(intermediates)
                    .map(|c| fingerprint(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| tls_error(format!("pinned certificate is not a usable CA: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| tls_error(format!("could not build verifier: {e}")))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Records the chain a server presents and then fails the handshake, so that nothing is ever
/// sent over an unverified connection. Used once, to show an operator the fingerprint to pin.
#[derive(Debug)]
pub struct CaptureChain {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl CaptureChain {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self {
            chain: Mutex::new(Vec::new()),
            provider,
        }
    }

    /// The chain seen, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl ServerCertVerifier for CaptureChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            *chain = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| c.clone().into_owned())
                .collect();
        }
        Err(tls_error("chain captured for inspection".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls_error("chain captured for inspection".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls_error("chain captured for inspection".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprints_are_accepted_as_operators_paste_them() {
        let canon = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(normalize_fingerprint(&colons).unwrap(), canon);
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{canon}")).unwrap(),
            canon
        );
        assert!(normalize_fingerprint("abc").is_err());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_err());
    }
}
