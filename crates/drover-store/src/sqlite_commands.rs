//! SQLite for commands and invocations (and the schema of documents, commands and invocations):
//! plain functions on a connection, called by `SqliteStore` on its blocking thread.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::*;

pub(crate) const MIGRATION_COMMANDS: &str = r#"
CREATE TABLE documents (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    content     TEXT NOT NULL,
    format      TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;
CREATE TABLE document_heads (
    name            TEXT PRIMARY KEY,
    default_version INTEGER NOT NULL,
    latest_version  INTEGER NOT NULL
) STRICT;
CREATE TABLE commands (
    id                     TEXT PRIMARY KEY,
    document_name          TEXT NOT NULL,
    document_version       TEXT NOT NULL,
    parameters             TEXT NOT NULL,
    targets                TEXT NOT NULL,
    max_concurrency        TEXT NOT NULL,
    max_errors             TEXT NOT NULL,
    delivery_timeout_secs  INTEGER NOT NULL,
    execution_timeout_secs INTEGER NOT NULL,
    output_limit           INTEGER NOT NULL,
    comment                TEXT NOT NULL,
    created_at             INTEGER NOT NULL,
    status                 TEXT NOT NULL,
    payload                TEXT NOT NULL,
    cancel_requested       INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX commands_status ON commands(status);
CREATE TABLE invocations (
    id            TEXT PRIMARY KEY,
    command_id    TEXT NOT NULL REFERENCES commands(id),
    node_id       TEXT NOT NULL,
    node_name     TEXT NOT NULL,
    status        TEXT NOT NULL,
    status_detail TEXT NOT NULL DEFAULT '',
    exit_code     INTEGER,
    requested_at  INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER
) STRICT;
CREATE INDEX invocations_command ON invocations(command_id, id);
CREATE INDEX invocations_node ON invocations(node_id);
CREATE TABLE invocation_steps (
    invocation_id TEXT NOT NULL REFERENCES invocations(id),
    position      INTEGER NOT NULL,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL,
    exit_code     INTEGER,
    stdout        TEXT NOT NULL DEFAULT '',
    stderr        TEXT NOT NULL DEFAULT '',
    stdout_bytes  INTEGER NOT NULL DEFAULT 0,
    stderr_bytes  INTEGER NOT NULL DEFAULT 0,
    truncated     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (invocation_id, name)
) STRICT;
"#;

/// Output as chunks, one row each, instead of appending to one growing text per step (which
/// copied the whole output on every append). Existing output becomes one chunk per stream.
pub(crate) const MIGRATION_OUTPUT_CHUNKS: &str = r#"
CREATE TABLE output_chunks (
    invocation_id TEXT NOT NULL,
    step          TEXT NOT NULL,
    -- 0 stdout, 1 stderr
    stream        INTEGER NOT NULL,
    offset        INTEGER NOT NULL,
    data          TEXT NOT NULL,
    PRIMARY KEY (invocation_id, step, stream, offset)
) STRICT;
INSERT INTO output_chunks (invocation_id, step, stream, offset, data)
    SELECT invocation_id, name, 0, 0, stdout FROM invocation_steps WHERE stdout != '';
INSERT INTO output_chunks (invocation_id, step, stream, offset, data)
    SELECT invocation_id, name, 1, 0, stderr FROM invocation_steps WHERE stderr != '';
ALTER TABLE invocation_steps DROP COLUMN stdout;
ALTER TABLE invocation_steps DROP COLUMN stderr;
"#;

/// Invocation counts per command and status, kept exact in the same transaction as the change
/// (by triggers; since [`MIGRATION_COUNT_PER_COMMAND`], inserts are counted by `create_command`),
/// so that progress is read in constant time.
pub(crate) const MIGRATION_INVOCATION_COUNTS: &str = r#"
CREATE TABLE invocation_counts (
    command_id TEXT NOT NULL,
    status     TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (command_id, status)
) STRICT, WITHOUT ROWID;
INSERT INTO invocation_counts (command_id, status, n)
    SELECT command_id, status, COUNT(*) FROM invocations GROUP BY command_id, status;
CREATE TRIGGER invocation_counts_insert AFTER INSERT ON invocations BEGIN
    INSERT INTO invocation_counts (command_id, status, n) VALUES (NEW.command_id, NEW.status, 1)
        ON CONFLICT (command_id, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER invocation_counts_update AFTER UPDATE OF status ON invocations
    WHEN OLD.status != NEW.status BEGIN
    UPDATE invocation_counts SET n = n - 1
        WHERE command_id = OLD.command_id AND status = OLD.status;
    INSERT INTO invocation_counts (command_id, status, n) VALUES (NEW.command_id, NEW.status, 1)
        ON CONFLICT (command_id, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER invocation_counts_delete AFTER DELETE ON invocations BEGIN
    UPDATE invocation_counts SET n = n - 1
        WHERE command_id = OLD.command_id AND status = OLD.status;
END;
"#;

/// Retention: commands listed and pruned oldest first by an index on their age, a partial index
/// on the ones whose output is still kept (so finding the next one to prune never walks the
/// pruned ones), where output pruning got to in a command, the command being deleted (over
/// several batches: it is finished whatever the policy says by then), and the number of stored invocations
/// kept up to date (the count limit is checked without counting).
pub(crate) const MIGRATION_RETENTION: &str = r#"
ALTER TABLE commands ADD COLUMN output_pruned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE commands ADD COLUMN prune_cursor TEXT NOT NULL DEFAULT '';
ALTER TABLE commands ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0;
CREATE INDEX commands_deleting ON commands(id) WHERE deleting = 1;
CREATE INDEX commands_created ON commands(created_at, id);
CREATE INDEX commands_output_kept ON commands(created_at, id) WHERE output_pruned = 0;
CREATE TABLE history_size (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    invocations INTEGER NOT NULL
) STRICT;
INSERT INTO history_size (id, invocations) SELECT 1, COUNT(*) FROM invocations;
CREATE TRIGGER history_size_insert AFTER INSERT ON invocations BEGIN
    UPDATE history_size SET invocations = invocations + 1 WHERE id = 1;
END;
CREATE TRIGGER history_size_delete AFTER DELETE ON invocations BEGIN
    UPDATE history_size SET invocations = invocations - 1 WHERE id = 1;
END;
"#;

/// A command's invocations are counted once per command, not once per row: `create_command`
/// (and the history seeding) add what they insert to `invocation_counts` and `history_size` in
/// the same transaction. The two per-row triggers cost two statements for each of a fan-out's
/// invocations. Updates and deletes keep their triggers (they come one row at a time).
pub(crate) const MIGRATION_COUNT_PER_COMMAND: &str = r#"
DROP TRIGGER invocation_counts_insert;
DROP TRIGGER history_size_insert;
"#;

pub(crate) fn db(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { what, source }
}

pub(crate) const CMD_COLS: &str =
    "id, document_name, document_version, parameters, targets, max_concurrency, \
     max_errors, delivery_timeout_secs, execution_timeout_secs, output_limit, comment, created_at, \
     status, payload, cancel_requested, output_pruned, sender";

fn cmd_row(r: &Row<'_>) -> rusqlite::Result<Command> {
    let targets: String = r.get(4)?;
    Ok(Command {
        id: r.get(0)?,
        document_name: r.get(1)?,
        document_version: r.get(2)?,
        parameters: r.get(3)?,
        targets: serde_json::from_str(&targets).unwrap_or_default(),
        max_concurrency: r.get(5)?,
        max_errors: r.get(6)?,
        delivery_timeout_secs: r.get(7)?,
        execution_timeout_secs: r.get(8)?,
        output_limit: r.get(9)?,
        comment: r.get(10)?,
        created_at: r.get(11)?,
        status: r.get(12)?,
        payload: r.get(13)?,
        cancel_requested: r.get(14)?,
        output_pruned: r.get(15)?,
        sender: r.get(16)?,
    })
}

pub(crate) fn create_command(
    c: &mut Connection,
    cmd: &Command,
    invs: &[Invocation],
) -> Result<(), StoreError> {
    let tx = c.transaction().map_err(db("create a command"))?;
    tx.execute(
        &format!("INSERT INTO commands ({CMD_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
        params![
            cmd.id, cmd.document_name, cmd.document_version, cmd.parameters,
            serde_json::to_string(&cmd.targets).unwrap_or_default(), cmd.max_concurrency,
            cmd.max_errors, cmd.delivery_timeout_secs, cmd.execution_timeout_secs, cmd.output_limit,
            cmd.comment, cmd.created_at, cmd.status, cmd.payload, cmd.cancel_requested,
            cmd.output_pruned, cmd.sender
        ],
    )
    .map_err(db("create a command"))?;
    {
        let mut st = tx
            .prepare_cached(
                "INSERT INTO invocations (id, command_id, node_id, node_name, status, status_detail, exit_code, requested_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(db("create a command"))?;
        for i in invs {
            st.execute(params![
                i.id,
                i.command_id,
                i.node_id,
                i.node_name,
                i.status,
                i.status_detail,
                i.exit_code,
                i.requested_at
            ])
            .map_err(db("create a command"))?;
        }
    }
    let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for i in invs {
        *counts.entry((&i.command_id, &i.status)).or_default() += 1;
    }
    add_counts(&tx, &counts).map_err(db("create a command"))?;
    tx.commit().map_err(db("create a command"))
}

/// Adds inserted invocations, `n` per (command, status), to the counts the triggers keep for
/// updates and deletes ([`MIGRATION_COUNT_PER_COMMAND`]).
pub(crate) fn add_counts(
    tx: &rusqlite::Transaction<'_>,
    counts: &BTreeMap<(&str, &str), i64>,
) -> rusqlite::Result<()> {
    let mut total = 0;
    for ((command, status), n) in counts {
        tx.prepare_cached(
            "INSERT INTO invocation_counts (command_id, status, n) VALUES (?1, ?2, ?3) \
             ON CONFLICT (command_id, status) DO UPDATE SET n = n + excluded.n",
        )?
        .execute(params![command, status, n])?;
        total += n;
    }
    tx.prepare_cached("UPDATE history_size SET invocations = invocations + ?1 WHERE id = 1")?
        .execute([total])?;
    Ok(())
}

pub(crate) fn get_command(c: &Connection, id: &str) -> Result<Option<Command>, StoreError> {
    c.query_row(
        &format!("SELECT {CMD_COLS} FROM commands WHERE id = ?1"),
        [id],
        cmd_row,
    )
    .optional()
    .map_err(db("read a command"))
}

pub(crate) fn list_commands(
    c: &Connection,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<Command>, StoreError> {
    // Two statements rather than `?1 IS NULL OR ...`, so that both walk `commands_created`
    // and stop at the limit.
    let read = |sql: String, args: &[&dyn rusqlite::ToSql]| {
        let mut st = c.prepare_cached(&sql)?;
        let rows: rusqlite::Result<Vec<Command>> = st.query_map(args, cmd_row)?.collect();
        rows
    };
    let (order, limit) = ("ORDER BY created_at DESC, id DESC LIMIT", limit as i64);
    if let Some(before) = before {
        // A cursor that is gone would read as the end of the list.
        let known = c
            .prepare_cached("SELECT COUNT(*) FROM commands WHERE id = ?1")
            .and_then(|mut st| st.query_row([before], |r| r.get::<_, i64>(0)))
            .map_err(db("list commands"))?;
        if known == 0 {
            return Err(StoreError::NotFound(format!(
                "command {before:?} (the page cursor; the retention policy may have deleted it: \
                 list again from the newest)"
            )));
        }
    }
    match before {
        Some(before) => read(
            format!(
                "SELECT {CMD_COLS} FROM commands WHERE (created_at, id) < \
                 (SELECT created_at, id FROM commands WHERE id = ?1) {order} ?2"
            ),
            &[&before, &limit],
        ),
        None => read(
            format!("SELECT {CMD_COLS} FROM commands {order} ?1"),
            &[&limit],
        ),
    }
    .map_err(db("list commands"))
}

pub(crate) fn set_command_status(
    c: &Connection,
    id: &str,
    status: &str,
    cancel: bool,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE commands SET status = ?2, cancel_requested = MAX(cancel_requested, ?3) WHERE id = ?1",
        params![id, status, cancel],
    )
    .map_err(db("update a command"))?;
    Ok(())
}

pub(crate) fn unfinished_commands(c: &Connection) -> Result<Vec<Command>, StoreError> {
    let mut st = c
        .prepare(&format!(
            "SELECT {CMD_COLS} FROM commands WHERE status IN ('Pending', 'InProgress', 'Cancelling') ORDER BY created_at"
        ))
        .map_err(db("list unfinished commands"))?;
    let rows = st
        .query_map([], cmd_row)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("list unfinished commands"))?;
    Ok(rows)
}

pub(crate) fn status_counts(c: &Connection, command_id: &str) -> Result<StatusCounts, StoreError> {
    // Kept as invocations are created and change: reading them costs the same at 10 or 50,000
    // invocations (the progress bar asks after every stored batch).
    let mut st = c
        .prepare_cached("SELECT status, n FROM invocation_counts WHERE command_id = ?1 AND n > 0")
        .map_err(db("count invocations"))?;
    let rows = st
        .query_map([command_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .and_then(|r| r.collect::<Result<StatusCounts, _>>())
        .map_err(db("count invocations"))?;
    Ok(rows)
}

fn inv_row(r: &Row<'_>) -> rusqlite::Result<Invocation> {
    Ok(Invocation {
        id: r.get(0)?,
        command_id: r.get(1)?,
        node_id: r.get(2)?,
        node_name: r.get(3)?,
        status: r.get(4)?,
        status_detail: r.get(5)?,
        exit_code: r.get(6)?,
        requested_at: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        steps: Vec::new(),
    })
}

pub(crate) fn list_invocations(
    c: &Connection,
    q: &InvocationQuery,
) -> Result<Vec<Invocation>, StoreError> {
    // Only the filters given are in the statement: `(?1 IS NULL OR col = ?1)` would keep SQLite
    // from using an index, and every listing would scan the whole history.
    let mut sql = String::from(
        "SELECT id, command_id, node_id, node_name, status, status_detail, exit_code, requested_at, \
         started_at, finished_at FROM invocations WHERE 1 = 1",
    );
    let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
    let filters: [(&str, &Option<String>); 5] = [
        ("id = ?", &q.id),
        ("command_id = ?", &q.command_id),
        ("node_id = ?", &q.node_id),
        ("status = ?", &q.status),
        ("id > ?", &q.after),
    ];
    for (clause, value) in filters {
        if let Some(v) = value {
            args.push(v);
            sql.push_str(&format!(" AND {clause}{}", args.len()));
        }
    }
    let limit = q.limit.max(1) as i64;
    args.push(&limit);
    sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
    let mut st = c.prepare_cached(&sql).map_err(db("list invocations"))?;
    let mut rows = st
        .query_map(args.as_slice(), inv_row)
        .and_then(|r| r.collect::<Result<Vec<_>, _>>())
        .map_err(db("list invocations"))?;
    if q.with_steps {
        let mut steps = c
            .prepare_cached(
                "SELECT name, status, exit_code, stdout_bytes, stderr_bytes, truncated \
                 FROM invocation_steps WHERE invocation_id = ?1 ORDER BY position",
            )
            .map_err(db("list invocation steps"))?;
        for inv in &mut rows {
            inv.steps = steps
                .query_map([&inv.id], |r| {
                    Ok(StepResult {
                        name: r.get(0)?,
                        status: r.get(1)?,
                        exit_code: r.get(2)?,
                        stdout: String::new(),
                        stderr: String::new(),
                        stdout_bytes: r.get(3)?,
                        stderr_bytes: r.get(4)?,
                        truncated: r.get(5)?,
                    })
                })
                .and_then(|r| r.collect::<Result<Vec<_>, _>>())
                .map_err(db("list invocation steps"))?;
            if q.output_cap != Some(0) {
                read_output(c, &inv.id, &mut inv.steps, q.output_cap)?;
            }
        }
    }
    Ok(rows)
}

/// Fills the steps' output from their chunks, in order, at most about `cap` bytes per stream.
fn read_output(
    c: &Connection,
    invocation_id: &str,
    steps: &mut [StepResult],
    cap: Option<usize>,
) -> Result<(), StoreError> {
    let cap = cap.unwrap_or(usize::MAX);
    let mut st = c
        .prepare_cached(
            "SELECT data FROM output_chunks WHERE invocation_id = ?1 AND step = ?2 AND stream = ?3 \
             ORDER BY offset",
        )
        .map_err(db("read output"))?;
    for step in steps.iter_mut() {
        for (stream, out) in [(0, &mut step.stdout), (1, &mut step.stderr)] {
            let mut chunks = st
                .query(params![invocation_id, step.name, stream])
                .map_err(db("read output"))?;
            while out.len() < cap {
                let Some(row) = chunks.next().map_err(db("read output"))? else {
                    break;
                };
                let data: String = row.get(0).map_err(db("read output"))?;
                out.push_str(&data);
            }
        }
    }
    Ok(())
}

/// Terminal invocation statuses never change again (a late replay cannot undo a cancel).
const TERMINAL: &str = "('Success', 'Failed', 'TimedOut', 'Cancelled')";

pub(crate) fn apply_invocation_updates(
    c: &mut Connection,
    updates: &[InvocationUpdate],
) -> Result<(), StoreError> {
    let tx = c.transaction().map_err(db("record invocation progress"))?;
    for u in updates {
        match u {
            InvocationUpdate::Status {
                invocation_id,
                status,
                detail,
                exit_code,
                at,
            } => {
                let terminal = matches!(
                    status.as_str(),
                    "Success" | "Failed" | "TimedOut" | "Cancelled"
                );
                tx.prepare_cached(&format!(
                    "UPDATE invocations SET status = ?2, status_detail = ?3, exit_code = COALESCE(?4, exit_code), \
                     started_at = CASE WHEN ?2 = 'InProgress' THEN COALESCE(started_at, ?5) ELSE started_at END, \
                     finished_at = CASE WHEN ?6 THEN ?5 ELSE finished_at END \
                     WHERE id = ?1 AND status NOT IN {TERMINAL}"
                ))
                .and_then(|mut st| st.execute(params![invocation_id, status, detail, exit_code, at, terminal]))
                .map_err(db("record invocation status"))?;
            }
            InvocationUpdate::StepStarted {
                invocation_id,
                step,
            } => {
                tx.prepare_cached(
                    "INSERT INTO invocation_steps (invocation_id, position, name, status) \
                     VALUES (?1, (SELECT COUNT(*) FROM invocation_steps WHERE invocation_id = ?1), ?2, 'InProgress') \
                     ON CONFLICT (invocation_id, name) DO NOTHING",
                )
                .and_then(|mut st| st.execute(params![invocation_id, step]))
                .map_err(db("record a step"))?;
            }
            InvocationUpdate::Output {
                invocation_id,
                step,
                stderr,
                offset,
                len,
                data,
            } => {
                // Only an exact continuation is stored: a replay of what is stored is skipped.
                // Each chunk is its own row, so storing output is linear in its size.
                let (column, stream) = if *stderr {
                    ("stderr_bytes", 1)
                } else {
                    ("stdout_bytes", 0)
                };
                let advanced = tx
                    .prepare_cached(&format!(
                        "UPDATE invocation_steps SET {column} = {column} + ?4 \
                         WHERE invocation_id = ?1 AND name = ?2 AND {column} = ?3"
                    ))
                    .and_then(|mut st| st.execute(params![invocation_id, step, offset, len]))
                    .map_err(db("record output"))?;
                if advanced == 1 {
                    tx.prepare_cached(
                        "INSERT INTO output_chunks (invocation_id, step, stream, offset, data) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![invocation_id, step, stream, offset, data])
                    })
                    .map_err(db("record output"))?;
                }
            }
            InvocationUpdate::StepFinished {
                invocation_id,
                step,
                status,
                exit_code,
                truncated,
            } => {
                tx.prepare_cached(
                    "INSERT INTO invocation_steps (invocation_id, position, name, status, exit_code, truncated) \
                     VALUES (?1, (SELECT COUNT(*) FROM invocation_steps WHERE invocation_id = ?1), ?2, ?3, ?4, ?5) \
                     ON CONFLICT (invocation_id, name) DO UPDATE SET status = excluded.status, \
                     exit_code = excluded.exit_code, truncated = excluded.truncated",
                )
                .and_then(|mut st| st.execute(params![invocation_id, step, status, exit_code, truncated]))
                .map_err(db("record a step result"))?;
            }
        }
    }
    tx.commit().map_err(db("record invocation progress"))
}
