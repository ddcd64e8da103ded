//! Invocations on the agent: the [`Runner`] starts each at most once (or resumes it from the
//! journal), and an invocation stream from the server is served by replaying the journal to it:
//! new steps, new output from the offsets the server already has, results, until the server says
//! the final result is stored. Live streaming and replay after a reconnect are the same code.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_docs::ResolvedStep;
use drover_proto::{Invoke, Message, OutputStream, Progress};
use drover_tunnel::{Framed, Stream};
use futures::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::crash;
use crate::executor::{execute, ExecCtx};
use crate::journal::{Entry, Flush, StepStatus};

/// Largest output chunk per message (JSON escaping can grow it, within the 1 MiB frame limit).
const CHUNK: usize = 64 * 1024;
/// Tombstones of delivered invocations are kept this long against repeated deliveries.
pub(crate) const TOMBSTONE_DAYS: u64 = 7;
/// How many times an invocation whose journal failed with an I/O error is resumed (over about
/// four minutes) before it is reported Failed.
const EXECUTE_ATTEMPTS: u32 = 12;
/// How often output is tailed while a step runs.
const TAIL: Duration = Duration::from_millis(50);

struct Running {
    cancel: CancellationToken,
    changed: watch::Receiver<u64>,
}

/// Owns every invocation task of this agent process.
pub struct Runner {
    ctx: ExecCtx,
    running: Mutex<HashMap<String, Running>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Runner {
    pub fn new(ctx: ExecCtx) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            running: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resumes every unfinished invocation in the journal (after a restart or a reboot).
    pub fn recover(self: &Arc<Self>) {
        for (id, entry) in Entry::all(&self.ctx.state_dir) {
            if entry.is_delivered() {
                entry.prune_if_older_than(TOMBSTONE_DAYS);
                continue;
            }
            match entry.load() {
                Ok(st) if st.finished.is_none() => {
                    tracing::info!(invocation = %id, "resuming an invocation from the journal");
                    if let Claim::New(tx, cancel) = self.claim(&id) {
                        self.spawn(id, entry, tx, cancel);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!(invocation = %id, error = %e, "unreadable journal entry"),
            }
        }
    }

    /// Claims invocation `id` for one executor, in one step under the lock: the first caller
    /// gets `New` and must start it (or release the claim); any other gets the running one's
    /// handles. So two deliveries at the same moment never start an invocation twice, and the
    /// slow part (the journal's files) happens outside the lock.
    fn claim(&self, id: &str) -> Claim {
        let mut running = self.running();
        if let Some(r) = running.get(id) {
            return Claim::Taken(r.changed.clone(), r.cancel.clone());
        }
        let (tx, rx) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        running.insert(
            id.to_string(),
            Running {
                cancel: cancel.clone(),
                changed: rx,
            },
        );
        Claim::New(tx, cancel)
    }

    /// Starts the executor task of a claimed invocation.
    fn spawn(
        self: &Arc<Self>,
        id: String,
        entry: Entry,
        tx: watch::Sender<u64>,
        cancel: CancellationToken,
    ) {
        let me = self.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            // Running an invocation again is resuming it (every unit is recorded), so an I/O
            // error (no file descriptor or disk space left for a moment) is waited out, not
            // made the invocation's result. A journal that does not parse is final.
            let mut pause = Duration::from_millis(200);
            for attempt in 1.. {
                let Err(e) = execute(&me.ctx, &entry, &cancel, &tx).await else {
                    break;
                };
                let chain = crate::error_chain(&e);
                let transient = matches!(e, crate::AgentError::Io { .. });
                if transient && attempt < EXECUTE_ATTEMPTS && !cancel.is_cancelled() {
                    tracing::warn!(invocation = %id, error = %chain, retry_in = ?pause, "the journal failed; resuming the invocation");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                    continue;
                }
                tracing::error!(invocation = %id, error = %chain, "invocation failed in the agent");
                if let Ok(mut st) = entry.load() {
                    st.finished = Some(("Failed".into(), 1));
                    let _ = entry.save(&st, Flush::Durable);
                }
                break;
            }
            me.running().remove(&id);
            tx.send_modify(|v| *v += 1);
        });
    }

    /// Starts `invoke`, or attaches to it if it is already running or done.
    async fn start_or_attach(
        self: &Arc<Self>,
        invoke: &Invoke,
    ) -> Result<(Entry, watch::Receiver<u64>, CancellationToken), Refusal> {
        let id = invoke.invocation_id.clone();
        let entry = Entry::open(&self.ctx.state_dir, &id)
            .ok_or_else(|| Refusal::Invalid(format!("invalid invocation ID {id:?}")))?;
        let (tx, cancel) = match self.claim(&id) {
            Claim::Taken(changed, cancel) => return Ok((entry, changed, cancel)),
            Claim::New(tx, cancel) => (tx, cancel),
        };
        // Released unless a task takes the invocation over: also when this future is dropped
        // (its connection went away) while the entry is being made.
        let mut claim = ClaimGuard {
            runner: self,
            id: &id,
            held: true,
        };
        let changed = tx.subscribe();
        // Creating files takes the filesystem's time: off the async workers.
        let prepared = {
            let (entry, invoke) = (entry.clone(), invoke.clone());
            tokio::task::spawn_blocking(move || prepare(&entry, &invoke))
                .await
                .unwrap_or_else(|e| Err(Refusal::Busy(format!("the journal writer failed: {e}"))))
        };
        match prepared {
            Ok(Some(_)) => {
                claim.held = false;
                self.spawn(id.clone(), entry.clone(), tx, cancel.clone());
                Ok((entry, changed, cancel))
            }
            // Done (replay only), or waiting for the reboot that will resume it: no task. The
            // claim goes, and whoever attached meanwhile sees the sender gone and replays.
            Ok(None) => Ok((entry, changed, cancel)),
            Err(e) => Err(e),
        }
    }
}

/// Releases a claim that no task took over.
struct ClaimGuard<'a> {
    runner: &'a Runner,
    id: &'a str,
    held: bool,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if self.held {
            self.runner.running().remove(self.id);
        }
    }
}

