//! Running one script: a wrapper shell in its own process group runs the script from its file
//! and writes the exit code straight to a file, so the result survives the agent; the agent
//! waits for it, or adopts it after a restart, and kills the whole group on timeout or cancel.
//!
//! The wrapper starts **gated**: it waits for one line on its stdin before it runs the script.
//! The agent records the wrapper's pid durably and only then opens the gate, so a script never
//! runs without a record that identifies it. An agent that dies before opening the gate closes
//! the pipe; the wrapper then writes `notrun` instead of an exit code, and the unit may start.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::journal::StepStatus;
use crate::AgentError;

/// `$1` is the exit code file, the rest the interpreter and the script file. The exit code is
/// one small write with the shell's builtin echo: no process beyond the script's own.
const WRAPPER: &str = r#"IFS= read -r go || { echo notrun > "$1"; exit 0; }
exec </dev/null
exit_file=$1
shift
"$@"
echo $? > "$exit_file""#;

/// Exit code reported for a script killed on timeout or cancel (like a shell's 128 + SIGKILL).
pub const KILLED: i32 = 137;
/// Exit code reported when a step's process vanished without an exit code (the machine
/// rebooted under it, or it was killed from outside).
pub const LOST: i32 = -1;

/// Where one unit's files are.
#[derive(Debug, Clone)]
pub struct Slot {
    pub script: PathBuf,
    pub exit: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

pub struct Spec<'a> {
    pub script: &'a str,
    pub dir: &'a Path,
    pub env: Vec<(String, String)>,
    pub interpreter: Interpreter,
}

/// What runs the script file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpreter {
    Sh,
    /// PowerShell 7 at this path (`aws:runPowerShellScript`).
    Pwsh(PathBuf),
}

impl Interpreter {
    /// The command line that runs `script`.
    fn argv(&self, script: &Path) -> Vec<std::ffi::OsString> {
        match self {
            Interpreter::Sh => vec!["/bin/sh".into(), script.into()],
            Interpreter::Pwsh(pwsh) => {
                let mut argv: Vec<std::ffi::OsString> = vec![pwsh.into()];
                argv.extend(
                    ["-NoLogo", "-NoProfile", "-NonInteractive", "-File"]
                        .iter()
                        .map(Into::into),
                );
                argv.push(script.into());
                argv
            }
        }
    }
}

/// The file name extension the interpreter needs (`pwsh -File` runs only `.ps1` files).
pub fn script_extension(interpreter: &Interpreter) -> &'static str {
    match interpreter {
        Interpreter::Sh => "sh",
        Interpreter::Pwsh(_) => "ps1",
    }
}

/// PowerShell 7 on this node, if any: `pwsh` on PATH, or where Microsoft's packages put it.
pub fn find_pwsh() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pwsh"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([
            PathBuf::from("/usr/bin/pwsh"),
            PathBuf::from("/usr/local/bin/pwsh"),
            PathBuf::from("/opt/microsoft/powershell/7/pwsh"),
        ])
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What the wrapper wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    /// The gate closed before it opened: the script never ran.
    NotRun,
}

/// A wrapper started and waiting at its gate.
pub struct Started {
    pub child: tokio::process::Child,
    pub pid: i32,
    pub start_time: Option<u64>,
}

/// How an adopted unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    Done(StepStatus, i32),
    /// Its gate never opened: it may start now.
    NotRun,
}

fn append(path: &Path) -> Result<std::fs::File, AgentError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(AgentError::io("open", path))
}

fn read_exit(slot: &Slot) -> Option<Exit> {
    let text = std::fs::read_to_string(&slot.exit).ok()?;
    let text = text.trim();
    if text == "notrun" {
        return Some(Exit::NotRun);
    }
    text.parse().ok().map(Exit::Code)
}

fn status_of(code: i32) -> StepStatus {
    if code == 0 {
        StepStatus::Success
    } else {
        StepStatus::Failed
    }
}

fn kill_group(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
    }
}

