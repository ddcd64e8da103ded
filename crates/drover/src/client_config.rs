//! The CLI's own configuration: server URL, pinned CA fingerprint and API token, kept in the
//! user's config directory (`$XDG_CONFIG_HOME/drover/config.toml`, or `$DROVER_CONFIG`) with
//! mode 0600, like other CLIs keep their tokens.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientConfig {
    pub server: String,
    pub ca_fingerprint: String,
    pub token: String,
}

/// The file: named contexts (one per server, like kubectl's) and the one in use. A file of
/// the earlier single-server form reads as one context named `default`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current: String,
    #[serde(default)]
    pub contexts: BTreeMap<String, ClientConfig>,
    #[serde(default, skip_serializing)]
    server: Option<String>,
    #[serde(default, skip_serializing)]
    ca_fingerprint: Option<String>,
    #[serde(default, skip_serializing)]
    token: Option<String>,
}

/// The context every verb uses in this process: `--context`, else `DROVER_CONTEXT`, else the
/// file's current one.
static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn choose_context(name: Option<String>) {
    if let Some(n) = name.filter(|n| !n.is_empty()) {
        let _ = CHOSEN.set(n);
    }
}

/// A context's name: what kubectl and shells accept without quoting.
pub fn check_context_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("invalid context name {name:?}: 1 to 64 letters, digits and -_.");
    }
    Ok(())
}

pub fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("DROVER_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let dir = dirs::config_dir().context("no config directory for this user: set DROVER_CONFIG")?;
    Ok(dir.join("drover").join("config.toml"))
}

/// The whole file; an empty one when there is none yet.
pub fn load_file() -> anyhow::Result<ConfigFile> {
    let path = config_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut file: ConfigFile = toml::from_str(&text)
        .with_context(|| format!("invalid client configuration {}", path.display()))?;
    if let Some(server) = file.server.take() {
        file.contexts
            .entry("default".into())
            .or_insert(ClientConfig {
                server,
                ca_fingerprint: file.ca_fingerprint.take().unwrap_or_default(),
                token: file.token.take().unwrap_or_default(),
            });
        if file.current.is_empty() {
            file.current = "default".into();
        }
    }
    Ok(file)
}

/// The name of the context in use (which may not exist yet: a login creates it).
pub fn context_name(file: &ConfigFile) -> String {
    CHOSEN
        .get()
        .cloned()
        .or_else(|| {
            std::env::var("DROVER_CONTEXT")
                .ok()
                .filter(|c| !c.is_empty())
        })
        .or_else(|| (!file.current.is_empty()).then(|| file.current.clone()))
        .unwrap_or_else(|| "default".into())
}

/// A named context's settings, with `DROVER_TOKEN` overriding its token.
pub fn load_context(name: &str) -> anyhow::Result<ClientConfig> {
    let path = config_path()?;
    let file = load_file()?;
    let mut cfg = file.contexts.get(name).cloned().with_context(|| {
        if file.contexts.is_empty() {
            format!(
                "no client configuration at {}: run 'drover login' (or 'drover up')",
                path.display()
            )
        } else {
            format!(
                "no context {name:?} in {} (there are: {}); add it with 'drover context add'",
                path.display(),
                file.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        }
    })?;
    if let Ok(token) = std::env::var("DROVER_TOKEN") {
        cfg.token = token;
    }
    Ok(cfg)
}

pub fn load() -> anyhow::Result<ClientConfig> {
    let file = load_file()?;
    load_context(&context_name(&file))
}

pub fn save_file(file: &ConfigFile) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = config_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(file).context("encoding the client configuration")?;
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

/// Saves `cfg` as the context in use.
pub fn save(cfg: &ClientConfig) -> anyhow::Result<PathBuf> {
    let name = context_name(&load_file()?);
    save_as(&name, cfg)
}

/// Saves `cfg` as the context `name`; the first context saved becomes the current one.
pub fn save_as(name: &str, cfg: &ClientConfig) -> anyhow::Result<PathBuf> {
    check_context_name(name)?;
    let mut file = load_file()?;
    file.contexts.insert(name.to_string(), cfg.clone());
    if file.current.is_empty() || !file.contexts.contains_key(&file.current) {
        file.current = name.to_string();
    }
    save_file(&file)
}

/// A client for a named context.
pub fn client_for(name: &str) -> anyhow::Result<drover_client::Client> {
    let cfg = load_context(name)?;
    Ok(drover_client::Client::new(
        &cfg.server,
        &cfg.ca_fingerprint,
        Some(cfg.token),
    )?)
}

/// A client from the saved configuration.
pub fn client() -> anyhow::Result<drover_client::Client> {
    client_for(&context_name(&load_file()?))
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
    let name = context_name(&load_file()?);
    login_as(&name, args).await
}

/// Logs in and saves the login as the context `name`.
pub async fn login_as(name: &str, args: LoginArgs) -> anyhow::Result<ExitCode> {
    check_context_name(name)?;
    let saved = load_context(name).ok();
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
    let path = save_as(
        name,
        &ClientConfig {
            server: client.base_url().to_string(),
            ca_fingerprint: fingerprint,
            token,
        },
    )?;
    println!(
        "logged in to {} as {} (context {name}); configuration saved in {}",
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
