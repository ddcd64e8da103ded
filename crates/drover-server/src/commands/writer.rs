//! One task writes invocation progress to the store, in batches: a thousand agents reporting at
//! once cost a few transactions. A caller that must know its update is stored (before telling
//! the agent it may forget the result) waits for the batch's acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use drover_store::{InvocationUpdate, Store};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 65_536;
const BATCH: usize = 4_096;

/// An update (or none: a barrier), and who waits for it to be stored.
type Item = (Option<InvocationUpdate>, Option<oneshot::Sender<bool>>);

#[derive(Clone)]
pub struct Updates {
    tx: mpsc::Sender<Item>,
    changed: watch::Receiver<u64>,
}

pub struct UpdateWriter {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Updates {
    pub fn new(store: Arc<dyn Store>) -> (Self, UpdateWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (changed_tx, changed) = watch::channel(0);
        let stop = CancellationToken::new();
        let task = tokio::spawn(write(store, rx, changed_tx, stop.clone()));
        (Self { tx, changed }, UpdateWriter { stop, task })
    }

    /// Queues an update (waits only when the queue is full).
    pub async fn push(&self, u: InvocationUpdate) {
        let _ = self.tx.send((Some(u), None)).await;
    }

    /// Queues an update and waits until it is stored; false if storing failed.
    pub async fn push_stored(&self, u: InvocationUpdate) -> bool {
        let (ack, done) = oneshot::channel();
        if self.tx.send((Some(u), Some(ack))).await.is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    /// Waits until everything queued before is stored.
    pub async fn flush(&self) -> bool {
        let (ack, done) = oneshot::channel();
        if self.tx.send((None, Some(ack))).await.is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    /// Bumped after every stored batch: long-polling readers wait on it.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }
}

async fn write(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Item>,
    changed: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                // A short pause lets a burst gather into one transaction.
                tokio::time::sleep(Duration::from_millis(5)).await;
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                flush(&*store, &mut batch, &changed).await;
            }
            _ = stop.cancelled() => {
                while let Ok(item) = rx.try_recv() {
                    batch.push(item);
                }
                flush(&*store, &mut batch, &changed).await;
                return;
            }
        }
    }
}

async fn flush(store: &dyn Store, batch: &mut Vec<Item>, changed: &watch::Sender<u64>) {
    if batch.is_empty() {
        return;
    }
    let updates: Vec<InvocationUpdate> = batch.iter().filter_map(|(u, _)| u.clone()).collect();
    let ok = match store.apply_invocation_updates(&updates).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), count = updates.len(), "could not store invocation progress");
            false
        }
    };
    for (_, ack) in batch.drain(..) {
        if let Some(ack) = ack {
            let _ = ack.send(ok);
        }
    }
    changed.send_modify(|v| *v += 1);
}

impl UpdateWriter {
    /// Writes what is queued and stops.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
