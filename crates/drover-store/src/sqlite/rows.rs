//! Rows to records, and the small encodings the SQLite store uses.

use rusqlite::{Connection, OptionalExtension, Row};

use super::NODE_COLUMNS;
use crate::*;

fn db(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { what, source }
}

pub(super) fn status_str(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Online => "online",
        NodeStatus::ConnectionLost => "connection_lost",
        NodeStatus::Inactive => "inactive",
    }
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(super) fn node_from_row(row: &Row<'_>) -> rusqlite::Result<Node> {
    let id: String = row.get(0)?;
    let tags: String = row.get(2)?;
    let status: String = row.get(3)?;
    let ips: String = row.get(14)?;
    let bad = |i, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    Ok(Node {
        id: NodeId::parse(&id).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("bad node id {id:?}").into(),
            )
        })?,
        name: row.get(1)?,
        tags: serde_json::from_str(&tags).map_err(|e| bad(2, e))?,
        status: NodeStatus::parse(&status).unwrap_or(NodeStatus::ConnectionLost),
        last_seen_at: row.get(4)?,
        registered_at: row.get(5)?,
        activation_id: row.get(6)?,
        inventory: NodeInventory {
            hostname: row.get(7)?,
            platform: row.get(8)?,
            os_name: row.get(9)?,
            os_version: row.get(10)?,
            kernel: row.get(11)?,
            arch: row.get(12)?,
            agent_version: row.get(13)?,
            ip_addresses: serde_json::from_str(&ips).map_err(|e| bad(14, e))?,
            boot_time: row.get(15)?,
        },
    })
}

pub(super) fn get_node_tx(conn: &Connection, id: &str) -> Result<Option<Node>, StoreError> {
    conn.prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"))
        .and_then(|mut st| st.query_row([id], node_from_row).optional())
        .map_err(db("read a node"))
}

pub(super) fn activation_from_row(row: &Row<'_>) -> rusqlite::Result<Activation> {
    let tags: String = row.get(4)?;
    Ok(Activation {
        id: row.get(0)?,
        code_hash: row.get(1)?,
        description: row.get(2)?,
        default_name: row.get(3)?,
        tags: serde_json::from_str(&tags).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
        })?,
        registration_limit: row.get(5)?,
        registrations: row.get(6)?,
        expires_at: row.get(7)?,
        created_at: row.get(8)?,
    })
}

pub(super) fn rfc3339(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}
