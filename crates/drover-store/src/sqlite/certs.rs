//! Which certificate each node may connect with: the current one, and the one issued by a
//! renewal that the agent has not yet shown it saved. Anything older is retired.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::db;
use crate::{CertCheck, RenewalRefused, StoreError};

pub(super) const MIGRATION: &str = r#"
CREATE TABLE node_certificates (
    node_id    TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    -- SHA-256 fingerprints of the DER certificates.
    current    TEXT,
    next       TEXT,
    issued_at  INTEGER NOT NULL DEFAULT 0
) STRICT;
"#;

type Row = (Option<String>, Option<String>, i64);

fn row(c: &Connection, node: &str) -> Result<Option<Row>, StoreError> {
    c.query_row(
        "SELECT current, next, issued_at FROM node_certificates WHERE node_id = ?1",
        params![node],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
    .map_err(db("read a node's certificates"))
}

pub(super) fn check(c: &mut Connection, node: &str, fp: &str) -> Result<CertCheck, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("begin"))?;
    let verdict = match row(&tx, node)? {
        Some((Some(current), _, _)) if current == fp => CertCheck::Current,
        Some((_, Some(next), _)) if next == fp => {
            tx.execute(
                "UPDATE node_certificates SET current = next, next = NULL WHERE node_id = ?1",
                params![node],
            )
            .map_err(db("promote a node's certificate"))?;
            CertCheck::Promoted
        }
        Some((Some(_), _, _)) => CertCheck::Retired,
        // Nodes registered before certificates were recorded: the first one seen is current.
        Some((None, _, _)) | None => {
            tx.execute(
                "INSERT INTO node_certificates (node_id, current) VALUES (?1, ?2) \
                 ON CONFLICT (node_id) DO UPDATE SET current = excluded.current",
                params![node, fp],
            )
            .map_err(db("record a node's certificate"))?;
            CertCheck::Current
        }
    };
    tx.commit().map_err(db("commit"))?;
    Ok(verdict)
}

pub(super) fn issued(
    c: &mut Connection,
    node: &str,
    fp: &str,
    at: i64,
    min_interval: i64,
) -> Result<Result<(), RenewalRefused>, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("begin"))?;
    match row(&tx, node)? {
        None => {
            // The first certificate (registration): current at once.
            tx.execute(
                "INSERT INTO node_certificates (node_id, current, issued_at) VALUES (?1, ?2, ?3)",
                params![node, fp, at],
            )
            .map_err(db("record a node's certificate"))?;
        }
        Some((_, _, last)) => {
            if at < last.saturating_add(min_interval) {
                return Ok(Err(RenewalRefused {
                    last_issued_at: last,
                    min_interval,
                }));
            }
            tx.execute(
                "UPDATE node_certificates SET next = ?2, issued_at = ?3 WHERE node_id = ?1",
                params![node, fp, at],
            )
            .map_err(db("record a renewed certificate"))?;
        }
    }
    tx.commit().map_err(db("commit"))?;
    Ok(Ok(()))
}

pub(super) fn saved(c: &mut Connection, node: &str) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE node_certificates SET current = next, next = NULL \
             WHERE node_id = ?1 AND next IS NOT NULL",
            params![node],
        )
        .map_err(db("promote a node's certificate"))?;
    Ok(n > 0)
}
