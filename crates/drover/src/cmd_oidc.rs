//! Federated login: the server's `--oidc-*` settings, and `drover login --oidc`, which opens a
//! browser on the identity provider and takes the answer on a loopback listener.

use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Args;
use drover_server::OidcConfig;
use rand::distributions::{Alphanumeric, DistString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::UsageError;

/// The identity provider of `drover server`.
#[derive(Debug, Default, Args)]
pub struct OidcArgs {
    /// The OpenID provider's issuer URL: users log in through it (`drover login --oidc`).
    #[arg(long, env = "DROVER_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// This server's client ID at the provider.
    #[arg(long, env = "DROVER_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// File holding the client secret (none: a public client, PKCE alone).
    #[arg(long, env = "DROVER_OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<std::path::PathBuf>,
    /// The ID token claim that names the user [default: preferred_username].
    #[arg(long)]
    pub oidc_username_claim: Option<String>,
    /// The ID token claim listing the user's groups [default: groups].
    #[arg(long)]
    pub oidc_groups_claim: Option<String>,
    /// A group of the provider's groups claim that makes its members members of a Drover
    /// group: GROUP or PROVIDER_GROUP=GROUP (repeatable). Groups not named here are ignored.
    #[arg(long = "oidc-group", value_name = "[PROVIDER_GROUP=]GROUP")]
    pub oidc_groups: Vec<String>,
    /// An ID token claim that becomes a user attribute: CLAIM or CLAIM=ATTRIBUTE (repeatable).
    #[arg(long = "oidc-attribute", value_name = "CLAIM[=ATTRIBUTE]")]
    pub oidc_attributes: Vec<String>,
    /// A scope to ask for beyond openid (repeatable) [default: profile email groups].
    #[arg(long = "oidc-scope")]
    pub oidc_scopes: Vec<String>,
    /// This server's address as browsers reach it, for the console's login
    /// (`https://drover.example.com:8443`); register URL/api/v1/auth/oidc/callback at the
    /// provider [default: the browser's Host].
    #[arg(long)]
    pub oidc_console_url: Option<String>,
    /// Offer the device-code login (`drover login --oidc --device`) for machines without a
    /// browser. Anyone can begin one and send its link to a user: enable it where users know
    /// to approve only the codes they asked for.
    #[arg(long)]
    pub oidc_device: bool,
}

/// The same settings in the server's TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<std::path::PathBuf>,
    username_claim: Option<String>,
    groups_claim: Option<String>,
    #[serde(default)]
    attributes: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    console_url: Option<String>,
    #[serde(default)]
    device: bool,
}

pub fn config(args: OidcArgs, file: Option<OidcFile>) -> Result<Option<OidcConfig>, UsageError> {
    let file = file.unwrap_or_default();
    let Some(issuer) = args.oidc_issuer.or(file.issuer) else {
        return Ok(None);
    };
    let loopback = issuer.starts_with("http://127.0.0.1:") || issuer.starts_with("http://[::1]:");
    if !issuer.starts_with("https://") && !loopback {
        return Err(UsageError(format!(
            "invalid OpenID issuer {issuer:?}: an https:// URL"
        )));
    }
    let client_id = args
        .oidc_client_id
        .or(file.client_id)
        .ok_or_else(|| UsageError("--oidc-issuer needs --oidc-client-id".into()))?;
    let client_secret = match args.oidc_client_secret_file.or(file.client_secret_file) {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let pick = |a: Vec<String>, f: Vec<String>| if a.is_empty() { f } else { a };
    let pairs = |v: Vec<String>| -> Vec<(String, String)> {
        v.into_iter()
            .map(|a| match a.split_once('=') {
                Some((c, attr)) => (c.to_string(), attr.to_string()),
                None => (a.clone(), a),
            })
            .collect()
    };
    let attribute_claims = pairs(pick(args.oidc_attributes, file.attributes));
    let group_map = pairs(pick(args.oidc_groups, file.groups));
    let console_url = args.oidc_console_url.or(file.console_url);
    if let Some(url) = &console_url {
        let host = url.strip_prefix("https://").unwrap_or_default();
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return Err(UsageError(format!(
                "invalid --oidc-console-url {url:?}: https://HOST[:PORT], nothing after it"
            )));
        }
    }
    let mut scopes = pick(args.oidc_scopes, file.scopes);
    if scopes.is_empty() {
        scopes = ["profile", "email", "groups"].map(String::from).to_vec();
    }
    Ok(Some(OidcConfig {
        issuer,
        client_id,
        client_secret,
        username_claim: args
            .oidc_username_claim
            .or(file.username_claim)
            .unwrap_or_else(|| "preferred_username".into()),
        groups_claim: Some(
            args.oidc_groups_claim
                .or(file.groups_claim)
                .unwrap_or_else(|| "groups".into()),
        ),
        attribute_claims,
        group_map,
        scopes,
        console_url,
        device: args.oidc_device || file.device,
    }))
}

