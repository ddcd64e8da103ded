//! The server's data directory: created on first start, reused after.
//!
//! ```text
//! DIR/            0700
//!   drover.db     SQLite (nodes, activations, token hashes, ...)
//!   ca.crt        the agent CA, which clients pin by fingerprint
//!   ca.key        0600
//!   server.crt    the HTTPS certificate (issued by the CA unless --tls-cert is given)
//!   server.key    0600
//!   admin.token   0600, written once at first start: the token of the first admin user
//!   ssh_ca        0600, the SSH user certificate authority (OpenSSH private key)
//!   audit_key     0600, signs the audit log's checkpoints (OpenSSH private key)
//!   master.key    0600, seals secrets at rest (webhook keys), hex
//!   server_id     this server among replicas sharing a database (holds webhook leases)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_pki::CertificateAuthority;
use drover_store::{SqliteStore, Store};

use crate::secrets;
use crate::{ServerConfig, ServerError};

/// Server certificates are reissued when this close to expiry (or when the names change).
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(397 * 86400);
const SERVER_CERT_RENEW_BEFORE: i64 = 30 * 86400;

pub struct DataDir {
    pub path: PathBuf,
    pub store: Arc<dyn Store>,
    pub ca_fingerprint: String,
}

/// Writes `contents` to `path` readable by the owner only, atomically (write, then rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(ServerError::io("create", &tmp))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(ServerError::io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(ServerError::io("rename into place", path))
}

fn read(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(ServerError::io("read", path))
}

impl DataDir {
    pub async fn open(config: &ServerConfig) -> Result<Self, ServerError> {
        let dir = config.data_dir.clone();
        create_private_dir(&dir)?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("drover.db"))?);

        let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let ca = if ca_crt.exists() {
            CertificateAuthority::load(&read(&ca_crt)?, &read(&ca_key)?)?
        } else {
            let ca = CertificateAuthority::generate("Drover agent CA")?;
            write_private(&ca_key, ca.key_pem().as_bytes())?;
            write_private(&ca_crt, ca.cert_pem().as_bytes())?;
            tracing::info!(path = %ca_crt.display(), "created the agent certificate authority");
            ca
        };
        let ca_fingerprint = ca.fingerprint()?;
        if config.tls_cert.is_none() {
            ensure_server_cert(&dir, &ca, &server_names(config))?;
        }

        crate::accounts::seed(&store, &dir.join("admin.token")).await?;
        Ok(Self {
            path: dir,
            store,
            ca_fingerprint,
        })
    }

    pub fn load_ca(&self) -> Result<CertificateAuthority, ServerError> {
        Ok(CertificateAuthority::load(
            &read(&self.path.join("ca.crt"))?,
            &read(&self.path.join("ca.key"))?,
        )?)
    }

    /// The SSH user certificate authority, created at first use.
    pub fn ssh_ca(&self) -> Result<drover_pki::SshCa, ServerError> {
        let path = self.path.join("ssh_ca");
        if !path.exists() {
            let key = drover_pki::generate_ssh_key("Drover SSH user CA")?;
            write_private(&path, key.private_openssh.as_bytes())?;
            tracing::info!(path = %path.display(), "created the SSH user certificate authority");
        }
        Ok(drover_pki::SshCa::from_openssh(&read(&path)?)?)
    }

    /// The key that signs the audit log's checkpoints, created at first use.
    pub fn audit_key(&self) -> Result<drover_pki::SshSigner, ServerError> {
        let path = self.path.join("audit_key");
        if !path.exists() {
            let key = drover_pki::generate_ssh_key("Drover audit log")?;
            write_private(&path, key.private_openssh.as_bytes())?;
            tracing::info!(path = %path.display(), "created the audit log's signing key");
        }
        Ok(drover_pki::SshSigner::from_openssh(&read(&path)?)?)
    }

    /// The master key that seals secrets at rest (`sealing.rs`), created at first use.
    pub async fn sealer(&self) -> Result<crate::sealing::Sealer, ServerError> {
        let path = self.path.join("master.key");
        let sealing =
            |e: crate::sealing::SealError| ServerError::Config(format!("{}: {e}", path.display()));
        if !path.exists() {
            // A database that holds sealed secrets came with a key: a new one would open none.
            if !self.store.list_webhooks().await?.is_empty() {
                return Err(ServerError::Config(format!(
                    "{} is missing, but the database holds secrets sealed with it; restore it \
                     from the backup of this data directory",
                    path.display()
                )));
            }
            let key = crate::sealing::Sealer::generate_key().map_err(sealing)?;
            write_private(&path, hex::encode(key).as_bytes())?;
            tracing::info!(path = %path.display(), "created the master key for secrets at rest");
        }
        let key = hex::decode(read(&path)?.trim())
            .map_err(|_| ServerError::Config(format!("{}: not a hex key", path.display())))?;
        crate::sealing::Sealer::new(&key).map_err(sealing)
    }

    /// This data directory's server, among the replicas that share a database: the holder of
    /// its leases. Created at first use.
    pub fn server_id(&self) -> Result<String, ServerError> {
        let path = self.path.join("server_id");
        if !path.exists() {
            let id = format!("srv-{}", crate::secrets::random_hex(8));
            write_private(&path, id.as_bytes())?;
        }
        Ok(read(&path)?.trim().to_string())
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.path.join("admin.token")
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.path.join("ca.crt")
    }
}

fn create_private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(ServerError::io("create the data directory", dir))?;
    }
    let meta = std::fs::metadata(dir).map_err(ServerError::io("inspect", dir))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(ServerError::io("restrict permissions of", dir))?;
    }
    Ok(())
}

/// The names the server certificate covers.
fn server_names(config: &ServerConfig) -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if !config.hostname.is_empty() {
        names.push(config.hostname.clone());
    }
    names.extend(config.public_names.iter().cloned());
    let ip = config.listen.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    names.push("127.0.0.1".into());
    names.push("::1".into());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn ensure_server_cert(
    dir: &Path,
    ca: &CertificateAuthority,
    names: &[String],
) -> Result<(), ServerError> {
    let (crt, key, names_file) = (
        dir.join("server.crt"),
        dir.join("server.key"),
        dir.join("server.names"),
    );
    let wanted = names.join("\n");
    let fresh = crt.exists()
        && key.exists()
        && std::fs::read_to_string(&names_file).ok().as_deref() == Some(wanted.as_str())
        && drover_pki::certs_from_pem(&read(&crt)?)
            .ok()
            .and_then(|c| c.first().and_then(|c| drover_pki::cert_info(c).ok()))
            .is_some_and(|info| info.not_after - secrets::now() > SERVER_CERT_RENEW_BEFORE);
    if fresh {
        return Ok(());
    }
    let issued = ca.issue_server(names, SERVER_CERT_LIFETIME)?;
    write_private(&key, issued.key_pem.as_bytes())?;
    // The chain includes the CA, so that clients can find the certificate they pinned.
    write_private(
        &crt,
        format!("{}{}", issued.cert_pem, ca.cert_pem()).as_bytes(),
    )?;
    write_private(&names_file, wanted.as_bytes())?;
    tracing::info!(names = %names.join(","), "issued the server certificate");
    Ok(())
}
