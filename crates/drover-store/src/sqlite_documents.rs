//! SQLite for documents and their versions: plain functions on a connection, called by
//! `SqliteStore` on its blocking thread.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::sqlite_commands::db;
use crate::*;

const DOC_COLS: &str = "d.name, d.version, d.content, d.format, d.description, d.created_at, \
     h.default_version = d.version, h.latest_version";

fn doc_row(r: &Row<'_>) -> rusqlite::Result<DocumentVersion> {
    Ok(DocumentVersion {
        name: r.get(0)?,
        version: r.get(1)?,
        content: r.get(2)?,
        format: r.get(3)?,
        description: r.get(4)?,
        created_at: r.get(5)?,
        is_default: r.get(6)?,
        latest_version: r.get(7)?,
    })
}

pub(crate) fn get_document(
    c: &Connection,
    name: &str,
    version: Option<i64>,
) -> Result<Option<DocumentVersion>, StoreError> {
    let sql = format!(
        "SELECT {DOC_COLS} FROM documents d JOIN document_heads h ON h.name = d.name \
         WHERE d.name = ?1 AND d.version = COALESCE(?2, h.default_version)"
    );
    c.query_row(&sql, params![name, version], doc_row)
        .optional()
        .map_err(db("read a document"))
}

pub(crate) fn create_document(
    c: &mut Connection,
    d: &DocumentVersion,
) -> Result<DocumentVersion, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("create a document"))?;
    let exists: bool = tx
        .query_row(
            "SELECT COUNT(*) > 0 FROM document_heads WHERE name = ?1",
            [&d.name],
            |r| r.get(0),
        )
        .map_err(db("create a document"))?;
    if exists {
        return Err(StoreError::Conflict(format!(
            "document {:?} exists: update it to add a version",
            d.name
        )));
    }
    tx.execute(
        "INSERT INTO documents (name, version, content, format, description, created_at) VALUES (?1, 1, ?2, ?3, ?4, ?5)",
        params![d.name, d.content, d.format, d.description, d.created_at],
    )
    .map_err(db("create a document"))?;
    tx.execute(
        "INSERT INTO document_heads (name, default_version, latest_version) VALUES (?1, 1, 1)",
        [&d.name],
    )
    .map_err(db("create a document"))?;
    let out = get_document(&tx, &d.name, Some(1))?
        .ok_or_else(|| StoreError::NotFound(format!("document {}", d.name)))?;
    tx.commit().map_err(db("create a document"))?;
    Ok(out)
}

pub(crate) fn update_document(
    c: &mut Connection,
    name: &str,
    content: &str,
    format: &str,
    description: &str,
    at: i64,
) -> Result<DocumentVersion, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("update a document"))?;
    let latest: Option<i64> = tx
        .query_row(
            "SELECT latest_version FROM document_heads WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(db("update a document"))?;
    let Some(latest) = latest else {
        return Err(StoreError::NotFound(format!("document {name:?}")));
    };
    let version = latest + 1;
    tx.execute(
        "INSERT INTO documents (name, version, content, format, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![name, version, content, format, description, at],
    )
    .map_err(db("update a document"))?;
    tx.execute(
        "UPDATE document_heads SET latest_version = ?2 WHERE name = ?1",
        params![name, version],
    )
    .map_err(db("update a document"))?;
    let out = get_document(&tx, name, Some(version))?
        .ok_or_else(|| StoreError::NotFound(format!("document {name}")))?;
    tx.commit().map_err(db("update a document"))?;
    Ok(out)
}

pub(crate) fn list_documents(c: &Connection) -> Result<Vec<DocumentVersion>, StoreError> {
    let sql = format!(
        "SELECT {DOC_COLS} FROM documents d JOIN document_heads h ON h.name = d.name \
         WHERE d.version = h.default_version ORDER BY d.name"
    );
    let mut st = c.prepare(&sql).map_err(db("list documents"))?;
    let rows = st
        .query_map([], doc_row)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("list documents"))?;
    Ok(rows)
}

pub(crate) fn document_versions(
    c: &Connection,
    name: &str,
) -> Result<Vec<DocumentVersion>, StoreError> {
    let sql = format!(
        "SELECT {DOC_COLS} FROM documents d JOIN document_heads h ON h.name = d.name \
         WHERE d.name = ?1 ORDER BY d.version"
    );
    let mut st = c.prepare(&sql).map_err(db("list document versions"))?;
    let rows = st
        .query_map([name], doc_row)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("list document versions"))?;
    if rows.is_empty() {
        return Err(StoreError::NotFound(format!("document {name:?}")));
    }
    Ok(rows)
}

pub(crate) fn set_default_version(
    c: &mut Connection,
    name: &str,
    version: i64,
) -> Result<DocumentVersion, StoreError> {
    let tx = c.transaction().map_err(db("set a default version"))?;
    if get_document(&tx, name, Some(version))?.is_none() {
        return Err(StoreError::NotFound(format!(
            "version {version} of document {name:?}"
        )));
    }
    tx.execute(
        "UPDATE document_heads SET default_version = ?2 WHERE name = ?1",
        params![name, version],
    )
    .map_err(db("set a default version"))?;
    let out = get_document(&tx, name, None)?
        .ok_or_else(|| StoreError::NotFound(format!("document {name:?}")))?;
    tx.commit().map_err(db("set a default version"))?;
    Ok(out)
}

pub(crate) fn delete_document(c: &mut Connection, name: &str) -> Result<(), StoreError> {
    let tx = c.transaction().map_err(db("delete a document"))?;
    let n = tx
        .execute("DELETE FROM document_heads WHERE name = ?1", [name])
        .map_err(db("delete a document"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("document {name:?}")));
    }
    tx.execute("DELETE FROM documents WHERE name = ?1", [name])
        .map_err(db("delete a document"))?;
    tx.commit().map_err(db("delete a document"))
}
