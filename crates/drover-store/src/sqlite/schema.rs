//! The schema: migrations applied in order, recorded in `PRAGMA user_version`.

use rusqlite::Connection;

use crate::StoreError;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran. Never edit
/// a released migration: add a new one.
const MIGRATIONS: &[&str] = &[
    MIGRATION_NODES,
    crate::sqlite_commands::MIGRATION_COMMANDS,
    // Counting a command's invocations by status, on every progress poll, reads this index
    // instead of sorting the invocations.
    "CREATE INDEX invocations_command_status ON invocations(command_id, status);",
    super::certs::MIGRATION,
    crate::sqlite_commands::MIGRATION_OUTPUT_CHUNKS,
    crate::sqlite_commands::MIGRATION_INVOCATION_COUNTS,
    crate::sqlite_commands::MIGRATION_RETENTION,
    crate::sqlite_sessions::MIGRATION_SESSIONS,
    crate::sqlite_sessions::MIGRATION_SESSION_TARGETS,
    crate::sqlite_identity::MIGRATION_IDENTITY,
    crate::sqlite_audit::MIGRATION_AUDIT,
    crate::sqlite_access::MIGRATION_ACCESS,
    crate::sqlite_alerts::MIGRATION_ALERTS,
    crate::sqlite_params::MIGRATION_PARAMS,
    crate::sqlite_assoc::MIGRATION_ASSOC,
    crate::sqlite_commands::MIGRATION_COUNT_PER_COMMAND,
];

pub(super) const MIGRATION_NODES: &str = r#"
CREATE TABLE nodes (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    tags           TEXT NOT NULL DEFAULT '{}',
    status         TEXT NOT NULL,
    last_seen_at   INTEGER NOT NULL DEFAULT 0,
    registered_at  INTEGER NOT NULL,
    activation_id  TEXT NOT NULL,
    hostname       TEXT NOT NULL DEFAULT '',
    platform       TEXT NOT NULL DEFAULT '',
    os_name        TEXT NOT NULL DEFAULT '',
    os_version     TEXT NOT NULL DEFAULT '',
    kernel         TEXT NOT NULL DEFAULT '',
    arch           TEXT NOT NULL DEFAULT '',
    agent_version  TEXT NOT NULL DEFAULT '',
    ip_addresses   TEXT NOT NULL DEFAULT '[]',
    boot_time      INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX nodes_status ON nodes(status);
CREATE INDEX nodes_name ON nodes(name);
-- Tags are kept twice: as JSON in nodes (read with the row) and here (to filter by).
CREATE TABLE node_tags (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (node_id, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX node_tags_kv ON node_tags(key, value);
CREATE TABLE activations (
    id                 TEXT PRIMARY KEY,
    code_hash          TEXT NOT NULL,
    description        TEXT NOT NULL,
    default_name       TEXT NOT NULL,
    tags               TEXT NOT NULL,
    registration_limit INTEGER NOT NULL,
    registrations      INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    created_at         INTEGER NOT NULL
) STRICT;
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
"#;

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::Database {
            what: "read the schema version",
            source,
        })?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i + 1;
        let mig = |source| StoreError::Migration { version, source };
        let tx = conn.transaction().map_err(mig)?;
        tx.execute_batch(sql).map_err(mig)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(mig)?;
        tx.commit().map_err(mig)?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}
