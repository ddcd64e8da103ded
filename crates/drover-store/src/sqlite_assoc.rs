//! State Manager in SQLite: associations, their executions, compliance per node.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::assoc::{Association, Compliance, ComplianceCount, Execution};
use crate::sqlite_commands::db;
use crate::StoreError;

pub(crate) const MIGRATION_ASSOC: &str = r#"
CREATE TABLE associations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    body        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    -- When the schedule next applies it: claimed by compare-and-set, so that two servers
    -- sharing the database never both run one tick.
    next_run_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX associations_due ON associations(next_run_ms);
CREATE TABLE association_executions (
    id             TEXT PRIMARY KEY,
    association_id TEXT NOT NULL,
    status         TEXT NOT NULL,
    body           TEXT NOT NULL
) STRICT;
CREATE INDEX association_executions_by ON association_executions(association_id, id);
CREATE INDEX association_executions_open ON association_executions(status)
    WHERE status IN ('Pending', 'InProgress');
CREATE TABLE compliance (
    association_id TEXT NOT NULL,
    node_id        TEXT NOT NULL,
    status         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    execution_id   TEXT NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (association_id, node_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX compliance_node ON compliance(node_id);
"#;

/// Executions kept per association; the oldest go as new ones come.
pub const EXECUTIONS_KEPT: i64 = 1_000;

fn decode<T: serde::de::DeserializeOwned>(body: String) -> rusqlite::Result<T> {
    serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn encode<T: serde::Serialize>(what: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Conflict(format!("encoding {what}: {e}")))
}

fn assoc_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Association> {
    let mut a: Association = decode(r.get(0)?)?;
    a.next_run_ms = r.get(1)?;
    Ok(a)
}

fn name_taken(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn insert_execution(c: &Connection, e: &Execution) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO association_executions (id, association_id, status, body) \
         VALUES (?1, ?2, ?3, ?4)",
        params![e.id, e.association_id, e.status, encode("an execution", e)?],
    )
    .map_err(db("record an execution"))?;
    c.execute(
        // Never one still open: its command's result is yet to become compliance.
        "DELETE FROM association_executions WHERE association_id = ?1 \
         AND status NOT IN ('Pending', 'InProgress') AND id IN (\
             SELECT id FROM association_executions WHERE association_id = ?1 \
             ORDER BY id DESC LIMIT -1 OFFSET ?2)",
        params![e.association_id, EXECUTIONS_KEPT],
    )
    .map_err(db("prune executions"))?;
    Ok(())
}

fn create(
    c: &mut Connection,
    a: &Association,
    first: Option<&Execution>,
) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("create an association"))?;
    tx.execute(
        "INSERT INTO associations (id, name, body, revision, next_run_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![a.id, a.name, encode("an association", a)?, a.revision, a.next_run_ms],
    )
    .map_err(|e| {
        if name_taken(&e) {
            StoreError::Conflict(format!("an association named {:?} exists", a.name))
        } else {
            db("create an association")(e)
        }
    })?;
    if let Some(e) = first {
        insert_execution(&tx, e)?;
    }
    tx.commit().map_err(db("create an association"))
}

fn update(
    c: &mut Connection,
    a: &Association,
    expected: i64,
    reschedule: bool,
    first: Option<&Execution>,
) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("update an association"))?;
    let n = tx
        .execute(
            // The due time is the scheduler's unless the schedule changed: an update that
            // wrote back the one it read could undo a tick claimed meanwhile, and run it twice.
            "UPDATE associations SET name = ?2, body = ?3, revision = ?4, \
             next_run_ms = CASE WHEN ?7 THEN ?5 ELSE next_run_ms END \
             WHERE id = ?1 AND revision = ?6",
            params![
                a.id,
                a.name,
                encode("an association", a)?,
                a.revision,
                a.next_run_ms,
                expected,
                reschedule
            ],
        )
        .map_err(|e| {
            if name_taken(&e) {
                StoreError::Conflict(format!("an association named {:?} exists", a.name))
            } else {
                db("update an association")(e)
            }
        })?;
    if n == 0 {
        let exists: Option<i64> = tx
            .query_row(
                "SELECT revision FROM associations WHERE id = ?1",
                [&a.id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("update an association"))?;
        return Err(match exists {
            None => StoreError::NotFound(format!("association {}", a.id)),
            Some(r) => StoreError::Conflict(format!(
                "association {} changed meanwhile (revision {r}, not {expected}): read it again",
                a.id
            )),
        });
    }
    if let Some(e) = first {
        insert_execution(&tx, e)?;
    }
    tx.commit().map_err(db("update an association"))
}

