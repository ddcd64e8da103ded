//! Runs an invocation's steps in order, recording everything in the journal: step controls
//! (onFailure, onSuccess, finallyStep, maxAttempts), preconditions, timeouts, cancel, reboot
//! (exit code 194) and nested documents.
//!
//! Every attempt of every step, at any nesting depth, is a *unit* with its own journal record,
//! keyed by its path (see `journal`). The walk is the same on a first run and after a restart:
//! a unit whose record says it finished gives its recorded result, a unit recorded as running
//! is adopted, and only a unit with no record starts. So resuming an invocation is running it
//! again, and exactly-once holds for plain steps, retries and nested documents alike.

use std::path::PathBuf;
use std::time::Duration;

use drover_docs::{Action, OnFailure, OnSuccess, Resolution, ResolvedStep};
use drover_proto::{Invoke, OutputStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::crash;
use crate::journal::{boot_id, now_ms, Entry, Flush, InvocationState, StepStatus, UnitState};
use crate::shell::{self, Adopted, Interpreter, Slot, Spec};
use crate::step::{
    env_for, nested, precondition_holds, remaining, script_text, step_timeout, working_dir,
};
use crate::AgentError;

/// Exit code by which a script asks for a reboot and a resume at the next step.
pub const REBOOT_EXIT_CODE: i32 = 194;
const MAX_NESTING: usize = 3;
/// How long a script start that fails for want of resources is retried (doubling pauses from
/// 100 ms: about 25 s in all).
const START_PATIENCE: Duration = Duration::from_secs(15);

/// What every execution needs.
#[derive(Clone)]
pub struct ExecCtx {
    pub state_dir: PathBuf,
    pub node_id: String,
    /// `Linux` or `MacOS`, as preconditions name platforms.
    pub platform_type: &'static str,
    /// Asked once a step exited 194 and the journal says so.
    pub reboot: mpsc::Sender<()>,
    /// A restart of the agent is the reboot (`RebootMode::RestartAgent`): no need to check
    /// that the machine rebooted before resuming.
    pub restart_is_reboot: bool,
    /// Largest file a downloadContent step may fetch, in bytes.
    pub max_download_bytes: u64,
}

/// How a unit (or a step, or a nested document) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    status: StepStatus,
    code: i32,
    /// It exited 194 just now: the node reboots, and the walk resumes after it.
    reboot: bool,
}

impl Outcome {
    fn new(status: StepStatus, code: i32) -> Self {
        Self {
            status,
            code,
            reboot: false,
        }
    }

    fn failed() -> Self {
        Self::new(StepStatus::Failed, 1)
    }
}

fn corrupt(entry: &Entry, detail: String) -> AgentError {
    AgentError::Corrupt {
        path: entry.dir.display().to_string(),
        detail,
    }
}

/// One invocation being run (or resumed).
struct Exec<'a> {
    ctx: &'a ExecCtx,
    entry: &'a Entry,
    cancel: &'a CancellationToken,
    changed: &'a watch::Sender<u64>,
    st: InvocationState,
    /// The execution timeout, counted from when the invocation was recorded.
    deadline: Instant,
    /// The entry's files and directories are flushed (done with the first durable save).
    names_flushed: bool,
}

