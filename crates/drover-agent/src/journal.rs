//! The agent's journal of invocations: everything needed to run each step exactly once and to
//! deliver its full result later, across lost connections, agent restarts, reboots and crashes.
//!
//! ```text
//! STATE/journal/<invocation id>/
//!   invoke.json       what the server asked for
//!   state.log         the invocation's state after each change, one JSON line each; the last
//!                     whole line is the state (a line torn by a crash is ignored)
//!   work/             the command's own directory (relative download paths land here)
//!   N.out, N.err      top-level step N's output (its nested steps and attempts write here too)
//!   UNIT.sh           the script a unit runs (mode 0700: never on a command line)
//!   UNIT.exit         its exit code, written by the wrapper shell
//! ```
//!
//! A **unit** is one thing that runs: one attempt of one step at any nesting depth. Its key is
//! its path, `STEP.ATTEMPT` joined by `-` per level: `0.1` is the first attempt of step 0, `0.2`
//! its retry, `1.1-0.1` the first step of the document that step 1 runs. Each unit has its own
//! record in the state, written to disk (fsync) before its process may run, and looked up by
//! that key after a restart: a unit recorded as running is adopted, never started again.
//!
//! A unit's process writes its output and exit code straight to these files, so it survives
//! the agent: a restarted agent finds the unit still running (or finished) and picks it up.
//! Few files, appended rather than replaced: creating and deleting inodes is what an invocation
//! costs the filesystem, and a node may run thousands.

use std::collections::BTreeMap;
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

/// A top-level step, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub exit_code: i32,
    #[serde(default)]
    pub truncated: bool,
}

/// One unit (an attempt of a step at any depth): how to find its process, and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    pub status: StepStatus,
    #[serde(default)]
    pub exit_code: i32,
    /// The process group leader (the wrapper shell), for a unit that runs a script.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The leader's start time (clock ticks since boot), so that a reused pid is not taken
    /// for it.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// The kernel boot the unit started in: after another boot its process is gone.
    #[serde(default)]
    pub boot_id: String,
    /// Unix milliseconds; the step's timeout counts from here, also after a restart.
    #[serde(default)]
    pub started_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationState {
    pub steps: Vec<StepState>,
    /// Every unit that started, by key (see the module documentation).
    #[serde(default)]
    pub units: BTreeMap<String, UnitState>,
    /// The document each runDocument unit runs, as first resolved: a resume walks the same
    /// steps even if a step changed the file it came from.
    #[serde(default)]
    pub nested: BTreeMap<String, serde_json::Value>,
    /// A step exited 194: reboot, then go on after it.
    #[serde(default)]
    pub rebooting: bool,
    /// The boot in which the reboot was asked for: still this one means it has not happened.
    #[serde(default)]
    pub reboot_asked_in: String,
    /// Final `(status, exit code)`.
    #[serde(default)]
    pub finished: Option<(String, i32)>,
    /// Unix milliseconds; the execution timeout counts from here.
    pub started_ms: i64,
    /// The server stored the final result; the output is gone, this record stays a while so a
    /// repeated delivery is answered, never run.
    #[serde(default)]
    pub delivered: bool,
}

/// Whether a save must reach the disk before the caller goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// The record decides whether something may run (a unit about to start, a reboot about to
    /// happen) or is a result about to be reported: flushed to disk before `save` returns.
    Durable,
    /// Everything else: a later durable save flushes it, and losing it in a machine crash
    /// costs a result (reported as lost), never a second run.
    Lazy,
}

/// One invocation's directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
}

/// This machine's current boot, as the kernel names it; empty where it cannot be known.
pub fn boot_id() -> String {
    #[cfg(feature = "crash-points")]
    if let Ok(id) = std::env::var("DROVER_TEST_BOOT_ID") {
        return id;
    }
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        if let Ok(id) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            return id.trim().to_string();
        }
        // macOS: a UUID per boot, from the kernel.
        std::process::Command::new("/usr/sbin/sysctl")
            .args(["-n", "kern.bootsessionuuid"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    })
    .clone()
}

