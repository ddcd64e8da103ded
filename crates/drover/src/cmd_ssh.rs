//! `drover ssh NODE [ssh args]`: the system's OpenSSH through `drover ssh-proxy`, logged in with
//! a certificate the server issues for a few minutes to a key made for this one call (so there
//! is no key to distribute, and none left behind); and `drover agent configure-sshd`, which
//! makes a node's sshd trust those certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Use your own keys and ssh configuration: no certificate from the server.
    #[arg(long)]
    pub no_certificate: bool,
    /// The node (its ID or unique name), optionally as USER@NODE.
    pub node: String,
    /// Arguments for ssh: options, then a command (`-p 2222`, `-L ...`, `uptime`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ConfigureSshdArgs {
    #[arg(long, env = "DROVER_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where to write the authority's public key.
    #[arg(long, default_value = "/etc/ssh/drover_user_ca.pub")]
    pub ca_file: PathBuf,
    /// The directory sshd includes configuration from.
    #[arg(long, default_value = "/etc/ssh/sshd_config.d")]
    pub config_dir: PathBuf,
    /// sshd's main configuration (checked with `sshd -t`, and for its Include).
    #[arg(long, default_value = "/etc/ssh/sshd_config")]
    pub sshd_config: PathBuf,
    /// Write the files only; do not check and reload sshd.
    #[arg(long)]
    pub no_reload: bool,
    /// The session user to create when missing, as the agent would (when root).
    #[arg(long, env = "DROVER_SESSION_USER", default_value = "drover-user")]
    pub session_user: String,
}

pub async fn configure_sshd(args: ConfigureSshdArgs) -> anyhow::Result<ExitCode> {
    if !drover_agent::valid_user_name(&args.session_user) {
        anyhow::bail!(
            "--session-user {:?} is not a valid user name",
            args.session_user
        );
    }
    let root = rustix::process::geteuid().is_root();
    let opts = drover_agent::SshdOptions {
        state_dir: args
            .state_dir
            .unwrap_or_else(crate::cmd_agent::default_state_dir),
        ca_file: args.ca_file,
        config_dir: args.config_dir,
        sshd_config: args.sshd_config,
        reload: !args.no_reload,
        session_user: root.then_some(args.session_user),
    };
    let report = drover_agent::configure_sshd(&opts).await?;
    for l in report.lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Quotes a word for the shell that runs a ProxyCommand.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub async fn ssh(args: SshArgs) -> anyhow::Result<ExitCode> {
    let (login, node) = match args.node.split_once('@') {
        Some((u, n)) => (Some(u.to_string()), n.to_string()),
        None => (None, args.node.clone()),
    };
    let exe = std::env::current_exe().context("finding this program's path")?;
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-o").arg(format!(
        "ProxyCommand={} ssh-proxy %h %p",
        shell_quote(&exe.display().to_string())
    ));
    // Held until ssh exits, then removed with the key in it.
    let mut _keys = None;
    let mut login = login;
    if !args.no_certificate {
        let client = crate::client_config::client()?;
        let key = drover_pki::generate_ssh_key("drover ssh")?;
        let cert = client
            .ssh_certificate(&drover_api::SshCertificateRequest {
                node: node.clone(),
                public_key: key.public_openssh.clone(),
            })
            .await
            .with_context(|| format!("getting an SSH certificate for {node}"))?;
        let dir = tempfile::Builder::new()
            .prefix("drover-ssh-")
            .tempdir()
            .context("creating a directory for the session key")?;
        let key_path = dir.path().join("id_ed25519");
        write_0600(&key_path, key.private_openssh.as_bytes())?;
        let cert_path = dir.path().join("id_ed25519-cert.pub");
        write_0600(&cert_path, format!("{}\n", cert.certificate).as_bytes())?;
        cmd.arg("-o")
            .arg(format!("IdentityFile={}", key_path.display()))
            .arg("-o")
            .arg(format!("CertificateFile={}", cert_path.display()))
            .arg("-o")
            .arg("IdentitiesOnly=yes");
        login.get_or_insert(cert.principal);
        _keys = Some(dir);
    }
    let user_names_login = args.args.iter().any(|a| a == "-l");
    if let (Some(user), false) = (&login, user_names_login) {
        cmd.arg("-l").arg(user);
    }
    // Options first, then the node, then the remote command: ssh stops reading options at the
    // first word that is not one, so split the user's arguments there.
    let split = first_non_option(&args.args);
    let (opts, rest) = args.args.split_at(split);
    cmd.args(opts).arg(&node).args(rest);
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .context("waiting for ssh")?
        .context("running ssh (is OpenSSH's client installed?)")?;
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(255),
    ))
}

/// ssh's options that take a value (from ssh(1)).
const WITH_VALUE: &str = "BbcDEeFIiJLlmOoPpQRSWw";

/// Index of the first argument that is not an option (or an option's value).
fn first_non_option(args: &[String]) -> usize {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if a == "--" {
            return i + 1;
        }
        let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) else {
            return i;
        };
        // In a cluster like -vp 22 or -p22, the first flag taking a value takes the rest.
        let takes_next = flags
            .char_indices()
            .find(|(_, c)| WITH_VALUE.contains(*c))
            .is_some_and(|(at, _)| at + 1 == flags.len());
        i += if takes_next { 2 } else { 1 };
    }
    i
}

fn write_0600(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_remote_command_starts_after_the_options() {
        assert_eq!(first_non_option(&v(&["-p", "2222", "uptime"])), 2);
        assert_eq!(first_non_option(&v(&["-vp2222", "id", "-un"])), 1);
        assert_eq!(first_non_option(&v(&["-v", "-o", "A=b", "ls", "-l"])), 3);
        assert_eq!(first_non_option(&v(&["-t"])), 1);
        assert_eq!(first_non_option(&v(&["--", "-x"])), 1);
        assert_eq!(first_non_option(&v(&[])), 0);
    }

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(
            shell_quote("/opt/my drover/it's"),
            r"'/opt/my drover/it'\''s'"
        );
    }
}
