//! The agent endpoint: a TLS connection that negotiated the agent ALPN becomes a tunnel. Its
//! first stream is the control stream: Hello, Welcome or Refused, then heartbeats, inventory and
//! certificate renewal until either side ends it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use drover_proto::{Message, RefuseCode, Refused, StreamKind, Welcome};
use drover_store::{CertCheck, NodeId, NodeInventory, NodeStatus, Store};
use drover_tunnel::{FrameCodec, Framed, Incoming, Role, Stream, Tunnel, TunnelConfig};
use futures::{SinkExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::admission::Unauthenticated;
use crate::registry::{Kick, Registration, Registry};
use crate::AppState;

/// Serves one agent connection until it ends.
pub async fn serve_agent(
    state: Arc<AppState>,
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    stop: CancellationToken,
    unauthenticated: Unauthenticated,
    deadline: tokio::time::Instant,
) {
    let Some((node_id, fingerprint, certificate)) = identity(&tls) else {
        // No client certificate (a certificate from another CA already failed the handshake).
        tracing::info!(%peer, "agent connection without a node certificate refused");
        state.metrics.refused("no_certificate");
        return;
    };
    let (bytes_in, bytes_out) = state.metrics.byte_counters();
    let io = Counting {
        inner: tls,
        bytes_in,
        bytes_out,
    };
    let (tunnel, mut incoming, driver) = Tunnel::start(io, Role::Server, &agent_tunnel_config());
    let mut driver = tokio::spawn(driver);
    // Fires only while the connection is unauthenticated (before its Hello is accepted).
    let evicted = unauthenticated.evicted();
    let opening = Opening {
        unauthenticated,
        deadline,
        fingerprint,
        certificate,
    };
    let ended = tokio::select! {
        r = session(&state, &node_id, &tunnel, &mut incoming, stop, opening) => r,
        _ = evicted.cancelled() => {
            state.metrics.refused("evicted");
            Err("evicted before its hello to make room for newer connections".to_string())
        }
    };
    match ended {
        Ok(()) => tracing::debug!(node = %node_id, %peer, "agent connection closed"),
        Err(why) => tracing::info!(node = %node_id, %peer, reason = %why, "agent connection ended"),
    }
    tunnel.close();
    // Give the driver a moment to flush the last frames (a Refused or Goodbye) and close.
    if tokio::time::timeout(Duration::from_secs(2), &mut driver)
        .await
        .is_err()
    {
        tracing::debug!(node = %node_id, "tunnel driver did not finish in time");
        driver.abort();
    }
}

/// The tunnel as the server runs it for an agent. Agents open one stream (the control stream)
/// and never need more: a backlog of two lets the session see, and refuse, a second one.
fn agent_tunnel_config() -> TunnelConfig {
    TunnelConfig {
        accept_backlog: 2,
        ..TunnelConfig::default()
    }
}

/// What a connection holds until its Hello is accepted.
struct Opening {
    unauthenticated: Unauthenticated,
    /// When the Hello must have arrived (counted from `accept`).
    deadline: tokio::time::Instant,
    /// Of the certificate the agent connected with.
    fingerprint: String,
    certificate: Vec<u8>,
}

/// The node ID named by the client certificate, which the TLS layer verified against the CA,
/// and the certificate's fingerprint.
fn identity(tls: &TlsStream<TcpStream>) -> Option<(NodeId, String, Vec<u8>)> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    let info = drover_pki::cert_info(cert).ok()?;
    Some((
        NodeId::parse(&info.common_name)?,
        drover_pki::fingerprint(cert),
        cert.to_vec(),
    ))
}

async fn send(state: &AppState, framed: &mut Framed<Stream>, msg: Message) -> Result<(), String> {
    state.metrics.frame_out();
    framed
        .send(msg)
        .await
        .map_err(|e| format!("send failed: {e}"))
}

async fn refuse(
    state: &AppState,
    framed: &mut Framed<Stream>,
    code: RefuseCode,
    message: String,
) -> Result<(), String> {
    state.metrics.refused(match code {
        RefuseCode::Deregistered => "deregistered",
        RefuseCode::Version => "version",
        RefuseCode::UnknownNode => "unknown_node",
        RefuseCode::Other => "other",
    });
    let _ = send(
        state,
        framed,
        Message::Refused(Refused {
            code,
            message: message.clone(),
        }),
    )
    .await;
    Err(message)
}

