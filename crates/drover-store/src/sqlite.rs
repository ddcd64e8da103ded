//! The embedded SQLite store: one connection in WAL mode, used from blocking threads so the
//! async runtime never waits on disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, TransactionBehavior};

use crate::sqlite_commands as sc;
use crate::sqlite_documents as sd;
use crate::sqlite_sessions as ss;
use crate::*;
use rows::{activation_from_row, get_node_tx, json, node_from_row, status_str};
use schema::migrate;

const NODE_COLUMNS: &str = "id, name, tags, status, last_seen_at, registered_at, activation_id, \
     hostname, platform, os_name, os_version, kernel, arch, agent_version, ip_addresses, boot_time";

/// The SQLite [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn db(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { what, source }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // FULL: in WAL mode every commit is flushed to disk before it returns. The server tells
        // an agent it may forget a result once that result is committed, so a commit must
        // survive a power loss (NORMAL keeps only what the last checkpoint wrote).
        // The server is the database's only user: EXCLUSIVE locking takes the file lock once
        // instead of twice per transaction (`fcntl`), and a 64 MiB page cache keeps a
        // 10,000-node command's working set in memory (the default is 2 MiB).
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
             PRAGMA cache_size = -65536;",
        )
        .map_err(open_err)?;
        // rusqlite keeps 16 prepared statements by default; the hot paths use more than that
        // (listings are built from the filters given), and a miss parses the SQL again: 6 % of
        // the server's samples at 10,000 nodes.
        conn.set_prepared_statement_cache_capacity(256);
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Tops the history up to `commands` seeded, finished commands of `per_command` successful
    /// invocations each, the first created at `first_created_at` (Unix seconds) and one second
    /// apart; returns the number of invocations added. Blocking. For benchmarks and tests of a
    /// server with a long history: the server never calls it.
    pub fn seed_history(
        &self,
        commands: usize,
        per_command: usize,
        first_created_at: i64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::WorkerGone)?;
        crate::sqlite_history::seed_history(&mut conn, commands, per_command, first_created_at)
    }

    /// Runs `f` with the connection on a blocking thread.
    pub(crate) async fn call<T, E>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::WorkerGone)?;
            f(&mut guard)
        })
        .await
        .map_err(|_| StoreError::WorkerGone)?
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get_node(&self, id: &NodeId) -> Result<Option<Node>, StoreError> {
        let id = id.to_string();
        self.call(move |c| get_node_tx(c, &id)).await
    }

    async fn get_nodes(&self, ids: &[NodeId]) -> Result<Vec<Node>, StoreError> {
        // One statement whatever the number of IDs: they travel as one JSON array, and each is
        // looked up by the primary key (CROSS JOIN keeps that order: on a small table the
        // planner would rather scan it).
        let ids = json(&ids.iter().map(NodeId::as_str).collect::<Vec<_>>());
        self.call(move |c| {
            c.prepare_cached(&format!(
                "SELECT {NODE_COLUMNS} FROM (SELECT DISTINCT value FROM json_each(?1)) AS asked \
                 CROSS JOIN nodes ON nodes.id = asked.value"
            ))
            .and_then(|mut st| st.query_map([ids], node_from_row)?.collect())
            .map_err(db("read nodes"))
        })
        .await
    }

    async fn list_nodes(&self, query: &NodeQuery) -> Result<NodePage, StoreError> {
        let q = query.clone();
        self.call(move |c| {
            let mut sql = format!("SELECT {NODE_COLUMNS} FROM nodes n WHERE 1=1");
            let mut args: Vec<String> = Vec::new();
            for (k, v) in &q.tags {
                args.push(k.clone());
                args.push(v.clone());
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM node_tags t WHERE t.node_id = n.id AND t.key = ?{} AND t.value = ?{})",
                    args.len() - 1,
                    args.len()
                ));
            }
            if let Some(p) = &q.platform {
                args.push(p.clone());
                sql.push_str(&format!(" AND n.platform = ?{}", args.len()));
            }
            if let Some(s) = q.status {
                args.push(status_str(s).to_string());
                sql.push_str(&format!(" AND n.status = ?{}", args.len()));
            }
            if let Some(name) = &q.name {
                args.push(name.clone());
                sql.push_str(&format!(" AND n.name = ?{}", args.len()));
            }
            if let Some(after) = &q.after {
                args.push(after.to_string());
                sql.push_str(&format!(" AND n.id > ?{}", args.len()));
            }
            let limit = q.limit.max(1);
            // One extra row tells whether there is a next page.
            sql.push_str(&format!(" ORDER BY n.id LIMIT {}", limit + 1));
            let mut st = c.prepare_cached(&sql).map_err(db("list nodes"))?;
            let mut nodes = st
                .query_map(rusqlite::params_from_iter(args.iter()), node_from_row)
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(db("list nodes"))?;
            let next = if nodes.len() > limit {
                nodes.truncate(limit);
                nodes.last().map(|n| n.id.clone())
            } else {
                None
            };
            Ok(NodePage { nodes, next })
        })
        .await
    }

    async fn update_tags(
        &self,
        id: &NodeId,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Node, StoreError> {
        let (id, set, remove) = (id.to_string(), set.clone(), remove.to_vec());
        self.call(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("update tags"))?;
            let mut node =
                get_node_tx(&tx, &id)?.ok_or_else(|| StoreError::NotFound(format!("node {id}")))?;
            for k in &remove {
                node.tags.remove(k);
                tx.execute(
                    "DELETE FROM node_tags WHERE node_id = ?1 AND key = ?2",
                    params![id, k],
                )
                .map_err(db("update tags"))?;
            }
            for (k, v) in &set {
                node.tags.insert(k.clone(), v.clone());
                tx.execute(
                    "INSERT INTO node_tags (node_id, key, value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (node_id, key) DO UPDATE SET value = excluded.value",
                    params![id, k, v],
                )
                .map_err(db("update tags"))?;
            }
            tx.execute(
                "UPDATE nodes SET tags = ?2 WHERE id = ?1",
                params![id, json(&node.tags)],
            )
            .map_err(db("update tags"))?;
            tx.commit().map_err(db("update tags"))?;
            Ok(node)
        })
        .await
    }

    async fn set_inventory(&self, id: &NodeId, inv: &NodeInventory) -> Result<(), StoreError> {
        let (id, inv) = (id.to_string(), inv.clone());
        self.call(move |c| {
            c.prepare_cached(
                "UPDATE nodes SET hostname = ?2, platform = ?3, os_name = ?4, os_version = ?5, \
                 kernel = ?6, arch = ?7, agent_version = ?8, ip_addresses = ?9, boot_time = ?10 \
                 WHERE id = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    id,
                    inv.hostname,
                    inv.platform,
                    inv.os_name,
                    inv.os_version,
                    inv.kernel,
                    inv.arch,
                    inv.agent_version,
                    json(&inv.ip_addresses),
                    inv.boot_time
                ])
            })
            .map_err(db("save the inventory"))?;
            Ok(())
        })
        .await
    }

    async fn record_presence(&self, updates: &[Presence]) -> Result<(), StoreError> {
        let updates = updates.to_vec();
        self.call(move |c| {
            let tx = c.transaction().map_err(db("record presence"))?;
            {
                // An Inactive (deregistered) node stays Inactive whatever its last connection did.
                let mut st = tx
                    .prepare_cached(
                        "UPDATE nodes SET status = ?2, last_seen_at = MAX(last_seen_at, ?3) \
                         WHERE id = ?1 AND status != 'inactive'",
                    )
                    .map_err(db("record presence"))?;
                for u in &updates {
                    let status = if u.online {
                        NodeStatus::Online
                    } else {
                        NodeStatus::ConnectionLost
                    };
                    st.execute(params![u.id.as_str(), status_str(status), u.at])
                        .map_err(db("record presence"))?;
                }
            }
            tx.commit().map_err(db("record presence"))
        })
        .await
    }

    async fn mark_all_disconnected(&self, at: i64) -> Result<u64, StoreError> {
        self.call(move |c| {
            c.execute(
                "UPDATE nodes SET status = 'connection_lost', last_seen_at = MAX(last_seen_at, ?1) \
                 WHERE status = 'online'",
                [at],
            )
            .map(|n| n as u64)
            .map_err(db("reset node status"))
        })
        .await
    }

    async fn deregister_node(&self, id: &NodeId, at: i64) -> Result<Node, StoreError> {
        let id = id.to_string();
        self.call(move |c| {
            let n = c
                .execute(
                    "UPDATE nodes SET status = 'inactive', last_seen_at = MAX(last_seen_at, ?2) WHERE id = ?1",
                    params![id, at],
                )
                .map_err(db("deregister a node"))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("node {id}")));
            }
            get_node_tx(c, &id)?.ok_or_else(|| StoreError::NotFound(format!("node {id}")))
        })
        .await
    }

    async fn check_certificate(&self, id: &NodeId, fp: &str) -> Result<CertCheck, StoreError> {
        let (id, fp) = (id.to_string(), fp.to_string());
        self.call(move |c| certs::check(c, &id, &fp)).await
    }

    async fn certificate_issued(
        &self,
        id: &NodeId,
        fp: &str,
        at: i64,
        min_interval: i64,
    ) -> Result<Result<(), RenewalRefused>, StoreError> {
        let (id, fp) = (id.to_string(), fp.to_string());
        self.call(move |c| certs::issued(c, &id, &fp, at, min_interval))
            .await
    }

    async fn certificate_saved(&self, id: &NodeId) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(move |c| certs::saved(c, &id)).await
    }

    async fn create_activation(&self, a: &Activation) -> Result<(), StoreError> {
        let a = a.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO activations (id, code_hash, description, default_name, tags, \
                 registration_limit, registrations, expires_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    a.id,
                    a.code_hash,
                    a.description,
                    a.default_name,
                    json(&a.tags),
                    a.registration_limit,
                    a.registrations,
                    a.expires_at,
                    a.created_at
                ],
            )
            .map_err(db("create an activation"))?;
            Ok(())
        })
        .await
    }

    async fn list_activations(&self) -> Result<Vec<Activation>, StoreError> {
        self.call(|c| {
            c.prepare_cached(
                "SELECT id, code_hash, description, default_name, tags, registration_limit, \
                 registrations, expires_at, created_at FROM activations ORDER BY created_at, id",
            )
            .and_then(|mut st| {
                st.query_map([], activation_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db("list activations"))
        })
        .await
    }

    async fn redeem_activation(
        &self,
        activation_id: &str,
        code_hash: &str,
        now: i64,
        node: NewNode,
    ) -> Result<Node, RedeemError> {
        let (aid, code_hash) = (activation_id.to_string(), code_hash.to_string());
        self.call(move |c| redeem::redeem(c, aid, &code_hash, now, node))
            .await
    }

    async fn create_document(&self, doc: &DocumentVersion) -> Result<DocumentVersion, StoreError> {
        let doc = doc.clone();
        self.call(move |c| sd::create_document(c, &doc)).await
    }

    async fn update_document(
        &self,
        name: &str,
        content: &str,
        format: &str,
        description: &str,
        at: i64,
    ) -> Result<DocumentVersion, StoreError> {
        let (n, ct, f, d) = (
            name.to_string(),
            content.to_string(),
            format.to_string(),
            description.to_string(),
        );
        self.call(move |c| sd::update_document(c, &n, &ct, &f, &d, at))
            .await
    }

    async fn get_document(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<Option<DocumentVersion>, StoreError> {
        let n = name.to_string();
        self.call(move |c| sd::get_document(c, &n, version)).await
    }

    async fn list_documents(&self) -> Result<Vec<DocumentVersion>, StoreError> {
        self.call(|c| sd::list_documents(c)).await
    }

    async fn document_versions(&self, name: &str) -> Result<Vec<DocumentVersion>, StoreError> {
        let n = name.to_string();
        self.call(move |c| sd::document_versions(c, &n)).await
    }

    async fn set_default_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<DocumentVersion, StoreError> {
        let n = name.to_string();
        self.call(move |c| sd::set_default_version(c, &n, version))
            .await
    }

    async fn delete_document(&self, name: &str) -> Result<(), StoreError> {
        let n = name.to_string();
        self.call(move |c| sd::delete_document(c, &n)).await
    }

    async fn create_command(
        &self,
        command: &Command,
        invocations: &[Invocation],
    ) -> Result<(), StoreError> {
        let (cmd, invs) = (command.clone(), invocations.to_vec());
        self.call(move |c| sc::create_command(c, &cmd, &invs)).await
    }

    async fn get_command(&self, id: &str) -> Result<Option<Command>, StoreError> {
        let id = id.to_string();
        self.call(move |c| sc::get_command(c, &id)).await
    }

    async fn list_commands(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Command>, StoreError> {
        let before = before.map(str::to_string);
        self.call(move |c| sc::list_commands(c, before.as_deref(), limit))
            .await
    }

    async fn set_command_status(
        &self,
        id: &str,
        status: &str,
        cancel_requested: bool,
    ) -> Result<(), StoreError> {
        let (id, status) = (id.to_string(), status.to_string());
        self.call(move |c| sc::set_command_status(c, &id, &status, cancel_requested))
            .await
    }

    async fn unfinished_commands(&self) -> Result<Vec<Command>, StoreError> {
        self.call(|c| sc::unfinished_commands(c)).await
    }

    async fn status_counts(&self, command_id: &str) -> Result<StatusCounts, StoreError> {
        let id = command_id.to_string();
        self.call(move |c| sc::status_counts(c, &id)).await
    }

    async fn list_invocations(
        &self,
        query: &InvocationQuery,
    ) -> Result<Vec<Invocation>, StoreError> {
        let q = query.clone();
        self.call(move |c| sc::list_invocations(c, &q)).await
    }

    async fn apply_invocation_updates(
        &self,
        updates: &[InvocationUpdate],
    ) -> Result<(), StoreError> {
        let u = updates.to_vec();
        self.call(move |c| sc::apply_invocation_updates(c, &u))
            .await
    }

    async fn prune_history(
        &self,
        retention: &Retention,
        budget: usize,
    ) -> Result<Pruned, StoreError> {
        let r = *retention;
        self.call(move |c| crate::sqlite_history::prune_history(c, &r, budget))
            .await
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let s = session.clone();
        self.call(move |c| ss::create(c, &s)).await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.to_string();
        self.call(move |c| ss::get(c, &id)).await
    }

    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>, StoreError> {
        let q = query.clone();
        self.call(move |c| ss::list(c, &q)).await
    }

    async fn set_session_status(&self, id: &str, status: &str) -> Result<(), StoreError> {
        let (id, status) = (id.to_string(), status.to_string());
        self.call(move |c| ss::set_status(c, &id, &status)).await
    }

    async fn end_session(&self, id: &str, end: &SessionEnd) -> Result<bool, StoreError> {
        let (id, e) = (id.to_string(), end.clone());
        self.call(move |c| ss::end(c, &id, &e)).await
    }

    async fn end_open_sessions(&self, at: i64, detail: &str) -> Result<u64, StoreError> {
        let detail = detail.to_string();
        self.call(move |c| ss::end_open(c, at, &detail)).await
    }

    async fn add_session_event(&self, event: &SessionEvent) -> Result<(), StoreError> {
        let e = event.clone();
        self.call(move |c| ss::add_event(c, &e)).await
    }

    async fn prune_sessions(&self, before: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.call(move |c| ss::prune(c, before, limit)).await
    }

    async fn session_events(&self, session_id: &str) -> Result<Vec<SessionEvent>, StoreError> {
        let id = session_id.to_string();
        self.call(move |c| ss::events(c, &id)).await
    }
}

mod certs;
#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod plan_tests;
mod redeem;
mod rows;
mod schema;
#[cfg(test)]
mod tests;
