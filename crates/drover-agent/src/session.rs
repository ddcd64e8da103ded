//! Sessions on the node: a shell or a command, in a PTY or with pipes, relayed over one tunnel
//! stream as [`SessionFrame`]s. The server has authorized the session and decided what it runs
//! and as whom; the agent starts exactly that and relays bytes until the process ends, the
//! server closes the stream, or the agent stops. Whatever ends it, the session's process group
//! goes with it: no orphaned shells.
//!
//! Output and input are pumped by two futures, so a program that stops reading its input never
//! stops its output from flowing (and the reverse).

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use drover_proto::{
    Message, SessionClosed, SessionFrame, SessionKind, SessionStart, SessionStream,
};
use drover_tunnel::{into_session, Framed, SessionFramed, Stream};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::os_user::{self, OsUser};

/// After a PTY session's process exits, output is still relayed until none has come for this
/// long (its background children may hold the PTY open for good). A session with pipes ends at
/// their end of file, as ssh's does: whatever was written is delivered, however slowly.
const DRAIN: Duration = Duration::from_secs(1);
/// How long the process group has between SIGHUP and SIGKILL when a session is cut off.
const HANGUP_GRACE: Duration = Duration::from_secs(2);
const READ_BUF: usize = 32 * 1024;
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What every session of this agent shares.
pub struct Sessions {
    /// The user sessions run as when the server names none and the agent is root.
    pub default_user: String,
    create_user: Mutex<()>,
    /// The agent is stopping: every session ends, telling its user why.
    pub stop: CancellationToken,
    /// This agent's end-to-end key (new each start; its private half stays in this process).
    pub e2e: Option<drover_tunnel::e2e::E2eKey>,
    running: tokio_util::task::TaskTracker,
}