/// Runs (or resumes) the invocation in `entry` until it finishes or asks for a reboot.
pub async fn execute(
    ctx: &ExecCtx,
    entry: &Entry,
    cancel: &CancellationToken,
    changed: &watch::Sender<u64>,
) -> Result<(), AgentError> {
    let invoke = entry.invoke()?;
    let steps: Vec<ResolvedStep> =
        serde_json::from_value(invoke.steps.clone()).map_err(|e| corrupt(entry, e.to_string()))?;
    let mut st = entry.load()?;
    if st.finished.is_some() {
        return Ok(());
    }
    // (An unknown boot, "", proves nothing: then the restart is taken for the reboot.)
    if st.rebooting
        && !ctx.restart_is_reboot
        && !st.reboot_asked_in.is_empty()
        && st.reboot_asked_in == boot_id()
    {
        // The agent died between asking for the reboot and the reboot: ask again.
        let _ = ctx.reboot.send(()).await;
        return Ok(());
    }
    st.rebooting = false;
    let deadline = Instant::now()
        + remaining(
            Duration::from_secs(invoke.execution_timeout_secs),
            st.started_ms,
            now_ms(),
        );
    let mut x = Exec {
        ctx,
        entry,
        cancel,
        changed,
        st,
        deadline,
        names_flushed: false,
    };

    let mut failed = false;
    let mut succeed_anyway = false;
    let mut stopped = false;
    let mut cancelled = false;
    let mut timed_out = false;
    let mut exit_code = 0;
    for (i, step) in steps.iter().enumerate() {
        let Some(state) = x.st.steps.get(i).cloned() else {
            return Err(corrupt(entry, format!("no state for step {i}")));
        };
        let (status, code) = if state.status.is_done() {
            (state.status, state.exit_code)
        } else if (stopped && !step.finally_step) || cancelled || timed_out {
            let status = if cancelled {
                StepStatus::Cancelled
            } else {
                StepStatus::Skipped
            };
            x.set_step(i, status, 0)?;
            continue;
        } else if !precondition_holds(step, ctx.platform_type) {
            x.set_step(i, StepStatus::Skipped, 0)?;
            continue;
        } else {
            if let Some(s) = x.st.steps.get_mut(i) {
                // Saved with the step's first unit record.
                s.status = StepStatus::Running;
            }
            let o = x.step(&invoke, i, &i.to_string(), step, 0).await?;
            if o.reboot {
                if step.action.runs_script() {
                    // The step itself asked: it is done. A nested step's document goes on after
                    // the reboot, so its top-level step stays running.
                    if let Some(s) = x.st.steps.get_mut(i) {
                        s.status = StepStatus::Success;
                        s.exit_code = REBOOT_EXIT_CODE;
                    }
                }
                // The unit's record already asked for the reboot, durably.
                x.save()?;
                crash::point("rebooting");
                let _ = ctx.reboot.send(()).await;
                return Ok(());
            }
            x.set_step(i, o.status, o.code)?;
            crash::point("step-done");
            (o.status, o.code)
        };
        match status {
            StepStatus::Success | StepStatus::Skipped => {
                if step.on_success == Some(OnSuccess::Exit) && status == StepStatus::Success {
                    stopped = true;
                }
            }
            StepStatus::Cancelled => {
                cancelled = true;
                exit_code = code;
            }
            StepStatus::Failed | StepStatus::TimedOut => {
                exit_code = code;
                if status == StepStatus::TimedOut && Instant::now() >= x.deadline {
                    timed_out = true;
                }
                match step.on_failure {
                    OnFailure::Exit => {
                        failed = true;
                        stopped = true;
                    }
                    OnFailure::SuccessAndExit => {
                        succeed_anyway = true;
                        stopped = true;
                    }
                    OnFailure::Continue => failed = true,
                }
            }
            StepStatus::Pending | StepStatus::Running => {}
        }
    }
    let status = if cancelled {
        "Cancelled"
    } else if timed_out {
        "TimedOut"
    } else if failed && !succeed_anyway {
        "Failed"
    } else {
        "Success"
    };
    let exit_code = if status == "Success" { 0 } else { exit_code };
    x.st.finished = Some((status.to_string(), exit_code));
    // Durable before the result is reported: a result the server stored is never replaced by
    // one the journal forgot.
    x.save_durable().await?;
    crash::point("finished");
    Ok(())
}

