//! One task per session relays between the node's stream and the client's WebSocket, records,
//! and enforces the idle timeout and the maximum duration. It holds no lock across I/O, and a
//! slow client only slows its own session: output waits in this session's bounded replay
//! buffer, then (when that is full) in the node's stream window, and finally in the PTY.
//!
//! Resuming: the client acknowledges output by offset; what it has not acknowledged stays in
//! the replay buffer. A client whose connection drops has [`RESUME_WINDOW`] to attach again
//! and say what it has (its first frame is an `Ack`); the broker then sends the rest and tells
//! it how much input arrived (`InputAck`), so it resends only what was lost.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use bytes::Bytes;
use drover_proto::{SessionClosed, SessionFrame, SessionStream};
use drover_tunnel::{SessionFramed, Stream};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::recording::CastWriter;

/// Output kept for a client that has not acknowledged it.
const REPLAY_MAX: usize = 1024 * 1024;
/// How long a session waits for its client to come back.
pub const RESUME_WINDOW: Duration = Duration::from_secs(30);
/// Input acknowledged to the client every this many bytes (and on every attach).
const INPUT_ACK_EVERY: u64 = 64 * 1024;
/// How long a closing session waits for its attached client to take more of its last output
/// (a slow client that keeps taking it is waited for; one that stops is not).
const DRAIN: Duration = Duration::from_secs(5);

/// What the broker reports when the session is over.
pub struct Outcome {
    pub closed: SessionClosed,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Connections a port session carried; none for the others.
    pub connections: u64,
}

/// The broker's inputs from the rest of the server.
pub struct Control {
    pub attach: mpsc::Receiver<WebSocket>,
    pub terminate: mpsc::Receiver<String>,
    /// Told once, when the first client attaches.
    pub connected: Option<tokio::sync::oneshot::Sender<()>>,
    /// The metrics' bytes relayed, in and out, counted as they pass.
    pub bytes: (
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    ),
}

pub struct Limits {
    pub idle: Duration,
    pub max: Option<Duration>,
    /// The limits as the preferences say them, for the user's message.
    pub idle_words: String,
    pub max_words: String,
}

struct Out {
    stream: SessionStream,
    offset: u64,
    at_us: u64,
    data: Bytes,
}

impl Out {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.data.len() as u64)
    }

    fn frame(&self) -> SessionFrame {
        SessionFrame::Output {
            stream: self.stream,
            offset: self.offset,
            at_us: self.at_us,
            data: self.data.clone(),
        }
    }
}

/// How long the end of a session may take to reach a peer before that side is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for the node; while full, the client's input waits in its own socket.
const AGENT_QUEUE: usize = 64;
/// Frames queued for the client's socket; the rest waits in the replay buffer.
const CLIENT_QUEUE: usize = 32;

/// Hands queued frames to a sink and flushes it; completes when the queue is empty and all of
/// it flushed. Cancel-safe: a frame leaves the queue only in the poll that gives it to the
/// sink, so the broker drives both sinks from its own loop (no writer task on the keystroke's
/// path) and a peer that stops reading only leaves its branch pending.
async fn drive<S, T>(sink: &mut S, queue: &mut VecDeque<T>) -> Result<(), S::Error>
where
    S: futures::Sink<T> + Unpin,
{
    futures::future::poll_fn(|cx| {
        while !queue.is_empty() {
            futures::ready!(sink.poll_ready_unpin(cx))?;
            if let Some(item) = queue.pop_front() {
                sink.start_send_unpin(item)?;
            }
        }
        sink.poll_flush_unpin(cx)
    })
    .await
}

type ClientSink = SplitSink<WebSocket, WsMessage>;

/// [`drive`] for a client that may not be there.
async fn drive_client(
    sink: &mut Option<ClientSink>,
    queue: &mut VecDeque<WsMessage>,
) -> Result<(), axum::Error> {
    match sink {
        Some(s) => drive(s, queue).await,
        None => std::future::pending().await,
    }
}

/// The attached client, if any: its socket's halves, the frames queued for it, and whether its
/// first `Ack` (where it resumes) has arrived.
#[derive(Default)]
struct Client {
    sink: Option<ClientSink>,
    rx: Option<SplitStream<WebSocket>>,
    queue: VecDeque<WsMessage>,
    /// Frames were queued since the sink was last flushed.
    flush: bool,
    ready: bool,
    detached_at: Option<Instant>,
}