pub fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
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

/// Flushes a directory, so that the names created in it survive a machine crash.
fn sync_dir(dir: &Path) -> Result<(), AgentError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("flush", dir))
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

    /// Records a new invocation with every step Pending. Not flushed: until a unit is about
    /// to start, losing the record in a machine crash only makes a repeated delivery start the
    /// invocation afresh, which is right since nothing of it ran. [`Entry::flush_names`] makes
    /// it durable, with the first unit's record.
    pub fn create(&self, invoke: &Invoke, step_names: &[String]) -> Result<(), AgentError> {
        let root = self.dir.parent().unwrap_or(Path::new("/"));
        if !root.exists() {
            // The journal's own name must survive a crash too (once, with the first invocation).
            std::fs::create_dir_all(root).map_err(io("create", root))?;
            sync_dir(root.parent().unwrap_or(Path::new("/")))?;
        }
        let work = self.work_dir();
        std::fs::create_dir_all(&work).map_err(io("create", &work))?;
        let json = serde_json::to_vec(invoke).map_err(|e| AgentError::Corrupt {
            path: self.dir.display().to_string(),
            detail: e.to_string(),
        })?;
        // No rename needed: the invocation counts as recorded only once its state log exists.
        let path = self.dir.join("invoke.json");
        std::fs::write(&path, &json).map_err(io("write", &path))?;
        self.save(
            &InvocationState {
                steps: step_names
                    .iter()
                    .map(|n| StepState {
                        name: n.clone(),
                        status: StepStatus::Pending,
                        exit_code: 0,
                        truncated: false,
                    })
                    .collect(),
                units: BTreeMap::new(),
                nested: BTreeMap::new(),
                rebooting: false,
                reboot_asked_in: String::new(),
                finished: None,
                started_ms: now_ms(),
                delivered: false,
            },
            Flush::Lazy,
        )
    }

    /// Flushes what [`Entry::create`] wrote that a resume needs: the request, and the names of
    /// the entry and of its files in their directories (the state log flushes itself).
    pub fn flush_names(&self) -> Result<(), AgentError> {
        let path = self.dir.join("invoke.json");
        std::fs::File::open(&path)
            .and_then(|f| f.sync_data())
            .map_err(io("flush", &path))?;
        sync_dir(&self.dir)?;
        sync_dir(self.dir.parent().unwrap_or(Path::new("/")))
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

    /// Appends the state as one line; a [`Flush::Durable`] save returns once it is on disk.
    pub fn save(&self, state: &InvocationState, sync: Flush) -> Result<(), AgentError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // A leading newline too: if a crash (or a full disk) left half a line at the end, this
        // line must not be glued to it, or `load` would skip both and go back a state.
        let mut line = vec![b'\n'];
        serde_json::to_writer(&mut line, state).map_err(|e| AgentError::Corrupt {
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
        if sync == Flush::Durable {
            // fdatasync also flushes the file's size, which an append changes; and every line
            // appended before this one with it.
            f.sync_data().map_err(io("flush", &path))?;
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

    /// The exit code file of a unit.
    pub fn unit_exit(&self, unit: &str) -> PathBuf {
        self.dir.join(format!("{unit}.exit"))
    }

    /// The script file of a unit.
    pub fn unit_script(&self, unit: &str) -> PathBuf {
        self.dir.join(format!("{unit}.sh"))
    }

    /// The server has the final result: drop the output and keep the state, marked delivered,
    /// so that a repeated delivery is answered, never run again.
    pub fn mark_delivered(&self) -> Result<(), AgentError> {
        let mut st = self.load()?;
        st.delivered = true;
        // Lazy: a delivered mark lost in a crash only means the result is offered again, and
        // the server answers that it has it.
        self.save(&st, Flush::Lazy)?;
        let _ = std::fs::remove_dir_all(self.work_dir());
        let _ = std::fs::remove_file(self.dir.join("invoke.json"));
        if let Ok(files) = std::fs::read_dir(&self.dir) {
            for f in files.filter_map(Result::ok) {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if [".out", ".err", ".exit", ".sh"]
                    .iter()
                    .any(|ext| name.ends_with(ext))
                {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }

    /// Removes a delivered invocation once its record is `days` old; true if it did.
    pub fn prune_if_older_than(&self, days: u64) -> bool {
        let old = std::fs::metadata(self.log_path())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > days * 86400);
        old && std::fs::remove_dir_all(&self.dir).is_ok()
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

/// Removes the delivered invocations recorded more than `days` ago; returns how many.
pub fn prune_delivered(state_dir: &Path, days: u64) -> usize {
    Entry::all(state_dir)
        .into_iter()
        .filter(|(_, e)| e.is_delivered() && e.prune_if_older_than(days))
        .count()
}

/// How often a running agent prunes its journal.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Prunes delivered invocations every [`PRUNE_EVERY`] until `stop`. An agent prunes at start
/// too, but one that runs for months without a restart would otherwise keep a directory for
/// every invocation it ever ran, and run its node out of inodes.
pub async fn prune_now_and_then(
    state_dir: PathBuf,
    days: u64,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let dir = state_dir.clone();
        let removed = tokio::task::spawn_blocking(move || prune_delivered(&dir, days))
            .await
            .unwrap_or(0);
        if removed > 0 {
            tracing::info!(removed, "pruned delivered invocations from the journal");
        }
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

    #[test]
    fn a_torn_last_line_leaves_the_state_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::open(dir.path(), "inv-1").unwrap();
        std::fs::create_dir_all(&entry.dir).unwrap();
        let mut st = InvocationState {
            steps: Vec::new(),
            units: BTreeMap::new(),
            nested: BTreeMap::new(),
            rebooting: false,
            reboot_asked_in: String::new(),
            finished: None,
            started_ms: 1,
            delivered: false,
        };
        entry.save(&st, Flush::Durable).unwrap();
        st.started_ms = 2;
        entry.save(&st, Flush::Lazy).unwrap();
        // A crash mid-append leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(entry.log_path())
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"steps\":[],\"units\":{\"0.1\":").unwrap();
        assert_eq!(entry.load().unwrap().started_ms, 2);
        // The next save is not glued to the torn half, so it is what a restart reads.
        st.started_ms = 3;
        entry.save(&st, Flush::Lazy).unwrap();
        assert_eq!(entry.load().unwrap().started_ms, 3);
    }

    #[test]
    fn pruning_removes_only_old_delivered_invocations() {
        let dir = tempfile::tempdir().unwrap();
        let st = |delivered| InvocationState {
            steps: Vec::new(),
            units: BTreeMap::new(),
            nested: BTreeMap::new(),
            rebooting: false,
            reboot_asked_in: String::new(),
            finished: Some(("Success".into(), 0)),
            started_ms: 1,
            delivered,
        };
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(8 * 86400);
        for (id, delivered, age) in [
            ("inv-old-delivered", true, Some(old)),
            ("inv-new-delivered", true, None),
            ("inv-old-undelivered", false, Some(old)),
        ] {
            let entry = Entry::open(dir.path(), id).unwrap();
            std::fs::create_dir_all(&entry.dir).unwrap();
            entry.save(&st(delivered), Flush::Durable).unwrap();
            if let Some(t) = age {
                let f = std::fs::File::options()
                    .append(true)
                    .open(entry.log_path())
                    .unwrap();
                f.set_modified(t).unwrap();
            }
        }
        assert_eq!(prune_delivered(dir.path(), 7), 1);
        let left: Vec<String> = Entry::all(dir.path())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(left.len(), 2);
        assert!(!left.contains(&"inv-old-delivered".to_string()), "{left:?}");
        // A result the server has not acknowledged is kept, however old.
        assert!(
            left.contains(&"inv-old-undelivered".to_string()),
            "{left:?}"
        );
    }
}
