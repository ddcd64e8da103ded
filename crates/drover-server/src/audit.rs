//! The audit log, as the server writes and checks it: one `record` for every kind of event,
//! checkpoints signed with the key in the data directory, and `verify`, which walks the whole
//! chain. The chain itself (hashing, what counts as broken) is `drover_store::audit`.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_store::audit::{
    checkpoint_message, AuditCheckpoint, AuditEvent, AuditQuery, ChainBreak, ChainCheck,
};
use drover_store::{Store, StoreError};

/// The namespace of checkpoint signatures (`ssh-keygen -Y verify -n drover-audit`).
pub const NAMESPACE: &str = "drover-audit";

/// How often the chain's head is signed (if it moved); also at shutdown.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Entries read per page while checking the chain.
const PAGE: usize = 5_000;

pub struct Audit {
    store: Arc<dyn Store>,
    signer: drover_pki::SshSigner,
    /// Bumped after every append: webhooks wait on it.
    appended: tokio::sync::watch::Sender<u64>,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checked: u64,
    pub checkpoints: u64,
    pub anchor: i64,
    pub head: i64,
    /// The first thing wrong, if anything is.
    pub problem: Option<ChainBreak>,
    /// The newest checkpoint: the entry and when it was signed. Entries after it are not yet
    /// under a signature (one stale by much more than a minute on a running server means the
    /// newest checkpoints were removed).
    pub last_signed: Option<(i64, i64)>,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A user's event, from the principal that did it.
pub fn by(who: &crate::authz::Principal) -> AuditEvent {
    AuditEvent {
        at_ms: now_ms(),
        actor: who.user.name.clone(),
        actor_kind: "user".into(),
        token: who.token_id.clone(),
        source: who.source.clone(),
        ..AuditEvent::default()
    }
}

/// A session's event as an audit entry (the session's own history keeps it too).
pub fn session_event(
    session_id: &str,
    event: &str,
    actor: &str,
    node: &str,
    detail: &str,
) -> AuditEvent {
    AuditEvent {
        at_ms: now_ms(),
        actor: actor.to_string(),
        actor_kind: if actor.is_empty() { "server" } else { "user" }.into(),
        action: format!("session.{event}"),
        resource: if node.is_empty() {
            format!("session/{session_id}")
        } else {
            format!("session/{session_id} node/{node}")
        },
        outcome: if event.contains("refused") || event.contains("denied") {
            "denied"
        } else {
            "success"
        }
        .into(),
        reason: detail.to_string(),
        ..AuditEvent::default()
    }
}

impl Audit {
    pub fn new(store: Arc<dyn Store>, signer: drover_pki::SshSigner) -> Self {
        Self {
            store,
            signer,
            appended: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes after every append.
    pub fn appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Appends an event. A failure to write is logged, not returned: the action it records
    /// has happened already.
    pub async fn record(&self, mut e: AuditEvent) {
        if e.at_ms == 0 {
            e.at_ms = now_ms();
        }
        match self.store.append_audit(vec![e.clone()]).await {
            Ok(_) => self.appended.send_modify(|n| *n = n.wrapping_add(1)),
            Err(err) => {
                tracing::error!(error = %err, action = %e.action, actor = %e.actor, "could not write an audit entry")
            }
        }
    }

    /// Signs the chain's head, if it moved since the last checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        let (_, (seq, hash)) = self.store.audit_ends().await?;
        let last = self.store.audit_checkpoints().await?.last().map(|c| c.seq);
        // (Every checkpoint is read to find the last: about 1,500 a day, pruned with the log.)
        if seq == 0 || last >= Some(seq) {
            return Ok(None);
        }
        let signature = match self
            .signer
            .sign(NAMESPACE, checkpoint_message(seq, &hash).as_bytes())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not sign an audit checkpoint");
                return Ok(None);
            }
        };
        self.store
            .add_audit_checkpoint(&AuditCheckpoint {
                seq,
                hash,
                at_ms: now_ms(),
                signature,
            })
            .await?;
        Ok(Some(seq))
    }

    /// Walks the chain from its anchor to its head, checking every entry's hash and link and
    /// every checkpoint's signature and entry; stops at the first problem.
    pub async fn verify(&self) -> Result<Report, StoreError> {
        let ((anchor_seq, anchor_hash), (head, _)) = self.store.audit_ends().await?;
        let checkpoints: BTreeMap<i64, AuditCheckpoint> = self
            .store
            .audit_checkpoints()
            .await?
            .into_iter()
            .map(|c| (c.seq, c))
            .collect();
        let mut chain = ChainCheck::new(anchor_seq, &anchor_hash);
        let mut report = Report {
            checked: 0,
            checkpoints: 0,
            anchor: anchor_seq,
            head,
            problem: None,
            last_signed: checkpoints.values().next_back().map(|c| (c.seq, c.at_ms)),
        };
        // Where retention cut the chain, the server signed it: an anchor without that
        // signature is one somebody wrote into the database.
        if anchor_seq > 0 {
            let signed = checkpoints.get(&anchor_seq).is_some_and(|cp| {
                cp.hash == anchor_hash
                    && self.signer.verify(
                        NAMESPACE,
                        checkpoint_message(cp.seq, &cp.hash).as_bytes(),
                        &cp.signature,
                    )
            });
            if !signed {
                report.problem = Some(ChainBreak::Rewritten { seq: anchor_seq });
                return Ok(report);
            }
        }
        let mut after = anchor_seq;
        'pages: loop {
            let page = self
                .store
                .list_audit(&AuditQuery {
                    after: Some(after),
                    limit: PAGE,
                    ..AuditQuery::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                if let Err(problem) = chain.next(e) {
                    report.problem = Some(problem);
                    break 'pages;
                }
                if let Some(cp) = checkpoints.get(&e.seq) {
                    let message = checkpoint_message(cp.seq, &cp.hash);
                    if !self
                        .signer
                        .verify(NAMESPACE, message.as_bytes(), &cp.signature)
                    {
                        report.problem = Some(ChainBreak::BadSignature { seq: cp.seq });
                        break 'pages;
                    }
                    if cp.hash != e.hash {
                        report.problem = Some(ChainBreak::Rewritten { seq: cp.seq });
                        break 'pages;
                    }
                    report.checkpoints += 1;
                }
            }
        }
        report.checked = chain.checked;
        if report.problem.is_none() {
            let (seq, _) = chain.head();
            if let Some((&signed, _)) = checkpoints.range(seq + 1..).next() {
                report.problem = Some(ChainBreak::Truncated { seq: signed });
            }
        }
        Ok(report)
    }

    /// The key that signs checkpoints, to check them with OpenSSH alone.
    pub fn public_key(&self) -> String {
        self.signer.public_openssh().unwrap_or_default()
    }
}