impl Client {
    fn attach(&mut self, ws: WebSocket, input_received: u64) {
        let (sink, rx) = ws.split();
        // A replaced connection (maybe half-dead) is dropped with what was queued for it;
        // the replay buffer still has the output.
        *self = Client {
            sink: Some(sink),
            rx: Some(rx),
            queue: VecDeque::from([WsMessage::Binary(
                SessionFrame::InputAck {
                    offset: input_received,
                }
                .to_bytes(),
            )]),
            flush: true,
            ready: false,
            detached_at: None,
        };
    }

    fn detach(&mut self) {
        *self = Client {
            detached_at: Some(Instant::now()),
            ..Client::default()
        };
    }

    fn push(&mut self, f: &SessionFrame) {
        self.queue.push_back(WsMessage::Binary(f.to_bytes()));
        self.flush = true;
    }

    /// At the end: what is queued (the last output and `Closed`) still goes, and the client's
    /// frames (its last acknowledgements, its close) are still read: a socket closed with
    /// unread data is reset, and a reset makes the client's kernel drop the output it had
    /// received but not yet read. All within the write timeout.
    fn finish(&mut self) {
        let (Some(mut sink), rx, mut queue) = (
            self.sink.take(),
            self.rx.take(),
            std::mem::take(&mut self.queue),
        ) else {
            return;
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                let _ = drive(&mut sink, &mut queue).await;
                let _ = sink.close().await;
                if let Some(mut rx) = rx {
                    while let Some(Ok(_)) = rx.next().await {}
                }
            })
            .await;
        });
    }
}

/// What the session does next once it is ending.
struct Closing {
    closed: SessionClosed,
    at: Instant,
}

