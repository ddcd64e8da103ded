//! What a resolved step's inputs mean on this node: its script, working directory,
//! environment, timeout, precondition, and the document a runDocument step runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use drover_docs::{Resolution, ResolvedStep};
use drover_proto::Invoke;
use serde_json::Value;
use tokio::time::Instant;

use crate::executor::ExecCtx;
use crate::journal::Entry;

const DEFAULT_STEP_TIMEOUT: u64 = 3600;

/// What is left of `timeout` that started at `started_ms` (Unix milliseconds), at `now_ms`.
/// Milliseconds, not seconds: a 1 s timeout must not become 0 by rounding.
pub(crate) fn remaining(timeout: Duration, started_ms: i64, now_ms: i64) -> Duration {
    let spent = u64::try_from(now_ms.saturating_sub(started_ms)).unwrap_or(0);
    timeout.saturating_sub(Duration::from_millis(spent))
}

pub(crate) fn precondition_holds(step: &ResolvedStep, platform: &str) -> bool {
    match &step.precondition {
        None => true,
        Some((left, right)) if left == "platformType" => right == platform,
        Some((left, right)) => left == right,
    }
}

pub(crate) fn step_timeout(step: &ResolvedStep, deadline: Instant) -> Duration {
    let secs = match step.inputs.get("timeoutSeconds") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(DEFAULT_STEP_TIMEOUT);
    Duration::from_secs(secs).min(deadline.saturating_duration_since(Instant::now()))
}

/// The document a runDocument step runs, resolved with its parameters.
pub(crate) fn nested(
    entry: &Entry,
    invoke: &Invoke,
    step: &ResolvedStep,
) -> Result<Resolution, String> {
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

pub(crate) fn script_text(step: &ResolvedStep) -> String {
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

pub(crate) fn working_dir(entry: &Entry, step: &ResolvedStep) -> PathBuf {
    match step.inputs.get("workingDirectory").and_then(Value::as_str) {
        Some(d) if !d.trim().is_empty() => entry.work_dir().join(d),
        _ => entry.work_dir(),
    }
}

pub(crate) fn env_for(
    ctx: &ExecCtx,
    invoke: &Invoke,
    step: &ResolvedStep,
    attempt: u32,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = invoke.env.clone().into_iter().collect();
    env.push(("DROVER_NODE_ID".into(), ctx.node_id.clone()));
    env.push(("DROVER_COMMAND_ID".into(), invoke.command_id.clone()));
    env.push(("DROVER_INVOCATION_ID".into(), invoke.invocation_id.clone()));
    // A retried script can tell it is a retry (and clean up after the attempt before).
    env.push(("DROVER_STEP_ATTEMPT".into(), attempt.to_string()));
    if let Some(Value::Object(m)) = step.inputs.get("env") {
        env.extend(
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))),
        );
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_count_milliseconds_not_whole_seconds() {
        let second = Duration::from_secs(1);
        // Started at 10.999 s, now 11.001 s: 2 ms spent (whole seconds would say 1 s).
        assert_eq!(
            remaining(second, 10_999, 11_001),
            Duration::from_millis(998)
        );
        assert_eq!(remaining(second, 10_000, 12_000), Duration::ZERO);
        // A clock that went back spends nothing.
        assert_eq!(remaining(second, 11_000, 10_000), second);
    }
}
