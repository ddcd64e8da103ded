//! Port forwarding and SSH sessions. The client attaches a multiplexed connection (an HTTP/1.1
//! request upgraded to [`drover_proto::MUX_UPGRADE`]: yamux, as agents speak) and opens a stream
//! per TCP connection; for each, the server opens a stream on the node's tunnel, asks the agent
//! to connect to the session's target, passes the answer back and splices the two streams.
//! Every connection has its own streams, so its own flow control on both hops: one connection
//! that nobody reads holds its own windows and never slows another.
//!
//! A port session has no process: it ends when its client says so (a `Goodbye` stream), when
//! no client has been attached for the resume window, on terminate, idle timeout, maximum
//! duration, or when the node's agent goes away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::{ForwardConnect, Message, SessionClosed, StreamKind, StreamOpen};
use drover_tunnel::{
    into_raw, splice, Counted, Counters, FrameCodec, Role, Stream, Tunnel, TunnelConfig,
};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::broker::{Limits, Outcome, RESUME_WINDOW};
use super::{Attach, Live, OpenRequest, Sessions};
use crate::api::ApiError;
use crate::authz::Principal;
use crate::secrets;
use drover_store::SessionRecord;

/// A client's multiplexed connection, upgraded from its HTTP request.
pub type ClientIo = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// How long a client has to say what a new stream is for.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent has to resolve and connect (its own limit is 10 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the broker looks at its counters (idle time, metrics).
const TICK: Duration = Duration::from_millis(500);
/// Connections one session may have open at once. Each holds a stream on the node's tunnel,
/// which commands and other sessions share (1,024 streams), and up to two windows of memory
/// on the server.
pub const MAX_CONNECTIONS: u64 = 256;

/// A port session about to start.
pub(super) struct PortOpen {
    pub id: String,
    pub document: String,
    pub prefs: drover_docs::Preferences,
    pub target: drover_docs::PortTarget,
    pub tunnel: Tunnel,
    pub node_key: Option<Arc<crate::registry::NodeE2e>>,
}

impl Sessions {
    /// Records a port session and starts its broker. Nothing is asked of the agent until the
    /// first connection: a port session has no process on the node.
    pub(super) async fn open_port(
        &self,
        who: &Principal,
        req: &OpenRequest,
        p: PortOpen,
    ) -> Result<(SessionRecord, Option<drover_api::E2eOffer>), ApiError> {
        let node = req.node.to_string();
        let node_key = p
            .node_key
            .filter(|k| crate::e2e::usable(&self.ca_der, &node, k));
        let sealed = match crate::e2e::decide(p.prefs.end_to_end, req.e2e, node_key.is_some()) {
            Ok(s) => s,
            Err(why) => {
                self.refused(who, &node, &why).await;
                return Err(ApiError::Conflict(why));
            }
        };
        let offer = match (&node_key, sealed) {
            (Some(k), true) => Some(crate::e2e::offer(&self.ca_der, k)),
            _ => None,
        };
        let target = ForwardConnect {
            session_id: p.id.clone(),
            host: p.target.host.clone(),
            port: p.target.port,
            deny: self.forward_deny.clone(),
            e2e: sealed,
        };
        let record = SessionRecord {
            id: p.id.clone(),
            user: who.user.name.clone(),
            node_id: node.clone(),
            kind: "Port".into(),
            document: p.document,
            reason: req.reason.clone(),
            run_as: String::new(),
            started_at: secrets::now(),
            ended_at: None,
            status: "Connecting".into(),
            detail: String::new(),
            exit_code: None,
            bytes_in: 0,
            bytes_out: 0,
            recorded: false,
            target: drover_proto::target_label(&target.host, target.port),
            connections: 0,
            end_to_end: sealed,
        };
        self.store.create_session(&record).await?;
        self.metrics.session_started();
        let detail = match req.reason.as_str() {
            "" => record.target.clone(),
            r => format!("{}: {r}", record.target),
        };
        self.event(&p.id, "started", &who.user.name, &node, &detail)
            .await;
        let (attach_tx, attach) = mpsc::channel(4);
        let (terminate_tx, terminate) = mpsc::channel(4);
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        self.live().insert(
            p.id.clone(),
            Live {
                owner: who.user.name.clone(),
                token: who.token_id.clone(),
                attached: Vec::new(),
                grant: req.grant.clone(),
                attach: Attach::Mux(attach_tx),
                terminate: terminate_tx,
            },
        );
        let broker = PortBroker {
            target,
            node: p.tunnel,
            attach,
            terminate,
            limits: super::limits::of(&p.prefs),
            connected: Some(connected_tx),
            bytes: self.metrics.session_byte_counters(),
        };
        self.spawn_broker(&p.id, &node, connected, run(broker));
        self.recheck_grant(&p.id, req.grant.as_deref()).await;
        Ok((record, offer))
    }
}

