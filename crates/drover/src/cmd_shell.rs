//! `drover shell NODE [-- CMD...]`: an interactive session. The local terminal goes raw, so
//! every key (Ctrl-C included) reaches the remote PTY; window resizes follow; the exit status
//! is the remote one.
//!
//! The connection to the server may drop: the session goes on on the node, and this client
//! attaches again (for up to 30 seconds), says how much output it has, and resends the input
//! the server did not get. Nothing is lost and nothing is repeated.

use std::collections::VecDeque;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use drover_api::StartSession;
use drover_client::{Client, ClientError, SessionSocket};
use drover_proto::{SessionClosed, SessionFrame, SessionSignal, SessionStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::ShellArgs;

/// How long the client keeps trying to attach again after its connection drops.
const RESUME_FOR: Duration = Duration::from_secs(30);
/// Output acknowledged every this many bytes, or after a short pause.
const ACK_EVERY: u64 = 32 * 1024;
const ACK_AFTER: Duration = Duration::from_millis(250);
/// Input kept until the server acknowledges it.
const INPUT_KEEP: usize = 4 * 1024 * 1024;

/// Puts the terminal back as it was, however the session ends.
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<Self> {
        crossterm::terminal::enable_raw_mode().context("setting the terminal to raw mode")?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Reads stdin on a thread of its own (a blocking read that a select could not cancel
/// without losing bytes), handing chunks over; an empty chunk is end of file.
fn read_stdin() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
            if tx.blocking_send(chunk).is_err() || n == 0 {
                return;
            }
        }
    });
    rx
}

/// What this client has and has sent, across reconnects.
struct State {
    received: [u64; 2],
    acked: [u64; 2],
    input_sent: u64,
    /// Input the server has not acknowledged: (offset, bytes), oldest first.
    unacked: VecDeque<(u64, Bytes)>,
    unacked_bytes: usize,
}

impl State {
    fn received_mut(&mut self, stream: SessionStream) -> &mut u64 {
        let [out, err] = &mut self.received;
        match stream {
            SessionStream::Stdout => out,
            SessionStream::Stderr => err,
        }
    }

    fn ack_frame(&self) -> SessionFrame {
        SessionFrame::Ack {
            stdout: self.received[0],
            stderr: self.received[1],
        }
    }

    fn input_acked(&mut self, upto: u64) {
        while let Some((off, b)) = self.unacked.front() {
            if off.saturating_add(b.len() as u64) > upto {
                break;
            }
            self.unacked_bytes -= b.len();
            self.unacked.pop_front();
        }
    }
}

pub async fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let client = crate::client_config::client()?;
    let interactive = std::io::stdin().is_terminal();
    let pty = !args.no_pty;
    let (cols, rows) = terminal_size().unwrap_or((80, 24));
    let command = (!args.command.is_empty()).then(|| args.command.join(" "));
    let parameters = crate::cmd_run::parse_params(&args.params, &[])?;
    let session = client
        .start_session(&StartSession {
            node: args.node.clone(),
            document: args.document.clone(),
            parameters,
            command,
            pty: Some(pty),
            cols: Some(cols),
            rows: Some(rows),
            term: Some(std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into())),
            reason: args.reason.clone(),
            e2e: None,
        })
        .await
        .with_context(|| format!("starting a session on {}", args.node))?;
    let mut socket = client
        .attach_session(&session.id)
        .await
        .with_context(|| format!("attaching to session {}", session.id))?;
    let raw = if interactive && pty {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let mut state = State {
        received: [0; 2],
        acked: [0; 2],
        input_sent: 0,
        unacked: VecDeque::new(),
        unacked_bytes: 0,
    };
    socket.send(&state.ack_frame()).await?;
    let mut stdin = read_stdin();
    let mut stdin_open = true;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut ack_due: Option<Instant> = None;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let closed = loop {
        let lost: Option<ClientError> = tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(SessionFrame::Output { stream, offset, data, .. })) => {
                    let have = *state.received_mut(stream);
                    // A frame the client already has (in part) after a resume.
                    let skip = usize::try_from(have.saturating_sub(offset)).unwrap_or(usize::MAX);
                    if let Some(fresh) = data.get(skip..).filter(|d| !d.is_empty()) {
                        let out: &mut dyn Write = match stream {
                            SessionStream::Stdout => &mut stdout,
                            SessionStream::Stderr => &mut stderr,
                        };
                        out.write_all(fresh).and_then(|_| out.flush()).context("writing output")?;
                        *state.received_mut(stream) = offset.max(have).saturating_add(fresh.len() as u64);
                    }
                    let [r0, r1] = state.received;
                    let [a0, a1] = state.acked;
                    let unacked = r0.saturating_sub(a0).saturating_add(r1.saturating_sub(a1));
                    if unacked >= ACK_EVERY {
                        ack_due = Some(Instant::now());
                    } else if ack_due.is_none() {
                        ack_due = Some(Instant::now() + ACK_AFTER);
                    }
                    None
                }
                Some(Ok(SessionFrame::InputAck { offset })) => {
                    state.input_acked(offset);
                    None
                }
                Some(Ok(SessionFrame::Closed(c))) => break c,
                Some(Ok(_)) => None,
                Some(Err(e)) => Some(e),
                None => Some(ClientError::Decode("the server closed the stream".into())),
            },
            chunk = stdin.recv(), if stdin_open && state.unacked_bytes < INPUT_KEEP => {
                let chunk = chunk.unwrap_or_default();
                let frame = if chunk.is_empty() {
                    stdin_open = false;
                    SessionFrame::Eof
                } else {
                    let offset = state.input_sent;
                    state.input_sent += chunk.len() as u64;
                    state.unacked_bytes += chunk.len();
                    state.unacked.push_back((offset, chunk.clone()));
                    SessionFrame::Input { offset, data: chunk }
                };
                socket.send(&frame).await.err()
            }
            _ = winch.recv() => {
                let (cols, rows) = terminal_size().unwrap_or((cols, rows));
                socket.send(&SessionFrame::Resize { cols, rows }).await.err()
            }
            // Only without a raw terminal: with one, Ctrl-C is a byte the remote PTY reads.
            _ = sigint.recv() => socket.send(&SessionFrame::Signal(SessionSignal::Interrupt)).await.err(),
            _ = sleep_until(ack_due), if ack_due.is_some() => {
                ack_due = None;
                state.acked = state.received;
                socket.send(&state.ack_frame()).await.err()
            }
        };
        if let Some(e) = lost {
            tracing::debug!(error = %e, "session connection lost; attaching again");
            socket = match resume(&client, &session.id, &mut state).await {
                Ok(s) => s,
                Err(closed) => break closed,
            };
        }
    };
    socket.close().await;
    drop(raw);
    Ok(finish(&closed))
}