impl Sessions {
    pub fn new(default_user: String, stop: CancellationToken) -> Arc<Self> {
        let e2e = drover_tunnel::e2e::E2eKey::generate()
            .map_err(|e| tracing::warn!(error = %e, "no end-to-end key: sessions will not be end-to-end encrypted"))
            .ok();
        Arc::new(Self {
            default_user,
            create_user: Mutex::new(()),
            e2e,
            stop,
            running: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Runs a session on a task of its own, not the connection's: when the connection is lost
    /// its stream fails, and the session ends through [`hang_up`] like any other.
    pub fn start(self: &Arc<Self>, framed: Framed<Stream>, start: SessionStart) {
        self.running.spawn(serve(self.clone(), framed, start));
    }

    /// The end-to-end key signed with the node's key, for the Hello.
    pub fn signed_e2e_key(&self, identity: &crate::Identity) -> Option<drover_proto::E2eKey> {
        use base64::Engine;
        let key = self.e2e.as_ref()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        match drover_pki::sign_e2e_key(&identity.key_pem, &identity.state.node_id, &key.public) {
            Ok(sig) => Some(drover_proto::E2eKey {
                public: b64.encode(&key.public),
                signature: b64.encode(sig),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "could not sign the end-to-end key");
                None
            }
        }
    }

    /// Waits (at most `limit`) for every session to end, once the agent is stopping.
    pub async fn wait_ended(&self, limit: Duration) {
        self.running.close();
        let _ = tokio::time::timeout(limit, self.running.wait()).await;
    }
}

type Sink = SplitSink<SessionFramed<Stream>, SessionFrame>;
type Source = SplitStream<SessionFramed<Stream>>;

enum Io {
    Pty(pty_process::Pty),
    Pipes {
        stdin: Option<tokio::process::ChildStdin>,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    },
}

struct Proc {
    child: tokio::process::Child,
    pgid: Option<rustix::process::Pid>,
    io: Io,
}

/// Serves one session stream until the session ends.
async fn serve(ctx: Arc<Sessions>, mut framed: Framed<Stream>, start: SessionStart) {
    let id = start.session_id.clone();
    let proc = match spawn(&ctx, &start).await {
        Ok(p) => p,
        Err(message) => {
            tracing::warn!(session = %id, error = %message, "could not start a session");
            let _ = framed
                .send(Message::Error {
                    code: "session_failed".into(),
                    message,
                })
                .await;
            return;
        }
    };
    if framed.send(Message::SessionStarted).await.is_err() {
        let mut proc = proc;
        hang_up(&mut proc.child, proc.pgid).await;
        return;
    }
    tracing::info!(session = %id, kind = ?start.kind, "session started");
    let (sink, source) = into_session(framed).split();
    relay(ctx, sink, source, proc).await;
    tracing::info!(session = %id, "session ended");
}

/// Decides the user, then starts the process.
async fn spawn(ctx: &Sessions, start: &SessionStart) -> Result<Proc, String> {
    let me = os_user::current().await?;
    let user = match (&start.run_as, me.uid == 0) {
        (Some(name), true) => os_user::lookup(name)
            .await?
            .ok_or_else(|| format!("there is no user {name:?} on this node"))?,
        (None, true) => os_user::ensure_default(&ctx.default_user, &ctx.create_user).await?,
        (Some(name), false) if *name == me.name => me.clone(),
        (Some(name), false) => {
            return Err(format!(
                "the agent runs as {:?}, not root, so it cannot start a session as {name:?}",
                me.name
            ))
        }
        (None, false) => me.clone(),
    };
    let argv = match (start.kind, &start.command) {
        (SessionKind::Shell, _) if start.profile.trim().is_empty() => {
            vec![user.shell.clone(), "-l".into()]
        }
        (SessionKind::Shell, _) => vec![
            user.shell.clone(),
            "-l".into(),
            "-c".into(),
            format!("{}\nexec \"$SHELL\" -l", start.profile),
        ],
        (_, Some(cmd)) => vec![user.shell.clone(), "-c".into(), cmd.clone()],
        (_, None) => return Err("a command session needs a command".into()),
    };
    let line = os_user::command_line(&user, user.uid != me.uid, argv)?;
    let env = environment(&user, start)?;
    let dir = match &start.workdir {
        Some(d) => std::path::PathBuf::from(d),
        None if user.home.is_dir() => user.home.clone(),
        None => "/".into(),
    };
    let (program, args) = line
        .split_first()
        .ok_or_else(|| "empty command line".to_string())?;
    match (&start.terminal, start.kind) {
        (Some(term), SessionKind::Shell | SessionKind::Interactive) => {
            let (pty, pts) = pty_process::open().map_err(|e| format!("opening a PTY: {e}"))?;
            pty.resize(pty_process::Size::new(term.rows, term.cols))
                .map_err(|e| format!("sizing the PTY: {e}"))?;
            let child = pty_process::Command::new(program)
                .args(args)
                .env_clear()
                .envs(&env)
                .current_dir(&dir)
                .kill_on_drop(true)
                .spawn(pts)
                .map_err(|e| format!("starting {program}: {e}"))?;
            // The child leads a new session (and so a process group) of its own.
            let pgid = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32));
            Ok(Proc {
                child,
                pgid,
                io: Io::Pty(pty),
            })
        }
        (None, SessionKind::NonInteractive) => {
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .env_clear()
                .envs(&env)
                .current_dir(&dir)
                .process_group(0)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting {program}: {e}"))?;
            let pgid = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32));
            let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
                return Err("the command's output pipes are missing".into());
            };
            Ok(Proc {
                io: Io::Pipes {
                    stdin: child.stdin.take(),
                    stdout,
                    stderr,
                },
                child,
                pgid,
            })
        }
        (_, kind) => Err(format!(
            "a {kind:?} session {} a terminal",
            if kind == SessionKind::NonInteractive {
                "cannot have"
            } else {
                "needs"
            }
        )),
    }
}

