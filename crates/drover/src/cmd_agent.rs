//! `drover agent`: register, run, install-service.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use drover_agent::{AgentConfig, RegisterOptions};
use drover_tunnel::dial::{proxy_from_env, Endpoint};
use tokio_util::sync::CancellationToken;

use crate::cli::AgentCommand;
use crate::output::parse_tags;
use crate::UsageError;

/// `/var/lib/drover-agent` for root, else the user's data directory.
pub fn default_state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/var/lib/drover-agent")
    } else {
        dirs::data_local_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("drover-agent")
    }
}

/// The HTTPS proxy for `server` from the environment, if any.
pub fn proxy_for(server: &str) -> anyhow::Result<Option<Endpoint>> {
    let target = Endpoint::parse(server, 443)?;
    Ok(proxy_from_env(&target, |k| std::env::var(k).ok())?)
}

fn parse_activation(s: &str) -> Result<(String, String), UsageError> {
    s.split_once(':')
        .filter(|(id, code)| !id.is_empty() && !code.is_empty())
        .map(|(id, code)| (id.to_string(), code.to_string()))
        .ok_or_else(|| {
            UsageError(format!(
                "invalid --activation {:?}: expected ID:CODE",
                redact(s)
            ))
        })
}

/// Shows only the ID part of an ID:CODE, never the code.
fn redact(s: &str) -> String {
    match s.split_once(':') {
        Some((id, _)) => format!("{id}:***"),
        None => "***".into(),
    }
}

pub async fn run(cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::Register(args) => {
            let (activation_id, activation_code) = parse_activation(&args.activation)?;
            let tags = parse_tags(&args.tags)?;
            let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
            if state_dir.join("agent.json").exists() && !args.force {
                return Err(UsageError(format!(
                    "this node is already registered (state in {}); pass --force to register it again",
                    state_dir.display()
                ))
                .into());
            }
            let fingerprint = crate::client_config::choose_fingerprint(
                &args.server,
                args.ca_fingerprint.as_deref(),
            )
            .await?;
            let identity = drover_agent::register(
                RegisterOptions {
                    server: args.server.clone(),
                    activation_id,
                    activation_code,
                    ca_fingerprint: Some(fingerprint),
                    name: args.name,
                    tags,
                    state_dir: state_dir.clone(),
                    proxy: proxy_for(&args.server)?,
                },
                drover_agent::inventory::collect(),
            )
            .await
            .context("registration failed")?;
            println!(
                "registered as {}; state in {}. Start the agent with: drover agent run --state-dir {}",
                identity.state.node_id,
                state_dir.display(),
                state_dir.display()
            );
        }
        AgentCommand::Run(args) => {
            let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
            let identity = drover_agent::Identity::load(&state_dir)?;
            let mut config = AgentConfig::new(state_dir);
            config.proxy = proxy_for(&identity.state.server)?;
            config.reboot = match args.reboot_mode {
                crate::cli::RebootModeArg::Machine => drover_agent::RebootMode::Machine,
                crate::cli::RebootModeArg::RestartAgent => drover_agent::RebootMode::RestartAgent,
            };
            if !drover_agent::valid_user_name(&args.session_user) {
                anyhow::bail!(
                    "--session-user {:?} is not a valid user name (letters, digits, '_', '.', '-'; at most 32)",
                    args.session_user
                );
            }
            config.session_user = args.session_user.clone();
            config.settings_parameter = args.settings_parameter.clone();
            config.settings_hook = drover_agent::SettingsHook(Some(std::sync::Arc::new(
                |s: &drover_proto::AgentSettings| {
                    if let (Some(level), Some(reload)) = (&s.log_level, crate::LOG_RELOAD.get()) {
                        match reload(level) {
                            // Shows only when the new filter lets debug lines through.
                            Ok(()) => tracing::debug!(filter = %level, "log filter changed"),
                            Err(e) => tracing::warn!(error = %e, "could not change the log level"),
                        }
                    }
                },
            )));
            if let Some(max) = args.max_download_bytes {
                config.max_download_bytes = max;
            }
            if let Some(p) = &config.proxy {
                tracing::info!(proxy = %format!("{}:{}", p.host, p.port), "connecting through an HTTPS proxy");
            }
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            let signals = tokio::spawn(async move {
                crate::cmd_server::shutdown_signal().await;
                stop.cancel();
            });
            let (events_tx, mut events) = tokio::sync::mpsc::channel(64);
            let result = drover_agent::run(config, shutdown, Some(events_tx)).await;
            signals.abort();
            result?;
            while let Ok(e) = events.try_recv() {
                if e == drover_agent::AgentEvent::RebootRequested {
                    // The supervisor (systemd, a test) starts the agent again; it resumes.
                    return Ok(ExitCode::from(drover_agent::REBOOT_EXIT_CODE as u8));
                }
            }
        }
        AgentCommand::InstallService(args) => {
            let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
            let exe = std::env::current_exe().context("finding this executable")?;
            let unit = drover_agent::service::systemd_unit(&exe, &state_dir);
            std::fs::write(&args.unit_path, unit)
                .with_context(|| format!("writing {}", args.unit_path.display()))?;
            println!("wrote {}", args.unit_path.display());
            println!(
                "enable it with: systemctl daemon-reload && systemctl enable --now drover-agent"
            );
        }
        AgentCommand::ConfigureSshd(args) => return crate::cmd_ssh::configure_sshd(args).await,
    }
    Ok(ExitCode::SUCCESS)
}