/// What a port session's broker is given.
pub struct PortBroker {
    pub target: ForwardConnect,
    pub node: Tunnel,
    pub attach: mpsc::Receiver<ClientIo>,
    pub terminate: mpsc::Receiver<String>,
    pub limits: Limits,
    pub connected: Option<tokio::sync::oneshot::Sender<()>>,
    pub bytes: (
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    ),
}

/// What every connection of a session shares.
struct Shared {
    target: ForwardConnect,
    node: Tunnel,
    counters: Arc<Counters>,
    /// Connections made, and connections open now.
    made: AtomicU64,
    open: AtomicU64,
    /// A client's `Goodbye`: the session ends.
    end: mpsc::Sender<String>,
}

fn closed(status: &str, message: String) -> SessionClosed {
    SessionClosed {
        status: status.into(),
        exit_code: None,
        message,
    }
}

/// Runs a port session until it ends.
pub async fn run(mut b: PortBroker) -> Outcome {
    let started = Instant::now();
    let (end_tx, mut end_rx) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        target: b.target,
        node: b.node.clone(),
        counters: Arc::new(Counters::default()),
        made: AtomicU64::new(0),
        open: AtomicU64::new(0),
        end: end_tx,
    });
    // Each attached client connection is a task here; dropping the set when the session ends
    // closes every client connection, and with them every forwarded connection.
    let mut clients: JoinSet<()> = JoinSet::new();
    let mut unattached_since = Some(started);
    let mut last_activity = started;
    let mut seen = (0, 0, 0);
    let mut tick = tokio::time::interval(TICK);
    let deadline = b.limits.max.map(|m| started + m);
    let outcome = loop {
        tokio::select! {
            io = b.attach.recv() => {
                let Some(io) = io else { continue };
                if let Some(tx) = b.connected.take() {
                    let _ = tx.send(());
                }
                // One client connection per session: a client that attaches again (after its
                // network dropped) replaces the one before, whose streams go with it.
                clients.abort_all();
                clients.spawn(client(io, shared.clone()));
                unattached_since = None;
                last_activity = Instant::now();
            }
            Some(_) = clients.join_next(), if !clients.is_empty() => {
                if clients.is_empty() {
                    unattached_since = Some(Instant::now());
                }
            }
            Some(why) = b.terminate.recv() => break closed("Terminated", why),
            Some(why) = end_rx.recv() => break closed("Terminated", why),
            _ = b.node.closed() => {
                break closed("Failed", "the node's agent disconnected".into());
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or(started)).await },
                if deadline.is_some() => {
                break closed("TimedOut", format!(
                    "the session reached its maximum duration ({})", b.limits.max_words));
            }
            _ = tick.tick() => {
                let (up, down) = shared.counters.get();
                let made = shared.made.load(Ordering::Relaxed);
                if (up, down, made) != seen {
                    b.bytes.0.inc_by(up.saturating_sub(seen.0));
                    b.bytes.1.inc_by(down.saturating_sub(seen.1));
                    seen = (up, down, made);
                    last_activity = Instant::now();
                }
                if last_activity.elapsed() >= b.limits.idle {
                    break closed("TimedOut", format!(
                        "the session was idle for {}", b.limits.idle_words));
                }
                if unattached_since.is_some_and(|t| t.elapsed() >= RESUME_WINDOW) {
                    break closed("Terminated", format!(
                        "no client was attached for {} s", RESUME_WINDOW.as_secs()));
                }
            }
        }
    };
    clients.shutdown().await;
    let (up, down) = shared.counters.get();
    b.bytes.0.inc_by(up.saturating_sub(seen.0));
    b.bytes.1.inc_by(down.saturating_sub(seen.1));
    Outcome {
        closed: outcome,
        bytes_in: up,
        bytes_out: down,
        connections: shared.made.load(Ordering::Relaxed),
    }
}