async fn next_frame(
    state: &AppState,
    framed: &mut Framed<Stream>,
    deadline: tokio::time::Instant,
) -> Result<Message, String> {
    match tokio::time::timeout_at(deadline, framed.next()).await {
        Err(_) => Err("timed out waiting for the agent".into()),
        Ok(None) => Err("the agent closed the stream".into()),
        Ok(Some(Err(e))) => {
            let reason = format!("bad frame from agent: {e}");
            let _ = send(
                state,
                framed,
                Message::Error {
                    code: "bad_frame".into(),
                    message: reason.clone(),
                },
            )
            .await;
            Err(reason)
        }
        Ok(Some(Ok(m))) => {
            state.metrics.frame_in();
            Ok(m)
        }
    }
}

async fn session(
    state: &AppState,
    node_id: &NodeId,
    tunnel: &Tunnel,
    incoming: &mut Incoming,
    stop: CancellationToken,
    opening: Opening,
) -> Result<(), String> {
    let deadline = opening.deadline;
    let stream = tokio::time::timeout_at(deadline, incoming.accept())
        .await
        .map_err(|_| "no control stream opened in time".to_string())?
        .ok_or("the tunnel closed before the control stream opened")?;
    let mut framed = FrameCodec::framed(stream);
    match next_frame(state, &mut framed, deadline).await? {
        Message::Open(open) if open.kind == StreamKind::Control => {}
        other => return Err(format!("expected the control stream, got {}", other.kind())),
    }
    let hello = match next_frame(state, &mut framed, deadline).await? {
        Message::Hello(h) => h,
        other => return Err(format!("expected hello, got {}", other.kind())),
    };
    // Checking it is our work, not the agent's: not a slow client to evict.
    opening.unauthenticated.waiting_on_us();
    let node = match state.store.get_node(node_id).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return refuse(
                state,
                &mut framed,
                RefuseCode::UnknownNode,
                format!("node {node_id} is not registered with this server"),
            )
            .await
        }
        Err(e) => return Err(format!("store: {e:#}")),
    };
    if node.status == NodeStatus::Inactive {
        return refuse(
            state,
            &mut framed,
            RefuseCode::Deregistered,
            format!("node {node_id} was deregistered; register it again with a new activation"),
        )
        .await;
    }
    match state
        .store
        .check_certificate(node_id, &opening.fingerprint)
        .await
    {
        Ok(CertCheck::Current) => {}
        Ok(CertCheck::Promoted) => {
            tracing::info!(node = %node_id, "the node connected with its renewed certificate; the previous one is retired");
        }
        Ok(CertCheck::Retired) => {
            tracing::warn!(node = %node_id, "refused a retired certificate (replaced by a renewal)");
            return refuse(
                state,
                &mut framed,
                RefuseCode::Other,
                format!(
                    "this certificate of node {node_id} was replaced by a renewal and is retired"
                ),
            )
            .await;
        }
        Err(e) => return Err(format!("store: {e:#}")),
    }
    // A cloned certificate must not hold more than a couple of tunnels. Taken only now, after
    // the certificate proved current: a retired one cannot take the real agent's slots.
    let _slot = match state.admission.agent(node_id) {
        Ok(slot) => slot,
        Err(refusal) => {
            state.metrics.refused(refusal.metric());
            return refuse(
                state,
                &mut framed,
                RefuseCode::Other,
                format!("too many connections with the certificate of node {node_id}"),
            )
            .await;
        }
    };
    let Some(version) = drover_proto::negotiate(hello.min_version, hello.max_version) else {
        return refuse(
            state,
            &mut framed,
            RefuseCode::Version,
            format!(
                "no common protocol version: the agent speaks {}..={}, this server {}..={}; upgrade the older side",
                hello.min_version,
                hello.max_version,
                drover_proto::MIN_PROTOCOL_VERSION,
                drover_proto::PROTOCOL_VERSION
            ),
        )
        .await;
    };

    let reported = match crate::inventory::validated(&hello.inventory) {
        Ok(inv) => inv,
        Err(why) => {
            tracing::warn!(node = %node_id, reason = %why, "refused a Hello with an invalid inventory");
            return refuse(state, &mut framed, RefuseCode::Other, why).await;
        }
    };
    let e2e = crate::e2e::node_key(node_id, hello.e2e_key.as_ref(), &opening.certificate);
    let (_registration, mut kicks) =
        match register(&*state.store, &state.registry, node_id, tunnel, e2e).await {
            Ok(registered) => registered,
            Err(Refusal { code, message }) => {
                return refuse(state, &mut framed, code, message).await
            }
        };
    // Authenticated: the connection no longer counts against the unauthenticated caps.
    drop(opening.unauthenticated);
    let settings_name = hello.settings_parameter.clone();
    let mut settings = match &settings_name {
        Some(name) => crate::agent_settings::read(state, node_id, name).await,
        None => None,
    };
    let heartbeat = settings
        .as_ref()
        .and_then(|s| s.heartbeat_secs)
        .map_or(state.config.heartbeat, Duration::from_secs);
    let mut param_changes = state.param_changes.subscribe();
    let mut seen_change = param_changes.borrow_and_update().0;
    send(
        state,
        &mut framed,
        Message::Welcome(Welcome {
            version,
            node_id: node_id.to_string(),
            heartbeat_secs: heartbeat.as_secs().max(1),
            settings: settings.clone(),
        }),
    )
    .await?;
    save_inventory(state, node_id, &node.inventory, &reported).await;
    let mut known_inventory = reported;

    let mut last_heard = Instant::now();
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = framed.next() => {
                let msg = match frame {
                    None => return Err("the agent closed the control stream".into()),
                    Some(Err(e)) => {
                        let reason = format!("bad frame from agent: {e}");
                        let _ = send(state, &mut framed, Message::Error { code: "bad_frame".into(), message: reason.clone() }).await;
                        return Err(reason);
                    }
                    Some(Ok(m)) => m,
                };
                state.metrics.frame_in();
                last_heard = Instant::now();
                match msg {
                    Message::Ping { seq } => send(state, &mut framed, Message::Pong { seq }).await?,
                    Message::Pong { .. } => {}
                    Message::Inventory(inv) => {
                        let next = match crate::inventory::validated(&inv) {
                            Ok(next) => next,
                            Err(why) => {
                                tracing::warn!(node = %node_id, reason = %why, "ignored an invalid inventory update");
                                continue;
                            }
                        };
                        if next != known_inventory {
                            if let Err(e) = state.store.set_inventory(node_id, &next).await {
                                tracing::error!(node = %node_id, error = %format!("{e:#}"), "could not save inventory");
                            }
                            known_inventory = next;
                        }
                    }
                    Message::RenewCertificate { csr_pem } => {
                        let reply = crate::renewal::renew(state, node_id, &csr_pem).await;
                        send(state, &mut framed, reply).await?;
                    }
                    Message::CertificateSaved => match state.store.certificate_saved(node_id).await {
                        Ok(true) => tracing::info!(node = %node_id, "the agent saved its renewed certificate; the previous one is retired"),
                        Ok(false) => {}
                        Err(e) => tracing::error!(node = %node_id, error = %format!("{e:#}"), "could not retire the previous certificate"),
                    },
                    Message::Goodbye { reason } => return Err(format!("agent said goodbye: {reason}")),
                    other => {
                        let reason = format!("unexpected {} message on the control stream", other.kind());
                        let _ = send(state, &mut framed, Message::Error { code: "unexpected_message".into(), message: reason.clone() }).await;
                        return Err(reason);
                    }
                }
            }
            Ok(()) = param_changes.changed(), if settings_name.is_some() => {
                let name = settings_name.as_deref().unwrap_or_default();
                // Only its own parameter matters, unless changes came too fast to tell.
                let (n, which) = param_changes.borrow_and_update().clone();
                let missed = n > seen_change + 1;
                seen_change = n;
                if which != name && !missed {
                    continue;
                }
                let next = crate::agent_settings::read(state, node_id, name).await;
                // Invalid settings (warned about) leave the last good ones in force.
                if let Some(next) = next.filter(|n| settings.as_ref() != Some(n)) {
                    send(state, &mut framed, Message::Settings(next.clone())).await?;
                    settings = Some(next);
                }
            }
            _ = ticker.tick() => {
                let silent = last_heard.elapsed();
                if silent > heartbeat * 3 {
                    return Err(format!("no heartbeat for {silent:?}"));
                }
                // The agent pings every interval and hears our Pong, so only a quiet agent is
                // asked: one exchange per interval instead of two, half the idle cost of a
                // large fleet.
                if silent >= heartbeat {
                    seq += 1;
                    send(state, &mut framed, Message::Ping { seq }).await?;
                }
            }
            kick = kicks.recv() => {
                let (msg, why) = match kick {
                    Some(Kick::Deregistered) => (
                        Message::Refused(Refused { code: RefuseCode::Deregistered, message: format!("node {node_id} was deregistered") }),
                        "deregistered",
                    ),
                    Some(Kick::Replaced) => (Message::Goodbye { reason: "replaced by a newer connection of this node".into() }, "replaced"),
                    Some(Kick::Shutdown) | None => (Message::Goodbye { reason: "server shutting down".into() }, "shutdown"),
                };
                let _ = send(state, &mut framed, msg).await;
                return Err(why.into());
            }
            _ = stop.cancelled() => {
                let _ = send(state, &mut framed, Message::Goodbye { reason: "server shutting down".into() }).await;
                return Ok(());
            }
            stream = incoming.accept() => match stream {
                // Agents open no stream but the control stream in this protocol version: one
                // that does is broken or hostile, and each stream could pin a window of memory.
                Some(_) => {
                    let reason = "the agent opened a second stream; agents may open only the control stream".to_string();
                    let _ = send(state, &mut framed, Message::Error { code: "unexpected_stream".into(), message: reason.clone() }).await;
                    return Err(reason);
                }
                None => return Err("the tunnel closed".into()),
            }
        }
    }
}

