//! Records of documents, commands and invocations.

use std::collections::BTreeMap;

/// One version of a stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentVersion {
    pub name: String,
    pub version: i64,
    pub content: String,
    /// `YAML` or `JSON`.
    pub format: String,
    pub description: String,
    pub created_at: i64,
    pub is_default: bool,
    pub latest_version: i64,
}

/// A command as sent: what to run, where, and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: String,
    pub document_name: String,
    pub document_version: String,
    pub parameters: String,
    pub targets: Vec<String>,
    pub max_concurrency: String,
    pub max_errors: String,
    pub delivery_timeout_secs: i64,
    pub execution_timeout_secs: i64,
    pub output_limit: i64,
    pub comment: String,
    pub created_at: i64,
    /// `Pending`, `InProgress`, `Success`, `Failed`, `Incomplete`, `Cancelling`, `Cancelled`.
    pub status: String,
    /// The payload sent to agents (the resolved steps and what they need), JSON.
    pub payload: String,
    pub cancel_requested: bool,
    /// Its output was deleted by the retention policy (results and byte counts remain).
    pub output_pruned: bool,
    /// The user who sent it.
    pub sender: String,
}

/// One node's part of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub id: String,
    pub command_id: String,
    pub node_id: String,
    pub node_name: String,
    pub status: String,
    pub status_detail: String,
    pub exit_code: Option<i64>,
    pub requested_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub steps: Vec<StepResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepResult {
    pub name: String,
    pub status: String,
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: i64,
    pub stderr_bytes: i64,
    pub truncated: bool,
}

/// A change to an invocation, applied in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationUpdate {
    Status {
        invocation_id: String,
        status: String,
        detail: String,
        exit_code: Option<i64>,
        at: i64,
    },
    StepStarted {
        invocation_id: String,
        step: String,
    },
    Output {
        invocation_id: String,
        step: String,
        stderr: bool,
        offset: i64,
        len: i64,
        data: String,
    },
    StepFinished {
        invocation_id: String,
        step: String,
        status: String,
        exit_code: i64,
        truncated: bool,
    },
}

/// Which invocations to list.
#[derive(Debug, Clone, Default)]
pub struct InvocationQuery {
    /// One invocation by its ID.
    pub id: Option<String>,
    pub command_id: Option<String>,
    pub node_id: Option<String>,
    pub status: Option<String>,
    /// Start after this invocation ID.
    pub after: Option<String>,
    pub limit: usize,
    pub with_steps: bool,
    /// With steps: read at most about this many bytes of each output stream (`None`: all of
    /// it). Byte counts are always exact.
    pub output_cap: Option<usize>,
}

/// Counts of a command's invocations by status.
pub type StatusCounts = BTreeMap<String, i64>;

/// How much command history the store keeps. Only finished commands are ever pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Commands created before this time (Unix seconds) are deleted with everything they hold.
    pub delete_before: i64,
    /// Past this many stored invocations, the oldest commands are deleted, whatever their age.
    pub max_invocations: u64,
    /// The output of commands created before this time is deleted; their results (statuses,
    /// exit codes, byte counts) stay until the command itself goes.
    pub output_before: i64,
}

/// What one pruning batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Invocations whose output was deleted (their results kept).
    pub outputs: u64,
    /// Invocations deleted, with their steps and output.
    pub invocations: u64,
    /// Commands deleted (their last invocation gone).
    pub commands: u64,
    /// The batch used its whole budget: there may be more to prune.
    pub more: bool,
}
