//! Webhooks, their delivery log and change windows in SQLite.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::alerts::{ChangeWindow, Delivery, HookState, Webhook};
use crate::sqlite_commands::db;
use crate::StoreError;

pub(crate) const MIGRATION_ALERTS: &str = r#"
CREATE TABLE webhooks (
    id             TEXT PRIMARY KEY,
    body           TEXT NOT NULL,
    -- The server process delivering it, until when: one at a time, when a cluster shares this.
    lease_owner    TEXT NOT NULL DEFAULT '',
    lease_until_ms INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY,
    hook_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event       TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    status      INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT NOT NULL,
    duration_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(hook_id, id);
CREATE TABLE change_windows (
    id   TEXT PRIMARY KEY,
    body TEXT NOT NULL
) STRICT;
"#;

/// Attempts kept in a webhook's delivery log.
const DELIVERIES_KEPT: i64 = 1_000;

fn decode<T: serde::de::DeserializeOwned>(body: String) -> rusqlite::Result<T> {
    serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn encode<T: serde::Serialize>(what: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Conflict(format!("encoding {what}: {e}")))
}

fn create_webhook(c: &mut Connection, hook: &Webhook) -> Result<Webhook, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("create a webhook"))?;
    let mut hook = hook.clone();
    // It announces what happens from now on, not the history before it.
    hook.state = HookState {
        cursor: crate::sqlite_audit::head(&tx)?.0,
        ..HookState::default()
    };
    let n = tx
        .execute(
            "INSERT OR IGNORE INTO webhooks (id, body) VALUES (?1, ?2)",
            params![hook.id, encode("webhook", &hook)?],
        )
        .map_err(db("create a webhook"))?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("webhook {} exists", hook.id)));
    }
    tx.commit().map_err(db("create a webhook"))?;
    Ok(hook)
}

fn get_webhook(c: &Connection, id: &str) -> Result<Option<Webhook>, StoreError> {
    c.query_row("SELECT body FROM webhooks WHERE id = ?1", [id], |r| {
        decode(r.get(0)?)
    })
    .optional()
    .map_err(db("read a webhook"))
}

fn list_webhooks(c: &Connection) -> Result<Vec<Webhook>, StoreError> {
    let mut st = c
        .prepare_cached("SELECT body FROM webhooks ORDER BY id")
        .map_err(db("list webhooks"))?;
    let rows = st
        .query_map([], |r| decode(r.get(0)?))
        .map_err(db("list webhooks"))?;
    rows.collect::<Result<_, _>>().map_err(db("list webhooks"))
}

fn delete_webhook(c: &mut Connection, id: &str) -> Result<(), StoreError> {
    let tx = c.transaction().map_err(db("delete a webhook"))?;
    let n = tx
        .execute("DELETE FROM webhooks WHERE id = ?1", [id])
        .map_err(db("delete a webhook"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("webhook {id}")));
    }
    tx.execute("DELETE FROM webhook_deliveries WHERE hook_id = ?1", [id])
        .map_err(db("delete a webhook"))?;
    tx.commit().map_err(db("delete a webhook"))
}

fn lease(
    c: &mut Connection,
    owner: &str,
    now_ms: i64,
    until_ms: i64,
) -> Result<Vec<Webhook>, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("lease webhooks"))?;
    tx.execute(
        "UPDATE webhooks SET lease_owner = ?1, lease_until_ms = ?3 \
         WHERE lease_owner = ?1 OR lease_until_ms <= ?2",
        params![owner, now_ms, until_ms],
    )
    .map_err(db("lease webhooks"))?;
    let held = {
        let mut st = tx
            .prepare_cached("SELECT body FROM webhooks WHERE lease_owner = ?1 ORDER BY id")
            .map_err(db("lease webhooks"))?;
        let rows = st
            .query_map([owner], |r| decode(r.get(0)?))
            .map_err(db("lease webhooks"))?;
        rows.collect::<Result<Vec<Webhook>, _>>()
            .map_err(db("lease webhooks"))?
    };
    tx.commit().map_err(db("lease webhooks"))?;
    Ok(held)
}