fn delete(c: &mut Connection, id: &str) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("delete an association"))?;
    let n = tx
        .execute("DELETE FROM associations WHERE id = ?1", [id])
        .map_err(db("delete an association"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("association {id}")));
    }
    for sql in [
        "DELETE FROM association_executions WHERE association_id = ?1",
        "DELETE FROM compliance WHERE association_id = ?1",
    ] {
        tx.execute(sql, [id]).map_err(db("delete an association"))?;
    }
    tx.commit().map_err(db("delete an association"))
}

fn get(c: &Connection, id_or_name: &str) -> Result<Option<Association>, StoreError> {
    c.query_row(
        "SELECT body, next_run_ms FROM associations WHERE id = ?1 OR name = ?1",
        [id_or_name],
        assoc_row,
    )
    .optional()
    .map_err(db("read an association"))
}

/// Every association by name, or those due by a time, soonest first.
fn list(c: &Connection, due_by: Option<i64>) -> Result<Vec<Association>, StoreError> {
    let sql = match due_by {
        Some(_) => {
            "SELECT body, next_run_ms FROM associations WHERE next_run_ms <= ?1 \
                    ORDER BY next_run_ms"
        }
        None => "SELECT body, next_run_ms FROM associations ORDER BY name",
    };
    let mut st = c.prepare_cached(sql).map_err(db("list associations"))?;
    let rows = match due_by {
        Some(t) => st.query_map([t], assoc_row),
        None => st.query_map([], assoc_row),
    }
    .and_then(|r| r.collect::<Result<Vec<_>, _>>())
    .map_err(db("list associations"))?;
    Ok(rows)
}

/// Moves the schedule on from `expected` to `next` and records the execution, if nobody did
/// first; false when another claim won.
fn claim_run(
    c: &mut Connection,
    id: &str,
    expected: i64,
    next: i64,
    exec: &Execution,
) -> Result<bool, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("claim an association's run"))?;
    let n = tx
        .execute(
            "UPDATE associations SET next_run_ms = ?3 WHERE id = ?1 AND next_run_ms = ?2",
            params![id, expected, next],
        )
        .map_err(db("claim an association's run"))?;
    if n == 0 {
        return Ok(false);
    }
    insert_execution(&tx, exec)?;
    tx.commit().map_err(db("claim an association's run"))?;
    Ok(true)
}

/// Claims the nodes of a `new-node` execution that the association never applied to: each
/// gets a Pending compliance row, and the execution is recorded for those alone.
fn claim_nodes(c: &mut Connection, exec: &Execution, at: i64) -> Result<Vec<String>, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("claim new nodes"))?;
    let exists: bool = tx
        .query_row(
            "SELECT 1 FROM associations WHERE id = ?1",
            [&exec.association_id],
            |_| Ok(true),
        )
        .optional()
        .map_err(db("claim new nodes"))?
        .unwrap_or(false);
    if !exists {
        return Ok(Vec::new());
    }
    let mut claimed = Vec::new();
    for node in &exec.nodes {
        let n = tx
            .execute(
                "INSERT OR IGNORE INTO compliance \
                 (association_id, node_id, status, reason, execution_id, at) \
                 VALUES (?1, ?2, 'Pending', '', ?3, ?4)",
                params![exec.association_id, node, exec.id, at],
            )
            .map_err(db("claim new nodes"))?;
        if n == 1 {
            claimed.push(node.clone());
        }
    }
    if !claimed.is_empty() {
        let mut e = exec.clone();
        e.nodes = claimed.clone();
        insert_execution(&tx, &e)?;
    }
    tx.commit().map_err(db("claim new nodes"))?;
    Ok(claimed)
}

/// A finished execution is final: a late writer (another server that lost a race, say)
/// never overwrites its outcome.
fn update_execution(c: &Connection, e: &Execution) -> Result<(), StoreError> {
    c.execute(
        "UPDATE association_executions SET status = ?2, body = ?3 \
         WHERE id = ?1 AND status IN ('Pending', 'InProgress')",
        params![e.id, e.status, encode("an execution", e)?],
    )
    .map_err(db("update an execution"))?;
    Ok(())
}