/// The result of [`Runner::claim`].
enum Claim {
    New(watch::Sender<u64>, CancellationToken),
    Taken(watch::Receiver<u64>, CancellationToken),
}

/// Records a new invocation (or finds it recorded); `Some` if it is to run now.
fn prepare(entry: &Entry, invoke: &Invoke) -> Result<Option<()>, Refusal> {
    // An I/O error is the machine's moment (no descriptor or disk left), not the request's.
    let journal = |e: crate::AgentError| match e {
        crate::AgentError::Io { .. } => Refusal::Busy(crate::error_chain(&e)),
        other => Refusal::Invalid(other.to_string()),
    };
    if !entry.exists() {
        let steps: Vec<ResolvedStep> = serde_json::from_value(invoke.steps.clone())
            .map_err(|e| Refusal::Invalid(format!("invalid steps: {e}")))?;
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        entry.create(invoke, &names).map_err(journal)?;
        crash::point("invocation-recorded");
    }
    let st = entry.load().map_err(journal)?;
    Ok((st.finished.is_none() && !st.rebooting).then_some(()))
}

/// Why an invocation was not taken.
#[derive(Debug)]
enum Refusal {
    /// The request is wrong: it fails.
    Invalid(String),
    /// The agent could not record it now: the server delivers it again later.
    Busy(String),
}

/// What this stream has sent so far.
struct Sent {
    started: HashSet<usize>,
    finished: HashSet<usize>,
    offsets: HashMap<(usize, OutputStream), u64>,
    rebooting: bool,
    /// SecureString values to mask in output.
    secrets: Vec<Vec<u8>>,
}

/// Queues one message; `sync` flushes them together, so that what one pass finds (a fast
/// step's start, output, end and the final result) crosses the tunnel as one frame, and the
/// server wakes once for it rather than once per message. The codec flushes on its own past
/// its buffer's boundary, so long output still flows as it is read.
async fn send(framed: &mut Framed<Stream>, p: Progress) -> Result<(), String> {
    framed
        .feed(Message::Progress(p))
        .await
        .map_err(|e| e.to_string())
}