fn insert_delivery(c: &Connection, d: &Delivery) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO webhook_deliveries \
         (hook_id, seq, event, attempt, at_ms, status, outcome, error, duration_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            d.hook_id,
            d.seq,
            d.event,
            d.attempt,
            d.at_ms,
            d.status,
            d.outcome,
            d.error,
            d.duration_ms
        ],
    )
    .map_err(db("log a webhook delivery"))?;
    // The log keeps the newest attempts only.
    c.execute(
        "DELETE FROM webhook_deliveries WHERE hook_id = ?1 AND id <= \
         (SELECT id FROM webhook_deliveries WHERE hook_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![d.hook_id, DELIVERIES_KEPT],
    )
    .map_err(db("log a webhook delivery"))?;
    Ok(())
}

fn advance(
    c: &mut Connection,
    id: &str,
    owner: &str,
    now_ms: i64,
    state: &HookState,
    attempt: Option<&Delivery>,
) -> Result<bool, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("move a webhook on"))?;
    let held: Option<String> = tx
        .query_row(
            "SELECT body FROM webhooks WHERE id = ?1 AND lease_owner = ?2 AND lease_until_ms > ?3",
            params![id, owner, now_ms],
            |r| r.get(0),
        )
        .optional()
        .map_err(db("move a webhook on"))?;
    let Some(body) = held else {
        return Ok(false);
    };
    let mut hook: Webhook = decode(body).map_err(db("move a webhook on"))?;
    hook.state = state.clone();
    tx.execute(
        "UPDATE webhooks SET body = ?2 WHERE id = ?1",
        params![id, encode("webhook", &hook)?],
    )
    .map_err(db("move a webhook on"))?;
    if let Some(d) = attempt {
        insert_delivery(&tx, d)?;
    }
    tx.commit().map_err(db("move a webhook on"))?;
    Ok(true)
}

fn deliveries(c: &Connection, hook_id: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT hook_id, seq, event, attempt, at_ms, status, outcome, error, duration_ms \
             FROM webhook_deliveries WHERE hook_id = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(db("read a webhook's deliveries"))?;
    let rows = st
        .query_map(params![hook_id, limit as i64], |r| {
            Ok(Delivery {
                hook_id: r.get(0)?,
                seq: r.get(1)?,
                event: r.get(2)?,
                attempt: r.get(3)?,
                at_ms: r.get(4)?,
                status: r.get(5)?,
                outcome: r.get(6)?,
                error: r.get(7)?,
                duration_ms: r.get(8)?,
            })
        })
        .map_err(db("read a webhook's deliveries"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("read a webhook's deliveries"))
}

fn create_window(c: &Connection, w: &ChangeWindow) -> Result<(), StoreError> {
    let n = c
        .execute(
            "INSERT OR IGNORE INTO change_windows (id, body) VALUES (?1, ?2)",
            params![w.id, encode("change window", w)?],
        )
        .map_err(db("create a change window"))?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "change window {} exists",
            w.id
        )));
    }
    Ok(())
}