/// One attached client connection: streams in, one task per forwarded connection. Its
/// connections end with it.
async fn client(io: ClientIo, shared: Arc<Shared>) {
    let (_handle, mut incoming, driver) = Tunnel::start(io, Role::Server, &TunnelConfig::default());
    let mut connections: JoinSet<()> = JoinSet::new();
    tokio::pin!(driver);
    loop {
        tokio::select! {
            r = &mut driver => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "a client's connection ended");
                }
                return;
            }
            s = incoming.accept() => match s {
                Some(s) => { connections.spawn(connection(s, shared.clone())); }
                None => return,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One forwarded connection: the client's stream, the node's stream, spliced.
async fn connection(stream: Stream, shared: Arc<Shared>) {
    let mut from_client = FrameCodec::framed(stream);
    match tokio::time::timeout(OPEN_TIMEOUT, from_client.next()).await {
        Ok(Some(Ok(Message::Open(StreamOpen {
            kind: StreamKind::Forward,
        })))) => {}
        Ok(Some(Ok(Message::Goodbye { .. }))) => {
            let _ = shared
                .end
                .try_send("the client ended the session".to_string());
            return;
        }
        _ => return,
    }
    let Some(_slot) = Slot::take(&shared.open, MAX_CONNECTIONS) else {
        let message =
            format!("the session already has {MAX_CONNECTIONS} connections open, the most it may");
        let _ = from_client
            .send(Message::Error {
                code: "forward_failed".into(),
                message,
            })
            .await;
        return;
    };
    let node = tokio::time::timeout(CONNECT_TIMEOUT, connect_on_node(&shared))
        .await
        .unwrap_or_else(|_| {
            Err((
                "forward_failed".into(),
                "the node did not connect in time".into(),
            ))
        });
    let to_node = match node {
        Ok(s) => s,
        Err((code, message)) => {
            tracing::info!(host = %shared.target.host, port = shared.target.port, %message,
                "a forwarded connection was not made");
            let _ = from_client.send(Message::Error { code, message }).await;
            return;
        }
    };
    if from_client.send(Message::ForwardConnected).await.is_err() {
        return;
    }
    shared.made.fetch_add(1, Ordering::Relaxed);
    let client_side = Counted::new(into_raw(from_client), shared.counters.clone());
    #[cfg(feature = "test-hooks")]
    let client_side = super::tap::Tap::new(client_side);
    let mut client_side = client_side;
    let mut node_side = to_node;
    if let Err(e) = splice(&mut client_side, &mut node_side).await {
        tracing::debug!(error = %e, "a forwarded connection ended with an error");
    }
}

/// One of a session's open connections, given back when dropped.
struct Slot<'a>(&'a AtomicU64);

impl<'a> Slot<'a> {
    fn take(open: &'a AtomicU64, max: u64) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Opens the connection's stream on the node's tunnel and waits for the agent's answer.
async fn connect_on_node(shared: &Shared) -> Result<drover_tunnel::Raw<Stream>, (String, String)> {
    let failed = |m: String| ("forward_failed".to_string(), m);
    let s = shared
        .node
        .open()
        .await
        .map_err(|e| failed(format!("could not open a stream to the node: {e}")))?;
    let mut framed = FrameCodec::framed(s);
    framed
        .feed(Message::Open(StreamOpen {
            kind: StreamKind::Forward,
        }))
        .await
        .map_err(|e| failed(e.to_string()))?;
    framed
        .send(Message::ForwardConnect(shared.target.clone()))
        .await
        .map_err(|e| failed(e.to_string()))?;
    match framed.next().await {
        Some(Ok(Message::ForwardConnected)) => Ok(into_raw(framed)),
        Some(Ok(Message::Error { code, message })) if code == "unsupported_stream" => {
            Err(failed(format!(
                "the agent on this node is too old for port forwarding ({message}); upgrade it"
            )))
        }
        Some(Ok(Message::Error { code, message })) => Err((code, message)),
        Some(Ok(other)) => Err(failed(format!("the agent answered {}", other.kind()))),
        Some(Err(e)) => Err(failed(format!("bad answer from the agent: {e}"))),
        None => Err(failed("the node closed the stream".into())),
    }
}
