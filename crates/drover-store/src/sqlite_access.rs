//! Access requests in SQLite: the request as JSON, with the columns it is looked up by.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::access::{AccessChange, AccessRequest};
use crate::sqlite_commands::db;
use crate::StoreError;

pub(crate) const MIGRATION_ACCESS: &str = r#"
CREATE TABLE access_requests (
    id         TEXT PRIMARY KEY,
    requester  TEXT NOT NULL,
    status     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    body       TEXT NOT NULL
) STRICT;
CREATE INDEX access_requests_status ON access_requests(status, expires_at);
CREATE INDEX access_requests_requester ON access_requests(requester, status);
"#;

fn decode(body: String) -> rusqlite::Result<AccessRequest> {
    serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn write(c: &Connection, r: &AccessRequest, insert: bool) -> Result<(), StoreError> {
    let body = serde_json::to_string(r)
        .map_err(|e| StoreError::Conflict(format!("encoding access request {}: {e}", r.id)))?;
    let sql = if insert {
        "INSERT INTO access_requests (id, requester, status, expires_at, created_at, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    } else {
        "UPDATE access_requests SET requester = ?2, status = ?3, expires_at = ?4, \
         created_at = ?5, body = ?6 WHERE id = ?1"
    };
    c.execute(
        sql,
        params![
            r.id,
            r.requester,
            r.status,
            r.expires_at,
            r.created_at,
            body
        ],
    )
    .map_err(db("store an access request"))?;
    Ok(())
}

pub(crate) fn create(c: &Connection, r: &AccessRequest) -> Result<(), StoreError> {
    write(c, r, true)
}

pub(crate) fn get(c: &Connection, id: &str) -> Result<Option<AccessRequest>, StoreError> {
    c.query_row(
        "SELECT body FROM access_requests WHERE id = ?1",
        [id],
        |r| decode(r.get(0)?),
    )
    .optional()
    .map_err(db("read an access request"))
}

/// Newest first; `status` and `requester` narrow.
pub(crate) fn list(
    c: &Connection,
    status: Option<&str>,
    requester: Option<&str>,
    limit: usize,
) -> Result<Vec<AccessRequest>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT body FROM access_requests WHERE (?1 IS NULL OR status = ?1) \
             AND (?2 IS NULL OR requester = ?2) ORDER BY created_at DESC, id DESC LIMIT ?3",
        )
        .map_err(db("list access requests"))?;
    let rows = st
        .query_map(params![status, requester, limit as i64], |r| {
            decode(r.get(0)?)
        })
        .map_err(db("list access requests"))?;
    rows.collect::<Result<_, _>>()
        .map_err(db("list access requests"))
}

/// Grants in force at `now` for `user`.
pub(crate) fn live_grants(
    c: &Connection,
    user: &str,
    now: i64,
) -> Result<Vec<AccessRequest>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT body FROM access_requests WHERE requester = ?1 AND status = 'Approved' \
             AND expires_at > ?2",
        )
        .map_err(db("read grants"))?;
    let rows = st
        .query_map(params![user, now], |r| decode(r.get(0)?))
        .map_err(db("read grants"))?;
    rows.collect::<Result<_, _>>().map_err(db("read grants"))
}

/// Approved grants whose time is up at `now`.
pub(crate) fn due(c: &Connection, now: i64) -> Result<Vec<AccessRequest>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT body FROM access_requests WHERE status = 'Approved' AND expires_at <= ?1",
        )
        .map_err(db("read grants"))?;
    let rows = st
        .query_map([now], |r| decode(r.get(0)?))
        .map_err(db("read grants"))?;
    rows.collect::<Result<_, _>>().map_err(db("read grants"))
}

/// Applies `change` to the request in one transaction; its error refuses the change.
pub(crate) fn update(
    c: &mut Connection,
    id: &str,
    change: AccessChange,
) -> Result<AccessRequest, StoreError> {
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("change an access request"))?;
    let mut r =
        get(&tx, id)?.ok_or_else(|| StoreError::NotFound(format!("access request {id}")))?;
    change(&mut r).map_err(StoreError::Conflict)?;
    write(&tx, &r, false)?;
    tx.commit().map_err(db("change an access request"))?;
    Ok(r)
}

#[async_trait::async_trait]
impl crate::AccessStore for crate::SqliteStore {
    async fn create_access_request(
        &self,
        r: &crate::access::AccessRequest,
    ) -> Result<(), StoreError> {
        let r = r.clone();
        self.call(move |c| create(c, &r)).await
    }

    async fn get_access_request(
        &self,
        id: &str,
    ) -> Result<Option<crate::access::AccessRequest>, StoreError> {
        let id = id.to_string();
        self.call(move |c| get(c, &id)).await
    }

    async fn list_access_requests(
        &self,
        status: Option<&str>,
        requester: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::access::AccessRequest>, StoreError> {
        let (status, requester) = (status.map(str::to_string), requester.map(str::to_string));
        self.call(move |c| list(c, status.as_deref(), requester.as_deref(), limit))
            .await
    }

    async fn live_grants(
        &self,
        user: &str,
        now: i64,
    ) -> Result<Vec<crate::access::AccessRequest>, StoreError> {
        let user = user.to_string();
        self.call(move |c| live_grants(c, &user, now)).await
    }

    async fn due_grants(&self, now: i64) -> Result<Vec<crate::access::AccessRequest>, StoreError> {
        self.call(move |c| due(c, now)).await
    }

    async fn update_access_request(
        &self,
        id: &str,
        change: crate::access::AccessChange,
    ) -> Result<crate::access::AccessRequest, StoreError> {
        let id = id.to_string();
        self.call(move |c| update(c, &id, change)).await
    }
}