fn executions(
    c: &Connection,
    sql: &str,
    bound: impl rusqlite::Params,
) -> Result<Vec<Execution>, StoreError> {
    let mut st = c.prepare_cached(sql).map_err(db("list executions"))?;
    let rows = st
        .query_map(bound, |r| decode(r.get(0)?))
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("list executions"))?;
    Ok(rows)
}

/// Records results: a row changes only for an execution at least as new as the one that set
/// it (execution IDs sort by time), so a slow old execution never hides a newer result.
/// `only_new` adds Pending rows where none exist and changes nothing else.
fn record(c: &mut Connection, rows: &[Compliance], only_new: bool) -> Result<(), StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("record compliance"))?;
    {
        let sql = if only_new {
            "INSERT OR IGNORE INTO compliance \
             (association_id, node_id, status, reason, execution_id, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        } else {
            "INSERT INTO compliance (association_id, node_id, status, reason, execution_id, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (association_id, node_id) DO UPDATE SET \
             status = excluded.status, reason = excluded.reason, \
             execution_id = excluded.execution_id, at = excluded.at \
             WHERE excluded.execution_id >= compliance.execution_id"
        };
        let mut st = tx.prepare_cached(sql).map_err(db("record compliance"))?;
        for r in rows {
            st.execute(params![
                r.association_id,
                r.node_id,
                r.status,
                r.reason,
                r.execution_id,
                r.at
            ])
            .map_err(db("record compliance"))?;
        }
    }
    tx.commit().map_err(db("record compliance"))
}

/// Drops the rows of nodes an execution of the association's whole targets no longer
/// reached (they left the targets), unless a newer execution wrote them.
fn forget(
    c: &mut Connection,
    association: &str,
    execution: &str,
    keep: &[String],
) -> Result<u64, StoreError> {
    let keep: std::collections::HashSet<&str> = keep.iter().map(String::as_str).collect();
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("forget compliance"))?;
    let stale: Vec<String> = {
        let mut st = tx
            .prepare_cached(
                "SELECT node_id FROM compliance WHERE association_id = ?1 AND execution_id < ?2",
            )
            .map_err(db("forget compliance"))?;
        let rows = st
            .query_map(params![association, execution], |r| r.get::<_, String>(0))
            .and_then(|r| r.collect::<Result<Vec<_>, _>>())
            .map_err(db("forget compliance"))?;
        rows.into_iter()
            .filter(|n| !keep.contains(n.as_str()))
            .collect()
    };
    for node in &stale {
        tx.execute(
            "DELETE FROM compliance WHERE association_id = ?1 AND node_id = ?2",
            params![association, node],
        )
        .map_err(db("forget compliance"))?;
    }
    tx.commit().map_err(db("forget compliance"))?;
    Ok(stale.len() as u64)
}

fn compliance(
    c: &Connection,
    association: Option<&str>,
    node: Option<&str>,
) -> Result<Vec<Compliance>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT association_id, node_id, status, reason, execution_id, at FROM compliance \
             WHERE (?1 IS NULL OR association_id = ?1) AND (?2 IS NULL OR node_id = ?2) \
             ORDER BY association_id, node_id LIMIT 100000",
        )
        .map_err(db("list compliance"))?;
    let rows = st
        .query_map(params![association, node], |r| {
            Ok(Compliance {
                association_id: r.get(0)?,
                node_id: r.get(1)?,
                status: r.get(2)?,
                reason: r.get(3)?,
                execution_id: r.get(4)?,
                at: r.get(5)?,
            })
        })
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("list compliance"))?;
    Ok(rows)
}

