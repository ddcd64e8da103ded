//! Runs an invocation's steps in order, recording everything in the journal: step controls
//! (onFailure, onSuccess, finallyStep, maxAttempts), preconditions, timeouts, cancel, reboot
//! (exit code 194) and nested documents. Each step runs at most once: a step found running after
//! a restart is adopted, never started again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use drover_docs::{Action, OnFailure, OnSuccess, Resolution, ResolvedStep};
use drover_proto::{Invoke, OutputStream};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::journal::{boot_id, Entry, StepStatus};
use crate::shell::{self, Slot, Spec};
use crate::AgentError;

/// Exit code by which a script asks for a reboot and a resume at the next step.
pub const REBOOT_EXIT_CODE: i32 = 194;
const DEFAULT_STEP_TIMEOUT: u64 = 3600;
const MAX_NESTING: usize = 3;

/// What every execution needs.
#[derive(Clone)]
pub struct ExecCtx {
    pub state_dir: PathBuf,
    pub node_id: String,
    /// `Linux` or `MacOS`, as preconditions name platforms.
    pub platform_type: &'static str,
    /// Asked once a step exited 194 and the journal says so.
    pub reboot: mpsc::Sender<()>,
}

fn corrupt(entry: &Entry, detail: String) -> AgentError {
    AgentError::Corrupt {
        path: entry.dir.display().to_string(),
        detail,
    }
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
    let same_boot = st.boot_id == boot_id();
    if st.rebooting {
        st.rebooting = false;
        st.boot_id = boot_id();
        entry.save(&st)?;
    }
    let notify = || changed.send_modify(|v| *v += 1);
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(invoke.execution_timeout_secs).saturating_sub(elapsed(st.started_at));

    let mut failed = false;
    let mut succeed_anyway = false;
    let mut stopped = false;
    let mut cancelled = false;
    let mut timed_out = false;
    let mut exit_code = 0;
    for (i, step) in steps.iter().enumerate() {
        let Some(state) = st.steps.get(i).cloned() else {
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
            set(entry, &mut st, i, status, 0, None)?;
            notify();
            continue;
        } else if !precondition_holds(step, ctx.platform_type) {
            set(entry, &mut st, i, StepStatus::Skipped, 0, None)?;
            notify();
            continue;
        } else {
            let adopt = state.status == StepStatus::Running;
            if !adopt {
                set(entry, &mut st, i, StepStatus::Running, 0, None)?;
                notify();
            }
            let timeout = step_timeout(step, deadline);
            let outcome = run_step(
                ctx, entry, &invoke, i, step, &mut st, adopt, same_boot, timeout, cancel, changed,
                0,
            )
            .await?;
            if outcome.0 == StepStatus::Failed
                && outcome.1 == REBOOT_EXIT_CODE
                && step.action == Action::RunShellScript
            {
                set(
                    entry,
                    &mut st,
                    i,
                    StepStatus::Success,
                    REBOOT_EXIT_CODE,
                    None,
                )?;
                st.rebooting = true;
                entry.save(&st)?;
                notify();
                let _ = ctx.reboot.send(()).await;
                return Ok(());
            }
            set(entry, &mut st, i, outcome.0, outcome.1, None)?;
            notify();
            outcome
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
                if status == StepStatus::TimedOut && tokio::time::Instant::now() >= deadline {
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
    st.finished = Some((status.to_string(), exit_code));
    entry.save(&st)?;
    notify();
    Ok(())
}

fn elapsed(started_at: i64) -> Duration {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Duration::from_secs(u64::try_from(now - started_at).unwrap_or(0))
}

fn set(
    entry: &Entry,
    st: &mut crate::journal::InvocationState,
    i: usize,
    status: StepStatus,
    code: i32,
    pid: Option<i32>,
) -> Result<(), AgentError> {
    if let Some(s) = st.steps.get_mut(i) {
        s.status = status;
        s.exit_code = code;
        if pid.is_some() || status.is_done() {
            s.pid = pid;
        }
    }
    entry.save(st)
}

fn precondition_holds(step: &ResolvedStep, platform: &str) -> bool {
    match &step.precondition {
        None => true,
        Some((left, right)) if left == "platformType" => right == platform,
        Some((left, right)) => left == right,
    }
}

fn step_timeout(step: &ResolvedStep, deadline: tokio::time::Instant) -> Duration {
    let secs = match step.inputs.get("timeoutSeconds") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(DEFAULT_STEP_TIMEOUT);
    Duration::from_secs(secs).min(deadline.saturating_duration_since(tokio::time::Instant::now()))
}

fn slot(entry: &Entry, i: usize, sub: &str) -> Slot {
    Slot {
        exit: entry.dir.join(format!("{i}{sub}.exit")),
        stdout: entry.output(i, OutputStream::Stdout),
        stderr: entry.output(i, OutputStream::Stderr),
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

#[allow(clippy::too_many_arguments)]
async fn run_step(
    ctx: &ExecCtx,
    entry: &Entry,
    invoke: &Invoke,
    i: usize,
    step: &ResolvedStep,
    st: &mut crate::journal::InvocationState,
    adopt: bool,
    same_boot: bool,
    timeout: Duration,
    cancel: &CancellationToken,
    changed: &watch::Sender<u64>,
    depth: usize,
) -> Result<(StepStatus, i32), AgentError> {
    let mut result = (StepStatus::Failed, 1);
    for attempt in 1..=step.max_attempts.max(1) {
        let sub = if depth == 0 && attempt == 1 {
            String::new()
        } else {
            format!("-{depth}-{attempt}")
        };
        result = match step.action {
            Action::RunShellScript => {
                let slot = slot(entry, i, &sub);
                if adopt && attempt == 1 {
                    let pid = st.steps.get(i).and_then(|s| s.pid);
                    shell::adopt(&slot, pid, same_boot, timeout, cancel).await
                } else {
                    let spec = Spec {
                        script: &script_text(step),
                        dir: &working_dir(entry, step),
                        env: env_for(ctx, invoke, step),
                    };
                    match shell::start(&slot, &spec) {
                        Ok((child, pid)) => {
                            if depth == 0 {
                                set(entry, st, i, StepStatus::Running, 0, Some(pid))?;
                                changed.send_modify(|v| *v += 1);
                            }
                            shell::wait(&slot, child, pid, timeout, cancel).await
                        }
                        Err(e) => {
                            note(entry, i, &format!("could not start the script: {e}"));
                            (StepStatus::Failed, 1)
                        }
                    }
                }
            }
            Action::DownloadContent => match crate::download::run(ctx, entry, invoke, step).await {
                Ok(()) => (StepStatus::Success, 0),
                Err(msg) => {
                    note(entry, i, &msg);
                    (StepStatus::Failed, 1)
                }
            },
            Action::RunDocument => {
                if depth >= MAX_NESTING {
                    note(entry, i, "runDocument nested too deeply (at most 3 levels)");
                    (StepStatus::Failed, 1)
                } else {
                    match nested(entry, invoke, step) {
                        Ok(resolution) => {
                            Box::pin(run_nested(
                                ctx,
                                entry,
                                invoke,
                                i,
                                &resolution,
                                st,
                                timeout,
                                cancel,
                                changed,
                                depth + 1,
                            ))
                            .await?
                        }
                        Err(msg) => {
                            note(entry, i, &msg);
                            (StepStatus::Failed, 1)
                        }
                    }
                }
            }
        };
        if matches!(
            result.0,
            StepStatus::Success | StepStatus::Cancelled | StepStatus::TimedOut
        ) {
            break;
        }
    }
    Ok(result)
}

/// Runs a nested document's steps inside step `i`: their output is step `i`'s output.
#[allow(clippy::too_many_arguments)]
async fn run_nested(
    ctx: &ExecCtx,
    entry: &Entry,
    invoke: &Invoke,
    i: usize,
    resolution: &Resolution,
    st: &mut crate::journal::InvocationState,
    timeout: Duration,
    cancel: &CancellationToken,
    changed: &watch::Sender<u64>,
    depth: usize,
) -> Result<(StepStatus, i32), AgentError> {
    let mut inner = invoke.clone();
    inner.env.extend(resolution.env.clone());
    let mut outcome = (StepStatus::Success, 0);
    for (j, step) in resolution.steps.iter().enumerate() {
        if !precondition_holds(step, ctx.platform_type) {
            continue;
        }
        let mut nested_step = step.clone();
        nested_step.name = format!("{}.{j}", step.name);
        let r = Box::pin(run_step(
            ctx,
            entry,
            &inner,
            i,
            &nested_step,
            st,
            false,
            true,
            timeout,
            cancel,
            changed,
            depth,
        ))
        .await?;
        if r.0 != StepStatus::Success {
            outcome = r;
            if step.on_failure != OnFailure::Continue {
                break;
            }
        }
    }
    Ok(outcome)
}

/// The document a runDocument step runs, resolved with its parameters.
fn nested(entry: &Entry, invoke: &Invoke, step: &ResolvedStep) -> Result<Resolution, String> {
    let path = step
        .inputs
        .get("documentPath")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match step.inputs.get("documentType").and_then(Value::as_str) {
        Some("SSMDocument") => invoke
            .documents
            .get(path)
            .ok_or_else(|| format!("document {path:?} was not sent with the command"))
            .and_then(|v| serde_json::from_value(v.clone()).map_err(|e| e.to_string())),
        _ => {
            let file = entry.work_dir().join(path);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read document {}: {e}", file.display()))?;
            let doc = drover_docs::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            let params = match step.inputs.get("documentParameters") {
                Some(Value::Object(m)) => m.clone().into_iter().collect(),
                Some(Value::String(s)) if !s.trim().is_empty() => {
                    serde_json::from_str::<BTreeMap<String, Value>>(s)
                        .map_err(|e| format!("documentParameters is not a JSON map: {e}"))?
                }
                _ => BTreeMap::new(),
            };
            let values = drover_docs::validate_values(&doc, &params).map_err(|e| e.to_string())?;
            Ok(drover_docs::resolve(&doc, &values))
        }
    }
}

fn script_text(step: &ResolvedStep) -> String {
    match step.inputs.get("runCommand") {
        Some(Value::String(s)) => format!("{s}\n"),
        Some(Value::Array(lines)) => {
            let mut s = String::new();
            for l in lines {
                match l {
                    Value::String(line) => s.push_str(line),
                    other => s.push_str(&other.to_string()),
                }
                s.push('\n');
            }
            s
        }
        _ => String::new(),
    }
}

fn working_dir(entry: &Entry, step: &ResolvedStep) -> PathBuf {
    match step.inputs.get("workingDirectory").and_then(Value::as_str) {
        Some(d) if !d.trim().is_empty() => entry.work_dir().join(d),
        _ => entry.work_dir(),
    }
}

fn env_for(ctx: &ExecCtx, invoke: &Invoke, step: &ResolvedStep) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = invoke.env.clone().into_iter().collect();
    env.push(("DROVER_NODE_ID".into(), ctx.node_id.clone()));
    env.push(("DROVER_COMMAND_ID".into(), invoke.command_id.clone()));
    env.push(("DROVER_INVOCATION_ID".into(), invoke.invocation_id.clone()));
    if let Some(Value::Object(m)) = step.inputs.get("env") {
        env.extend(
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))),
        );
    }
    env
}
