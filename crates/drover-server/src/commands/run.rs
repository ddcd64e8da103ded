//! Running one command: rate control (at most `max_concurrency` invocations in flight, no new
//! ones once more than `max_errors` failed), and the delivery of each invocation over a stream
//! of its node's tunnel: wait for the node (up to the delivery timeout), send, record progress,
//! confirm the final result, and start over after a lost connection (the agent replays).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::{Invoke, Message, OutputStream, Progress, StreamKind, StreamOpen};
use drover_store::{InvocationQuery, InvocationUpdate, NodeId, Store};
use drover_tunnel::{FrameCodec, Tunnel};
use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::output::Ledger;
use super::writer::Updates;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::secrets;

/// How long after the execution timeout the server waits for the agent's own timeout report.
const GRACE: Duration = Duration::from_secs(30);
/// First and longest pause before a delivery is tried again on a tunnel that is still up.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

pub struct Ctx {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub updates: Updates,
    pub metrics: Metrics,
    /// Opens the SecureStrings an invocation carries, as it is delivered.
    pub sealer: Arc<crate::sealing::Sealer>,
    /// Server shutdown: stop delivering, leave everything to resume at the next start.
    pub stop: CancellationToken,
}

pub struct Pending {
    pub invocation_id: String,
    pub node: NodeId,
    pub status: String,
}

pub struct Run {
    pub command_id: String,
    pub invocations: Vec<Pending>,
    pub max_concurrency: usize,
    pub max_errors: usize,
    pub delivery_timeout: Duration,
    pub execution_timeout: Duration,
    pub invoke: Invoke,
    pub cancel: CancellationToken,
}

fn is_error(status: &str) -> bool {
    matches!(status, "Failed" | "TimedOut")
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "Success" | "Failed" | "TimedOut" | "Cancelled")
}

async fn finish(
    ctx: &Ctx,
    invocation_id: &str,
    status: &str,
    detail: &str,
    exit_code: Option<i64>,
) {
    ctx.updates
        .push(InvocationUpdate::Status {
            invocation_id: invocation_id.to_string(),
            status: status.to_string(),
            detail: detail.to_string(),
            exit_code,
            at: secs(),
        })
        .await;
    ctx.metrics
        .invocation_finished(if detail == "DeliveryTimedOut" {
            detail
        } else {
            status
        });
}

fn secs() -> i64 {
    secrets::now()
}

/// Runs the command to its end (or until the server stops); returns its final status.
pub async fn run(ctx: Arc<Ctx>, run: Run) -> Option<String> {
    let run = Arc::new(run);
    let sem = Arc::new(Semaphore::new(run.max_concurrency.max(1)));
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut errors = run
        .invocations
        .iter()
        .filter(|p| is_error(&p.status))
        .count();
    let mut terminated = false;
    let reap = |tasks: &mut JoinSet<String>, errors: &mut usize| {
        while let Some(done) = tasks.try_join_next() {
            if done.as_deref().is_ok_and(is_error) {
                *errors += 1;
            }
        }
    };
    for p in run.invocations.iter().filter(|p| !is_terminal(&p.status)) {
        reap(&mut tasks, &mut errors);
        let permit = if terminated || run.cancel.is_cancelled() {
            None
        } else {
            tokio::select! {
                p = sem.clone().acquire_owned() => p.ok(),
                _ = run.cancel.cancelled() => None,
                _ = ctx.stop.cancelled() => return None,
            }
        };
        reap(&mut tasks, &mut errors);
        if errors > run.max_errors {
            terminated = true;
        }
        let Some(permit) = permit.filter(|_| !terminated && !run.cancel.is_cancelled()) else {
            // Never started: after too many errors (Terminated) or a cancel.
            let detail = if terminated {
                "Terminated"
            } else {
                "Cancelled"
            };
            finish(&ctx, &p.invocation_id, "Cancelled", detail, None).await;
            continue;
        };
        let (ctx2, run2) = (ctx.clone(), run.clone());
        let (id, node, resumed) = (
            p.invocation_id.clone(),
            p.node.clone(),
            p.status == "InProgress",
        );
        tasks.spawn(async move {
            let status = deliver(&ctx2, &run2, &id, &node, resumed).await;
            drop(permit);
            status
        });
    }
    while let Some(done) = tasks.join_next().await {
        if done.as_deref().is_ok_and(is_error) {
            errors += 1;
        }
    }
    if ctx.stop.is_cancelled() {
        return None;
    }
    // Every invocation's last update is stored before the command's final status.
    ctx.updates.flush().await;
    let counts = ctx
        .store
        .status_counts(&run.command_id)
        .await
        .unwrap_or_default();
    let total: i64 = counts.values().sum();
    let succeeded = counts.get("Success").copied().unwrap_or(0);
    let status = if run.cancel.is_cancelled() {
        "Cancelled"
    } else if errors > run.max_errors {
        "Failed"
    } else if succeeded == total {
        "Success"
    } else {
        "Incomplete"
    };
    Some(status.to_string())
}

