//! The agent's state directory (0700):
//!
//! ```text
//! agent.json   server URL, node ID, pinned CA fingerprint
//! node.pem     0600: the node's certificate and private key, replaced atomically on renewal
//! ca.crt       the server's agent CA, for reference
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::AgentError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentState {
    pub server: String,
    pub node_id: String,
    pub ca_fingerprint: String,
}

/// Everything the agent needs to connect.
#[derive(Clone)]
pub struct Identity {
    pub dir: PathBuf,
    pub state: AgentState,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("dir", &self.dir)
            .field("state", &self.state)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

pub fn create_private_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(AgentError::io("create the state directory", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(AgentError::io("restrict permissions of", dir))
}

/// Writes a file readable by the owner only, atomically, and flushed to disk.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), AgentError> {
    write_atomic(path, contents, true)
}

/// Writes a file readable by the owner only, atomically; `sync` flushes it to disk first.
pub fn write_atomic(path: &Path, contents: &[u8], sync: bool) -> Result<(), AgentError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(AgentError::io("create", &tmp))?;
    f.write_all(contents)
        .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
        .map_err(AgentError::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(AgentError::io("rename into place", path))?;
    if sync {
        // The new name must reach the disk too: the server retires the old certificate once
        // told this one is saved, and a power cut must not bring the old one back.
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(AgentError::io("flush", dir))?;
        }
    }
    Ok(())
}

impl Identity {
    pub fn load(dir: &Path) -> Result<Self, AgentError> {
        // Missing means not registered; any other failure (no descriptor left for a moment)
        // is an I/O error, which the connection loop waits out.
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    AgentError::NotRegistered(dir.display().to_string())
                } else {
                    AgentError::io("read", path)(e)
                }
            })
        };
        let state_path = dir.join("agent.json");
        let text = read(&state_path)?;
        let state: AgentState = serde_json::from_str(&text).map_err(|e| AgentError::Corrupt {
            path: state_path.display().to_string(),
            detail: e.to_string(),
        })?;
        let pem = read(&dir.join("node.pem"))?;
        Self::from_parts(dir, state, &pem)
    }

    fn from_parts(dir: &Path, state: AgentState, pem: &str) -> Result<Self, AgentError> {
        let corrupt = |detail: String| AgentError::Corrupt {
            path: dir.join("node.pem").display().to_string(),
            detail,
        };
        let certs = drover_pki::certs_from_pem(pem)?;
        let first = certs
            .first()
            .ok_or_else(|| corrupt("no certificate".into()))?;
        let info = drover_pki::cert_info(first)?;
        // The key is whatever follows the certificates in the same file.
        let key_start = pem
            .find("-----BEGIN PRIVATE KEY-----")
            .or_else(|| pem.find("-----BEGIN EC PRIVATE KEY-----"))
            .ok_or_else(|| corrupt("no private key".into()))?;
        let (cert_pem, key_pem) = pem.split_at(key_start);
        Ok(Self {
            dir: dir.to_path_buf(),
            state,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Saves a new identity (registration) or replaces the certificate and key (renewal).
    pub fn save(
        dir: &Path,
        state: &AgentState,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: Option<&str>,
    ) -> Result<Self, AgentError> {
        create_private_dir(dir)?;
        let pem = format!("{}{}", ensure_newline(cert_pem), ensure_newline(key_pem));
        let identity = Self::from_parts(dir, state.clone(), &pem)?;
        write_private(&dir.join("node.pem"), pem.as_bytes())?;
        if let Some(ca) = ca_pem {
            write_private(&dir.join("ca.crt"), ca.as_bytes())?;
        }
        let json = serde_json::to_vec_pretty(state).map_err(|e| AgentError::Corrupt {
            path: dir.display().to_string(),
            detail: e.to_string(),
        })?;
        write_private(&dir.join("agent.json"), &json)?;
        Ok(identity)
    }

    /// The rustls client-auth pair.
    pub fn client_auth(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        AgentError,
    > {
        Ok((
            drover_pki::certs_from_pem(&self.cert_pem)?,
            drover_pki::key_from_pem(&self.key_pem)?,
        ))
    }

    /// True once two thirds of the certificate's lifetime have passed (counted from its
    /// issue, not from the back-dated start of its validity).
    pub fn wants_renewal(&self, now: i64) -> bool {
        let issued = self.not_before + drover_pki::NODE_CERT_BACKDATE_SECS;
        let lifetime = (self.not_after - issued).max(1);
        now >= issued + lifetime * 2 / 3
    }
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}