/// A clean environment: nothing of the agent's own (it may hold secrets) leaks into a session.
fn environment(user: &OsUser, start: &SessionStart) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::from([
        ("HOME".to_string(), user.home.display().to_string()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("SHELL".into(), user.shell.clone()),
        ("PATH".into(), PATH.into()),
        (
            "LANG".into(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
        ),
        ("DROVER_SESSION_ID".into(), start.session_id.clone()),
    ]);
    if let Some(t) = &start.terminal {
        env.insert("TERM".into(), t.term.clone());
    }
    for (k, v) in &start.env {
        let ok = drover_docs::env_name_ok(k);
        if !ok || v.contains('\0') {
            return Err(format!("environment variable {k:?} is not valid"));
        }
        env.insert(k.clone(), v.clone());
    }
    Ok(env)
}

enum End {
    /// The process exited.
    Exited(i32),
    /// The server closed the stream or said the session is over.
    CutOff(String),
    /// The agent is stopping.
    Stopping,
}

async fn relay(ctx: Arc<Sessions>, mut sink: Sink, mut source: Source, proc: Proc) {
    let Proc {
        mut child,
        pgid,
        io,
    } = proc;
    let mut guard = GroupGuard(pgid);
    let started = Instant::now();
    let (mut pty_keep, mut stdin, pipes) = match io {
        Io::Pty(pty) => (Some(pty), None, None),
        Io::Pipes {
            stdin,
            stdout,
            stderr,
        } => (None, stdin, Some((stdout, stderr))),
    };
    let pty_mode = pty_keep.is_some();
    let end = {
        let mut readers: Vec<Reader<'_>> = Vec::new();
        let mut pty_write = None;
        if let Some(p) = pty_keep.as_mut() {
            let (r, w) = p.split();
            readers.push((SessionStream::Stdout, Box::new(r), vec![0; READ_BUF]));
            pty_write = Some(w);
        }
        if let Some((stdout, stderr)) = pipes {
            readers.push((SessionStream::Stdout, Box::new(stdout), vec![0; READ_BUF]));
            readers.push((SessionStream::Stderr, Box::new(stderr), vec![0; READ_BUF]));
        }
        let progress = std::sync::atomic::AtomicU64::new(0);
        let sending = std::sync::atomic::AtomicBool::new(false);
        let out = pump_out(&mut sink, readers, started, &progress, &sending);
        let sink = match pty_write {
            Some(w) => InputSink::Pty(w),
            None => InputSink::Stdin(stdin.take()),
        };
        let input = pump_in(&mut source, sink, pgid);
        tokio::pin!(out, input);
        let mut out_done = false;
        let mut exited: Option<i32> = None;
        let mut drained = 0u64;
        let drain = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(drain);
        loop {
            tokio::select! {
                r = &mut out, if !out_done => {
                    out_done = true;
                    if let Err(e) = r {
                        break End::CutOff(e);
                    }
                    if let Some(code) = exited {
                        break End::Exited(code);
                    }
                }
                status = child.wait(), if exited.is_none() => {
                    let code = match status {
                        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                        Err(_) => 255,
                    };
                    if out_done {
                        break End::Exited(code);
                    }
                    exited = Some(code);
                    drained = progress.load(std::sync::atomic::Ordering::Relaxed);
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                }
                _ = &mut drain, if exited.is_some() && pty_mode => {
                    // Output still flowing (a slow reader at the other end) is not silence.
                    let now = progress.load(std::sync::atomic::Ordering::Relaxed);
                    if now == drained && !sending.load(std::sync::atomic::Ordering::Relaxed) {
                        break End::Exited(exited.unwrap_or(255));
                    }
                    drained = now;
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                }
                why = &mut input => break End::CutOff(why),
                _ = ctx.stop.cancelled() => break End::Stopping,
            }
        }
    };
    let closed = match end {
        End::Exited(code) => Some(SessionClosed {
            status: "Terminated".into(),
            exit_code: Some(code),
            message: String::new(),
        }),
        End::CutOff(why) => {
            tracing::debug!(reason = %why, "session cut off");
            None
        }
        End::Stopping => Some(SessionClosed {
            status: "Terminated".into(),
            exit_code: None,
            message: "the agent on the node is stopping".into(),
        }),
    };
    drop(pty_keep);
    drop(stdin);
    hang_up(&mut child, pgid).await;
    guard.0 = None;
    if let Some(c) = closed {
        let _ = sink.send(SessionFrame::Closed(c)).await;
        let _ = sink.close().await;
    }
}

/// Kills the session's process group if the session's task ends without hanging up (it was
/// dropped: the runtime is going away).
struct GroupGuard(Option<rustix::process::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::Kill);
        }
    }
}

/// Ends the session's processes: SIGHUP to the group (what a closing terminal sends), then
/// SIGKILL to whatever is left after a grace period. A process that already exited is reaped.
async fn hang_up(child: &mut tokio::process::Child, pgid: Option<rustix::process::Pid>) {
    use rustix::process::{kill_process_group, Signal};
    let Some(pgid) = pgid else {
        let _ = child.kill().await;
        return;
    };
    let _ = kill_process_group(pgid, Signal::Hup);
    let _ = kill_process_group(pgid, Signal::Cont);
    if tokio::time::timeout(HANGUP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = kill_process_group(pgid, Signal::Kill);
        let _ = child.wait().await;
    }
    // Children that ignored SIGHUP and outlived the leader.
    let _ = kill_process_group(pgid, Signal::Kill);
}

/// An output stream, and the buffer its reads land in.
type Reader<'a> = (
    SessionStream,
    Box<dyn AsyncRead + Unpin + Send + 'a>,
    Vec<u8>,
);