/// Relays until the session ends.
pub async fn run(
    agent: SessionFramed<Stream>,
    mut recorder: Option<CastWriter>,
    limits: Limits,
    mut ctl: Control,
) -> Outcome {
    let started = Instant::now();
    let now_us = || u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (mut agent_sink, mut from_agent) = agent.split();
    let mut agent_queue: VecDeque<SessionFrame> = VecDeque::new();
    let mut agent_flush = false;
    let mut closed_queued = false;
    // Output offsets are counted here, never taken from the node.
    let mut out_offsets = [0u64; 2];
    let mut buf: VecDeque<Out> = VecDeque::new();
    let mut buf_bytes = 0usize;
    let mut unsent = 0usize;
    let mut client = Client {
        detached_at: Some(started),
        ..Client::default()
    };
    let (mut input_received, mut input_acked) = (0u64, 0u64);
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut last_activity = started;
    let mut closing: Option<Closing> = None;
    let mut agent_done = false;
    let mut dirty = false;
    let max_at = limits.max.map(|m| started + m);
    // False once the terminate channel is closed (the server is stopping).
    let mut terminable = true;
    loop {
        // Output the client has not had yet moves to its socket's queue as that drains.
        while client.ready && client.queue.len() < CLIENT_QUEUE {
            let Some(o) = buf.get(unsent) else { break };
            client.push(&o.frame());
            unsent += 1;
            // Progress: a closing session's patience starts again.
            if let Some(c) = &mut closing {
                c.at = Instant::now();
            }
        }
        if let Some(c) = &closing {
            if client.ready && unsent == buf.len() {
                if !closed_queued {
                    closed_queued = true;
                    client.push(&SessionFrame::Closed(c.closed.clone()));
                } else if !client.flush {
                    // The client has everything, `Closed` last.
                    break;
                }
            }
        }
        // A closing session waits a little for its attached client to take the last output,
        // or for a detached one to come back for it.
        let give_up = closing.as_ref().map(|c| match client.detached_at {
            Some(d) => d + RESUME_WINDOW,
            None => c.at + DRAIN,
        });
        tokio::select! {
            f = from_agent.next(), if closing.is_none() && buf_bytes < REPLAY_MAX => match f {
                Some(Ok(SessionFrame::Output { stream, at_us, data, .. })) => {
                    let [o_out, o_err] = &mut out_offsets;
                    let slot = if stream == SessionStream::Stdout { o_out } else { o_err };
                    let offset = *slot;
                    *slot = slot.saturating_add(data.len() as u64);
                    last_activity = Instant::now();
                    bytes_out += data.len() as u64;
                    ctl.bytes.1.inc_by(data.len() as u64);
                    if let Some(r) = &mut recorder {
                        r.output(stream, at_us, &data).await;
                        dirty = true;
                    }
                    buf_bytes += data.len();
                    buf.push_back(Out { stream, offset, at_us, data });
                }
                Some(Ok(SessionFrame::Closed(c))) => {
                    agent_done = true;
                    closing = Some(Closing { closed: from_node(c), at: Instant::now() });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    agent_done = true;
                    closing = Some(Closing { closed: failed(format!("bad frame from the node: {e}")), at: Instant::now() });
                }
                None => {
                    agent_done = true;
                    closing = Some(Closing { closed: failed("the connection to the node was lost".into()), at: Instant::now() });
                }
            },
            r = drive_client(&mut client.sink, &mut client.queue), if client.flush => {
                match r {
                    Ok(()) => client.flush = false,
                    Err(_) => {
                        client.detach();
                        closed_queued = false;
                    }
                }
            }
            r = drive(&mut agent_sink, &mut agent_queue), if agent_flush => {
                agent_flush = false;
                if r.is_err() && closing.is_none() {
                    agent_done = true;
                    closing = Some(Closing { closed: failed("the connection to the node was lost".into()), at: Instant::now() });
                }
            }
            msg = next_client(&mut client.rx), if agent_queue.len() < AGENT_QUEUE => {
                let Some(frame) = msg else {
                    client.detach();
                    closed_queued = false;
                    continue;
                };
                match frame {
                    SessionFrame::Input { offset, data } if closing.is_none() => {
                        if offset > input_received {
                            // A gap: this client lost input it believes was sent.
                            client.detach();
                            closed_queued = false;
                            continue;
                        }
                        let skip = usize::try_from(input_received - offset).unwrap_or(usize::MAX);
                        if skip >= data.len() {
                            continue;
                        }
                        let fresh = data.slice(skip..);
                        last_activity = Instant::now();
                        if let Some(r) = &mut recorder {
                            r.input(now_us(), &fresh).await;
                            dirty = true;
                        }
                        let n = fresh.len() as u64;
                        agent_queue.push_back(SessionFrame::Input { offset: input_received, data: fresh });
                        agent_flush = true;
                        input_received += n;
                        bytes_in += n;
                        ctl.bytes.0.inc_by(n);
                        if input_received - input_acked >= INPUT_ACK_EVERY {
                            input_acked = input_received;
                            client.push(&SessionFrame::InputAck { offset: input_received });
                        }
                    }
                    SessionFrame::Resize { cols, rows } if closing.is_none() => {
                        if let Some(r) = &mut recorder {
                            r.resize(now_us(), cols, rows).await;
                            dirty = true;
                        }
                        agent_queue.push_back(SessionFrame::Resize { cols, rows });
                        agent_flush = true;
                    }
                    f @ (SessionFrame::Signal(_) | SessionFrame::Eof) if closing.is_none() => {
                        last_activity = Instant::now();
                        agent_queue.push_back(f);
                        agent_flush = true;
                    }
                    SessionFrame::Ack { stdout, stderr } => {
                        let dropped = trim(&mut buf, &mut buf_bytes, unsent, stdout, stderr);
                        unsent = unsent.saturating_sub(dropped);
                        if !client.ready {
                            // Where this client resumes: everything it has not got.
                            client.ready = true;
                            unsent = 0;
                            if let Some(tx) = ctl.connected.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    SessionFrame::Closed(_) if closing.is_none() => {
                        closing = Some(Closing {
                            closed: SessionClosed { status: "Terminated".into(), exit_code: None, message: "ended by the client".into() },
                            at: Instant::now(),
                        });
                    }
                    _ => {}
                }
            }
            ws = ctl.attach.recv() => {
                if let Some(ws) = ws {
                    // A new connection replaces the old one (which may be half-dead).
                    client.attach(ws, input_received);
                    closed_queued = false;
                    if closing.is_some() {
                        // It came back for the end of the session.
                        if let Some(c) = &mut closing {
                            c.at = Instant::now();
                        }
                    }
                }
            }
            why = ctl.terminate.recv(), if terminable => {
                let why = match why {
                    Some(why) => why,
                    None => {
                        terminable = false;
                        "the server is stopping".into()
                    }
                };
                if closing.is_some() {
                    if terminable {
                        // Ended already, its end waiting for a client: terminating stops the
                        // wait. (A stopping server still lets the client take the end.)
                        break;
                    }
                } else {
                    closing = Some(Closing {
                        closed: SessionClosed { status: "Terminated".into(), exit_code: None, message: why },
                        at: Instant::now(),
                    });
                }
            }
            _ = tokio::time::sleep_until(last_activity + limits.idle), if closing.is_none() => {
                closing = Some(Closing {
                    closed: SessionClosed { status: "TimedOut".into(), exit_code: None, message: format!("the session was idle for {}", limits.idle_words) },
                    at: Instant::now(),
                });
            }
            _ = sleep_until_opt(max_at), if closing.is_none() && max_at.is_some() => {
                closing = Some(Closing {
                    closed: SessionClosed { status: "TimedOut".into(), exit_code: None, message: format!("the session reached its maximum duration of {}", limits.max_words) },
                    at: Instant::now(),
                });
            }
            _ = sleep_until_opt(client.detached_at.map(|d| d + RESUME_WINDOW)), if closing.is_none() && client.detached_at.is_some() => {
                closing = Some(Closing {
                    closed: SessionClosed { status: "Terminated".into(), exit_code: None, message: format!("no client was attached for {} seconds", RESUME_WINDOW.as_secs()) },
                    at: Instant::now(),
                });
            }
            _ = sleep_until_opt(give_up), if give_up.is_some() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)), if dirty => {
                dirty = false;
                if let Some(r) = &mut recorder {
                    r.flush().await;
                }
            }
        }
        // Tell the node at once, so its process stops while the client takes the rest.
        if closing.is_some() && !agent_done {
            agent_done = true;
            if let Some(c) = &closing {
                agent_queue.push_back(SessionFrame::Closed(c.closed.clone()));
                agent_flush = true;
            }
        }
    }
    client.finish();
    // The node gets what is queued (`Closed` last) and the stream's end, within the write
    // timeout; a node that does not read has its stream dropped.
    tokio::spawn(async move {
        let ended = tokio::time::timeout(WRITE_TIMEOUT, async {
            let _ = drive(&mut agent_sink, &mut agent_queue).await;
            let _ = agent_sink.close().await;
        })
        .await;
        if ended.is_err() {
            tracing::debug!("the node did not take the end of a session in time");
        }
    });
    if let Some(r) = recorder.take() {
        r.finish().await;
    }
    Outcome {
        closed: closing
            .map(|c| c.closed)
            .unwrap_or_else(|| failed("ended".into())),
        bytes_in,
        bytes_out,
        connections: 0,
    }
}

