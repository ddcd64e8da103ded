//! The agent connection: one TLS connection, dialled by the agent, carrying many logical streams
//! multiplexed by yamux with per-stream flow control. Either side can open a stream; a stream
//! whose reader stalls holds only its own window and never blocks the others.
//!
//! **Architecture Invariant:** nothing here listens on a socket on the node. The agent only dials
//! ([`dial`]); the server hands an accepted TLS stream to [`Tunnel::start`].

mod buffered;
mod codec;
pub mod dial;
pub mod e2e;
pub mod forward;
pub mod heap;
mod mux;
mod session_codec;

pub use codec::{CodecError, FrameCodec, Framed};
pub use forward::{into_raw, splice, Counted, Counters, Raw};
pub use mux::{Incoming, Role, Stream, Tunnel, TunnelConfig, TunnelError};
pub use session_codec::{into_session, SessionCodec, SessionFramed};