fn list_windows(c: &Connection) -> Result<Vec<ChangeWindow>, StoreError> {
    let mut st = c
        .prepare_cached("SELECT body FROM change_windows ORDER BY id")
        .map_err(db("list change windows"))?;
    let rows = st
        .query_map([], |r| decode(r.get(0)?))
        .map_err(db("list change windows"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("list change windows"))
}

#[async_trait::async_trait]
impl crate::AlertStore for crate::SqliteStore {
    async fn create_webhook(&self, hook: &Webhook) -> Result<Webhook, StoreError> {
        let hook = hook.clone();
        self.call(move |c| create_webhook(c, &hook)).await
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.call(|c| list_webhooks(c)).await
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let id = id.to_string();
        self.call(move |c| get_webhook(c, &id)).await
    }

    async fn delete_webhook(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| delete_webhook(c, &id)).await
    }

    async fn lease_webhooks(
        &self,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<Webhook>, StoreError> {
        let owner = owner.to_string();
        self.call(move |c| lease(c, &owner, now_ms, until_ms)).await
    }

    async fn advance_webhook(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        state: &HookState,
        attempt: Option<&Delivery>,
    ) -> Result<bool, StoreError> {
        let (id, owner, state) = (id.to_string(), owner.to_string(), state.clone());
        let attempt = attempt.cloned();
        self.call(move |c| advance(c, &id, &owner, now_ms, &state, attempt.as_ref()))
            .await
    }

    async fn log_delivery(&self, d: &Delivery) -> Result<(), StoreError> {
        let d = d.clone();
        self.call(move |c| insert_delivery(c, &d)).await
    }

    async fn list_deliveries(
        &self,
        hook_id: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let hook_id = hook_id.to_string();
        self.call(move |c| deliveries(c, &hook_id, limit)).await
    }

    async fn create_change_window(&self, w: &ChangeWindow) -> Result<(), StoreError> {
        let w = w.clone();
        self.call(move |c| create_window(c, &w)).await
    }

    async fn list_change_windows(&self) -> Result<Vec<ChangeWindow>, StoreError> {
        self.call(|c| list_windows(c)).await
    }

    async fn delete_change_window(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let n = c
                .execute("DELETE FROM change_windows WHERE id = ?1", [&id])
                .map_err(db("delete a change window"))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("change window {id}")));
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn store() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::sqlite_audit::MIGRATION_AUDIT)
            .unwrap();
        c.execute_batch(MIGRATION_ALERTS).unwrap();
        c
    }

    fn hook(id: &str) -> Webhook {
        Webhook {
            id: id.into(),
            url: "http://127.0.0.1:1/".into(),
            events: vec!["*".into()],
            description: String::new(),
            sealed_secret: "sealed".into(),
            created_by: "admin".into(),
            created_at: 1,
            state: HookState::default(),
        }
    }

    fn attempt(id: &str, n: i64) -> Delivery {
        Delivery {
            hook_id: id.into(),
            seq: n,
            event: "login".into(),
            attempt: 1,
            at_ms: n,
            status: 200,
            outcome: "delivered".into(),
            error: String::new(),
            duration_ms: 1,
        }
    }

    #[test]
    fn one_owner_holds_a_hook_and_moves_it_on() {
        let mut c = store();
        crate::sqlite_audit::append(&mut c, vec![crate::audit::AuditEvent::default(); 3]).unwrap();
        let created = create_webhook(&mut c, &hook("wh-1")).unwrap();
        assert_eq!(created.state.cursor, 3, "starts at the log's head");
        assert!(matches!(
            create_webhook(&mut c, &hook("wh-1")),
            Err(StoreError::Conflict(_))
        ));

        assert_eq!(lease(&mut c, "a", 100, 200).unwrap().len(), 1);
        assert!(
            lease(&mut c, "b", 150, 250).unwrap().is_empty(),
            "a holds it"
        );
        let moved = HookState {
            cursor: 4,
            ..HookState::default()
        };
        assert!(!advance(&mut c, "wh-1", "b", 150, &moved, None).unwrap());
        assert!(advance(&mut c, "wh-1", "a", 150, &moved, Some(&attempt("wh-1", 4))).unwrap());
        assert!(
            !advance(&mut c, "wh-1", "a", 200, &moved, None).unwrap(),
            "a lease that ran out fences its holder off"
        );
        assert_eq!(get_webhook(&c, "wh-1").unwrap().unwrap().state.cursor, 4);
        // Once a's lease ran out, b takes it over.
        assert_eq!(lease(&mut c, "b", 200, 300).unwrap().len(), 1);
        assert!(!advance(&mut c, "wh-1", "a", 250, &moved, None).unwrap());

        assert_eq!(deliveries(&c, "wh-1", 10).unwrap().len(), 1);
        delete_webhook(&mut c, "wh-1").unwrap();
        assert!(deliveries(&c, "wh-1", 10).unwrap().is_empty());
        assert!(matches!(
            delete_webhook(&mut c, "wh-1"),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn the_delivery_log_keeps_the_newest() {
        let mut c = store();
        create_webhook(&mut c, &hook("wh-1")).unwrap();
        for n in 0..DELIVERIES_KEPT + 5 {
            insert_delivery(&c, &attempt("wh-1", n)).unwrap();
        }
        let kept = deliveries(&c, "wh-1", 5_000).unwrap();
        assert_eq!(kept.len() as i64, DELIVERIES_KEPT);
        assert_eq!(kept[0].seq, DELIVERIES_KEPT + 4, "newest first");
    }
}
