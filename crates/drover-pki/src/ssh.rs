//! The server's SSH certificate authority: short-lived OpenSSH user certificates, so that no
//! SSH key is ever distributed to or left behind on a node (what EC2 Instance Connect and
//! Teleport do). A node's sshd trusts the authority's public key (`TrustedUserCAKeys`).

use rand::rngs::OsRng;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

use crate::PkiError;

/// The addresses a certificate may be used from: the node's loopback, where the agent's
/// forwarded connections come from. A certificate lifted off a laptop is no use against an
/// sshd that is reachable over the network: only a Drover session reaches it.
pub const SOURCE_ADDRESSES: &str = "127.0.0.1/32,::1/128";

fn ssh_err(what: &'static str) -> impl FnOnce(ssh_key::Error) -> PkiError {
    move |e| PkiError::Ssh {
        what,
        detail: e.to_string(),
    }
}

/// An Ed25519 key pair in OpenSSH's formats.
pub struct SshKeyPair {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----`; a secret.
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA... comment`.
    pub public_openssh: String,
}

impl std::fmt::Debug for SshKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshKeyPair")
            .field("public_openssh", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

/// A new Ed25519 key pair (the CA's, or a client's key for one session).
pub fn generate_ssh_key(comment: &str) -> Result<SshKeyPair, PkiError> {
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
        .map_err(ssh_err("generate an SSH key"))?;
    key.set_comment(comment);
    let private_openssh = key
        .to_openssh(LineEnding::LF)
        .map_err(ssh_err("encode an SSH private key"))?
        .to_string();
    let public_openssh = key
        .public_key()
        .to_openssh()
        .map_err(ssh_err("encode an SSH public key"))?;
    Ok(SshKeyPair {
        private_openssh,
        public_openssh,
    })
}

/// A key that signs messages as `ssh-keygen -Y sign` does, so that a signature can be checked
/// with OpenSSH alone (`ssh-keygen -Y verify`): the audit log's checkpoints.
pub struct SshSigner {
    key: PrivateKey,
}

impl std::fmt::Debug for SshSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSigner").finish_non_exhaustive()
    }
}

impl SshSigner {
    pub fn from_openssh(private_openssh: &str) -> Result<Self, PkiError> {
        let key =
            PrivateKey::from_openssh(private_openssh).map_err(ssh_err("read a signing key"))?;
        Ok(Self { key })
    }

    /// An armored `SSH SIGNATURE` of `msg` in `namespace`.
    pub fn sign(&self, namespace: &str, msg: &[u8]) -> Result<String, PkiError> {
        self.key
            .sign(namespace, HashAlg::Sha512, msg)
            .map_err(ssh_err("sign"))?
            .to_pem(LineEnding::LF)
            .map_err(ssh_err("encode a signature"))
    }

    /// Whether `signature` is this key's over `msg` in `namespace`.
    pub fn verify(&self, namespace: &str, msg: &[u8], signature: &str) -> bool {
        ssh_key::SshSig::from_pem(signature)
            .map(|sig| self.key.public_key().verify(namespace, msg, &sig).is_ok())
            .unwrap_or(false)
    }

    pub fn public_openssh(&self) -> Result<String, PkiError> {
        self.key
            .public_key()
            .to_openssh()
            .map_err(ssh_err("encode a public key"))
    }
}

/// What a user certificate says.
#[derive(Debug, Clone)]
pub struct UserCertRequest<'a> {
    /// The user's public key, OpenSSH format.
    pub public_key: &'a str,
    /// The one OS user it logs in as.
    pub principal: &'a str,
    /// Shown in sshd's log: who, for which node.
    pub key_id: &'a str,
    /// Unix seconds.
    pub valid_after: u64,
    pub valid_before: u64,
}

/// The certificate authority, loaded from its OpenSSH private key.
pub struct SshCa {
    key: PrivateKey,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCa").finish_non_exhaustive()
    }
}

