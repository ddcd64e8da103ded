//! The agent's journal of invocations: everything needed to run each step at most once and to
//! deliver its full result later, across lost connections, agent restarts and reboots.
//!
//! ```text
//! STATE/journal/<invocation id>/
//!   invoke.json       what the server asked for
//!   state.log         the invocation's state after each change, one JSON line each; the last
//!                     whole line is the state (a line torn by a crash is ignored)
//!   work/             the command's own directory (relative download paths land here)
//!   N.out, N.err      step N's output;  N.exit  its exit code
//! ```
//!
//! A step's process writes its output and exit code straight to these files, so it survives
//! the agent: a restarted agent finds the step still running (or finished) and picks it up.
//! Few files, appended rather than replaced: creating and deleting inodes is what an invocation
//! costs the filesystem, and a node may run thousands.

use std::path::{Path, PathBuf};

use drover_proto::{Invoke, OutputStream};
use serde::{Deserialize, Serialize};

use crate::AgentError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    Pending,
    Running,
    Success,
    Failed,
    Skipped,
    TimedOut,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "Pending",
            StepStatus::Running => "InProgress",
            StepStatus::Success => "Success",
            StepStatus::Failed => "Failed",
            StepStatus::Skipped => "Skipped",
            StepStatus::TimedOut => "TimedOut",
            StepStatus::Cancelled => "Cancelled",
        }
    }

    pub fn is_done(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub exit_code: i32,
    /// The process group leader of a running step.
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationState {
    pub steps: Vec<StepState>,
    /// A step exited 194: reboot, then go on after it.
    #[serde(default)]
    pub rebooting: bool,
    /// The kernel boot this state was written in; a different one means the machine rebooted.
    pub boot_id: String,
    /// Final `(status, exit code)`.
    #[serde(default)]
    pub finished: Option<(String, i32)>,
    /// Unix seconds; the execution timeout counts from here.
    pub started_at: i64,
    /// The server stored the final result; the output is gone, this record stays a while so a
    /// repeated delivery is answered, never run.
    #[serde(default)]
    pub delivered: bool,
}

/// One invocation's directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Invocation IDs come from the server; only a safe alphabet may become a directory name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    AgentError::io(what, path)
}

impl Entry {
    pub fn root(state_dir: &Path) -> PathBuf {
        state_dir.join("journal")
    }

    pub fn open(state_dir: &Path, id: &str) -> Option<Self> {
        valid_id(id).then(|| Self {
            dir: Self::root(state_dir).join(id),
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("state.log")
    }

    /// Recorded: the state log exists (it is written after the request).
    pub fn exists(&self) -> bool {
        self.log_path().exists()
    }

    pub fn is_delivered(&self) -> bool {
        self.load().is_ok_and(|s| s.delivered)
    }

    /// Records a new invocation with every step Pending.
    pub fn create(&self, invoke: &Invoke, step_names: &[String]) -> Result<(), AgentError> {
        let work = self.work_dir();
        std::fs::create_dir_all(&work).map_err(io("create", &work))?;
        let json = serde_json::to_vec(invoke).map_err(|e| AgentError::Corrupt {
            path: self.dir.display().to_string(),
            detail: e.to_string(),
        })?;
        // No rename needed: the invocation counts as recorded only once its state log exists.
        let path = self.dir.join("invoke.json");
        std::fs::write(&path, &json).map_err(io("write", &path))?;
        self.save(&InvocationState {
            steps: step_names
                .iter()
                .map(|n| StepState {
                    name: n.clone(),
                    status: StepStatus::Pending,
                    exit_code: 0,
                    pid: None,
                    truncated: false,
                })
                .collect(),
            rebooting: false,
            boot_id: boot_id(),
            finished: None,
            started_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            delivered: false,
        })
    }

    pub fn invoke(&self) -> Result<Invoke, AgentError> {
        let path = self.dir.join("invoke.json");
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Corrupt {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
    }

    /// The last whole state in the log.
    pub fn load(&self) -> Result<InvocationState, AgentError> {
        let path = self.log_path();
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        bytes
            .split(|b| *b == b'\n')
            .rev()
            .find_map(|line| serde_json::from_slice(line).ok())
            .ok_or_else(|| AgentError::Corrupt {
                path: path.display().to_string(),
                detail: "no whole state line".into(),
            })
    }

    /// Appends the state as one line. It is flushed to disk only when a reboot is pending, the
    /// one state that must survive the machine going down: an agent process that dies loses
    /// nothing the kernel has, and a machine that crashes mid-step is recognised by its new boot
    /// ID and never re-runs the step.
    pub fn save(&self, state: &InvocationState) -> Result<(), AgentError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut line = serde_json::to_vec(state).map_err(|e| AgentError::Corrupt {
            path: self.dir.display().to_string(),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        let path = self.log_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("open", &path))?;
        // One write call per line: a crash leaves at most a torn last line, which load skips.
        f.write_all(&line).map_err(io("append to", &path))?;
        if state.rebooting {
            f.sync_all().map_err(io("flush", &path))?;
        }
        Ok(())
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn output(&self, step: usize, stream: OutputStream) -> PathBuf {
        let ext = match stream {
            OutputStream::Stdout => "out",
            OutputStream::Stderr => "err",
        };
        self.dir.join(format!("{step}.{ext}"))
    }

    /// The server has the final result: drop the output and keep the state, marked delivered,
    /// so that a repeated delivery is answered, never run again.
    pub fn mark_delivered(&self) -> Result<(), AgentError> {
        let mut st = self.load()?;
        st.delivered = true;
        self.save(&st)?;
        let _ = std::fs::remove_dir_all(self.work_dir());
        let _ = std::fs::remove_file(self.dir.join("invoke.json"));
        if let Ok(files) = std::fs::read_dir(&self.dir) {
            for f in files.filter_map(Result::ok) {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".out") || name.ends_with(".err") || name.ends_with(".exit") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }

    /// Removes a delivered invocation once its record is `days` old.
    pub fn prune_if_older_than(&self, days: u64) {
        let old = std::fs::metadata(self.log_path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > days * 86400);
        if old {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Every invocation in the journal.
    pub fn all(state_dir: &Path) -> Vec<(String, Entry)> {
        let root = Self::root(state_dir);
        let Ok(dirs) = std::fs::read_dir(&root) else {
            return Vec::new();
        };
        dirs.filter_map(Result::ok)
            .filter_map(|d| {
                let id = d.file_name().to_string_lossy().into_owned();
                Entry::open(state_dir, &id).map(|e| (id, e))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_that_could_escape_the_journal_are_refused() {
        assert!(valid_id("inv-1234abcd"));
        for bad in ["", "..", "../x", "a/b", "a b", &"x".repeat(200)] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(Entry::open(Path::new("/tmp"), "../etc").is_none());
    }
}