/// Refusal of a connection, sent to the agent before closing.
struct Refusal {
    code: RefuseCode,
    message: String,
}

/// Registers the connection, then checks again that the node is still registered: a
/// deregistration that lands between the Hello check and the registration found no connection
/// to kick, so this check is what ends it (deregistration writes the store before it kicks).
async fn register(
    store: &dyn Store,
    registry: &Registry,
    node_id: &NodeId,
    tunnel: &Tunnel,
    e2e: Option<crate::registry::NodeE2e>,
) -> Result<(Registration, tokio::sync::mpsc::Receiver<Kick>), Refusal> {
    let registered = registry.register(node_id, tunnel.clone(), e2e);
    match store.get_node(node_id).await {
        Ok(Some(node)) if node.status != NodeStatus::Inactive => Ok(registered),
        Ok(_) => Err(Refusal {
            code: RefuseCode::Deregistered,
            message: format!(
                "node {node_id} was deregistered; register it again with a new activation"
            ),
        }),
        Err(e) => Err(Refusal {
            code: RefuseCode::Other,
            message: format!("the server could not read its node registry: {e}"),
        }),
    }
}

async fn save_inventory(
    state: &AppState,
    node: &NodeId,
    stored: &NodeInventory,
    next: &NodeInventory,
) {
    if next == stored {
        return;
    }
    if let Err(e) = state.store.set_inventory(node, next).await {
        tracing::error!(node = %node, error = %format!("{e:#}"), "could not save inventory");
    }
}

