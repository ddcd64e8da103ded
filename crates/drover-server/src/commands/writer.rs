//! One task writes invocation progress to the store, in batches: a thousand agents reporting at
//! once cost a few transactions. A caller that must know its update is stored (before telling
//! the agent it may forget the result) waits for the batch's acknowledgement.
//!
//! A batch that fails is applied again one update at a time, so one bad update fails only
//! itself. An invocation with a failed update is marked: its final status is then refused (its
//! acknowledgement is false), so the delivery starts over and the agent, which keeps everything
//! until it hears `Delivered`, replays what the store lacks. Nothing is dropped silently.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_store::{InvocationUpdate, Store};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 65_536;
const BATCH: usize = 4_096;

/// An update (or none: a barrier), and who waits for it to be stored.
/// An output update also holds its bytes' share of the [`OUTPUT_BUDGET`] until it is stored.
type Item = (
    Option<InvocationUpdate>,
    Option<oneshot::Sender<bool>>,
    Option<OwnedSemaphorePermit>,
);

/// Output bytes queued or being stored at once. Agents that produce faster than the disk
/// takes wait here, and so (through their streams' windows) on the node, instead of the
/// server buffering gigabytes.
const OUTPUT_BUDGET: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct Updates {
    tx: mpsc::Sender<Item>,
    budget: Arc<Semaphore>,
    changed: watch::Receiver<u64>,
    /// Bumped when a command's final status is stored.
    finished: Arc<watch::Sender<u64>>,
}

/// Invocations with an update that could not be stored since their delivery began.
type Failed = Arc<Mutex<HashSet<String>>>;

pub struct UpdateWriter {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Updates {
    pub fn new(store: Arc<dyn Store>) -> (Self, UpdateWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (changed_tx, changed) = watch::channel(0);
        let stop = CancellationToken::new();
        let task = tokio::spawn(write(
            store,
            rx,
            changed_tx,
            stop.clone(),
            Failed::default(),
        ));
        let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET));
        (
            Self {
                tx,
                changed,
                budget,
                finished: Arc::new(watch::Sender::new(0)),
            },
            UpdateWriter { stop, task },
        )
    }

    /// Queues an update (waits only when the queue is full).
    pub async fn push(&self, u: InvocationUpdate) {
        let permit = match &u {
            InvocationUpdate::Output { data, .. } => {
                let bytes = u32::try_from(data.len().clamp(1, OUTPUT_BUDGET)).unwrap_or(u32::MAX);
                self.budget.clone().acquire_many_owned(bytes).await.ok()
            }
            _ => None,
        };
        let _ = self.tx.send((Some(u), None, permit)).await;
    }

    /// Queues an update and waits until it is stored; false if storing failed.
    pub async fn push_stored(&self, u: InvocationUpdate) -> bool {
        let (ack, done) = oneshot::channel();
        if self.tx.send((Some(u), Some(ack), None)).await.is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    /// Waits until everything queued before is stored.
    pub async fn flush(&self) -> bool {
        let (ack, done) = oneshot::channel();
        if self.tx.send((None, Some(ack), None)).await.is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    /// Says that a command's final status is stored (long polls check theirs then).
    pub fn command_finished(&self) {
        self.finished.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes when a command's final status is stored; has seen the current one.
    pub fn finished(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// The count of stored batches, as a view reports it (`seen` of the next long poll).
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Bumped after every stored batch: long-polling readers wait on it. The receiver has seen
    /// the current batch: a clone of a receiver keeps the original's notion of what it has
    /// seen, and the one kept here never looks, so a bare clone would answer `changed()` at
    /// once, forever, and every long poll would turn into a busy loop.
    pub fn changed(&self) -> watch::Receiver<u64> {
        let mut r = self.changed.clone();
        r.borrow_and_update();
        r
    }
}

async fn write(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Item>,
    changed: watch::Sender<u64>,
    stop: CancellationToken,
    failed: Failed,
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
                flush(&*store, &mut batch, &changed, &failed).await;
            }
            _ = stop.cancelled() => {
                while let Ok(item) = rx.try_recv() {
                    batch.push(item);
                }
                flush(&*store, &mut batch, &changed, &failed).await;
                return;
            }
        }
    }
}

