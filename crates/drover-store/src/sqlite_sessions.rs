//! SQLite for sessions and their events.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::sqlite_commands::db;
use crate::*;

pub(crate) const MIGRATION_SESSIONS: &str = r#"
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    user        TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    document    TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    run_as      TEXT NOT NULL DEFAULT '',
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    status      TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    exit_code   INTEGER,
    bytes_in    INTEGER NOT NULL DEFAULT 0,
    bytes_out   INTEGER NOT NULL DEFAULT 0,
    recorded    INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX sessions_node ON sessions(node_id, id);
CREATE INDEX sessions_open ON sessions(id) WHERE ended_at IS NULL;
CREATE TABLE session_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    session_id  TEXT NOT NULL,
    event       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX session_events_session ON session_events(session_id, seq);
"#;

/// Port forwarding and SSH sessions: where they lead and how many connections they carried.
pub(crate) const MIGRATION_SESSION_TARGETS: &str = r#"
ALTER TABLE sessions ADD COLUMN target TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN connections INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN end_to_end INTEGER NOT NULL DEFAULT 0;
"#;

const COLS: &str = "id, user, node_id, kind, document, reason, run_as, started_at, ended_at, \
                    status, detail, exit_code, bytes_in, bytes_out, recorded, target, connections, end_to_end";

fn row(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        user: r.get(1)?,
        node_id: r.get(2)?,
        kind: r.get(3)?,
        document: r.get(4)?,
        reason: r.get(5)?,
        run_as: r.get(6)?,
        started_at: r.get(7)?,
        ended_at: r.get(8)?,
        status: r.get(9)?,
        detail: r.get(10)?,
        exit_code: r.get(11)?,
        bytes_in: r.get(12)?,
        bytes_out: r.get(13)?,
        recorded: r.get(14)?,
        target: r.get(15)?,
        connections: r.get(16)?,
        end_to_end: r.get(17)?,
    })
}

pub(crate) fn create(c: &mut Connection, s: &SessionRecord) -> Result<(), StoreError> {
    c.prepare_cached(&format!(
        "INSERT INTO sessions ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
    ))
    .and_then(|mut st| {
        st.execute(params![
            s.id, s.user, s.node_id, s.kind, s.document, s.reason, s.run_as, s.started_at,
            s.ended_at, s.status, s.detail, s.exit_code, s.bytes_in, s.bytes_out, s.recorded,
            s.target, s.connections, s.end_to_end
        ])
    })
    .map_err(db("create a session"))?;
    Ok(())
}

pub(crate) fn get(c: &mut Connection, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    c.prepare_cached(&format!("SELECT {COLS} FROM sessions WHERE id = ?1"))
        .and_then(|mut st| st.query_row([id], row).optional())
        .map_err(db("read a session"))
}

pub(crate) fn set_status(c: &mut Connection, id: &str, status: &str) -> Result<(), StoreError> {
    let n = c
        .prepare_cached("UPDATE sessions SET status = ?2 WHERE id = ?1 AND ended_at IS NULL")
        .and_then(|mut st| st.execute(params![id, status]))
        .map_err(db("update a session"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("open session {id}")));
    }
    Ok(())
}

/// Ends a session once: a second end (a race between a timeout and a terminate) changes nothing
/// and says so.
pub(crate) fn end(c: &mut Connection, id: &str, e: &SessionEnd) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached(
            "UPDATE sessions SET status = ?2, detail = ?3, exit_code = ?4, ended_at = ?5, \
             bytes_in = ?6, bytes_out = ?7, connections = ?8 WHERE id = ?1 AND ended_at IS NULL",
        )
        .and_then(|mut st| {
            st.execute(params![
                id,
                e.status,
                e.detail,
                e.exit_code,
                e.ended_at,
                e.bytes_in,
                e.bytes_out,
                e.connections
            ])
        })
        .map_err(db("end a session"))?;
    Ok(n == 1)
}

/// Ends every session still open: at startup, since a session does not outlive the server
/// process that relayed it.
pub(crate) fn end_open(c: &mut Connection, at: i64, detail: &str) -> Result<u64, StoreError> {
    let n = c
        .prepare_cached(
            "UPDATE sessions SET status = 'Terminated', detail = ?2, ended_at = ?1 \
             WHERE ended_at IS NULL",
        )
        .and_then(|mut st| st.execute(params![at, detail]))
        .map_err(db("end open sessions"))?;
    Ok(n as u64)
}