fn alive(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// When the process started, in clock ticks after boot (Linux; `None` elsewhere).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that was recorded (a pid can be reused after it died).
fn is_recorded_process(pid: i32, recorded_start: Option<u64>) -> bool {
    alive(pid)
        && match (recorded_start, start_time(pid)) {
            (Some(recorded), Some(now)) => recorded == now,
            // No /proc (macOS): the pid is all there is.
            _ => true,
        }
}

/// Writes the script to its file (mode 0700, never on a command line, where every local user
/// would see it) and starts the wrapper at its gate.
pub fn start(slot: &Slot, spec: &Spec<'_>) -> Result<Started, AgentError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(spec.dir).map_err(AgentError::io("create", spec.dir))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o700)
        .open(&slot.script)
        .map_err(AgentError::io("create", &slot.script))?;
    f.write_all(spec.script.as_bytes())
        .map_err(AgentError::io("write", &slot.script))?;
    drop(f);
    // An earlier `notrun` must not be read as this run's result.
    let _ = std::fs::remove_file(&slot.exit);
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("drover-step")
        .arg(&slot.exit)
        .args(spec.interpreter.argv(&slot.script))
        .current_dir(spec.dir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(append(&slot.stdout)?)
        .stderr(append(&slot.stderr)?)
        // Its own process group: killed as a whole, and not killed with the agent.
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd
        .spawn()
        .map_err(AgentError::io("start /bin/sh for", &slot.script))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| AgentError::Corrupt {
            path: slot.exit.display().to_string(),
            detail: "the step's process has no pid".into(),
        })?;
    // Our child, not yet waited for: its pid cannot have been reused.
    let start_time = start_time(pid);
    Ok(Started {
        child,
        pid,
        start_time,
    })
}

impl Started {
    /// Lets the script run. Call only once the unit's record is durable.
    pub async fn open_gate(&mut self) {
        if let Some(mut gate) = self.child.stdin.take() {
            // A failed write means the wrapper is gone; waiting for it reports that.
            let _ = gate.write_all(b"go\n").await;
        }
    }
}

/// Waits for a wrapper this agent started.
pub async fn wait(
    slot: &Slot,
    started: Started,
    timeout: Duration,
    cancel: &CancellationToken,
) -> (StepStatus, i32) {
    let Started { mut child, pid, .. } = started;
    tokio::select! {
        status = child.wait() => {
            match read_exit(slot) {
                Some(Exit::Code(code)) => (status_of(code), code),
                Some(Exit::NotRun) | None => {
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

/// Waits for a unit that an earlier agent process started (it is not our child): polls its
/// exit file and whether its process group leader is still the recorded process.
pub async fn adopt(
    slot: &Slot,
    pid: Option<i32>,
    recorded_start: Option<u64>,
    same_boot: bool,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Adopted {
    let deadline = tokio::time::Instant::now() + timeout;
    let ours = |p: &i32| same_boot && is_recorded_process(*p, recorded_start);
    loop {
        match read_exit(slot) {
            Some(Exit::Code(code)) => return Adopted::Done(status_of(code), code),
            Some(Exit::NotRun) => return Adopted::NotRun,
            None => {}
        }
        if !pid.as_ref().is_some_and(ours) {
            // One last look: it may have finished between the two checks.
            return match read_exit(slot) {
                Some(Exit::Code(code)) => Adopted::Done(status_of(code), code),
                Some(Exit::NotRun) => Adopted::NotRun,
                None => Adopted::Done(StepStatus::Failed, LOST),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            if let Some(p) = pid.filter(ours) {
                kill_group(p);
            }
            return Adopted::Done(StepStatus::TimedOut, KILLED);
        }
        tokio::select! {
            // Not our child, so there is no exit to wait on: poll with a short interval.
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = cancel.cancelled() => {
                if let Some(p) = pid.filter(ours) {
                    kill_group(p);
                }
                return Adopted::Done(StepStatus::Cancelled, KILLED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn slot(dir: &Path) -> Slot {
        Slot {
            script: dir.join("0.1.sh"),
            exit: dir.join("0.1.exit"),
            stdout: dir.join("0.out"),
            stderr: dir.join("0.err"),
        }
    }

    #[tokio::test]
    async fn a_gate_closed_unopened_never_runs_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot(dir.path());
        let marker = dir.path().join("ran");
        let script = format!("echo ran > {}", marker.display());
        let spec = Spec {
            script: &script,
            dir: dir.path(),
            env: Vec::new(),
            interpreter: Interpreter::Sh,
        };
        let mut started = start(&slot, &spec).unwrap();
        // The agent dies before opening the gate: its end of the pipe closes.
        drop(started.child.stdin.take());
        let (pid, st) = (started.pid, started.start_time);
        let _ = started.child.wait().await;
        let adopted = adopt(
            &slot,
            Some(pid),
            st,
            true,
            Duration::from_secs(5),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(adopted, Adopted::NotRun);
        assert!(!marker.exists(), "the script ran without its gate opening");
    }

    #[tokio::test]
    async fn a_script_runs_from_its_file_not_from_argv() {
        let dir = tempfile::tempdir().unwrap();
        let slot = slot(dir.path());
        // Over Linux's 128 KiB limit for one argument.
        let script = format!("# {}\necho \"$0\"; exit 3\n", "x".repeat(200 * 1024));
        let spec = Spec {
            script: &script,
            dir: dir.path(),
            env: Vec::new(),
            interpreter: Interpreter::Sh,
        };
        let mut started = start(&slot, &spec).unwrap();
        started.open_gate().await;
        let r = wait(
            &slot,
            started,
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r, (StepStatus::Failed, 3));
        let out = std::fs::read_to_string(&slot.stdout).unwrap();
        assert_eq!(out.trim(), slot.script.display().to_string());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&slot.script)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_reused_pid_is_not_the_recorded_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let start = start_time(me);
        assert!(start.is_some());
        assert!(is_recorded_process(me, start));
        assert!(!is_recorded_process(me, start.map(|s| s + 1)));
    }

    #[test]
    fn powershell_scripts_run_from_a_ps1_file_without_profile_or_prompts() {
        let pwsh = Interpreter::Pwsh(PathBuf::from("/opt/microsoft/powershell/7/pwsh"));
        assert_eq!(script_extension(&pwsh), "ps1");
        let argv = pwsh.argv(Path::new("/j/0.1.ps1"));
        let argv: Vec<&str> = argv.iter().filter_map(|a| a.to_str()).collect();
        assert_eq!(
            argv,
            [
                "/opt/microsoft/powershell/7/pwsh",
                "-NoLogo",
                "-NoProfile",
                "-NonInteractive",
                "-File",
                "/j/0.1.ps1"
            ]
        );
        assert_eq!(Interpreter::Sh.argv(Path::new("/j/0.1.sh")).len(), 2);
    }
}
