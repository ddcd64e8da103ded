//! The node side: registration, the one persistent outbound connection (dial, tunnel, control
//! stream, heartbeats, certificate renewal, reconnect with backoff), and the inventory.
//!
//! **Architecture Invariant:** the agent never listens on a socket. Everything reaches it over
//! the tunnel it dialled.

mod backoff;
mod connection;
mod crash;
mod download;
mod executor;
mod forward;
mod identity;
pub mod inventory;
mod invocations;
mod journal;
mod mask;
mod os_user;
pub use os_user::valid_name as valid_user_name;
mod register;
pub mod service;
mod session;
mod settings;
pub use settings::{Hook as SettingsFn, SettingsHook};
mod shell;
mod sshd;
mod step;

pub use connection::{run, AgentConfig, AgentEvent, InventorySource, RebootMode};
pub use executor::REBOOT_EXIT_CODE;
pub use identity::{AgentState, Identity};
pub use register::{fetch_chain_fingerprints, register, RegisterOptions};
pub use sshd::{configure_sshd, SshdOptions, SshdReport};

/// Errors of the agent, each saying what to do next where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("could not {what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent state in {0} is missing or unreadable: register the node first with 'drover agent register'")]
    NotRegistered(String),
    #[error("corrupt agent state in {path}: {detail}")]
    Corrupt { path: String, detail: String },
    #[error(transparent)]
    Pki(#[from] drover_pki::PkiError),
    #[error(transparent)]
    Client(#[from] drover_client::ClientError),
    #[error(transparent)]
    Dial(#[from] drover_tunnel::dial::DialError),
    #[error("the server refused this node: {0}")]
    Refused(String),
    #[error("{0}")]
    Untrusted(String),
}

impl AgentError {
    /// The machine ran short of processes or file descriptors: worth trying again shortly.
    pub(crate) fn is_resource_shortage(&self) -> bool {
        match self {
            AgentError::Io { source, .. } => {
                use rustix::io::Errno;
                // fork's EAGAIN (no process slot), and no file descriptor left.
                let short = [Errno::AGAIN, Errno::NFILE, Errno::MFILE].map(Errno::raw_os_error);
                source
                    .raw_os_error()
                    .is_some_and(|code| short.contains(&code))
            }
            _ => false,
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| AgentError::Io { what, path, source }
    }
}

/// An error with its whole chain of causes, for logs and for the output of a failed step.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
