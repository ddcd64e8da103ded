//! The command line: every subcommand and flag, and the dispatch to its implementation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    about = "Remote and session management of a fleet of servers"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every verb takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More logging (-v debug, -vv trace). DROVER_LOG takes a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text (coloured only on a terminal) or as one JSON object each, for log
    /// shippers.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "DROVER_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// The server to talk to, by context name (see `drover context`); default: the current
    /// context, or DROVER_CONTEXT.
    #[arg(long, global = true, env = "DROVER_CONTEXT")]
    pub context: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane.
    Server(Box<ServerArgs>),
    /// Run a server and a local agent in the foreground, for trying Drover on one machine.
    Up(UpArgs),
    /// The node side: register, run, install as a service.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Activations: codes that let nodes register.
    #[command(subcommand)]
    Activation(ActivationCommand),
    /// The node registry.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Log in: save the server URL, its CA fingerprint and a token for the other verbs (from
    /// a token file, a user's password, or the identity provider).
    Login(crate::client_config::LoginArgs),
    /// End this login: its token is revoked.
    Logout,
    /// Who the saved token acts for.
    Whoami(OutputArgs),
    /// Users: create, list, show, set-attr, unset-attr, groups, passwd, disable, enable, delete.
    #[command(subcommand)]
    Users(crate::cmd_access::UsersCommand),
    /// Groups of users: create, list, delete.
    #[command(subcommand)]
    Groups(crate::cmd_access::GroupsCommand),
    /// API tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    Tokens(crate::cmd_access::TokensCommand),
    /// Cedar policies: list, get, put, delete, validate, check, test, schema.
    #[command(subcommand)]
    Policy(crate::cmd_policy::PolicyCommand),
    /// Temporary access: request, list, show, approve, deny, revoke.
    #[command(subcommand)]
    Access(crate::cmd_access_requests::AccessCommand),
    /// The tamper-evident audit log: list, verify, export.
    #[command(subcommand)]
    Audit(crate::cmd_audit::AuditCommand),
    /// Webhooks of the audit log's events: create (prints the signing secret), list, show
    /// (with the delivery log), test, delete.
    #[command(subcommand)]
    Webhooks(crate::cmd_alerts::WebhooksCommand),
    /// Parameter Store: put, get, get-by-path, history, label, delete.
    #[command(subcommand)]
    Params(crate::cmd_params::ParamsCommand),
    /// Named logins to several servers: add, use, list, remove.
    #[command(subcommand)]
    Context(crate::cmd_context::ContextCommand),
    /// State Manager associations: create, list, show, update, delete, run-now, history.
    #[command(subcommand, alias = "associations")]
    Assoc(crate::cmd_assoc::AssocCommand),
    /// Nodes' compliance with associations: summary, list.
    #[command(subcommand)]
    Compliance(crate::cmd_assoc::ComplianceCommand),
    /// Change windows, when sessions on tagged nodes are expected: create, list, delete.
    #[command(subcommand, alias = "change-windows")]
    Windows(crate::cmd_alerts::WindowsCommand),
    /// Run a command document on nodes (Run Command).
    Run(RunArgs),
    /// Command documents: create, update, get, list, delete, versions, set-default.
    #[command(subcommand)]
    Docs(DocsCommand),
    /// Commands sent: list, show, cancel.
    #[command(subcommand)]
    Commands(CommandsCommand),
    /// Invocations (one node's part of a command): list, output.
    #[command(subcommand)]
    Invocations(InvocationsCommand),
    /// An interactive shell on a node, or one command in a PTY (`-- CMD...`).
    Shell(ShellArgs),
    /// Session history: list, show, terminate, replay, download.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Forward local TCP connections through a node, to a port on it or on a host it reaches.
    Forward(crate::cmd_forward::ForwardArgs),
    /// OpenSSH's ProxyCommand: `ProxyCommand drover ssh-proxy %h %p` reaches a node's sshd
    /// through the tunnel (ssh, scp, sftp, rsync, Ansible), with no port open on the node.
    SshProxy(crate::cmd_forward::SshProxyArgs),
    /// OpenSSH to a node through the tunnel, logged in with a certificate of a few minutes
    /// from the server: `drover ssh NODE [ssh args]`.
    Ssh(crate::cmd_ssh::SshArgs),
    /// Print a shell completion script: `drover completions bash > /etc/bash_completion.d/drover`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (drover.1, drover-run.1, ...) into a directory.
    Man {
        #[arg(long, default_value = ".")]
        out_dir: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Document to run, NAME or NAME:VERSION (default RunShellScript with the command after --).
    #[arg(long = "doc")]
    pub document: Option<String>,
    /// Parameter as NAME=VALUE (repeat a name to build a list).
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// Parameter as NAME=FILE: the value is the file's text (a long script, for example:
    /// `--param-file commands=deploy.sh`).
    #[arg(long = "param-file")]
    pub param_files: Vec<String>,
    /// Targets: all, node IDs, node names, tag:KEY=VALUE (repeatable, or comma-separated).
    #[arg(long = "targets", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// File with one node ID or name a line.
    #[arg(long)]
    pub targets_file: Option<PathBuf>,
    /// Invocations running at once: a number or a percentage of the targets.
    #[arg(long, default_value = "50")]
    pub max_concurrency: String,
    /// Failed invocations tolerated before the rest are not started: a number or a percentage.
    #[arg(long, default_value = "0")]
    pub max_errors: String,
    /// How long an offline node may stay Pending.
    #[arg(long, default_value = "10m")]
    pub delivery_timeout: String,
    /// How long an invocation may run.
    #[arg(long, default_value = "1h")]
    pub execution_timeout: String,
    #[arg(long, default_value = "")]
    pub comment: String,
    /// Output kept per step and stream, in bytes (default 16 MiB; at least 1 KiB).
    #[arg(long)]
    pub output_limit: Option<u64>,
    /// Print output as it arrives.
    #[arg(long)]
    pub follow: bool,
    /// A table of every node instead of results folded by identical output.
    #[arg(long)]
    pub per_node: bool,
    /// Print the command ID and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// Send the same command through each of these contexts (servers), and show one combined
    /// result with the context of each node: `--contexts prod-eu,prod-us`.
    #[arg(long, value_delimiter = ',', conflicts_with = "follow")]
    pub contexts: Vec<String>,
    /// table (folded results), json, or text (every node's stdout, concatenated).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = RunFormat::Table)]
    pub format: RunFormat,
    /// The shell command to run (RunShellScript), after --.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The node: its ID or its unique name.
    pub node: String,
    /// Why: kept in the session history.
    #[arg(long)]
    pub reason: Option<String>,
    /// Run the command without a PTY: stdout and stderr stay apart.
    #[arg(long, requires = "command")]
    pub no_pty: bool,
    /// A session document to start (NAME or NAME:VERSION), for example an interactive command
    /// such as TailAppLog.
    #[arg(long = "doc", conflicts_with = "command")]
    pub document: Option<String>,
    /// Parameter of the document as NAME=VALUE (repeat a name to build a list).
    #[arg(long = "param", requires = "document")]
    pub params: Vec<String>,
    /// A command to run instead of the login shell, after --.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Sessions, newest first.
    List {
        /// Only this node's (its ID).
        #[arg(long)]
        node: Option<String>,
        /// Only sessions still open.
        #[arg(long)]
        active: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// One session, with its events.
    Show {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// End a live session; its user sees who ended it.
    Terminate { id: String },
    /// Play a session's recording in this terminal.
    Replay {
        id: String,
        /// Playback speed (2 is twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause between events, in seconds.
        #[arg(long)]
        idle_time_limit: Option<f64>,
    },
    /// Save a session's recording (asciicast v2, for `asciinema play`).
    Download {
        id: String,
        /// Where (default ID.cast).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RunFormat {
    Table,
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Create a document from a YAML or JSON file.
    Create {
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Add a new version of a document.
    Update {
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Print a document (NAME or NAME:VERSION).
    Get { name: String },
    /// List documents (built-in and stored).
    List(OutputArgs),
    /// Delete a document and all its versions.
    Delete { name: String },
    /// List a document's versions.
    Versions {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Choose the version that runs when none is named.
    SetDefault { name: String, version: i64 },
}

#[derive(Debug, Subcommand)]
pub enum CommandsCommand {
    /// Recent commands, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// One command, with its invocations' results folded.
    Show {
        id: String,
        #[arg(long)]
        per_node: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = RunFormat::Table)]
        format: RunFormat,
    },
    /// Cancel a command: Pending invocations never start, running ones are killed.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
pub enum InvocationsCommand {
    /// A command's invocations.
    List {
        #[arg(long)]
        command: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// The full output of one node's invocation.
    Output {
        /// The command ID.
        id: String,
        #[arg(long)]
        node: String,
        /// Only this step.
        #[arg(long)]
        step: Option<String>,
        /// Keep printing new output until the invocation ends.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Default, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub oidc: crate::cmd_oidc::OidcArgs,
    /// Data directory (database, CA, certificates, admin token).
    #[arg(long, env = "DROVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on for HTTPS (API, agents, metrics).
    #[arg(long, env = "DROVER_LISTEN")]
    pub listen: Option<String>,
    /// TLS certificate chain (PEM) to serve instead of one from the private CA.
    #[arg(long, env = "DROVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "DROVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(
        long = "public-name",
        env = "DROVER_PUBLIC_NAMES",
        value_delimiter = ','
    )]
    pub public_names: Vec<String>,
    /// Lifetime of agent certificates, e.g. 30d.
    #[arg(long, env = "DROVER_AGENT_CERT_LIFETIME")]
    pub agent_cert_lifetime: Option<String>,
    /// Heartbeat interval on agent connections, e.g. 30s.
    #[arg(long, env = "DROVER_HEARTBEAT")]
    pub heartbeat: Option<String>,
    /// Serve /metrics without a token.
    #[arg(long, env = "DROVER_METRICS_PUBLIC")]
    pub metrics_public: Option<bool>,
    /// How long a connection may take to authenticate (TLS handshake plus an agent's hello or
    /// a request with a valid token), e.g. 10s.
    #[arg(long, env = "DROVER_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<String>,
    /// Most connections not yet authenticated, from everyone; past it the oldest is closed
    /// to make room [default: 2048].
    #[arg(long, env = "DROVER_MAX_UNAUTHENTICATED")]
    pub max_unauthenticated: Option<usize>,
    /// Most connections not yet authenticated from one IP address [default: 2048].
    #[arg(long, env = "DROVER_MAX_UNAUTHENTICATED_PER_ADDRESS")]
    pub max_unauthenticated_per_address: Option<usize>,
    /// Delete commands older than this, with their results and output, e.g. 90d
    /// [default: 90d].
    #[arg(long, env = "DROVER_HISTORY_MAX_AGE")]
    pub history_max_age: Option<String>,
    /// Delete audit entries older than this (at least 1d), or `forever` to keep them all
    /// [default: 365d]. The rest of the chain still checks.
    #[arg(long, env = "DROVER_AUDIT_MAX_AGE")]
    pub audit_max_age: Option<String>,
    /// Keep at most this many invocations (10000 or more): past it the oldest finished
    /// commands are deleted [default: 1000000].
    #[arg(long, env = "DROVER_HISTORY_MAX_INVOCATIONS")]
    pub history_max_invocations: Option<u64>,
    /// Delete the output of commands older than this, keeping their results, e.g. 30d
    /// [default: 30d].
    #[arg(long, env = "DROVER_OUTPUT_MAX_AGE")]
    pub output_max_age: Option<String>,
    /// How often to look for history to delete, e.g. 10m [default: 10m].
    #[arg(long, env = "DROVER_PRUNE_INTERVAL")]
    pub prune_interval: Option<String>,
    /// A network (CIDR) or address that forwarded connections may not reach (repeatable),
    /// beyond what agents always refuse: the cloud metadata addresses and link-local ranges.
    #[arg(long = "forward-deny", value_name = "CIDR")]
    pub forward_deny: Vec<String>,
    /// TOML file with the same settings (flags and environment win).
    #[arg(long, env = "DROVER_CONFIG_FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Directory for the server's data and the local agent's state.
    #[arg(long, default_value = ".drover")]
    pub dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
}

pub use crate::cli_agent::*;

#[derive(Debug, Subcommand)]
pub enum ActivationCommand {
    /// Create an activation and print its ID and code (the code is shown only once).
    Create(ActivationCreateArgs),
    /// List activations (never their codes).
    List(OutputArgs),
}

#[derive(Debug, Args)]
pub struct ActivationCreateArgs {
    /// How many nodes may register with it.
    #[arg(long, default_value_t = 1)]
    pub count: i64,
    /// How long it stays valid, e.g. 24h (at most 30d).
    #[arg(long, default_value = "24h")]
    pub expires: String,
    /// Tag for nodes registered with it, KEY=VALUE (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Name for registered nodes that do not name themselves.
    #[arg(long, default_value = "")]
    pub default_name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes.
    List(NodesListArgs),
    /// Show one node (by ID or unique name).
    Show {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Set tags on a node: KEY=VALUE ...
    Tag {
        id: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Remove tags from a node: KEY ...
    Untag {
        id: String,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Deregister a node: it is refused from then on, its open connection closed at once.
    Deregister { id: String },
}

#[derive(Debug, Args)]
pub struct NodesListArgs {
    /// tag:KEY=VALUE, platform=P, status=online|connectionlost|inactive, name=N (repeatable).
    #[arg(long = "filter")]
    pub filters: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::client_config::choose_context(cli.global.context);
    match cli.command {
        Command::Server(args) => crate::cmd_server::run(*args).await,
        Command::Up(args) => crate::cmd_up::run(args).await,
        Command::Agent(cmd) => crate::cmd_agent::run(cmd).await,
        Command::Activation(cmd) => crate::cmd_activation::run(cmd).await,
        Command::Nodes(cmd) => crate::cmd_nodes::run(cmd).await,
        Command::Login(args) => crate::client_config::login(args).await,
        Command::Logout => crate::client_config::logout().await,
        Command::Whoami(out) => crate::cmd_access::whoami(out).await,
        Command::Users(cmd) => crate::cmd_access::users(cmd).await,
        Command::Groups(cmd) => crate::cmd_access::groups(cmd).await,
        Command::Tokens(cmd) => crate::cmd_access::tokens(cmd).await,
        Command::Policy(cmd) => crate::cmd_policy::run(cmd).await,
        Command::Audit(cmd) => crate::cmd_audit::run(cmd).await,
        Command::Access(cmd) => crate::cmd_access_requests::run(cmd).await,
        Command::Webhooks(cmd) => crate::cmd_alerts::webhooks(cmd).await,
        Command::Windows(cmd) => crate::cmd_alerts::windows(cmd).await,
        Command::Params(cmd) => crate::cmd_params::run(cmd).await,
        Command::Context(cmd) => crate::cmd_context::run(cmd).await,
        Command::Assoc(cmd) => crate::cmd_assoc::run(cmd).await,
        Command::Compliance(cmd) => crate::cmd_assoc::compliance(cmd).await,
        Command::Run(args) => crate::cmd_run::run(args).await,
        Command::Docs(cmd) => crate::cmd_docs::run(cmd).await,
        Command::Commands(cmd) => crate::cmd_run::commands(cmd).await,
        Command::Invocations(cmd) => crate::cmd_run::invocations(cmd).await,
        Command::Shell(args) => crate::cmd_shell::run(args).await,
        Command::Sessions(cmd) => crate::cmd_sessions::run(cmd).await,
        Command::Forward(args) => crate::cmd_forward::forward(args).await,
        Command::SshProxy(args) => crate::cmd_forward::ssh_proxy(args).await,
        Command::Ssh(args) => crate::cmd_ssh::ssh(args).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics on a failed write, and a reader that
            // stops early (`| head`) is no error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "drover", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Man { out_dir } => {
            std::fs::create_dir_all(&out_dir)?;
            // One page per verb, generated from these definitions so they never drift.
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &out_dir)
                .map_err(|e| anyhow::anyhow!("writing man pages to {}: {e}", out_dir.display()))?;
            println!("man pages written to {}", out_dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