pub(crate) fn list(c: &mut Connection, q: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
    let mut sql = format!("SELECT {COLS} FROM sessions WHERE 1=1");
    let mut args: Vec<String> = Vec::new();
    if let Some(n) = &q.node_id {
        args.push(n.clone());
        sql.push_str(&format!(" AND node_id = ?{}", args.len()));
    }
    if let Some(u) = &q.user {
        args.push(u.clone());
        sql.push_str(&format!(" AND user = ?{}", args.len()));
    }
    if q.active {
        sql.push_str(" AND ended_at IS NULL");
    }
    if let Some(b) = &q.before {
        args.push(b.clone());
        sql.push_str(&format!(" AND id < ?{}", args.len()));
    }
    sql.push_str(&format!(
        " ORDER BY id DESC LIMIT {}",
        q.limit.clamp(1, 1000)
    ));
    let mut st = c.prepare(&sql).map_err(db("list sessions"))?;
    let rows = st
        .query_map(rusqlite::params_from_iter(args.iter()), row)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("list sessions"))?;
    Ok(rows)
}

/// Deletes up to `limit` sessions that ended before `before`, with their events; returns their
/// IDs (their recordings are the caller's to delete).
pub(crate) fn prune(
    c: &mut Connection,
    before: i64,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let tx = c.transaction().map_err(db("prune sessions"))?;
    let ids: Vec<String> = tx
        .prepare_cached(
            "SELECT id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?1 ORDER BY id LIMIT ?2",
        )
        .and_then(|mut st| {
            st.query_map(params![before, limit as i64], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(db("prune sessions"))?;
    for id in &ids {
        tx.prepare_cached("DELETE FROM session_events WHERE session_id = ?1")
            .and_then(|mut st| st.execute([id]))
            .map_err(db("prune sessions"))?;
        tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")
            .and_then(|mut st| st.execute([id]))
            .map_err(db("prune sessions"))?;
    }
    tx.commit().map_err(db("prune sessions"))?;
    Ok(ids)
}

pub(crate) fn add_event(c: &mut Connection, e: &SessionEvent) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO session_events (at, session_id, event, actor, node_id, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut st| {
        st.execute(params![
            e.at,
            e.session_id,
            e.event,
            e.actor,
            e.node_id,
            e.detail
        ])
    })
    .map_err(db("record a session event"))?;
    Ok(())
}

pub(crate) fn events(
    c: &mut Connection,
    session_id: &str,
) -> Result<Vec<SessionEvent>, StoreError> {
    let mut st = c
        .prepare_cached(
            "SELECT at, session_id, event, actor, node_id, detail FROM session_events \
             WHERE session_id = ?1 ORDER BY seq",
        )
        .map_err(db("read session events"))?;
    let rows = st
        .query_map([session_id], |r| {
            Ok(SessionEvent {
                at: r.get(0)?,
                session_id: r.get(1)?,
                event: r.get(2)?,
                actor: r.get(3)?,
                node_id: r.get(4)?,
                detail: r.get(5)?,
            })
        })
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("read session events"))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn record(id: &str, node: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            user: "admin".into(),
            node_id: node.into(),
            kind: "Shell".into(),
            document: "SessionManagerRunShell".into(),
            reason: String::new(),
            run_as: String::new(),
            started_at: 1,
            ended_at: None,
            status: "Connecting".into(),
            detail: String::new(),
            exit_code: None,
            bytes_in: 0,
            bytes_out: 0,
            recorded: true,
            target: "db.internal:5432".into(),
            connections: 0,
            end_to_end: true,
        }
    }

    #[tokio::test]
    async fn a_session_ends_once_and_lists_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        store.create_session(&record("s-1", "n-a")).await.unwrap();
        store.create_session(&record("s-2", "n-b")).await.unwrap();
        store.set_session_status("s-1", "Connected").await.unwrap();
        let end = SessionEnd {
            status: "TimedOut".into(),
            detail: "idle".into(),
            exit_code: None,
            ended_at: 5,
            bytes_in: 3,
            bytes_out: 4,
            connections: 2,
        };
        assert!(store.end_session("s-1", &end).await.unwrap());
        let again = SessionEnd {
            status: "Terminated".into(),
            ..end.clone()
        };
        assert!(!store.end_session("s-1", &again).await.unwrap());
        let s = store.get_session("s-1").await.unwrap().unwrap();
        assert_eq!((s.status.as_str(), s.bytes_out), ("TimedOut", 4));
        assert_eq!((s.target.as_str(), s.connections), ("db.internal:5432", 2));
        assert!(s.end_to_end);
        assert!(store.set_session_status("s-1", "Connected").await.is_err());
        let all = store
            .list_sessions(&SessionQuery {
                limit: 10,
                ..SessionQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["s-2", "s-1"]
        );
        let open = store
            .list_sessions(&SessionQuery {
                active: true,
                limit: 10,
                ..SessionQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(
            store
                .end_open_sessions(9, "server restarted")
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn events_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        for e in ["started", "ended"] {
            store
                .add_session_event(&SessionEvent {
                    at: 1,
                    session_id: "s-1".into(),
                    event: e.into(),
                    actor: "admin".into(),
                    node_id: "n-a".into(),
                    detail: String::new(),
                })
                .await
                .unwrap();
        }
        let got = store.session_events("s-1").await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            ["started", "ended"]
        );
    }
}