/// Sends output as it comes, each read as one frame, until every stream ends.
async fn pump_out(
    sink: &mut Sink,
    mut readers: Vec<Reader<'_>>,
    started: Instant,
    progress: &std::sync::atomic::AtomicU64,
    sending: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let mut offsets = [0u64; 2];
    while !readers.is_empty() {
        // Reads are cancel-safe: the ones that lose the race lose no bytes.
        let reads = readers.iter_mut().map(|(_, r, buf)| Box::pin(r.read(buf)));
        let (result, which, _) = futures::future::select_all(reads).await;
        let n = match result {
            Ok(n) => n,
            // A PTY whose every slave end is closed reads as EIO: that is its end of file.
            Err(e) if e.raw_os_error() == Some(5) => 0,
            Err(e) => return Err(format!("reading the session's output: {e}")),
        };
        if n == 0 {
            readers.remove(which);
            continue;
        }
        let Some((stream, _, buf)) = readers.get(which) else {
            continue;
        };
        let stream = *stream;
        let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        let idx = usize::from(stream == SessionStream::Stderr);
        let offset = offsets.get(idx).copied().unwrap_or(0);
        if let Some(o) = offsets.get_mut(idx) {
            *o += n as u64;
        }
        let at_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        sending.store(true, std::sync::atomic::Ordering::Relaxed);
        sink.send(SessionFrame::Output {
            stream,
            offset,
            at_us,
            data,
        })
        .await
        .map_err(|e| format!("sending output: {e}"))?;
        // Counted once sent: a send that waits on a slow reader keeps the count still, and
        // the drain below waits for it too (see `relay`).
        progress.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Input received but not yet taken by the session's program. Frames are always read (so a
/// `Closed` or a lost stream is seen at once); a program that leaves this much unread ends its
/// session instead of making the agent hold more.
const PENDING_INPUT_MAX: usize = 4 * 1024 * 1024;

/// Where input goes: the PTY or the command's stdin.
enum InputSink<'a> {
    Pty(pty_process::WritePty<'a>),
    Stdin(Option<tokio::process::ChildStdin>),
}

impl InputSink<'_> {
    /// Writes some of `data`; cancel-safe (a write either happened or did not).
    async fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            InputSink::Pty(p) => p.write(data).await,
            InputSink::Stdin(Some(s)) => s.write(data).await,
            // Input after end of file is dropped, like a closed pipe's.
            InputSink::Stdin(None) => Ok(data.len()),
        }
    }
}

/// Applies what the server sends; returns why the stream ended.
async fn pump_in(
    source: &mut Source,
    mut sink: InputSink<'_>,
    pgid: Option<rustix::process::Pid>,
) -> String {
    let mut received = 0u64;
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut pending_bytes = 0usize;
    // Ctrl-D or closing stdin, once the input before it is written.
    let mut eof = false;
    loop {
        if pending.is_empty() && eof {
            eof = false;
            match &mut sink {
                // Ctrl-D: end of file to the program reading the terminal.
                InputSink::Pty(_) => pending.push_back(Bytes::from_static(&[4])),
                InputSink::Stdin(s) => drop(s.take()),
            }
        }
        let front = pending.front().cloned();
        tokio::select! {
            written = sink.write(front.as_deref().unwrap_or_default()), if front.is_some() => {
                match written {
                    Ok(n) => {
                        pending_bytes -= n.min(pending_bytes);
                        if let Some(f) = pending.front_mut() {
                            *f = f.slice(n.min(f.len())..);
                            if f.is_empty() {
                                pending.pop_front();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the session's process stopped reading input");
                        pending.clear();
                        pending_bytes = 0;
                    }
                }
            }
            frame = source.next() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return format!("bad frame from the server: {e}"),
                    None => return "the server closed the stream".into(),
                };
                match frame {
                    SessionFrame::Input { offset, data } => {
                        // The server resends after a reconnect: skip what was already taken.
                        if offset > received {
                            return format!("input at {offset} leaves a gap after {received}");
                        }
                        let skip = usize::try_from(received - offset).unwrap_or(usize::MAX);
                        if skip >= data.len() {
                            continue;
                        }
                        let fresh = data.slice(skip..);
                        received += fresh.len() as u64;
                        pending_bytes += fresh.len();
                        pending.push_back(fresh);
                        if pending_bytes > PENDING_INPUT_MAX {
                            return format!(
                                "the session's program left {} MiB of input unread",
                                PENDING_INPUT_MAX >> 20
                            );
                        }
                    }
                    SessionFrame::Resize { cols, rows } => {
                        if let InputSink::Pty(p) = &sink {
                            let _ = p.resize(pty_process::Size::new(rows, cols));
                        }
                    }
                    SessionFrame::Signal(sig) => {
                        if let (Some(pgid), Some(sig)) =
                            (pgid, rustix::process::Signal::from_raw(sig.number()))
                        {
                            let _ = rustix::process::kill_process_group(pgid, sig);
                        }
                    }
                    SessionFrame::Eof => eof = true,
                    SessionFrame::Closed(c) => return format!("closed by the server: {}", c.status),
                    // Acknowledgements are the server's business with its client.
                    _ => {}
                }
            }
        }
    }
}