impl Exec<'_> {
    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn save(&self) -> Result<(), AgentError> {
        self.entry.save(&self.st, Flush::Lazy)?;
        self.notify();
        Ok(())
    }

    /// Saves and flushes to disk, on the blocking pool: a flush takes milliseconds, and an
    /// agent (or a simulator of many) must not stall its connection for them. Concurrent
    /// flushes of many invocations then share the filesystem's journal commits.
    async fn save_durable(&mut self) -> Result<(), AgentError> {
        let (entry, st, first) = (self.entry.clone(), self.st.clone(), !self.names_flushed);
        let saved = tokio::task::spawn_blocking(move || {
            entry.save(&st, Flush::Durable)?;
            if first {
                entry.flush_names()?;
            }
            Ok::<_, AgentError>(())
        })
        .await
        .map_err(|e| corrupt(self.entry, format!("the journal writer failed: {e}")))?;
        saved?;
        self.names_flushed = true;
        self.notify();
        Ok(())
    }

    fn set_step(&mut self, i: usize, status: StepStatus, code: i32) -> Result<(), AgentError> {
        if let Some(s) = self.st.steps.get_mut(i) {
            s.status = status;
            s.exit_code = code;
        }
        self.save()
    }

    /// Records a unit's result. A lazy save: a later durable one (the next unit's start, the
    /// final result) flushes it, and if a machine crash loses it the unit reads as lost.
    fn unit_done(&mut self, key: &str, o: Outcome) -> Result<Outcome, AgentError> {
        self.record_unit(key, o);
        self.save()?;
        crash::point("unit-done");
        Ok(o)
    }

    fn record_unit(&mut self, key: &str, o: Outcome) {
        let unit = self.st.units.entry(key.to_string()).or_insert(UnitState {
            status: o.status,
            exit_code: o.code,
            pid: None,
            start_time: None,
            boot_id: String::new(),
            started_ms: now_ms(),
        });
        unit.status = o.status;
        unit.exit_code = o.code;
    }

    /// Runs one step (top level or nested) with its attempts; `out` is the top-level step
    /// whose output files it writes to, `path` its key prefix.
    async fn step(
        &mut self,
        invoke: &Invoke,
        out: usize,
        path: &str,
        step: &ResolvedStep,
        depth: usize,
    ) -> Result<Outcome, AgentError> {
        let mut result = Outcome::failed();
        for attempt in 1..=step.max_attempts.max(1) {
            let key = format!("{path}.{attempt}");
            result = match self.st.units.get(&key) {
                Some(u) if u.status.is_done() => Outcome::new(u.status, u.exit_code),
                _ => match step.action {
                    Action::RunShellScript | Action::RunPowerShellScript => {
                        self.script(invoke, out, &key, step, attempt).await?
                    }
                    Action::Unsupported(plugin) => {
                        note(
                            self.entry,
                            out,
                            &format!(
                                "drover: {plugin} is not supported on this node (Drover runs \
                                 aws:runShellScript, aws:runPowerShellScript with pwsh, \
                                 aws:runDocument and aws:downloadContent); give the step a \
                                 platformType precondition to skip it where it cannot run"
                            ),
                        );
                        self.unit_done(&key, Outcome::failed())?
                    }
                    Action::DownloadContent => self.download(invoke, out, &key, step).await?,
                    Action::RunDocument => {
                        let o = Box::pin(self.document(invoke, out, &key, step, depth)).await?;
                        if o.reboot {
                            // Not done: the walk comes back into it after the reboot.
                            return Ok(o);
                        }
                        self.unit_done(&key, o)?
                    }
                },
            };
            if result.reboot
                || matches!(
                    result.status,
                    StepStatus::Success | StepStatus::Cancelled | StepStatus::TimedOut
                )
            {
                break;
            }
        }
        Ok(result)
    }

    fn slot(&self, out: usize, key: &str, interpreter: &Interpreter) -> Slot {
        Slot {
            script: self
                .entry
                .unit_script(key)
                .with_extension(shell::script_extension(interpreter)),
            exit: self.entry.unit_exit(key),
            stdout: self.entry.output(out, OutputStream::Stdout),
            stderr: self.entry.output(out, OutputStream::Stderr),
        }
    }

    /// A script unit: adopted if its record says it started, else started, gated until its
    /// record is on disk.
    async fn script(
        &mut self,
        invoke: &Invoke,
        out: usize,
        key: &str,
        step: &ResolvedStep,
        attempt: u32,
    ) -> Result<Outcome, AgentError> {
        let interpreter = match step.action {
            Action::RunPowerShellScript => match shell::find_pwsh() {
                Some(pwsh) => Interpreter::Pwsh(pwsh),
                None if !self.st.units.contains_key(key) => {
                    note(
                        self.entry,
                        out,
                        "drover: aws:runPowerShellScript is not supported on this node: \
                         PowerShell 7 (pwsh) was not found on PATH; install it, or give the \
                         step a platformType precondition to skip it here",
                    );
                    return self.unit_done(key, Outcome::failed());
                }
                // Recorded as started: adopt it (the interpreter is not needed for that).
                None => Interpreter::Sh,
            },
            _ => Interpreter::Sh,
        };
        let slot = self.slot(out, key, &interpreter);
        let timeout = step_timeout(step, self.deadline);
        if let Some(u) = self.st.units.get(key).cloned() {
            let adopted = shell::adopt(
                &slot,
                u.pid,
                u.start_time,
                u.boot_id == boot_id(),
                remaining(timeout, u.started_ms, now_ms()),
                self.cancel,
            )
            .await;
            match adopted {
                Adopted::Done(status, code) => {
                    if code == shell::LOST {
                        note(
                            self.entry,
                            out,
                            "drover: the script ended without an exit code while the agent was \
                             down (the machine restarted, or it was killed); it is not run again",
                        );
                    }
                    return self.script_done(key, status, code).await;
                }
                // The agent died before opening the gate: the script never ran.
                Adopted::NotRun => {}
            }
        }
        if self.cancel.is_cancelled() {
            return self.unit_done(key, Outcome::new(StepStatus::Cancelled, shell::KILLED));
        }
        if timeout.is_zero() {
            // Resumed after its time ran out (a long outage, a slow reboot): never start a
            // script only to kill it.
            note(
                self.entry,
                out,
                "drover: the step's time ran out before it could start; it was not started",
            );
            return self.unit_done(key, Outcome::new(StepStatus::TimedOut, shell::KILLED));
        }
        let spec = Spec {
            script: &script_text(step),
            dir: &working_dir(self.entry, step),
            env: env_for(self.ctx, invoke, step, attempt),
            interpreter,
        };
        // Nothing is recorded until the wrapper runs, so a start that failed for want of a
        // process or a file descriptor (a busy machine) is simply tried again, a few times.
        let mut pause = Duration::from_millis(100);
        let mut started = loop {
            match shell::start(&slot, &spec) {
                Ok(s) => break s,
                Err(e) if e.is_resource_shortage() && pause < START_PATIENCE => {
                    tracing::warn!(error = %crate::error_chain(&e), retry_in = ?pause, "could not start a script; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.cancel.cancelled() => {}
                    }
                    if self.cancel.is_cancelled() {
                        return self
                            .unit_done(key, Outcome::new(StepStatus::Cancelled, shell::KILLED));
                    }
                    pause *= 2;
                }
                Err(e) => {
                    let why = crate::error_chain(&e);
                    note(
                        self.entry,
                        out,
                        &format!("could not start the script: {why}"),
                    );
                    return self.unit_done(key, Outcome::failed());
                }
            }
        };
        self.st.units.insert(
            key.to_string(),
            UnitState {
                status: StepStatus::Running,
                exit_code: 0,
                pid: Some(started.pid),
                start_time: started.start_time,
                boot_id: boot_id(),
                started_ms: now_ms(),
            },
        );
        // The record that says "never start this again" reaches the disk before the script
        // may run.
        self.save_durable().await?;
        crash::point("unit-recorded");
        started.open_gate().await;
        crash::point("unit-started");
        let (status, code) = shell::wait(&slot, started, timeout, self.cancel).await;
        crash::point("unit-exited");
        self.script_done(key, status, code).await
    }

    async fn script_done(
        &mut self,
        key: &str,
        status: StepStatus,
        code: i32,
    ) -> Result<Outcome, AgentError> {
        if status == StepStatus::Failed && code == REBOOT_EXIT_CODE {
            // Done, and the reboot asked for, in one durable record: the walk after the reboot
            // goes on past this unit, and an agent that dies before rebooting reboots when it
            // comes back (see `execute`).
            self.st.rebooting = true;
            self.st.reboot_asked_in = boot_id();
            let o = Outcome {
                status: StepStatus::Success,
                code,
                reboot: true,
            };
            self.record_unit(key, o);
            self.save_durable().await?;
            crash::point("unit-done");
            return Ok(o);
        }
        self.unit_done(key, Outcome::new(status, code))
    }

    /// A download unit. It runs no script of the user's: after a crash mid-download it
    /// downloads again, which is safe.
    async fn download(
        &mut self,
        invoke: &Invoke,
        out: usize,
        key: &str,
        step: &ResolvedStep,
    ) -> Result<Outcome, AgentError> {
        self.save()?;
        let o = match crate::download::run(self.ctx, self.entry, invoke, step).await {
            Ok(()) => Outcome::new(StepStatus::Success, 0),
            Err(msg) => {
                note(self.entry, out, &msg);
                Outcome::failed()
            }
        };
        self.unit_done(key, o)
    }

    /// A runDocument unit: the nested document's steps, each a unit under `key`.
    async fn document(
        &mut self,
        invoke: &Invoke,
        out: usize,
        key: &str,
        step: &ResolvedStep,
        depth: usize,
    ) -> Result<Outcome, AgentError> {
        if depth >= MAX_NESTING {
            note(
                self.entry,
                out,
                "runDocument nested too deeply (at most 3 levels)",
            );
            return Ok(Outcome::failed());
        }
        let kept = self
            .st
            .nested
            .get(key)
            .and_then(|v| serde_json::from_value::<Resolution>(v.clone()).ok());
        let resolution = match kept.map_or_else(|| nested(self.entry, invoke, step), Ok) {
            Ok(r) => r,
            Err(msg) => {
                note(self.entry, out, &msg);
                return Ok(Outcome::failed());
            }
        };
        if !self.st.nested.contains_key(key) {
            // Saved with the first nested unit's record, which is flushed before it runs.
            if let Ok(v) = serde_json::to_value(&resolution) {
                self.st.nested.insert(key.to_string(), v);
            }
        }
        let mut inner = invoke.clone();
        inner.env.extend(resolution.env.clone());
        let mut outcome = Outcome::new(StepStatus::Success, 0);
        for (j, nested_step) in resolution.steps.iter().enumerate() {
            if !precondition_holds(nested_step, self.ctx.platform_type) {
                continue;
            }
            let path = format!("{key}-{j}");
            let r = self
                .step(&inner, out, &path, nested_step, depth + 1)
                .await?;
            if r.reboot {
                return Ok(r);
            }
            if r.status != StepStatus::Success {
                outcome = r;
                if nested_step.on_failure != OnFailure::Continue {
                    break;
                }
            }
        }
        Ok(outcome)
    }
}

/// Appends a line to the step's stderr (for errors the agent itself reports).
fn note(entry: &Entry, i: usize, msg: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(entry.output(i, OutputStream::Stderr))
    {
        let _ = writeln!(f, "{msg}");
    }
}
