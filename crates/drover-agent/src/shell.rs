//! Running one script: a wrapper shell in its own process group writes the script's output
//! and exit code straight to files, so the result survives the agent; the agent waits for it,
//! or adopts it after a restart, and kills the whole group on timeout or cancel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::journal::StepStatus;
use crate::AgentError;

/// Runs the script `$1` with sh and records its exit code in `$2` (one small write, with the
/// shell's builtin echo: no process beyond the script's own). The script travels as an argument,
/// so it costs no file.
const WRAPPER: &str = r#"sh -c "$1" drover-script; echo $? > "$2""#;

/// Exit code reported for a script killed on timeout or cancel (like a shell's 128 + SIGKILL).
pub const KILLED: i32 = 137;
/// Exit code reported when a step's process vanished without an exit code (the machine
/// rebooted under it, or it was killed from outside).
pub const LOST: i32 = -1;

/// Where one script's files are.
#[derive(Debug, Clone)]
pub struct Slot {
    pub exit: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

pub struct Spec<'a> {
    pub script: &'a str,
    pub dir: &'a Path,
    pub env: Vec<(String, String)>,
}

fn append(path: &Path) -> Result<std::fs::File, AgentError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(AgentError::io("open", path))
}

fn read_exit(slot: &Slot) -> Option<i32> {
    std::fs::read_to_string(&slot.exit)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn kill_group(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
    }
}

pub fn alive(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Starts the script; returns the child (the group leader) and its pid.
pub fn start(slot: &Slot, spec: &Spec<'_>) -> Result<(tokio::process::Child, i32), AgentError> {
    std::fs::create_dir_all(spec.dir).map_err(AgentError::io("create", spec.dir))?;
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("drover-step")
        .arg(spec.script)
        .arg(&slot.exit)
        .current_dir(spec.dir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(append(&slot.stdout)?)
        .stderr(append(&slot.stderr)?)
        // Its own process group: killed as a whole, and not killed with the agent.
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd
        .spawn()
        .map_err(AgentError::io("start /bin/sh for", &slot.exit))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| AgentError::Corrupt {
            path: slot.exit.display().to_string(),
            detail: "the step's process has no pid".into(),
        })?;
    Ok((child, pid))
}

/// Waits for a child this agent started.
pub async fn wait(
    slot: &Slot,
    mut child: tokio::process::Child,
    pid: i32,
    timeout: Duration,
    cancel: &CancellationToken,
) -> (StepStatus, i32) {
    tokio::select! {
        status = child.wait() => {
            match read_exit(slot) {
                Some(code) => (if code == 0 { StepStatus::Success } else { StepStatus::Failed }, code),
                None => {
                    let code = status.ok().and_then(|s| s.code()).unwrap_or(LOST);
                    (StepStatus::Failed, if code == 0 { LOST } else { code })
                }
            }
        }
        _ = tokio::time::sleep(timeout) => {
            kill_group(pid);
            let _ = child.wait().await;
            (StepStatus::TimedOut, KILLED)
        }
        _ = cancel.cancelled() => {
            kill_group(pid);
            let _ = child.wait().await;
            (StepStatus::Cancelled, KILLED)
        }
    }
}

/// Waits for a step that an earlier agent process started (it is not our child): polls its
/// exit file and whether its process group leader lives.
pub async fn adopt(
    slot: &Slot,
    pid: Option<i32>,
    same_boot: bool,
    timeout: Duration,
    cancel: &CancellationToken,
) -> (StepStatus, i32) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(code) = read_exit(slot) {
            return (
                if code == 0 {
                    StepStatus::Success
                } else {
                    StepStatus::Failed
                },
                code,
            );
        }
        let running = same_boot && pid.is_some_and(alive);
        if !running {
            // One last look: it may have finished between the two checks.
            return match read_exit(slot) {
                Some(code) => (
                    if code == 0 {
                        StepStatus::Success
                    } else {
                        StepStatus::Failed
                    },
                    code,
                ),
                None => (StepStatus::Failed, LOST),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            if let Some(p) = pid {
                kill_group(p);
            }
            return (StepStatus::TimedOut, KILLED);
        }
        tokio::select! {
            // Not our child, so there is no exit to wait on: poll with a short interval.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = cancel.cancelled() => {
                if let Some(p) = pid {
                    kill_group(p);
                }
                return (StepStatus::Cancelled, KILLED);
            }
        }
    }
}
