//! Redeeming an activation: the one multi-step registration transaction.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::db;
use super::rows::{activation_from_row, get_node_tx, json, rfc3339};
use super::NODE_COLUMNS;
use crate::*;

pub(super) fn redeem(
    c: &mut Connection,
    aid: String,
    code_hash: &str,
    now: i64,
    node: NewNode,
) -> Result<Node, RedeemError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("redeem an activation"))?;
    let act = tx
        .query_row(
            "SELECT id, code_hash, description, default_name, tags, registration_limit, \
             registrations, expires_at, created_at FROM activations WHERE id = ?1",
            [&aid],
            activation_from_row,
        )
        .optional()
        .map_err(db("redeem an activation"))?
        .ok_or_else(|| RedeemError::UnknownActivation(aid.clone()))?;
    if act.code_hash != code_hash {
        return Err(RedeemError::WrongCode(aid));
    }
    if now >= act.expires_at {
        return Err(RedeemError::Expired(aid, rfc3339(act.expires_at)));
    }
    if act.registrations >= act.registration_limit {
        return Err(RedeemError::UsedUp {
            id: aid,
            limit: act.registration_limit,
        });
    }
    // The activation's tags are authoritative: whoever holds a code for env=dev nodes
    // must not register an env=prod node (and receive env=prod commands). Registration
    // may add keys the activation leaves open.
    let mut tags = act.tags.clone();
    for (k, v) in &node.tags {
        match act.tags.get(k) {
            Some(fixed) if fixed != v => {
                return Err(RedeemError::TagConflict {
                    id: aid,
                    key: k.clone(),
                    asked: v.clone(),
                    fixed: fixed.clone(),
                })
            }
            _ => {
                tags.insert(k.clone(), v.clone());
            }
        }
    }
    tx.execute(
        "UPDATE activations SET registrations = registrations + 1 WHERE id = ?1",
        [&aid],
    )
    .map_err(db("redeem an activation"))?;
    let name = if node.name.is_empty() {
        if act.default_name.is_empty() {
            node.inventory.hostname.clone()
        } else {
            act.default_name.clone()
        }
    } else {
        node.name.clone()
    };
    let inv = &node.inventory;
    tx.execute(
        &format!(
            "INSERT INTO nodes ({NODE_COLUMNS}) VALUES \
             (?1, ?2, ?3, 'connection_lost', 0, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ),
        params![
            node.id.as_str(),
            name,
            json(&tags),
            node.registered_at,
            aid,
            inv.hostname,
            inv.platform,
            inv.os_name,
            inv.os_version,
            inv.kernel,
            inv.arch,
            inv.agent_version,
            json(&inv.ip_addresses),
            inv.boot_time
        ],
    )
    .map_err(db("create a node"))?;
    for (k, v) in &tags {
        tx.execute(
            "INSERT INTO node_tags (node_id, key, value) VALUES (?1, ?2, ?3)",
            params![node.id.as_str(), k, v],
        )
        .map_err(db("create a node"))?;
    }
    let created = get_node_tx(&tx, node.id.as_str())?
        .ok_or_else(|| StoreError::NotFound(format!("node {}", node.id)))?;
    tx.commit().map_err(db("redeem an activation"))?;
    Ok(created)
}
