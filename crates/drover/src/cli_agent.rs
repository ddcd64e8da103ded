//! `drover agent`'s arguments: register, run, install-service, configure-sshd.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register this node with an activation; generates its key and gets its certificate.
    Register(RegisterArgs),
    /// Connect to the server and stay connected.
    Run(AgentRunArgs),
    /// Write a systemd unit that runs the agent.
    InstallService(InstallServiceArgs),
    /// Make this node's sshd trust the server's SSH user certificates (for `drover ssh`).
    ConfigureSshd(crate::cmd_ssh::ConfigureSshdArgs),
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Server URL, e.g. https://drover.example.com:8443
    #[arg(long, env = "DROVER_SERVER")]
    pub server: String,
    /// Activation as ID:CODE.
    #[arg(long, env = "DROVER_ACTIVATION")]
    pub activation: String,
    /// SHA-256 fingerprint of the server's CA; without it, it is shown for confirmation.
    #[arg(long, env = "DROVER_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,
    /// Node name (default: the activation's default name, else the hostname).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Tag as KEY=VALUE (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long, env = "DROVER_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Replace an existing registration in the state directory.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct AgentRunArgs {
    #[arg(long, env = "DROVER_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Take settings (log_level, heartbeat_secs, proxy) from this parameter, a JSON object
    /// under /drover/agents/ in Parameter Store, so that a fleet is configured centrally.
    #[arg(long, env = "DROVER_AGENT_SETTINGS_PARAMETER")]
    pub settings_parameter: Option<String>,
    /// What a script's exit code 194 does: reboot the machine, or only restart the agent (exit
    /// with code 194 for its supervisor to start it again; for containers and tests).
    #[arg(long, value_enum, default_value_t = RebootModeArg::Machine)]
    pub reboot_mode: RebootModeArg,
    /// Largest file a downloadContent step may fetch, in bytes [default: 4 GiB].
    #[arg(long, env = "DROVER_MAX_DOWNLOAD_BYTES")]
    pub max_download_bytes: Option<u64>,
    /// The OS user sessions run as when the server names none and the agent runs as root;
    /// created on first use, with sudo rights.
    #[arg(long, env = "DROVER_SESSION_USER", default_value = "drover-user")]
    pub session_user: String,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RebootModeArg {
    Machine,
    RestartAgent,
}

#[derive(Debug, Args)]
pub struct InstallServiceArgs {
    #[arg(long, env = "DROVER_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where to write the unit.
    #[arg(long, default_value = "/etc/systemd/system/drover-agent.service")]
    pub unit_path: PathBuf,
}