impl SshCa {
    pub fn from_openssh(private_openssh: &str) -> Result<Self, PkiError> {
        let key =
            PrivateKey::from_openssh(private_openssh).map_err(ssh_err("read the SSH CA key"))?;
        if key.is_encrypted() {
            return Err(PkiError::Ssh {
                what: "read the SSH CA key",
                detail: "it is encrypted".into(),
            });
        }
        Ok(Self { key })
    }

    /// The line a node's `TrustedUserCAKeys` file holds.
    pub fn public_openssh(&self) -> Result<String, PkiError> {
        self.key
            .public_key()
            .to_openssh()
            .map_err(ssh_err("encode the SSH CA public key"))
    }

    /// Signs a user certificate: one principal, a PTY allowed, no forwarding through sshd
    /// (forwarding goes through Drover, which checks its deny list), usable from the node's
    /// loopback only.
    pub fn sign_user(&self, req: &UserCertRequest<'_>) -> Result<String, PkiError> {
        let public = PublicKey::from_openssh(req.public_key.trim())
            .map_err(ssh_err("read the public key to certify"))?;
        let mut b = Builder::new_with_random_nonce(
            &mut OsRng,
            public.key_data().clone(),
            req.valid_after,
            req.valid_before,
        )
        .map_err(ssh_err("start a certificate"))?;
        let serial = rand::Rng::gen::<u64>(&mut OsRng);
        b.serial(serial)
            .and_then(|b| b.key_id(req.key_id))
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.valid_principal(req.principal))
            .and_then(|b| b.critical_option("source-address", SOURCE_ADDRESSES))
            .and_then(|b| b.extension("permit-pty", ""))
            .map_err(ssh_err("fill in a certificate"))?;
        let cert = b.sign(&self.key).map_err(ssh_err("sign a certificate"))?;
        cert.to_openssh().map_err(ssh_err("encode a certificate"))
    }
}

/// `SHA256:...` of a public key, as `ssh-keygen -l` shows it.
pub fn ssh_fingerprint(public_openssh: &str) -> Result<String, PkiError> {
    let k = PublicKey::from_openssh(public_openssh.trim()).map_err(ssh_err("read a public key"))?;
    Ok(k.fingerprint(HashAlg::Sha256).to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_user_certificate_names_one_principal_and_the_loopback() {
        let ca = SshCa::from_openssh(&generate_ssh_key("ca").unwrap().private_openssh).unwrap();
        let user = generate_ssh_key("u").unwrap();
        let text = ca
            .sign_user(&UserCertRequest {
                public_key: &user.public_openssh,
                principal: "drover-user",
                key_id: "drover:admin:n-1",
                valid_after: 1_000,
                valid_before: 1_300,
            })
            .unwrap();
        let cert = ssh_key::Certificate::from_openssh(&text).unwrap();
        assert_eq!(cert.valid_principals(), ["drover-user".to_string()]);
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!((cert.valid_after(), cert.valid_before()), (1_000, 1_300));
        assert_eq!(
            cert.critical_options()
                .get("source-address")
                .map(String::as_str),
            Some(SOURCE_ADDRESSES)
        );
        assert!(!cert.extensions().contains_key("permit-port-forwarding"));
        let ca_fp = PublicKey::from_openssh(&ca.public_openssh().unwrap())
            .unwrap()
            .fingerprint(HashAlg::Sha256);
        assert_eq!(cert.signature_key().fingerprint(HashAlg::Sha256), ca_fp);
    }

    #[test]
    fn garbage_is_refused_with_what_was_being_read() {
        let ca = SshCa::from_openssh(&generate_ssh_key("ca").unwrap().private_openssh).unwrap();
        let e = ca
            .sign_user(&UserCertRequest {
                public_key: "ssh-ed25519 not-base64",
                principal: "p",
                key_id: "k",
                valid_after: 0,
                valid_before: 1,
            })
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("could not read the public key to certify"),
            "{e}"
        );
        assert!(SshCa::from_openssh("nope").is_err());
    }
}