/// Reads the next chunk of a step's output from `offset`, at most up to `limit` bytes in all.
/// A file not yet created is no output yet; any other failure (no file descriptor left, say)
/// is an error: reporting "no output" for it would lose the output for good.
fn read_chunk(
    entry: &Entry,
    i: usize,
    stream: OutputStream,
    offset: u64,
    limit: u64,
    done: bool,
    secrets: &[Vec<u8>],
) -> Result<(Vec<u8>, bool), String> {
    let path = entry.output(i, stream);
    let failed = |e: std::io::Error| format!("reading {}: {e}", path.display());
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(failed(e)),
    };
    let len = f.metadata().map_err(failed)?.len();
    let truncated = len > limit;
    let end = len.min(limit);
    if offset >= end {
        return Ok((Vec::new(), truncated));
    }
    f.seek(SeekFrom::Start(offset)).map_err(failed)?;
    let want = usize::try_from((end - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
    let mut buf = vec![0u8; want];
    let n = f.read(&mut buf).map_err(failed)?;
    buf.truncate(n);
    if !done {
        // Don't split a UTF-8 character across chunks while more may follow.
        if let Err(e) = std::str::from_utf8(&buf) {
            if e.error_len().is_none() {
                buf.truncate(e.valid_up_to());
            }
        }
    }
    // Bytes past the cut are never sent: a secret's start just before it is held back too.
    let last = done && !truncated && offset + buf.len() as u64 >= end;
    crate::mask::mask(&mut buf, secrets, last);
    Ok((buf, truncated))
}

/// Sends what the journal has that this stream has not sent; returns the final result once sent.
async fn sync(
    entry: &Entry,
    invoke: &Invoke,
    sent: &mut Sent,
    framed: &mut Framed<Stream>,
) -> Result<(Option<(String, i32)>, bool), String> {
    let st = entry.load().map_err(|e| e.to_string())?;
    let mut any_running = false;
    for (i, step) in st.steps.iter().enumerate() {
        if step.status == StepStatus::Pending {
            continue;
        }
        if step.status == StepStatus::Skipped && sent.finished.insert(i) {
            send(
                framed,
                Progress::StepFinished {
                    step: step.name.clone(),
                    status: "Skipped".into(),
                    exit_code: 0,
                    truncated: false,
                },
            )
            .await?;
            continue;
        }
        if sent.started.insert(i) {
            send(
                framed,
                Progress::StepStarted {
                    step: step.name.clone(),
                },
            )
            .await?;
        }
        let done = step.status.is_done();
        any_running |= !done;
        let mut truncated = false;
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            loop {
                let offset = *sent.offsets.entry((i, stream)).or_insert_with(|| {
                    let idx = usize::from(stream == OutputStream::Stderr);
                    invoke
                        .received
                        .get(&step.name)
                        .and_then(|r| r.get(idx).copied())
                        .unwrap_or(0)
                });
                // On an error the stream ends: the server delivers again and the journal is
                // replayed from what it stored.
                let (chunk, cut) = read_chunk(
                    entry,
                    i,
                    stream,
                    offset,
                    invoke.output_limit,
                    done,
                    &sent.secrets,
                )?;
                truncated |= cut;
                if chunk.is_empty() {
                    break;
                }
                let len = chunk.len() as u64;
                send(
                    framed,
                    Progress::Output {
                        step: step.name.clone(),
                        stream,
                        offset,
                        len,
                        data: String::from_utf8_lossy(&chunk).into_owned(),
                    },
                )
                .await?;
                sent.offsets.insert((i, stream), offset + len);
            }
        }
        if done && sent.finished.insert(i) {
            send(
                framed,
                Progress::StepFinished {
                    step: step.name.clone(),
                    status: step.status.as_str().into(),
                    exit_code: step.exit_code,
                    truncated,
                },
            )
            .await?;
        }
    }
    if st.rebooting && !sent.rebooting {
        sent.rebooting = true;
        send(framed, Progress::Rebooting).await?;
    }
    if let Some((status, code)) = &st.finished {
        send(
            framed,
            Progress::Finished {
                status: status.clone(),
                exit_code: *code,
            },
        )
        .await?;
    }
    framed.flush().await.map_err(|e| e.to_string())?;
    Ok((st.finished, any_running))
}