fn summary(c: &Connection) -> Result<Vec<ComplianceCount>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT association_id, status, COUNT(*) FROM compliance \
             GROUP BY association_id, status ORDER BY association_id",
        )
        .map_err(db("summarize compliance"))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("summarize compliance"))?;
    let mut out: Vec<ComplianceCount> = Vec::new();
    for (id, status, n) in rows {
        if out.last().is_none_or(|l| l.association_id != id) {
            out.push(ComplianceCount {
                association_id: id,
                ..ComplianceCount::default()
            });
        }
        if let Some(last) = out.last_mut() {
            let n = n.max(0) as u64;
            match status.as_str() {
                "Compliant" => last.compliant += n,
                "NonCompliant" => last.non_compliant += n,
                _ => last.pending += n,
            }
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl crate::AssocStore for crate::SqliteStore {
    async fn create_association(
        &self,
        a: &Association,
        first: Option<&Execution>,
    ) -> Result<(), StoreError> {
        let (a, first) = (a.clone(), first.cloned());
        self.call(move |c| create(c, &a, first.as_ref())).await
    }

    async fn update_association(
        &self,
        a: &Association,
        expected_revision: i64,
        reschedule: bool,
        first: Option<&Execution>,
    ) -> Result<(), StoreError> {
        let (a, first) = (a.clone(), first.cloned());
        self.call(move |c| update(c, &a, expected_revision, reschedule, first.as_ref()))
            .await
    }

    async fn delete_association(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| delete(c, &id)).await
    }

    async fn get_association(&self, id_or_name: &str) -> Result<Option<Association>, StoreError> {
        let id = id_or_name.to_string();
        self.call(move |c| get(c, &id)).await
    }

    async fn list_associations(&self) -> Result<Vec<Association>, StoreError> {
        self.call(|c| list(c, None)).await
    }

    async fn due_associations(&self, by_ms: i64) -> Result<Vec<Association>, StoreError> {
        self.call(move |c| list(c, Some(by_ms))).await
    }

    async fn next_association_run(&self) -> Result<Option<i64>, StoreError> {
        self.call(|c| {
            c.query_row("SELECT MIN(next_run_ms) FROM associations", [], |r| {
                r.get(0)
            })
            .map_err(db("read the next association run"))
        })
        .await
    }

    async fn claim_association_run(
        &self,
        id: &str,
        expected_ms: i64,
        next_ms: i64,
        exec: &Execution,
    ) -> Result<bool, StoreError> {
        let (id, exec) = (id.to_string(), exec.clone());
        self.call(move |c| claim_run(c, &id, expected_ms, next_ms, &exec))
            .await
    }

    async fn claim_new_nodes(&self, exec: &Execution, at: i64) -> Result<Vec<String>, StoreError> {
        let exec = exec.clone();
        self.call(move |c| claim_nodes(c, &exec, at)).await
    }

    async fn update_execution(&self, e: &Execution) -> Result<(), StoreError> {
        let e = e.clone();
        self.call(move |c| update_execution(c, &e)).await
    }

    async fn open_executions(&self) -> Result<Vec<Execution>, StoreError> {
        self.call(|c| {
            executions(
                c,
                "SELECT body FROM association_executions \
                 WHERE status IN ('Pending', 'InProgress') ORDER BY id",
                [],
            )
        })
        .await
    }

    async fn list_executions(
        &self,
        association_id: &str,
        limit: usize,
    ) -> Result<Vec<Execution>, StoreError> {
        let id = association_id.to_string();
        let limit = limit.min(EXECUTIONS_KEPT as usize);
        self.call(move |c| {
            executions(
                c,
                "SELECT body FROM association_executions WHERE association_id = ?1 \
                 ORDER BY id DESC LIMIT ?2",
                params![id, limit as i64],
            )
        })
        .await
    }

    async fn record_compliance(
        &self,
        rows: &[Compliance],
        only_new: bool,
    ) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.call(move |c| record(c, &rows, only_new)).await
    }

    async fn forget_compliance(
        &self,
        association_id: &str,
        execution_id: &str,
        keep: &[String],
    ) -> Result<u64, StoreError> {
        let (a, e, keep) = (
            association_id.to_string(),
            execution_id.to_string(),
            keep.to_vec(),
        );
        self.call(move |c| forget(c, &a, &e, &keep)).await
    }

    async fn list_compliance(
        &self,
        association_id: Option<&str>,
        node_id: Option<&str>,
    ) -> Result<Vec<Compliance>, StoreError> {
        let (a, n) = (
            association_id.map(str::to_string),
            node_id.map(str::to_string),
        );
        self.call(move |c| compliance(c, a.as_deref(), n.as_deref()))
            .await
    }

    async fn compliance_summary(&self) -> Result<Vec<ComplianceCount>, StoreError> {
        self.call(|c| summary(c)).await
    }
}

#[cfg(test)]
#[path = "sqlite/assoc_tests.rs"]
mod tests;