/// Counts the bytes crossing an agent connection, for `/metrics`.
struct Counting<T> {
    inner: T,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.bytes_in.inc_by(n as u64);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            self.bytes_out.inc_by(*n as u64);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use drover_store::{Activation, NewNode, SqliteStore};

    /// A deregistration that lands after the Hello check but before the connection is in the
    /// registry (so its kick found nothing) must still end the connection.
    #[tokio::test]
    async fn a_node_deregistered_between_its_hello_check_and_registration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let id = NodeId::random("0000000000000000a").unwrap();
        store
            .create_activation(&Activation {
                id: "act-1".into(),
                code_hash: "h".into(),
                description: String::new(),
                default_name: String::new(),
                tags: Default::default(),
                registration_limit: 1,
                registrations: 0,
                expires_at: i64::MAX,
                created_at: 0,
            })
            .await
            .unwrap();
        let node = NewNode {
            id: id.clone(),
            name: "racer".into(),
            tags: Default::default(),
            registered_at: 1,
            inventory: NodeInventory::default(),
        };
        store
            .redeem_activation("act-1", "h", 1, node)
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let (registry, presence) = Registry::new(store.clone(), crate::metrics::Metrics::new());
        let (io, _peer) = tokio::io::duplex(1024);
        let (tunnel, _incoming, _driver) =
            Tunnel::start(io, Role::Server, &TunnelConfig::default());

        // The Hello check passed; then the operator deregistered the node (store, then kick).
        store.deregister_node(&id, 2).await.unwrap();
        assert!(
            !registry.kick(&id, Kick::Deregistered),
            "nothing to kick yet"
        );

        let refused = register(&*store, &registry, &id, &tunnel, None)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.code, RefuseCode::Deregistered);
        assert!(
            refused.message.contains("deregistered"),
            "{}",
            refused.message
        );
        presence.finish().await;
    }
}
