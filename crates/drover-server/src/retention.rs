//! History retention: a background task that prunes the output of old commands, then old
//! commands themselves, and the oldest ones past a count, and sessions (with their events and
//! recordings) past the same maximum age, so that a server running for years keeps a bounded
//! database and data directory. It works in short store transactions and rests between them
//! at least as long as each took, so dispatch and progress writes always get the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_store::{Pruned, Retention, Store};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sessions::recording::Recordings;

/// How much history to keep, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Commands older than this are deleted with their invocations and output.
    pub max_age: Duration,
    /// Past this many stored invocations, the oldest commands are deleted.
    pub max_invocations: u64,
    /// The output of commands older than this is deleted; their results stay.
    pub output_max_age: Duration,
    /// How often the task looks for something to prune.
    pub interval: Duration,
    /// Audit entries older than this are deleted (the chain is then checked from the last one
    /// deleted); None keeps them all.
    pub audit_max_age: Option<Duration>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(90 * 86400),
            max_invocations: 1_000_000,
            output_max_age: Duration::from_secs(30 * 86400),
            interval: Duration::from_secs(600),
            audit_max_age: Some(Duration::from_secs(365 * 86400)),
        }
    }
}

/// Invocations per transaction: about 20 ms of the store's time on a database of a million
/// invocations (500 held it for 100 ms, which progress writes then waited for).
const BATCH: usize = 100;

impl RetentionPolicy {
    fn at(&self, now: i64) -> Retention {
        let before =
            |age: Duration| now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        Retention {
            delete_before: before(self.max_age),
            max_invocations: self.max_invocations,
            output_before: before(self.output_max_age),
        }
    }
}

/// Prunes everything the policy allows now; returns the totals.
pub async fn prune(
    store: &dyn Store,
    policy: &RetentionPolicy,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<Pruned, drover_store::StoreError> {
    let retention = policy.at(crate::secrets::now());
    let mut total = Pruned::default();
    loop {
        let started = Instant::now();
        let p = store.prune_history(&retention, BATCH).await?;
        metrics.pruned(&p);
        total.outputs += p.outputs;
        total.invocations += p.invocations;
        total.commands += p.commands;
        if !p.more {
            return Ok(total);
        }
        // Rest as long as the batch took: pruning gets at most half of the store.
        tokio::select! {
            _ = tokio::time::sleep(started.elapsed().max(Duration::from_millis(1))) => {}
            _ = stop.cancelled() => return Ok(total),
        }
    }
}

/// Deletes the sessions that ended longer ago than the history's maximum age, with their
/// events and recordings; returns how many.
pub async fn prune_sessions(
    store: &dyn Store,
    recordings: &dyn Recordings,
    policy: &RetentionPolicy,
    stop: &CancellationToken,
) -> Result<u64, drover_store::StoreError> {
    let before = policy.at(crate::secrets::now()).delete_before;
    let mut total = 0u64;
    loop {
        let started = Instant::now();
        let ids = store.prune_sessions(before, BATCH).await?;
        for id in &ids {
            if let Err(e) = recordings.delete(id).await {
                tracing::warn!(session = %id, error = %e, "could not delete a recording");
            }
        }
        total += ids.len() as u64;
        if ids.len() < BATCH {
            return Ok(total);
        }
        tokio::select! {
            _ = tokio::time::sleep(started.elapsed().max(Duration::from_millis(1))) => {}
            _ = stop.cancelled() => return Ok(total),
        }
    }
}

/// Runs until `stop`: prunes at start, then every `policy.interval`.
pub async fn run(
    store: Arc<dyn Store>,
    recordings: Arc<dyn Recordings>,
    policy: RetentionPolicy,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        let started = Instant::now();
        match prune_sessions(store.as_ref(), recordings.as_ref(), &policy, &stop).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "pruned session history and recordings"),
            Err(e) => tracing::warn!(error = %e, "pruning sessions failed; will try again"),
        }
        match prune(store.as_ref(), &policy, &metrics, &stop).await {
            Ok(p) if p != Pruned::default() => tracing::info!(
                outputs = p.outputs,
                invocations = p.invocations,
                commands = p.commands,
                ms = started.elapsed().as_millis() as u64,
                "pruned command history"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "pruning the command history failed; will try again")
            }
        }
        if let Some(age) = policy.audit_max_age {
            let before = crate::audit::now_ms().saturating_sub(age.as_millis() as i64);
            match store.prune_audit(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, "pruned the audit log"),
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the audit log failed; will try again")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_become_cutoffs() {
        let p = RetentionPolicy {
            max_age: Duration::from_secs(100),
            max_invocations: 7,
            output_max_age: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            audit_max_age: None,
        };
        let r = p.at(1_000);
        assert_eq!(
            (r.delete_before, r.output_before, r.max_invocations),
            (900, 990, 7)
        );
        let huge = RetentionPolicy {
            max_age: Duration::MAX,
            ..p
        };
        assert_eq!(huge.at(1_000).delete_before, 1_000 - i64::MAX);
    }

    #[tokio::test]
    async fn old_sessions_go_with_their_recordings_and_recent_ones_stay() {
        #![allow(clippy::unwrap_used)]
        use crate::sessions::recording::DirRecordings;
        use drover_store::{SessionEnd, SessionRecord, SqliteStore};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let recordings = DirRecordings::new(dir.path().join("rec"));
        let now = crate::secrets::now();
        for (id, ended) in [("s-01", now - 1_000), ("s-02", now - 10)] {
            store
                .create_session(&SessionRecord {
                    id: id.into(),
                    user: "admin".into(),
                    node_id: "n-x".into(),
                    kind: "Shell".into(),
                    document: "SessionManagerRunShell".into(),
                    reason: String::new(),
                    run_as: String::new(),
                    started_at: ended - 5,
                    ended_at: None,
                    status: "Connecting".into(),
                    detail: String::new(),
                    exit_code: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    recorded: true,
                    target: String::new(),
                    connections: 0,
                    end_to_end: false,
                })
                .await
                .unwrap();
            let end = SessionEnd {
                status: "Terminated".into(),
                detail: String::new(),
                exit_code: Some(0),
                ended_at: ended,
                bytes_in: 0,
                bytes_out: 0,
                connections: 0,
            };
            store.end_session(id, &end).await.unwrap();
            drop(recordings.create(id).await.unwrap());
        }
        let policy = RetentionPolicy {
            max_age: Duration::from_secs(100),
            ..RetentionPolicy::default()
        };
        let n = prune_sessions(&store, &recordings, &policy, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(store.get_session("s-01").await.unwrap().is_none());
        assert!(recordings.open("s-01").await.unwrap().is_none());
        assert!(recordings.open("s-02").await.unwrap().is_some());
    }
}