/// The local terminal's size; none when there is no terminal or it says 0x0.
fn terminal_size() -> Option<(u16, u16)> {
    crossterm::terminal::size()
        .ok()
        .filter(|&(c, r)| c > 0 && r > 0)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Attaches again and resends the input the server lacks. Gives up after [`RESUME_FOR`],
/// or at once when the session is over (then says why).
async fn resume(
    client: &Client,
    id: &str,
    state: &mut State,
) -> Result<SessionSocket, SessionClosed> {
    let deadline = Instant::now() + RESUME_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match attach_and_replay(client, id, state).await {
            Ok(s) => return Ok(s),
            Err(ClientError::Api { status: 409, .. }) => return Err(ended(client, id).await),
            Err(e) if Instant::now() >= deadline => {
                return Err(SessionClosed {
                    status: "Failed".into(),
                    exit_code: None,
                    message: format!("lost the connection to the server: {e}"),
                })
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn attach_and_replay(
    client: &Client,
    id: &str,
    state: &mut State,
) -> Result<SessionSocket, ClientError> {
    let mut s = client.attach_session(id).await?;
    s.send(&state.ack_frame()).await?;
    state.acked = state.received;
    // The server says first how much input it has.
    let have = match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
        Ok(Some(Ok(SessionFrame::InputAck { offset }))) => offset,
        _ => {
            return Err(ClientError::Decode(
                "no input acknowledgement on attach".into(),
            ))
        }
    };
    state.input_acked(have);
    for (offset, data) in state.unacked.clone() {
        let skip = usize::try_from(have.saturating_sub(offset)).unwrap_or(usize::MAX);
        if skip < data.len() {
            s.send(&SessionFrame::Input {
                offset: offset + skip as u64,
                data: data.slice(skip..),
            })
            .await?;
        }
    }
    Ok(s)
}

/// Why a session that can no longer be attached ended, from its history.
async fn ended(client: &Client, id: &str) -> SessionClosed {
    match client.get_session(id).await {
        Ok(s) => SessionClosed {
            exit_code: s.exit_code.and_then(|c| i32::try_from(c).ok()),
            message: s.detail,
            status: s.status,
        },
        Err(e) => SessionClosed {
            status: "Failed".into(),
            exit_code: None,
            message: format!("the session ended; its status could not be read: {e}"),
        },
    }
}

/// Prints why the session ended (when it was not its process exiting) and picks the exit
/// status: the remote one, or 255 as ssh does when the session itself failed.
fn finish(c: &SessionClosed) -> ExitCode {
    if !c.message.is_empty() {
        eprintln!("\r\ndrover: {}", c.message);
    }
    match c.exit_code {
        Some(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
        None => ExitCode::from(255),
    }
}
