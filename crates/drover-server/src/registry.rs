//! The registry of connected agents: which node has a tunnel open now, a way to reach that
//! tunnel, and a way to end a connection at once (deregistration, replacement, shutdown).
//! Connect and disconnect events reach the store through one batching writer, so that 10,000
//! agents reconnecting at once cost a few transactions, not 10,000.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_store::{NodeId, Presence, Store};
use drover_tunnel::Tunnel;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why the server ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    Deregistered,
    /// The same node connected again; the newer connection wins.
    Replaced,
    Shutdown,
}

struct Entry {
    conn_id: u64,
    tunnel: Tunnel,
    kick: mpsc::Sender<Kick>,
    e2e: Option<Arc<NodeE2e>>,
}

/// A connected agent's end-to-end key, with the certificate it connected with; checked when a
/// session would use it (`e2e::usable`).
#[derive(Debug)]
pub struct NodeE2e {
    pub public: Vec<u8>,
    pub signature: Vec<u8>,
    /// The certificate the agent connected with (DER), which vouches for the key.
    pub certificate: Vec<u8>,
}

#[derive(Clone)]
pub struct Registry {
    agents: Arc<Mutex<HashMap<NodeId, Entry>>>,
    /// Woken when the node connects: deliveries waiting for an offline node.
    waiters: Arc<Mutex<HashMap<NodeId, Arc<tokio::sync::Notify>>>>,
    next_conn: Arc<AtomicU64>,
    presence: mpsc::Sender<Presence>,
    metrics: Metrics,
}

/// Held by a connection's task while it is registered; dropping it unregisters the connection
/// and records the disconnect.
pub struct Registration {
    registry: Registry,
    node: NodeId,
    conn_id: u64,
}

/// Owns the task that writes presence batches to the store.
pub struct PresenceWriter {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

const PRESENCE_QUEUE: usize = 65_536;
const PRESENCE_BATCH: usize = 2_048;

impl Registry {
    pub fn new(store: Arc<dyn Store>, metrics: Metrics) -> (Self, PresenceWriter) {
        let (tx, rx) = mpsc::channel(PRESENCE_QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_presence(store, rx, stop.clone()));
        (
            Self {
                agents: Arc::new(Mutex::new(HashMap::new())),
                waiters: Arc::new(Mutex::new(HashMap::new())),
                next_conn: Arc::new(AtomicU64::new(1)),
                presence: tx,
                metrics,
            },
            PresenceWriter { stop, task },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated (every update is a
        // single insert or remove), so a poisoned lock is still safe to use.
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `node` as connected over `tunnel`, replacing (and kicking) an older connection
    /// of the same node. Returns the registration and the channel on which kicks arrive.
    pub fn register(
        &self,
        node: &NodeId,
        tunnel: Tunnel,
        e2e: Option<NodeE2e>,
    ) -> (Registration, mpsc::Receiver<Kick>) {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (kick_tx, kick_rx) = mpsc::channel(1);
        let old = self.lock().insert(
            node.clone(),
            Entry {
                conn_id,
                tunnel,
                kick: kick_tx,
                e2e: e2e.map(Arc::new),
            },
        );
        if let Some(old) = old {
            let _ = old.kick.try_send(Kick::Replaced);
        }
        self.metrics.connected();
        self.send_presence(node, true);
        if let Some(n) = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
        {
            n.notify_waiters();
        }
        (
            Registration {
                registry: self.clone(),
                node: node.clone(),
                conn_id,
            },
            kick_rx,
        )
    }

    fn send_presence(&self, node: &NodeId, online: bool) {
        let p = Presence {
            id: node.clone(),
            online,
            at: crate::secrets::now(),
        };
        if self.presence.try_send(p).is_err() {
            tracing::warn!(node = %node, "presence queue full; status update dropped");
        }
    }

    /// Ends the node's connection at once, if it has one.
    pub fn kick(&self, node: &NodeId, why: Kick) -> bool {
        match self.lock().get(node) {
            Some(e) => {
                let _ = e.kick.try_send(why);
                true
            }
            None => false,
        }
    }

    /// Ends every connection (server shutdown).
    pub fn close_all(&self) {
        for e in self.lock().values() {
            let _ = e.kick.try_send(Kick::Shutdown);
        }
    }

    pub fn is_online(&self, node: &NodeId) -> bool {
        self.lock().contains_key(node)
    }

    /// The node's tunnel, to open a stream to it.
    pub fn tunnel(&self, node: &NodeId) -> Option<Tunnel> {
        self.lock().get(node).map(|e| e.tunnel.clone())
    }

    /// The connected agent's tunnel and end-to-end key, if it has one.
    pub fn tunnel_and_key(&self, node: &NodeId) -> Option<(Tunnel, Option<Arc<NodeE2e>>)> {
        self.lock()
            .get(node)
            .map(|e| (e.tunnel.clone(), e.e2e.clone()))
    }

    /// Notified whenever `node` connects. Enable the `notified()` future before checking
    /// [`Registry::tunnel`], so that a connect in between is not missed.
    pub fn connect_notify(&self, node: &NodeId) -> Arc<tokio::sync::Notify> {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.clone())
            .or_default()
            .clone()
    }

    pub fn connected_count(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut agents = self.registry.lock();
        let ours = agents
            .get(&self.node)
            .is_some_and(|e| e.conn_id == self.conn_id);
        if ours {
            agents.remove(&self.node);
        }
        drop(agents);
        self.registry.metrics.disconnected();
        // A replaced connection must not mark the node offline: its successor is online.
        if ours {
            self.registry.send_presence(&self.node, false);
        }
    }
}

async fn write_presence(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Presence>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PRESENCE_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, PRESENCE_BATCH) => {
                if n == 0 {
                    return;
                }
                // Let a burst (thousands of agents connecting) gather into one transaction.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while batch.len() < PRESENCE_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                flush(&*store, &mut batch).await;
            }
            _ = stop.cancelled() => {
                while let Ok(p) = rx.try_recv() {
                    batch.push(p);
                }
                flush(&*store, &mut batch).await;
                return;
            }
        }
    }
}

async fn flush(store: &dyn Store, batch: &mut Vec<Presence>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.record_presence(batch).await {
        tracing::error!(error = %format!("{e:#}"), count = batch.len(), "could not record presence");
    }
    batch.clear();
}

impl PresenceWriter {
    /// Writes what is queued and stops.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
