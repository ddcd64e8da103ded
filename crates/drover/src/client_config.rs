//! The CLI's own configuration: server URL, pinned CA fingerprint and API token, kept in the
//! user's config directory (`$XDG_CONFIG_HOME/drover/config.toml`, or `$DROVER_CONFIG`) with
//! mode 0600, like other CLIs keep their tokens.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientConfig {
    pub server: String,
    pub ca_fingerprint: String,
    pub token: String,
}

pub fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("DROVER_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let dir = dirs::config_dir().context("no config directory for this user: set DROVER_CONFIG")?;
    Ok(dir.join("drover").join("config.toml"))
}

pub fn load() -> anyhow::Result<ClientConfig> {
    let path = config_path()?;
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no client configuration at {}: run 'drover login' (or 'drover up')",
            path.display()
        )
    })?;
    let mut cfg: ClientConfig = toml::from_str(&text)
        .with_context(|| format!("invalid client configuration {}", path.display()))?;
    if let Ok(token) = std::env::var("DROVER_TOKEN") {
        cfg.token = token;
    }
    Ok(cfg)
}

pub fn save(cfg: &ClientConfig) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(cfg).context("encoding the client configuration")?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A client from the saved configuration.
pub fn client() -> anyhow::Result<drover_client::Client> {
    let cfg = load()?;
    Ok(drover_client::Client::new(
        &cfg.server,
        &cfg.ca_fingerprint,
        Some(cfg.token),
    )?)
}

/// Decides which fingerprint to pin: the one given, or (interactively) the root-most
/// certificate the server presents, after the operator confirms it.
pub async fn choose_fingerprint(server: &str, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(f) = given {
        return Ok(drover_pki::normalize_fingerprint(f)?);
    }
    let chain = drover_agent::fetch_chain_fingerprints(server, None).await?;
    let Some(root) = chain.last() else {
        bail!("the server at {server} presented no certificate");
    };
    if !std::io::stdin().is_terminal() {
        bail!(
            "no --ca-fingerprint given and no terminal to confirm one; the server at {server} presents \
             CA fingerprint {root}: check it on the server ('drover server' prints it) and pass --ca-fingerprint"
        );
    }
    eprintln!("The server at {server} presents a certificate authority with SHA-256 fingerprint:");
    eprintln!("  {root}");
    eprint!("Compare it with the one 'drover server' printed. Trust it? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(root.clone())
    } else {
        bail!("not trusted; nothing was saved")
    }
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The server (default: the one saved by the last login).
    #[arg(long)]
    pub server: Option<String>,
    /// File holding an API token (the server writes admin.token in its data directory).
    #[arg(long, conflicts_with = "user")]
    pub token_file: Option<PathBuf>,
    /// Log in as this local user with a password (asked for, or --password-stdin).
    #[arg(long)]
    pub user: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long, requires = "user")]
    pub password_stdin: bool,
    /// Log in through the server's identity provider, in a browser.
    #[arg(long, conflicts_with_all = ["user", "token_file"])]
    pub oidc: bool,
    /// With --oidc, where no browser is at hand: shows a URL and a code to enter on any
    /// device, and waits for the login there.
    #[arg(long, requires = "oidc")]
    pub device: bool,
    /// SHA-256 fingerprint of the server's CA; without it, it is shown for confirmation.
    #[arg(long)]
    pub ca_fingerprint: Option<String>,
}

pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let saved = load().ok();
    let server = match (&args.server, &saved) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) if !c.server.is_empty() => c.server.clone(),
        _ => bail!("give --server https://HOST:PORT (no earlier login is saved)"),
    };
    let fingerprint = match (&args.ca_fingerprint, &saved) {
        (Some(f), _) => choose_fingerprint(&server, Some(f)).await?,
        (None, Some(c)) if c.server == server && !c.ca_fingerprint.is_empty() => {
            c.ca_fingerprint.clone()
        }
        _ => choose_fingerprint(&server, None).await?,
    };
    let token = if let Some(user) = &args.user {
        let password = if args.password_stdin {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        } else {
            rpassword::prompt_password(format!("Password for {user}: "))?
        };
        let anonymous = drover_client::Client::new(&server, &fingerprint, None)?;
        let answer = anonymous
            .login(&drover_api::LoginRequest {
                user: user.clone(),
                password,
                console: false,
            })
            .await
            .context("login refused")?;
        answer
            .token
            .context("the server sent no token for a CLI login")?
    } else if args.oidc {
        crate::cmd_oidc::login(&server, &fingerprint, args.device).await?
    } else if let Some(file) = &args.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {}", file.display()))?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("the token file {} is empty", file.display());
        }
        token
    } else {
        bail!("give --token-file FILE, --user NAME or --oidc");
    };
    let client = drover_client::Client::new(&server, &fingerprint, Some(token.clone()))?;
    let me = client
        .whoami()
        .await
        .context("the server refused the token")?;
    let path = save(&ClientConfig {
        server: client.base_url().to_string(),
        ca_fingerprint: fingerprint,
        token,
    })?;
    println!(
        "logged in to {} as {}; configuration saved in {}",
        client.base_url(),
        me.user.name,
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Ends the saved login (the server revokes a login's token; an API token stays valid, for
/// `drover tokens revoke`) and forgets the token.
pub async fn logout() -> anyhow::Result<ExitCode> {
    let mut cfg = load()?;
    client()?
        .logout()
        .await
        .context("the server refused the logout")?;
    cfg.token.clear();
    save(&cfg)?;
    println!("logged out");
    Ok(ExitCode::SUCCESS)
}
