//! The audit log in SQLite: entries appended in one write transaction each batch (so that
//! two servers sharing the database still make one chain), checkpoints, and the anchor that
//! retention leaves where it cut the chain.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::audit::{entry_hash, AuditCheckpoint, AuditEntry, AuditEvent, AuditQuery, GENESIS};
use crate::sqlite_commands::db;
use crate::StoreError;

pub(crate) const MIGRATION_AUDIT: &str = r#"
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    token      TEXT NOT NULL,
    source     TEXT NOT NULL,
    action     TEXT NOT NULL,
    resource   TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
) STRICT;
CREATE INDEX audit_at ON audit(at_ms);
CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      TEXT NOT NULL,
    at_ms     INTEGER NOT NULL,
    signature TEXT NOT NULL
) STRICT;
-- Where retention cut the chain: the last removed entry's number and hash.
CREATE TABLE audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
) STRICT;
"#;

const COLS: &str = "seq, at_ms, actor, actor_kind, token, source, action, resource, outcome, \
                    reason, prev_hash, hash";

fn entry_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        event: AuditEvent {
            at_ms: r.get(1)?,
            actor: r.get(2)?,
            actor_kind: r.get(3)?,
            token: r.get(4)?,
            source: r.get(5)?,
            action: r.get(6)?,
            resource: r.get(7)?,
            outcome: r.get(8)?,
            reason: r.get(9)?,
        },
        prev_hash: r.get(10)?,
        hash: r.get(11)?,
    })
}

pub(crate) fn anchor(c: &Connection) -> Result<(i64, String), StoreError> {
    Ok(
        c.query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(db("read the audit anchor"))?
        .unwrap_or((0, GENESIS.to_string())),
    )
}

pub(crate) fn head(c: &Connection) -> Result<(i64, String), StoreError> {
    let last = c
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db("read the audit head"))?;
    match last {
        Some(h) => Ok(h),
        None => anchor(c),
    }
}