/// Delivers one invocation until it has a final status; "" when the server is stopping.
async fn deliver(ctx: &Ctx, run: &Run, id: &str, node: &NodeId, resumed: bool) -> String {
    let delivery_deadline = Instant::now() + run.delivery_timeout;
    let mut exec_deadline = resumed.then(|| Instant::now() + run.execution_timeout);
    let mut retries = 0u32;
    loop {
        // Wait for the node's tunnel.
        let tunnel = loop {
            let notify = ctx.registry.connect_notify(node);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = ctx.registry.tunnel(node) {
                break t;
            }
            let (deadline, detail) = match exec_deadline {
                Some(d) => (d + GRACE, "ExecutionTimedOut"),
                None => (delivery_deadline, "DeliveryTimedOut"),
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    finish(ctx, id, "TimedOut", detail, None).await;
                    return "TimedOut".into();
                }
                _ = run.cancel.cancelled() => {
                    finish(ctx, id, "Cancelled", "Cancelled", None).await;
                    return "Cancelled".into();
                }
                _ = ctx.stop.cancelled() => return String::new(),
            }
        };
        match stream(ctx, run, id, &tunnel, &mut exec_deadline).await {
            Ok(status) => return status,
            Err(_) if ctx.stop.is_cancelled() => return String::new(),
            // The connection was lost, or the store refused part of the result: wait for the
            // node, and the agent replays. A failure with the tunnel still up was not the
            // connection's, so back off rather than spin on it.
            Err(why) => {
                tracing::debug!(invocation = %id, node = %node, retries, why, "delivery interrupted; it starts over");
                if ctx.registry.tunnel(node).is_none() {
                    retries = 0;
                    continue;
                }
                retries = retries.saturating_add(1);
                // Cancel and the deadlines win over a delivery that keeps failing. A cancel gets
                // one more try first, so that an agent running the invocation hears it.
                if run.cancel.is_cancelled() && retries > 1 {
                    finish(ctx, id, "Cancelled", "Cancelled", None).await;
                    return "Cancelled".into();
                }
                let (deadline, detail) = match exec_deadline {
                    Some(d) => (d + GRACE, "ExecutionTimedOut"),
                    None => (delivery_deadline, "DeliveryTimedOut"),
                };
                let pause = RETRY_FIRST
                    .saturating_mul(2u32.saturating_pow(retries.min(16) - 1))
                    .min(RETRY_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        finish(ctx, id, "TimedOut", detail, None).await;
                        return "TimedOut".into();
                    }
                    _ = run.cancel.cancelled(), if retries == 1 => {}
                    _ = ctx.stop.cancelled() => return String::new(),
                }
            }
        }
    }
}