/// What a node says about its session's end, kept to the statuses the history knows and a
/// message of sensible length (a node is not trusted to fill the store or the metrics).
fn from_node(c: SessionClosed) -> SessionClosed {
    let status = match c.status.as_str() {
        "Terminated" | "Failed" | "TimedOut" => c.status,
        _ => "Failed".into(),
    };
    SessionClosed {
        status,
        exit_code: c.exit_code,
        message: c.message.chars().take(1024).collect(),
    }
}

fn failed(message: String) -> SessionClosed {
    SessionClosed {
        status: "Failed".into(),
        exit_code: None,
        message,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next session frame from the client; `None` when it is gone (or sent something that
/// is not a session frame, which ends its attachment, not the session).
async fn next_client(rx: &mut Option<SplitStream<WebSocket>>) -> Option<SessionFrame> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        match rx.next().await {
            Some(Ok(WsMessage::Binary(b))) => return SessionFrame::decode(b).ok(),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Text(_))) => return None,
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return None,
        }
    }
}

/// Drops output the client has; a frame it has in part keeps only the rest. Returns how many
/// of the first `unsent` frames (those already sent) left the buffer.
fn trim(
    buf: &mut VecDeque<Out>,
    bytes: &mut usize,
    unsent: usize,
    stdout: u64,
    stderr: u64,
) -> usize {
    let acked = |s: SessionStream| match s {
        SessionStream::Stdout => stdout,
        SessionStream::Stderr => stderr,
    };
    let mut sent_removed = 0;
    let mut i = 0;
    buf.retain_mut(|o| {
        let index = i;
        i += 1;
        let a = acked(o.stream);
        if o.end() <= a {
            *bytes -= o.data.len();
            if index < unsent {
                sent_removed += 1;
            }
            return false;
        }
        if o.offset < a {
            let cut = usize::try_from(a - o.offset).unwrap_or(0).min(o.data.len());
            *bytes -= cut;
            o.data = o.data.slice(cut..);
            o.offset = a;
        }
        true
    });
    sent_removed
}
