//! Authorization with Cedar: the schema, the table of actions, the facts a decision needs
//! (user, node, document, ...), and the decisions themselves with the policies that made them.
//! No I/O: the server reads policies and facts from its store and asks here.

mod action;
mod engine;
mod facts;
mod reads;

pub use action::{Action, ResourceKind};
pub use engine::{parse, schema, Decision, Engine, PolicyFile, SCHEMA};
pub use facts::{Context, NodeFacts, Resource, UserFacts};

/// The policies a new server starts with: administrators may do everything, everyone manages
/// their own tokens and sees what they started, and viewers read the fleet.
pub const DEFAULT_POLICY: &str = include_str!("../default.cedar");

/// A place in a policy file and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Problem {
    fn at_start(message: String) -> Self {
        Self {
            line: 1,
            column: 1,
            message,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {name:?} is invalid: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        name: String,
        problems: Vec<Problem>,
    },
    #[error("authorization: {0}")]
    Internal(String),
}
