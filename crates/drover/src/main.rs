//! `drover`: one binary for the server, the agent and the client verbs. This crate parses the
//! command line, builds each component's configuration once, and dispatches; the work is done
//! in the library crates.

mod cli;
mod cli_agent;
mod cli_parse;
mod client_config;
mod cmd_access;
mod cmd_access_requests;
mod cmd_activation;
mod cmd_agent;
mod cmd_alerts;
mod cmd_assoc;
mod cmd_audit;
mod cmd_context;
mod cmd_docs;
mod cmd_forward;
mod cmd_nodes;
mod cmd_oidc;
mod cmd_params;
mod cmd_policy;
mod cmd_run;
mod cmd_run_across;
mod cmd_server;
mod cmd_sessions;
mod cmd_shell;
mod cmd_ssh;
mod cmd_up;
mod output;
mod stdio;

use std::process::ExitCode;

/// Exit code for a bad configuration or usage (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// A configuration error: reported and exits with [`EXIT_USAGE`].
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    drover_tunnel::heap::keep_freed_heap();
    let cli = cli::Cli::parse_args();
    init_tracing(cli.global.verbose, cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_tracing(verbose: u8, format: cli::LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("DROVER_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{default},hyper=warn,h2=warn,rustls=warn,yamux=error,reqwest=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // The agent's central settings may change the filter while it runs.
    fn keep<H: Fn(EnvFilter) -> Result<(), String> + Send + Sync + 'static>(h: H) {
        let _ = LOG_RELOAD.set(Box::new(move |directives: &str| {
            let filter = EnvFilter::try_new(format!(
                "{directives},hyper=warn,h2=warn,rustls=warn,yamux=error,reqwest=warn"
            ))
            .map_err(|e| e.to_string())?;
            h(filter)
        }));
    }
    match format {
        cli::LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            keep(move |f| handle.reload(f).map_err(|e| e.to_string()));
            builder.init()
        }
        cli::LogFormat::Text => {
            // Colour is for people at a terminal: a file or a pipe gets plain text.
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let builder = builder.with_ansi(colour).with_filter_reloading();
            let handle = builder.reload_handle();
            keep(move |f| handle.reload(f).map_err(|e| e.to_string()));
            builder.init();
        }
    }
}

/// Replaces the log filter of this process (the agent's `log_level` setting).
type Reload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
pub static LOG_RELOAD: std::sync::OnceLock<Reload> = std::sync::OnceLock::new();
