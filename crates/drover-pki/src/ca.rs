//! The certificate authority: generated once per server, kept as PEM in its data directory.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::PkiError;

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// How far node certificates are back-dated, to tolerate clock skew. Not part of the lifetime
/// an agent counts when it decides to renew.
pub const NODE_CERT_BACKDATE_SECS: i64 = 300;

/// A certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A private CA. Its key never leaves the server's data directory.
pub struct CertificateAuthority {
    cert: rcgen::Certificate,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new CA valid for ten years.
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(rc("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Drover");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(10 * 365 * 86400);
        let cert = params.self_signed(&key).map_err(rc("self-sign the CA"))?;
        let cert_pem = cert.pem();
        Ok(Self {
            cert,
            key,
            cert_pem,
        })
    }

    /// Loads a CA saved with [`CertificateAuthority::cert_pem`] and [`CertificateAuthority::key_pem`].
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("read the CA key"))?;
        let params =
            CertificateParams::from_ca_cert_pem(cert_pem).map_err(rc("read the CA certificate"))?;
        // rcgen signs with an in-memory Certificate; re-signing the same params and key gives
        // one with the same subject and key, which is all an issuer needs. Clients keep the
        // original PEM, which stays the one we serve.
        let cert = params.self_signed(&key).map_err(rc("load the CA"))?;
        Ok(Self {
            cert,
            key,
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The DER of the CA certificate as saved (the one clients pin).
    pub fn cert_der(&self) -> Result<rustls::pki_types::CertificateDer<'static>, PkiError> {
        crate::certs_from_pem(&self.cert_pem)?
            .into_iter()
            .next()
            .ok_or(PkiError::Pem {
                what: "CA certificate",
            })
    }

    /// The SHA-256 fingerprint that agents and the CLI pin.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        Ok(crate::fingerprint(&self.cert_der()?))
    }

    /// Issues the server's TLS certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate().map_err(rc("generate the server key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("drover"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(rc("use a server name")),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + lifetime;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rc("sign the server certificate"))?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a node's CSR. Whatever subject the CSR asks for is ignored: the certificate names
    /// exactly `node_id`, is good only for client authentication, and expires after `lifetime`.
    /// The CSR's signature is checked, which proves the requester holds the key.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        lifetime: Duration,
    ) -> Result<(String, i64), PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rc("read the certificate signing request"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        // A little back-dating tolerates clock skew between server and node.
        params.not_before = now - Duration::from_secs(NODE_CERT_BACKDATE_SECS as u64);
        params.not_after = now + lifetime;
        let not_after = params.not_after.unix_timestamp();
        let cert = params
            .signed_by(&csr.public_key, &self.cert, &self.key)
            .map_err(rc("sign the node certificate"))?;
        Ok((cert.pem(), not_after))
    }
}

/// A node's private key and the CSR that asks for a certificate for it.
pub struct NodeKey {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Generates a fresh P-256 key pair on the node and a CSR for it.
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(rc("generate the node key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "drover-node");
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&key)
            .map_err(rc("create the certificate signing request"))?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            csr_pem: csr
                .pem()
                .map_err(rc("encode the certificate signing request"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn node_certificate_names_the_node_and_expires() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let node = NodeKey::generate().unwrap();
        let (pem, not_after) = ca
            .sign_node_csr(
                &node.csr_pem,
                "n-0123456789abcdef0",
                Duration::from_secs(86400),
            )
            .unwrap();
        let der = crate::certs_from_pem(&pem).unwrap();
        let info = crate::cert_info(&der[0]).unwrap();
        assert_eq!(info.common_name, "n-0123456789abcdef0");
        assert_eq!(info.not_after, not_after);
    }

    #[test]
    fn a_reloaded_ca_keeps_its_fingerprint_and_signs() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let again = CertificateAuthority::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(ca.fingerprint().unwrap(), again.fingerprint().unwrap());
        let node = NodeKey::generate().unwrap();
        again
            .sign_node_csr(&node.csr_pem, "n-1", Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let err = ca
            .sign_node_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "n-1",
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("certificate signing request"),
            "{err}"
        );
    }
}