fn invocation_of(u: &InvocationUpdate) -> &str {
    match u {
        InvocationUpdate::Status { invocation_id, .. }
        | InvocationUpdate::StepStarted { invocation_id, .. }
        | InvocationUpdate::Output { invocation_id, .. }
        | InvocationUpdate::StepFinished { invocation_id, .. } => invocation_id,
    }
}

fn is_final(u: &InvocationUpdate) -> bool {
    matches!(u, InvocationUpdate::Status { status, .. }
        if matches!(status.as_str(), "Success" | "Failed" | "TimedOut" | "Cancelled"))
}

async fn flush(
    store: &dyn Store,
    batch: &mut Vec<Item>,
    changed: &watch::Sender<u64>,
    failed: &Failed,
) {
    if batch.is_empty() {
        return;
    }
    // Refused: an agent's final result (it waits for the acknowledgement, to tell the agent)
    // for an invocation with a failed update. A final status the server decides itself
    // (timeout, cancel) has no waiter and is stored.
    let refused: Vec<bool> = {
        let marks = failed.lock().map(|f| f.clone()).unwrap_or_default();
        batch
            .iter()
            .map(|(u, ack, _)| {
                u.as_ref().is_some_and(|u| {
                    ack.is_some() && is_final(u) && marks.contains(invocation_of(u))
                })
            })
            .collect()
    };
    let mut refused = refused;
    let mut results: Vec<bool> = refused.iter().map(|r| !r).collect();
    let updates: Vec<InvocationUpdate> = batch
        .iter()
        .zip(&refused)
        .filter(|(_, r)| !**r)
        .filter_map(|((u, _, _), _)| u.clone())
        .collect();
    if let Err(e) = store.apply_invocation_updates(&updates).await {
        tracing::warn!(error = %format!("{e:#}"), count = updates.len(), "a batch of invocation progress failed; storing its updates one by one");
        for (i, (u, ack, _)) in batch.iter().enumerate() {
            let Some(u) = u
                .as_ref()
                .filter(|_| !refused.get(i).copied().unwrap_or(true))
            else {
                continue;
            };
            let id = invocation_of(u);
            let now_marked = failed.lock().map(|f| f.contains(id)).unwrap_or(true);
            if ack.is_some() && is_final(u) && now_marked {
                // An earlier update of this batch failed for it just now.
                if let (Some(r), Some(x)) = (refused.get_mut(i), results.get_mut(i)) {
                    (*r, *x) = (true, false);
                }
                continue;
            }
            if let Err(e) = store
                .apply_invocation_updates(std::slice::from_ref(u))
                .await
            {
                tracing::error!(invocation = %id, error = %format!("{e:#}"), "could not store invocation progress; the delivery will replay it");
                if let Ok(mut f) = failed.lock() {
                    f.insert(id.to_string());
                }
                if let Some(r) = results.get_mut(i) {
                    *r = false;
                }
            }
        }
    }
    for ((u, _, _), r) in batch.iter().zip(&refused) {
        if let (Some(u), true) = (u, r) {
            // Its delivery starts over and the agent replays what is missing; the mark goes
            // with this refusal.
            let id = invocation_of(u);
            tracing::warn!(invocation = %id, "final result refused: part of its progress was not stored; the agent replays it");
            if let Ok(mut f) = failed.lock() {
                f.remove(id);
            }
        }
    }
    // A barrier acknowledges that everything before it was stored.
    let mut all_ok = true;
    // Dropping each item returns its output bytes to the budget.
    for ((u, ack, _permit), ok) in batch.drain(..).zip(results) {
        all_ok &= ok;
        if let Some(ack) = ack {
            let _ = ack.send(if u.is_some() { ok } else { all_ok });
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use drover_store::{Command, Invocation, InvocationQuery, SqliteStore};

    use super::*;

    fn command() -> Command {
        Command {
            id: "cmd-1".into(),
            document_name: "RunShellScript".into(),
            document_version: "1".into(),
            parameters: "{}".into(),
            targets: vec!["all".into()],
            max_concurrency: "50".into(),
            max_errors: "0".into(),
            delivery_timeout_secs: 600,
            execution_timeout_secs: 3600,
            output_limit: 1 << 20,
            comment: String::new(),
            created_at: 1,
            status: "Pending".into(),
            payload: "{}".into(),
            cancel_requested: false,
            output_pruned: false,
            sender: "admin".into(),
        }
    }

    fn invocation(id: &str, node: &str) -> Invocation {
        Invocation {
            id: id.into(),
            command_id: "cmd-1".into(),
            node_id: node.into(),
            node_name: String::new(),
            status: "Pending".into(),
            status_detail: String::new(),
            exit_code: None,
            requested_at: 1,
            started_at: None,
            finished_at: None,
            steps: Vec::new(),
        }
    }

    fn output(inv: &str, offset: i64, data: &str) -> InvocationUpdate {
        InvocationUpdate::Output {
            invocation_id: inv.into(),
            step: "s".into(),
            stderr: false,
            offset,
            len: data.len() as i64,
            data: data.into(),
        }
    }

    fn status(inv: &str, status: &str) -> InvocationUpdate {
        InvocationUpdate::Status {
            invocation_id: inv.into(),
            status: status.into(),
            detail: String::new(),
            exit_code: Some(0),
            at: 2,
        }
    }

    #[tokio::test]
    async fn a_failed_update_fails_only_its_invocation_and_refuses_its_final_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        // A real failure inside SQLite for one chunk, as a full disk or an I/O error would be.
        // (The store holds the database exclusively, so the trigger goes in before it opens.)
        drop(SqliteStore::open(&path).unwrap());
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON output_chunks \
                 WHEN NEW.data LIKE '%BOOM%' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;",
            )
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_command(
                &command(),
                &[
                    invocation("inv-a", "n-0000000000000000a"),
                    invocation("inv-b", "n-0000000000000000b"),
                ],
            )
            .await
            .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let (updates, writer) = Updates::new(store.clone());
        for inv in ["inv-a", "inv-b"] {
            updates.push(status(inv, "InProgress")).await;
            updates
                .push(InvocationUpdate::StepStarted {
                    invocation_id: inv.into(),
                    step: "s".into(),
                })
                .await;
        }
        updates.push(output("inv-a", 0, "BOOM\n")).await;
        updates.push(output("inv-a", 5, "after\n")).await;
        updates.push(output("inv-b", 0, "fine\n")).await;
        assert!(!updates.push_stored(status("inv-a", "Success")).await);
        assert!(updates.push_stored(status("inv-b", "Success")).await);
        writer.finish().await;

        let get = |id: &'static str| {
            let store = store.clone();
            async move {
                let q = InvocationQuery {
                    command_id: Some("cmd-1".into()),
                    with_steps: true,
                    limit: 10,
                    ..InvocationQuery::default()
                };
                store
                    .list_invocations(&q)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|i| i.id == id)
                    .unwrap()
            }
        };
        let b = get("inv-b").await;
        assert_eq!(
            (b.status.as_str(), b.steps[0].stdout.as_str()),
            ("Success", "fine\n")
        );
        // A is not final, and its stored output ends where the replay will start.
        let a = get("inv-a").await;
        assert_eq!(a.status, "InProgress");
        assert_eq!(
            (a.steps[0].stdout.as_str(), a.steps[0].stdout_bytes),
            ("", 0)
        );
    }

    #[tokio::test]
    async fn a_long_poll_waits_for_the_next_batch_not_one_it_has_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        store
            .create_command(&command(), &[invocation("inv-a", "n-0000000000000000a")])
            .await
            .unwrap();
        let (updates, writer) = Updates::new(Arc::new(store));
        assert!(updates.push_stored(status("inv-a", "InProgress")).await);
        // A reader arriving after that batch has nothing new to wait for...
        let mut reader = updates.changed();
        assert!(!reader.has_changed().unwrap());
        // ...until the next one is stored.
        assert!(updates.push_stored(status("inv-a", "Success")).await);
        assert!(reader.has_changed().unwrap());
        reader.changed().await.unwrap();
        assert!(!updates.changed().has_changed().unwrap());
        writer.finish().await;
    }
}