pub(crate) fn append(
    c: &mut Connection,
    events: Vec<AuditEvent>,
) -> Result<Vec<AuditEntry>, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("append to the audit log"))?;
    let (mut seq, mut prev) = head(&tx)?;
    let mut out = Vec::with_capacity(events.len());
    {
        let mut insert = tx
            .prepare_cached(&format!(
                "INSERT INTO audit ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))
            .map_err(db("append to the audit log"))?;
        for e in events {
            seq += 1;
            let hash = entry_hash(seq, &prev, &e);
            insert
                .execute(params![
                    seq,
                    e.at_ms,
                    e.actor,
                    e.actor_kind,
                    e.token,
                    e.source,
                    e.action,
                    e.resource,
                    e.outcome,
                    e.reason,
                    prev,
                    hash
                ])
                .map_err(db("append to the audit log"))?;
            out.push(AuditEntry {
                seq,
                event: e,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            });
        }
    }
    tx.commit().map_err(db("append to the audit log"))?;
    Ok(out)
}

pub(crate) fn list(c: &Connection, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
    use rusqlite::types::Value;
    let mut sql = format!("SELECT {COLS} FROM audit WHERE seq > ?1");
    let mut args: Vec<Value> = vec![q.after.unwrap_or(0).into()];
    // Prefixes and names are matched with instr, literally: no LIKE wildcards to escape.
    let conds: [(&str, Option<Value>); 5] = [
        ("at_ms >= ?", q.since_ms.map(Value::from)),
        ("at_ms < ?", q.until_ms.map(Value::from)),
        ("actor = ?", q.actor.clone().map(Value::from)),
        ("instr(action, ?) = 1", q.action.clone().map(Value::from)),
        (
            "instr(resource, ?) > 0",
            q.resource.clone().map(Value::from),
        ),
    ];
    for (cond, v) in conds {
        if let Some(v) = v {
            args.push(v);
            sql.push_str(" AND ");
            sql.push_str(&cond.replace('?', &format!("?{}", args.len())));
        }
    }
    args.push((q.limit.clamp(1, 10_000) as i64).into());
    sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", args.len()));
    let mut st = c.prepare(&sql).map_err(db("list the audit log"))?;
    let rows = st
        .query_map(rusqlite::params_from_iter(args), entry_row)
        .map_err(db("list the audit log"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("list the audit log"))
}

pub(crate) fn add_checkpoint(c: &Connection, cp: &AuditCheckpoint) -> Result<(), StoreError> {
    c.execute(
        "INSERT OR IGNORE INTO audit_checkpoints (seq, hash, at_ms, signature) VALUES (?1, ?2, ?3, ?4)",
        params![cp.seq, cp.hash, cp.at_ms, cp.signature],
    )
    .map_err(db("store an audit checkpoint"))?;
    Ok(())
}

pub(crate) fn checkpoints(c: &Connection) -> Result<Vec<AuditCheckpoint>, StoreError> {
    let mut st = c
        .prepare_cached("SELECT seq, hash, at_ms, signature FROM audit_checkpoints ORDER BY seq")
        .map_err(db("read audit checkpoints"))?;
    let rows = st
        .query_map([], |r| {
            Ok(AuditCheckpoint {
                seq: r.get(0)?,
                hash: r.get(1)?,
                at_ms: r.get(2)?,
                signature: r.get(3)?,
            })
        })
        .map_err(db("read audit checkpoints"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("read audit checkpoints"))
}

/// Removes the entries older than `before_ms` (a prefix of the chain) and their checkpoints;
/// the last one removed becomes the anchor the chain is checked from.
pub(crate) fn prune(c: &mut Connection, before_ms: i64) -> Result<u64, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("prune the audit log"))?;
    // The chain is cut only at a signed checkpoint, which stays: the anchor the rest is
    // checked from is then one the server signed, not one anyone with the database could
    // write. The cut is the newest checkpoint before the first entry to keep (times may step
    // back a little between servers, so it follows the sequence, not each entry's time).
    let cut: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit_checkpoints WHERE seq < (SELECT COALESCE(MIN(seq), \
             1 << 62) FROM audit WHERE at_ms >= ?1) ORDER BY seq DESC LIMIT 1",
            [before_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db("prune the audit log"))?;
    let Some((seq, hash)) = cut else {
        return Ok(0);
    };
    let n = tx
        .execute("DELETE FROM audit WHERE seq <= ?1", [seq])
        .map_err(db("prune the audit log"))?;
    tx.execute("DELETE FROM audit_checkpoints WHERE seq < ?1", [seq])
        .map_err(db("prune the audit log"))?;
    tx.execute(
        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2) \
         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![seq, hash],
    )
    .map_err(db("prune the audit log"))?;
    tx.commit().map_err(db("prune the audit log"))?;
    Ok(n as u64)
}

#[async_trait::async_trait]
impl crate::AuditStore for crate::SqliteStore {
    async fn append_audit(
        &self,
        events: Vec<crate::audit::AuditEvent>,
    ) -> Result<Vec<crate::audit::AuditEntry>, StoreError> {
        self.call(move |c| append(c, events)).await
    }

    async fn list_audit(
        &self,
        q: &crate::audit::AuditQuery,
    ) -> Result<Vec<crate::audit::AuditEntry>, StoreError> {
        let q = q.clone();
        self.call(move |c| list(c, &q)).await
    }

    async fn audit_ends(&self) -> Result<((i64, String), (i64, String)), StoreError> {
        self.call(|c| Ok((anchor(c)?, head(c)?))).await
    }

