//! `drover server`: build the configuration (flags, then environment, then the TOML file, then
//! defaults), open the data directory and serve until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use drover_server::{Server, ServerConfig};
use serde::Deserialize;

use crate::cli::ServerArgs;
use crate::UsageError;

/// The optional TOML file; every key mirrors a flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    public_names: Vec<String>,
    agent_cert_lifetime: Option<String>,
    heartbeat: Option<String>,
    metrics_public: Option<bool>,
    handshake_timeout: Option<String>,
    max_unauthenticated: Option<usize>,
    max_unauthenticated_per_address: Option<usize>,
    history_max_age: Option<String>,
    audit_max_age: Option<String>,
    history_max_invocations: Option<u64>,
    output_max_age: Option<String>,
    prune_interval: Option<String>,
    #[serde(default)]
    forward_deny: Vec<String>,
    /// `[oidc]`: the identity provider.
    oidc: Option<crate::cmd_oidc::OidcFile>,
}

pub fn parse_duration(what: &str, s: &str) -> Result<Duration, UsageError> {
    humantime::parse_duration(s).map_err(|e| {
        UsageError(format!(
            "invalid {what} {s:?}: {e} (examples: 30s, 10m, 24h, 30d)"
        ))
    })
}

pub fn parse_listen(s: &str) -> Result<SocketAddr, UsageError> {
    s.parse().map_err(|_| {
        UsageError(format!(
            "invalid listen address {s:?}: expected HOST:PORT with an IP address, e.g. 0.0.0.0:8443"
        ))
    })
}

pub fn build_config(mut args: ServerArgs) -> Result<ServerConfig, UsageError> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                UsageError(format!("cannot read config file {}: {e}", path.display()))
            })?;
            toml::from_str(&text)
                .map_err(|e| UsageError(format!("invalid config file {}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("drover-data"));
    let listen = parse_listen(
        args.listen
            .as_deref()
            .or(file.listen.as_deref())
            .unwrap_or(drover_server::DEFAULT_LISTEN),
    )?;
    let mut config = ServerConfig::new(data_dir, listen);
    config.tls_cert = args.tls_cert.or(file.tls_cert);
    config.tls_key = args.tls_key.or(file.tls_key);
    if config.tls_cert.is_some() != config.tls_key.is_some() {
        return Err(UsageError(
            "tls_cert and tls_key must be given together".into(),
        ));
    }
    config.public_names = if args.public_names.is_empty() {
        file.public_names
    } else {
        args.public_names
    };
    if let Some(s) = args.agent_cert_lifetime.or(file.agent_cert_lifetime) {
        let d = parse_duration("agent certificate lifetime", &s)?;
        if d < Duration::from_secs(5) || d > Duration::from_secs(397 * 86400) {
            return Err(UsageError(format!(
                "agent certificate lifetime {s:?} is out of range: from 5s to 397d"
            )));
        }
        config.agent_cert_lifetime = d;
    }
    if let Some(s) = args.heartbeat.or(file.heartbeat) {
        let d = parse_duration("heartbeat", &s)?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
            return Err(UsageError(format!(
                "heartbeat {s:?} is out of range: from 1s to 10m"
            )));
        }
        config.heartbeat = d;
    }
    config.metrics_public = args.metrics_public.or(file.metrics_public).unwrap_or(false);
    config.oidc = crate::cmd_oidc::config(std::mem::take(&mut args.oidc), file.oidc)?;
    config.forward_deny = if args.forward_deny.is_empty() {
        file.forward_deny
    } else {
        args.forward_deny.clone()
    };
    if let Some(s) = args.handshake_timeout.or(file.handshake_timeout) {
        let d = parse_duration("handshake timeout", &s)?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(300) {
            return Err(UsageError(format!(
                "handshake timeout {s:?} is out of range: from 1s to 5m"
            )));
        }
        config.limits.handshake_timeout = d;
    }
    let count = |what: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(UsageError(format!("{what} must be at least 1"))),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    config.limits.max_unauthenticated = count(
        "max_unauthenticated",
        args.max_unauthenticated.or(file.max_unauthenticated),
        config.limits.max_unauthenticated,
    )?;
    config.limits.max_unauthenticated_per_address = count(
        "max_unauthenticated_per_address",
        args.max_unauthenticated_per_address
            .or(file.max_unauthenticated_per_address),
        config.limits.max_unauthenticated_per_address,
    )?;
    let age = |what: &str, v: Option<String>, default: Duration, min: Duration| match v {
        None => Ok(default),
        Some(s) => {
            let d = parse_duration(what, &s)?;
            if d < min || d > Duration::from_secs(100 * 365 * 86400) {
                return Err(UsageError(format!(
                    "{what} {s:?} is out of range: from {} to 100y",
                    humantime::format_duration(min)
                )));
            }
            Ok(d)
        }
    };
    let r = &mut config.retention;
    r.max_age = age(
        "history_max_age",
        args.history_max_age.or(file.history_max_age),
        r.max_age,
        Duration::from_secs(1),
    )?;
    r.output_max_age = age(
        "output_max_age",
        args.output_max_age.or(file.output_max_age),
        r.output_max_age,
        Duration::from_secs(1),
    )?;
    r.interval = age(
        "prune_interval",
        args.prune_interval.or(file.prune_interval),
        r.interval,
        Duration::from_secs(1),
    )?;
    if r.interval > Duration::from_secs(86400) {
        return Err(UsageError(format!(
            "prune_interval {} is out of range: from 1s to 1d",
            humantime::format_duration(r.interval)
        )));
    }
    r.audit_max_age = match args.audit_max_age.or(file.audit_max_age) {
        Some(v) if v == "forever" => None,
        v => Some(age(
            "audit_max_age",
            v,
            r.audit_max_age.unwrap_or(Duration::from_secs(365 * 86400)),
            Duration::from_secs(86400),
        )?),
    };
    r.max_invocations = match args
        .history_max_invocations
        .or(file.history_max_invocations)
    {
        // Below the largest command, one running command would keep the count over the limit
        // and every finished command would be deleted as soon as it finished.
        Some(n) if n < 10_000 => {
            return Err(UsageError(format!(
                "history_max_invocations {n} is out of range: at least 10000"
            )))
        }
        Some(n) => n,
        None => r.max_invocations,
    };
    config.hostname = rustix_hostname();
    Ok(config)
}

fn rustix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let config = build_config(args)?;
    raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("could not listen on {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let server = Server::open(config)
        .await
        .context("could not start the server")?;
    println!("drover server listening on https://{addr}");
    println!("  CA fingerprint: {}", server.ca_fingerprint());
    println!(
        "  admin token:    {}",
        server.data_dir().admin_token_path().display()
    );
    server.serve(listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft open-files limit to the hard limit: every agent holds one socket.
pub fn raise_fd_limit() {
    raise_fd_limit_impl();
}

#[cfg(unix)]
fn raise_fd_limit_impl() {
    use rustix_rlimit::*;
    raise();
}

#[cfg(unix)]
mod rustix_rlimit {
    pub fn raise() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(max) = limit.maximum {
            let new = rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            };
            let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, new);
        }
    }
}