/// Serves one invocation stream until the server has the final result or the stream ends.
pub async fn serve(runner: Arc<Runner>, mut framed: Framed<Stream>, invoke: Invoke) {
    let (entry, mut changed, cancel) = match runner.start_or_attach(&invoke).await {
        Ok(v) => v,
        Err(Refusal::Invalid(message)) => {
            let _ = framed
                .send(Message::Error {
                    code: "invalid_invocation".into(),
                    message,
                })
                .await;
            return;
        }
        Err(Refusal::Busy(why)) => {
            // Closing the stream without an answer: the server backs off and delivers again.
            tracing::warn!(invocation = %invoke.invocation_id, error = %why, "could not record an invocation now; it will be delivered again");
            return;
        }
    };
    let mut sent = Sent {
        started: HashSet::new(),
        finished: HashSet::new(),
        offsets: HashMap::new(),
        rebooting: false,
        secrets: crate::mask::secrets(&invoke),
    };
    // Once the executor task is gone (finished, or waiting for a reboot) nothing changes.
    let mut task_done = false;
    loop {
        let (finished, running) = match sync(&entry, &invoke, &mut sent, &mut framed).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(invocation = %invoke.invocation_id, error = %e, "invocation stream ended");
                return;
            }
        };
        if finished.is_some() {
            crash::point("result-sent");
            // Wait for the server to say it stored the result.
            match tokio::time::timeout(Duration::from_secs(60), framed.next()).await {
                Ok(Some(Ok(Message::Delivered))) => {
                    crash::point("delivered-received");
                    if let Err(e) = entry.mark_delivered() {
                        tracing::warn!(error = %e, "could not clean up a delivered invocation");
                    }
                }
                _ => {
                    tracing::debug!(invocation = %invoke.invocation_id, "no delivery confirmation; will replay")
                }
            }
            return;
        }
        tokio::select! {
            r = changed.changed(), if !task_done => {
                // An error means the task ended: one more sync sends its final state.
                task_done = r.is_err();
            }
            _ = tokio::time::sleep(TAIL), if running => {}
            msg = framed.next() => match msg {
                Some(Ok(Message::Cancel)) => {
                    tracing::info!(invocation = %invoke.invocation_id, "cancel requested");
                    cancel.cancel();
                }
                Some(Ok(other)) => tracing::debug!(kind = other.kind(), "ignored a message on an invocation stream"),
                // The connection is gone; the invocation goes on and is replayed later.
                Some(Err(_)) | None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Barrier;

    use super::*;

    fn invoke(id: &str, script: &str) -> Invoke {
        let doc = drover_docs::parse(&format!(
            "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: s\n    inputs:\n      runCommand: [{script:?}]\n"
        ))
        .unwrap();
        let values = drover_docs::validate_values(&doc, &Default::default()).unwrap();
        let resolution = drover_docs::resolve(&doc, &values);
        Invoke {
            invocation_id: id.into(),
            command_id: "cmd-1".into(),
            steps: serde_json::to_value(&resolution.steps).unwrap(),
            env: resolution.env,
            documents: Default::default(),
            contents: Default::default(),
            execution_timeout_secs: 60,
            output_limit: 1 << 20,
            received: Default::default(),
        }
    }

    #[test]
    fn output_read_from_the_journal_is_masked() {
        let secrets = vec![b"hunter2!".to_vec()];
        // Through the journal: the first read stops before the secret's start.
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::open(dir.path(), "inv-1").unwrap();
        std::fs::create_dir_all(&entry.dir).unwrap();
        std::fs::write(entry.output(0, OutputStream::Stdout), "a hunter2! b").unwrap();
        let (chunk, _) =
            read_chunk(&entry, 0, OutputStream::Stdout, 0, 100, true, &secrets).unwrap();
        assert_eq!(chunk, b"a ******** b");
    }

    #[test]
    fn output_that_cannot_be_read_is_an_error_not_an_empty_output() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry::open(dir.path(), "inv-1").unwrap();
        std::fs::create_dir_all(&entry.dir).unwrap();
        // Not created yet: no output yet.
        assert_eq!(
            read_chunk(&entry, 0, OutputStream::Stdout, 0, 100, true, &[]).unwrap(),
            (Vec::new(), false)
        );
        // There, but unreadable (a directory: reading it fails, as with no descriptor left).
        std::fs::create_dir(entry.output(0, OutputStream::Stdout)).unwrap();
        assert!(read_chunk(&entry, 0, OutputStream::Stdout, 0, 100, true, &[]).is_err());
        std::fs::write(entry.output(0, OutputStream::Stderr), "ok\n").unwrap();
        assert_eq!(
            read_chunk(&entry, 0, OutputStream::Stderr, 0, 100, true, &[]).unwrap(),
            (b"ok\n".to_vec(), false)
        );
    }

    #[test]
    fn deliveries_of_one_invocation_at_the_same_moment_start_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("runs");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (reboot, _reboots) = tokio::sync::mpsc::channel(1);
        let runner = Runner::new(ExecCtx {
            state_dir: dir.path().join("state"),
            node_id: "n-1".into(),
            platform_type: "Linux",
            reboot,
            restart_is_reboot: true,
            max_download_bytes: 1 << 20,
        });
        const ROUNDS: usize = 20;
        const AT_ONCE: usize = 4;
        let mut watches = Vec::new();
        for round in 0..ROUNDS {
            let inv = invoke(
                &format!("inv-{round}"),
                &format!("echo {round} >> {}", marker.display()),
            );
            let barrier = Arc::new(Barrier::new(AT_ONCE));
            let threads: Vec<_> = (0..AT_ONCE)
                .map(|_| {
                    let (runner, inv, barrier) = (runner.clone(), inv.clone(), barrier.clone());
                    let handle = rt.handle().clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        handle
                            .block_on(runner.start_or_attach(&inv))
                            .map(|(_, changed, _)| changed)
                    })
                })
                .collect();
            for t in threads {
                watches.push(t.join().unwrap().unwrap());
            }
        }
        // Each watch ends when the task that runs its invocation ends.
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                for mut w in watches {
                    while w.changed().await.is_ok() {}
                }
            })
            .await
            .expect("the invocations did not finish");
        });
        let runs = std::fs::read_to_string(&marker).unwrap();
        let mut lines: Vec<&str> = runs.lines().collect();
        lines.sort();
        assert_eq!(
            lines.len(),
            ROUNDS,
            "an invocation ran more than once: {runs}"
        );
    }
}
