//! Command documents: SSM's command document schema 2.2, parsed from YAML or JSON, validated
//! (with the line and column of what is wrong), and resolved with parameter values into the
//! steps an agent runs. No I/O: documents referenced by `runDocument` are looked up by callers.

mod interpolate;
mod model;
mod params;
mod parse;
mod port;
mod prefs;
mod session;

pub use interpolate::{resolve, Resolution, ResolvedStep};
pub use model::*;
pub use params::{validate_declared, validate_values, ParamError, ParamValue};
pub use parse::{parse, DocError, MAX_DOCUMENT_BYTES};
pub use port::{host_ok, PortTarget, LOCAL_HOST};
pub use prefs::{env_name_ok, user_name_ok, EndToEnd, Preferences};
pub use session::{is_session_document, parse_session, SessionDocument, SessionType};
