//! The audit log: append-only entries, each chained to the one before by a SHA-256 hash, and
//! checkpoints (a signature of the chain's head at some entry) that the server signs. The
//! hashing and the check of a chain are here, free of I/O, so that every store checks alike.
//!
//! What the chain proves: an entry edited, removed or moved breaks the hashes from there on
//! (and names the first bad entry). What the checkpoints add: an attacker who rewrites the
//! rest of the chain to match must also forge the signature of every later checkpoint, which
//! needs the key in the server's data directory.

use sha2::{Digest, Sha256};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Something that happened, as the server records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// Who: a user's name, a node's ID, `server`, or `anonymous`.
    pub actor: String,
    /// `user`, `node`, `server` or `anonymous`.
    pub actor_kind: String,
    /// The token the actor used (its ID), if any.
    pub token: String,
    /// The client's address.
    pub source: String,
    /// What was done: an API operation (`create_user`), `login`, `session.started`, ...
    pub action: String,
    /// What it was done to: `user/alice`, `node/n-...`, `command/cmd-...`, ...
    pub resource: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Why: the error's message, the access request's reason, a session's end.
    pub reason: String,
}

/// An event in the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

/// The server's signature of the chain's head at `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    pub seq: i64,
    pub hash: String,
    pub at_ms: i64,
    /// An SSH signature (`ssh-keygen -Y verify` can check it too) of [`checkpoint_message`].
    pub signature: String,
}

/// Which entries to list; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Entries whose actor is this user.
    pub actor: Option<String>,
    /// Entries whose action starts with this.
    pub action: Option<String>,
    /// Entries whose resource names this (a node ID, say).
    pub resource: Option<String>,
    /// Entries after this sequence number (paging).
    pub after: Option<i64>,
    pub limit: usize,
}

/// The hash of an entry: over its sequence number, the previous hash and every field, as a
/// JSON array (so that no two different entries serialize alike).
pub fn entry_hash(seq: i64, prev_hash: &str, e: &AuditEvent) -> String {
    let fields = serde_json::json!([
        seq,
        prev_hash,
        e.at_ms,
        e.actor,
        e.actor_kind,
        e.token,
        e.source,
        e.action,
        e.resource,
        e.outcome,
        e.reason
    ]);
    hex(&Sha256::digest(fields.to_string().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a checkpoint's signature covers.
pub fn checkpoint_message(seq: i64, hash: &str) -> String {
    format!("drover audit checkpoint {seq} {hash}")
}

/// The first thing wrong with a chain, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("entry {expected} is missing (the next one is {found})")]
    Missing { expected: i64, found: i64 },
    #[error("entry {seq} was changed: its contents do not give its hash")]
    Changed { seq: i64 },
    #[error("entry {seq} does not follow entry {prev}: removed, reordered or inserted")]
    Unlinked { seq: i64, prev: i64 },
    #[error(
        "entries up to {seq} were rewritten: the checkpoint signed for entry {seq} does not match"
    )]
    Rewritten { seq: i64 },
    #[error("the checkpoint for entry {seq} has a bad signature")]
    BadSignature { seq: i64 },
    #[error("entry {seq} is signed for but gone: the log was cut short")]
    Truncated { seq: i64 },
}

/// Walks a chain from its anchor (`GENESIS` at 0, or the last entry retention removed).
pub struct ChainCheck {
    seq: i64,
    hash: String,
    pub checked: u64,
}

impl ChainCheck {
    pub fn new(anchor_seq: i64, anchor_hash: &str) -> Self {
        Self {
            seq: anchor_seq,
            hash: anchor_hash.to_string(),
            checked: 0,
        }
    }

    /// The next entry, in sequence order.
    pub fn next(&mut self, e: &AuditEntry) -> Result<(), ChainBreak> {
        let expected = self.seq + 1;
        if e.seq != expected {
            return Err(ChainBreak::Missing {
                expected,
                found: e.seq,
            });
        }
        if entry_hash(e.seq, &e.prev_hash, &e.event) != e.hash {
            return Err(ChainBreak::Changed { seq: e.seq });
        }
        if e.prev_hash != self.hash {
            return Err(ChainBreak::Unlinked {
                seq: e.seq,
                prev: self.seq,
            });
        }
        self.seq = e.seq;
        self.hash = e.hash.clone();
        self.checked += 1;
        Ok(())
    }

    /// The last entry checked.
    pub fn head(&self) -> (i64, &str) {
        (self.seq, &self.hash)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let event = AuditEvent {
                    at_ms: seq * 1000,
                    actor: "alice".into(),
                    action: format!("act{seq}"),
                    ..Default::default()
                };
                let hash = entry_hash(seq, &prev, &event);
                let e = AuditEntry {
                    seq,
                    event,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    fn check(entries: &[AuditEntry]) -> Result<(), ChainBreak> {
        let mut c = ChainCheck::new(0, GENESIS);
        entries.iter().try_for_each(|e| c.next(e))
    }

    #[test]
    fn an_intact_chain_checks_and_each_tampering_names_the_first_bad_entry() {
        let good = chain(5);
        assert_eq!(check(&good), Ok(()));

        let mut edited = good.clone();
        edited[2].event.actor = "mallory".into();
        assert_eq!(check(&edited), Err(ChainBreak::Changed { seq: 3 }));

        let mut removed = good.clone();
        removed.remove(1);
        assert_eq!(
            check(&removed),
            Err(ChainBreak::Missing {
                expected: 2,
                found: 3
            })
        );

        // Two entries' contents swapped, their sequence numbers kept (rows edited in place).
        let mut swapped = good.clone();
        let (a, b) = (swapped[1].clone(), swapped[2].clone());
        swapped[1] = AuditEntry { seq: 2, ..b };
        swapped[2] = AuditEntry { seq: 3, ..a };
        assert_eq!(check(&swapped), Err(ChainBreak::Changed { seq: 2 }));

        // An edit whose hash was recomputed still does not link.
        let mut rehashed = good.clone();
        rehashed[3].event.reason = "nothing to see".into();
        rehashed[3].hash = entry_hash(4, &rehashed[3].prev_hash, &rehashed[3].event);
        assert_eq!(
            check(&rehashed),
            Err(ChainBreak::Unlinked { seq: 5, prev: 4 })
        );
    }
}
