//! `drover agent configure-sshd`: makes this node's sshd trust the Drover server's SSH user
//! certificate authority (`TrustedUserCAKeys`), so that `drover ssh` logs in with a certificate
//! of a few minutes and no key is ever copied to the node. The authority's public key comes from
//! the server the agent is registered with, over the same pinned TLS.

use std::path::{Path, PathBuf};

use crate::identity::{write_atomic, Identity};
use crate::AgentError;

/// Where things go; the defaults are Debian's and most distributions' layout.
#[derive(Debug, Clone)]
pub struct SshdOptions {
    pub state_dir: PathBuf,
    /// The authority's public key file sshd reads.
    pub ca_file: PathBuf,
    /// The directory sshd includes configuration from; `drover.conf` is written there.
    pub config_dir: PathBuf,
    /// The main configuration, checked for an `Include` of `config_dir`.
    pub sshd_config: PathBuf,
    /// Reload sshd afterwards (after `sshd -t` accepts the configuration).
    pub reload: bool,
    /// The session user to create when missing (the certificates' principal when run-as is
    /// off); none when the agent is not root.
    pub session_user: Option<String>,
}

/// What was done, for the operator.
#[derive(Debug)]
pub struct SshdReport {
    pub lines: Vec<String>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    AgentError::io(what, path)
}

pub async fn configure_sshd(opts: &SshdOptions) -> Result<SshdReport, AgentError> {
    let identity = Identity::load(&opts.state_dir)?;
    let client =
        drover_client::Client::new(&identity.state.server, &identity.state.ca_fingerprint, None)?;
    let key = client.ssh_ca().await?;
    let fingerprint = drover_pki::ssh_fingerprint(&key)?;
    let mut lines = Vec::new();
    if let Some(dir) = opts.ca_file.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    write_world_readable(&opts.ca_file, format!("{key}\n").as_bytes())?;
    lines.push(format!(
        "wrote the Drover SSH user CA ({fingerprint}) to {}",
        opts.ca_file.display()
    ));
    std::fs::create_dir_all(&opts.config_dir).map_err(io("create", &opts.config_dir))?;
    let dropin = opts.config_dir.join("drover.conf");
    let mut text = format!(
        "# Written by `drover agent configure-sshd`: trust the Drover server's SSH user\n\
         # certificates (minutes long, one principal, from this node's loopback only).\n\
         TrustedUserCAKeys {}\n",
        opts.ca_file.display()
    );
    if let Some(user) = &opts.session_user {
        // The session user logs in with a Drover certificate only: a key a session writes
        // into its home would otherwise open a way in that goes around Drover.
        text.push_str(&format!(
            "# {user} logs in with a Drover certificate only, never with a key of its own.\n\
             Match User {user}\n    AuthorizedKeysFile none\n"
        ));
    }
    write_world_readable(&dropin, text.as_bytes())?;
    lines.push(format!("wrote {}", dropin.display()));
    if !includes(&opts.sshd_config, &opts.config_dir) {
        lines.push(format!(
            "warning: {} does not include {}/*.conf; add `Include {}/*.conf` at its top",
            opts.sshd_config.display(),
            opts.config_dir.display(),
            opts.config_dir.display()
        ));
    }
    if let Some(user) = &opts.session_user {
        let lock = tokio::sync::Mutex::new(());
        crate::os_user::ensure_default(user, &lock)
            .await
            .map_err(AgentError::Untrusted)?;
        lines.push(format!("session user {user} is present"));
    }
    if opts.reload {
        lines.push(reload(&opts.sshd_config).await?);
    }
    Ok(SshdReport { lines })
}

/// sshd reads these as root but they hold nothing secret: 0644, replaced atomically.
fn write_world_readable(path: &Path, data: &[u8]) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    write_atomic(path, data, true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(io("set the mode of", path))
}

/// Whether the main configuration has an `Include` that covers the directory.
fn includes(sshd_config: &Path, dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(sshd_config) else {
        return false;
    };
    let dir = dir.display().to_string();
    text.lines().any(|l| {
        let mut words = l.split_whitespace();
        words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("include"))
            && words.any(|w| w.starts_with(&dir))
    })
}

/// Checks the configuration with `sshd -t`, then asks the service manager to reload sshd.
async fn reload(sshd_config: &Path) -> Result<String, AgentError> {
    let run = |program: &str, args: Vec<String>| {
        let mut c = tokio::process::Command::new(program);
        c.args(args);
        c
    };
    let test = run(
        "sshd",
        vec!["-t".into(), "-f".into(), sshd_config.display().to_string()],
    )
    .output()
    .await
    .map_err(|e| AgentError::Untrusted(format!("running sshd -t: {e}")))?;
    if !test.status.success() {
        return Err(AgentError::Untrusted(format!(
            "sshd -t refused the configuration (nothing reloaded): {}",
            String::from_utf8_lossy(&test.stderr).trim()
        )));
    }
    for unit in ["ssh", "sshd"] {
        let out = run("systemctl", vec!["reload".into(), unit.into()])
            .output()
            .await;
        if out.is_ok_and(|o| o.status.success()) {
            return Ok(format!("reloaded {unit}.service"));
        }
    }
    Err(AgentError::Untrusted(
        "the configuration is written and valid, but neither ssh.service nor sshd.service \
         could be reloaded: reload sshd yourself"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_include_of_the_directory_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("sshd_config");
        std::fs::write(&cfg, "Port 22\n").unwrap();
        assert!(!includes(&cfg, Path::new("/etc/ssh/sshd_config.d")));
        std::fs::write(&cfg, "include /etc/ssh/sshd_config.d/*.conf\nPort 22\n").unwrap();
        assert!(includes(&cfg, Path::new("/etc/ssh/sshd_config.d")));
    }
}