fn random() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 64)
}

/// Opens `url` in the user's browser: `$BROWSER` if set, else the desktop's opener.
fn open_browser(url: &str) -> bool {
    let opener = std::env::var("BROWSER").ok().filter(|b| !b.is_empty());
    let program = opener.unwrap_or_else(|| {
        if cfg!(target_os = "macos") {
            "open".into()
        } else {
            "xdg-open".into()
        }
    });
    std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// Reads the one request the provider's redirect makes, and answers it.
async fn callback(listener: tokio::net::TcpListener) -> anyhow::Result<Vec<(String, String)>> {
    let (conn, _) = listener.accept().await?;
    let mut conn = tokio::io::BufReader::new(conn);
    // The request line is all that matters; a browser's is well under 8 KiB.
    let mut line = String::new();
    (&mut conn).take(8192).read_line(&mut line).await?;
    let head = line;
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .context("the browser sent no request line")?;
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let page =
        "<!doctype html><title>Drover</title><p>Drover has your login. You may close this tab.";
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    let conn = conn.get_mut();
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await?;
    Ok(pairs)
}

/// Logs in through the server's identity provider; returns a Drover token.
pub async fn login(server: &str, fingerprint: &str, device: bool) -> anyhow::Result<String> {
    let client = drover_client::Client::new(server, fingerprint, None)?;
    if device {
        return device_login(&client).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let redirect_uri = format!("http://{}/callback", listener.local_addr()?);
    let (state, nonce, verifier) = (random(), random(), random());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    let start = client
        .oidc_start(&drover_api::OidcStartRequest {
            redirect_uri: redirect_uri.clone(),
            state: state.clone(),
            nonce: nonce.clone(),
            code_challenge: challenge,
        })
        .await
        .context("the server did not start a federated login")?;
    eprintln!(
        "Log in with your identity provider in the browser. If none opened, open:\n  {}",
        start.authorization_url
    );
    open_browser(&start.authorization_url);
    let pairs = tokio::time::timeout(Duration::from_secs(300), callback(listener))
        .await
        .context("no answer from the browser within 5 minutes")??;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Some(e) = get("error") {
        bail!(
            "the identity provider refused: {e} {}",
            get("error_description").unwrap_or_default()
        );
    }
    // The state proves the answer is to this login, not one an attacker began.
    if get("state").as_deref() != Some(state.as_str()) {
        bail!("the answer's state does not match this login's; nothing was saved");
    }
    let code = get("code").context("the identity provider sent no code")?;
    let done = client
        .oidc_finish(&drover_api::OidcFinishRequest {
            code,
            code_verifier: verifier,
            nonce,
            redirect_uri,
        })
        .await
        .context("the server refused the federated login")?;
    done.token
        .context("the server sent no token for a CLI login")
}

/// The device login: the provider shows the user a page where they enter a code, on any
/// device; the server waits for them and answers with the token.
async fn device_login(client: &drover_client::Client) -> anyhow::Result<String> {
    let d = client
        .oidc_device_start()
        .await
        .context("the server did not start a device login")?;
    eprintln!(
        "To log in, open {} on any device and enter the code {}",
        d.verification_uri, d.user_code
    );
    if let Some(direct) = &d.verification_uri_complete {
        eprintln!("  (or open {direct})");
    }
    eprintln!("Waiting for you there (at most {} s)...", d.expires_in_secs);
    let done = client
        .oidc_device_finish(&d)
        .await
        .context("the device login did not complete")?;
    done.token
        .context("the server sent no token for a CLI login")
}