/// Ends a delivery whose agent sent progress the server will not store; the next delivery
/// starts where the store is, and the agent replays from there.
async fn refuse_progress(
    ctx: &Ctx,
    id: &str,
    framed: &mut drover_tunnel::Framed<drover_tunnel::Stream>,
    why: String,
) -> Result<String, &'static str> {
    tracing::warn!(invocation = %id, reason = %why, "refused progress from the agent");
    ctx.metrics.refused("bad_progress");
    let _ = framed
        .send(Message::Error {
            code: "bad_progress".into(),
            message: why,
        })
        .await;
    Err("the agent's progress was refused")
}

/// What the store already has of the invocation's output, so the agent replays from there.
async fn received(ctx: &Ctx, id: &str) -> BTreeMap<String, [u64; 2]> {
    let q = InvocationQuery {
        id: Some(id.to_string()),
        limit: 1,
        with_steps: true,
        // Only the byte counts.
        output_cap: Some(0),
        ..InvocationQuery::default()
    };
    match ctx.store.list_invocations(&q).await {
        Ok(invs) => invs
            .into_iter()
            .filter(|i| i.id == id)
            .flat_map(|i| i.steps)
            .map(|s| {
                (
                    s.name,
                    [s.stdout_bytes.max(0) as u64, s.stderr_bytes.max(0) as u64],
                )
            })
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// One delivery over one stream: the final status, or why the delivery must start over (the
/// connection was lost, the store refused an update).
/// A stream of a tunnel whose connection died may never be woken again, so the tunnel's end
/// ends the delivery too.
async fn stream(
    ctx: &Ctx,
    run: &Run,
    id: &str,
    tunnel: &Tunnel,
    exec_deadline: &mut Option<Instant>,
) -> Result<String, &'static str> {
    tokio::select! {
        r = stream_once(ctx, run, id, tunnel, exec_deadline) => r,
        _ = tunnel.closed() => Err("the tunnel closed"),
    }
}

async fn stream_once(
    ctx: &Ctx,
    run: &Run,
    id: &str,
    tunnel: &Tunnel,
    exec_deadline: &mut Option<Instant>,
) -> Result<String, &'static str> {
    let first = exec_deadline.is_none();
    // A barrier: every update queued before is stored once this one is, so what we read next
    // is complete.
    let started = ctx
        .updates
        .push_stored(InvocationUpdate::Status {
            invocation_id: id.to_string(),
            status: "InProgress".into(),
            detail: String::new(),
            exit_code: None,
            at: secs(),
        })
        .await;
    if !started {
        return Err("the store did not take the start");
    }
    if first {
        *exec_deadline = Some(Instant::now() + run.execution_timeout);
    }
    let deadline = exec_deadline.unwrap_or_else(|| Instant::now() + run.execution_timeout) + GRACE;
    let mut invoke = run.invoke.clone();
    if let Err(why) = super::refs::open_secrets(&*ctx.store, &ctx.sealer, &mut invoke.env).await {
        finish(
            ctx,
            id,
            "Failed",
            &format!("SecureStringUnavailable: {why}"),
            None,
        )
        .await;
        return Ok("Failed".into());
    }
    invoke.invocation_id = id.to_string();
    invoke.command_id = run.command_id.clone();
    if !first {
        invoke.received = received(ctx, id).await;
    }
    let steps = invoke
        .steps
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(|n| n.as_str()).map(str::to_string));
    let mut ledger = Ledger::new(invoke.output_limit, steps, &invoke.received);
    let s = tunnel
        .open()
        .await
        .map_err(|_| "no stream could be opened")?;
    let mut framed = FrameCodec::framed(s);
    framed
        .feed(Message::Open(StreamOpen {
            kind: StreamKind::Invocation,
        }))
        .await
        .map_err(|_| "the stream closed before the invocation was sent")?;
    if let Err(e) = framed.send(Message::Invoke(invoke)).await {
        // A message that cannot be framed will never be: fail it, never retry it forever.
        if let drover_tunnel::CodecError::Frame(why) = &e {
            finish(ctx, id, "Failed", &format!("Undeliverable: {why}"), None).await;
            return Ok("Failed".into());
        }
        return Err("the stream closed before the invocation was sent");
    }
    let mut cancel_sent = false;
    loop {
        tokio::select! {
            msg = framed.next() => {
                let p = match msg {
                    Some(Ok(Message::Progress(p))) => p,
                    Some(Ok(Message::Error { code, message })) => {
                        finish(ctx, id, "Failed", &format!("{code}: {message}"), None).await;
                        return Ok("Failed".into());
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) => return Err("the stream failed"),
                    None => return Err("the agent closed the stream"),
                };
                let inv = id.to_string();
                let checked = match &p {
                    Progress::StepStarted { step } | Progress::StepFinished { step, .. } => ledger.step(step),
                    _ => Ok(()),
                };
                if let Err(why) = checked {
                    return refuse_progress(ctx, id, &mut framed, why).await;
                }
                match p {
                    Progress::StepStarted { step } => ctx.updates.push(InvocationUpdate::StepStarted { invocation_id: inv, step }).await,
                    Progress::Output { step, stream, offset, len, data } => {
                        let chunk = match ledger.accept(&step, stream, offset, len, data) {
                            Ok(Some(chunk)) => chunk,
                            Ok(None) => continue,
                            Err(why) => return refuse_progress(ctx, id, &mut framed, why).await,
                        };
                        ctx.updates.push(InvocationUpdate::Output {
                            invocation_id: inv,
                            step,
                            stderr: stream == OutputStream::Stderr,
                            offset: i64::try_from(chunk.offset).unwrap_or(i64::MAX),
                            len: i64::try_from(chunk.len).unwrap_or(0),
                            data: chunk.data,
                        }).await
                    }
                    Progress::StepFinished { step, status, exit_code, truncated } => {
                        let truncated = truncated || ledger.truncated(&step);
                        ctx.updates.push(InvocationUpdate::StepFinished { invocation_id: inv, step, status, exit_code: i64::from(exit_code), truncated }).await
                    }
                    Progress::Rebooting => {
                        ctx.updates.push(InvocationUpdate::Status { invocation_id: inv, status: "InProgress".into(), detail: "Rebooting".into(), exit_code: None, at: secs() }).await
                    }
                    Progress::Finished { status, exit_code } => {
                        let status = match status.as_str() {
                            "Success" | "Failed" | "TimedOut" | "Cancelled" => status,
                            _ => "Failed".to_string(),
                        };
                        let detail = match status.as_str() {
                            "TimedOut" => "ExecutionTimedOut",
                            "Cancelled" => "Cancelled",
                            _ => "",
                        };
                        let stored = ctx.updates.push_stored(InvocationUpdate::Status {
                            invocation_id: inv,
                            status: status.clone(),
                            detail: detail.into(),
                            exit_code: Some(i64::from(exit_code)),
                            at: secs(),
                        }).await;
                        if !stored {
                            return Err("the store did not take the result");
                        }
                        ctx.metrics.invocation_finished(&status);
                        // Only now may the agent forget the result.
                        let _ = framed.send(Message::Delivered).await;
                        return Ok(status);
                    }
                }
            }
            _ = run.cancel.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                ctx.updates.push(InvocationUpdate::Status { invocation_id: id.to_string(), status: "Cancelling".into(), detail: String::new(), exit_code: None, at: secs() }).await;
                if framed.send(Message::Cancel).await.is_err() {
                    return Err("the stream closed before the cancel was sent");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let _ = framed.send(Message::Cancel).await;
                finish(ctx, id, "TimedOut", "ExecutionTimedOut", Some(137)).await;
                return Ok("TimedOut".into());
            }
            _ = ctx.stop.cancelled() => return Err("the server is stopping"),
        }
    }
}