    async fn add_audit_checkpoint(
        &self,
        cp: &crate::audit::AuditCheckpoint,
    ) -> Result<(), StoreError> {
        let cp = cp.clone();
        self.call(move |c| add_checkpoint(c, &cp)).await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<crate::audit::AuditCheckpoint>, StoreError> {
        self.call(|c| checkpoints(c)).await
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.call(move |c| prune(c, before_ms)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::audit::{AuditCheckpoint, ChainCheck};

    fn event(at_ms: i64, actor: &str, action: &str) -> AuditEvent {
        AuditEvent {
            at_ms,
            actor: actor.into(),
            action: action.into(),
            resource: format!("node/n-{at_ms}"),
            ..AuditEvent::default()
        }
    }

    #[test]
    fn appended_entries_chain_filter_and_prune_to_an_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("a.db")).unwrap();
        c.execute_batch(MIGRATION_AUDIT).unwrap();
        let first = append(
            &mut c,
            vec![
                event(1000, "alice", "login"),
                event(2000, "bob", "create_user"),
            ],
        )
        .unwrap();
        let more = append(
            &mut c,
            vec![
                event(3000, "alice", "session.started"),
                event(4000, "alice", "send_command"),
            ],
        )
        .unwrap();
        assert_eq!(first[0].prev_hash, GENESIS);
        assert_eq!(more[0].prev_hash, first[1].hash);
        assert_eq!(more[1].seq, 4);

        let all = |c: &Connection, q: AuditQuery| list(c, &AuditQuery { limit: 100, ..q }).unwrap();
        let mut check = ChainCheck::new(0, GENESIS);
        for e in all(&c, AuditQuery::default()) {
            check.next(&e).unwrap();
        }
        assert_eq!(check.checked, 4);
        let seqs = |v: Vec<AuditEntry>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(all(
                &c,
                AuditQuery {
                    actor: Some("alice".into()),
                    ..Default::default()
                }
            )),
            [1, 3, 4]
        );
        assert_eq!(
            seqs(all(
                &c,
                AuditQuery {
                    action: Some("session.".into()),
                    ..Default::default()
                }
            )),
            [3]
        );
        assert_eq!(
            seqs(all(
                &c,
                AuditQuery {
                    resource: Some("n-2000".into()),
                    ..Default::default()
                }
            )),
            [2]
        );
        assert_eq!(
            seqs(all(
                &c,
                AuditQuery {
                    since_ms: Some(2000),
                    until_ms: Some(4000),
                    ..Default::default()
                }
            )),
            [2, 3]
        );
        // A LIKE wildcard is only a character.
        assert!(all(
            &c,
            AuditQuery {
                action: Some("%".into()),
                ..Default::default()
            }
        )
        .is_empty());
        assert_eq!(
            seqs(all(
                &c,
                AuditQuery {
                    after: Some(2),
                    ..Default::default()
                }
            )),
            [3, 4]
        );

        // Retention cuts only at a signed checkpoint (none yet: nothing goes), which stays as
        // the anchor the rest of the chain checks from.
        assert_eq!(prune(&mut c, 2500).unwrap(), 0);
        for (seq, hash) in [(1, &first[0].hash), (3, &more[0].hash)] {
            let cp = AuditCheckpoint {
                seq,
                hash: hash.clone(),
                at_ms: 1,
                signature: "signed".into(),
            };
            add_checkpoint(&c, &cp).unwrap();
        }
        // Entries 1 and 2 are older than 2500; the newest checkpoint before entry 3 is 1.
        assert_eq!(prune(&mut c, 2500).unwrap(), 1);
        let (anchor_seq, anchor_hash) = anchor(&c).unwrap();
        assert_eq!(
            (anchor_seq, anchor_hash.as_str()),
            (1, first[0].hash.as_str())
        );
        let kept: Vec<i64> = checkpoints(&c).unwrap().iter().map(|c| c.seq).collect();
        assert_eq!(kept, [1, 3]);
        let mut check = ChainCheck::new(anchor_seq, &anchor_hash);
        for e in all(&c, AuditQuery::default()) {
            check.next(&e).unwrap();
        }
        assert_eq!(check.checked, 3);
        // And the next entry follows the head, not the anchor.
        let next = append(&mut c, vec![event(5000, "carol", "logout")]).unwrap();
        assert_eq!(
            (next[0].seq, next[0].prev_hash.as_str()),
            (5, more[1].hash.as_str())
        );
        assert_eq!(prune(&mut c, 0).unwrap(), 0);
    }
}
