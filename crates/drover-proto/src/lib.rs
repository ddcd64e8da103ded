//! The wire protocol between a Drover server and its agents: versioned message types and the
//! length-prefixed frame codec that carries them. Pure data: no I/O, no async runtime.
//!
//! **API Boundary:** old agents stay deployed for years, so every change here is additive and
//! guarded by [`PROTOCOL_VERSION`], negotiated once per connection by [`negotiate`].

mod deny;
mod forward;
mod frame;
mod message;
mod session;

pub use deny::{denied, deny_list, DEFAULT_DENY};
pub use forward::{target_label, E2eKey, ForwardConnect, MUX_UPGRADE};
pub use frame::{decode, encode, FrameError, LENGTH_PREFIX, MAX_FRAME_LEN};
pub use message::{
    negotiate, AgentSettings, CertificateIssued, Hello, Inventory, Invoke, Message, OutputStream,
    Progress, RefuseCode, Refused, SessionKind, SessionStart, StreamKind, StreamOpen, Terminal,
    Welcome, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use session::{
    SessionClosed, SessionFrame, SessionFrameError, SessionSignal, SessionStream, SESSION_DATA_MAX,
    SESSION_FRAME_MAX,
};

/// The ALPN protocol identifier an agent offers when it dials the server. The server routes a TLS
/// connection that negotiated it to the agent endpoint, and everything else to the HTTP API.
pub const ALPN_AGENT: &[u8] = b"drover-agent/1";

/// The environment variables that carry a command's SecureStrings to its scripts
/// (`DROVER_SECURE_0`, ...): the server names them, the agent masks their values in output.
pub const SECURE_ENV_PREFIX: &str = "DROVER_SECURE_";
