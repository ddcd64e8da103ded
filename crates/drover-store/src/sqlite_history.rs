//! SQLite for the command history's size: pruning by the retention policy, one bounded
//! transaction at a time, and seeding a history for tests and benchmarks.

use rusqlite::{params, Connection, OptionalExtension};

use crate::sqlite_commands::{add_counts, db, CMD_COLS};
use crate::*;

/// Statuses of a command still running: never pruned.
const UNFINISHED: &str = "('Pending', 'InProgress', 'Cancelling')";

pub(crate) fn prune_history(
    c: &mut Connection,
    r: &Retention,
    budget: usize,
) -> Result<Pruned, StoreError> {
    let tx = c.transaction().map_err(db("prune the history"))?;
    let mut done = Pruned::default();
    // Both bounds hold per transaction: invocations, and output chunks (an invocation may
    // hold many: its output limit is the sender's choice).
    let mut left = budget.max(1);
    let mut rows = left * CHUNKS_PER_INVOCATION;
    // Output first: it is most of the bytes, and kept for the shorter time.
    while left > 0 && rows > 0 {
        let next: Option<(String, String)> = tx
            .prepare_cached(&format!(
                "SELECT id, prune_cursor FROM commands WHERE output_pruned = 0 AND created_at < ?1 \
                 AND status NOT IN {UNFINISHED} ORDER BY created_at, id LIMIT 1"
            ))
            .and_then(|mut st| {
                st.query_row([r.output_before], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(db("prune the history"))?;
        let Some((command, mut cursor)) = next else {
            break;
        };
        // One more than the budget, to know whether this finishes the command.
        let ids = invocation_ids(&tx, &command, &cursor, left + 1)?;
        let mut finished = ids.len() <= left;
        for id in ids.iter().take(left) {
            if !delete_chunks(&tx, id, &mut rows)? {
                finished = false;
                break;
            }
            done.outputs += 1;
            left -= 1;
            cursor.clone_from(id);
        }
        // A command without invocations still costs a step, so the loop ends.
        left = left.saturating_sub(usize::from(ids.is_empty()));
        tx.prepare_cached(
            "UPDATE commands SET output_pruned = ?2, prune_cursor = ?3 WHERE id = ?1",
        )
        .and_then(|mut st| st.execute(params![command, finished, cursor]))
        .map_err(db("prune output"))?;
    }
    // Then whole commands: past their age, or the oldest while there are too many invocations.
    while left > 0 && rows > 0 {
        let stored: i64 = tx
            .prepare_cached("SELECT invocations FROM history_size WHERE id = 1")
            .and_then(|mut st| st.query_row([], |row| row.get(0)))
            .optional()
            .map_err(db("prune the history"))?
            .unwrap_or(0);
        let over = u64::try_from(stored).unwrap_or(0) > r.max_invocations;
        let before = if over { i64::MAX } else { r.delete_before };
        let started: Option<String> = tx
            .prepare_cached("SELECT id FROM commands WHERE deleting = 1 LIMIT 1")
            .and_then(|mut st| st.query_row([], |row| row.get(0)).optional())
            .map_err(db("prune the history"))?;
        let next = match started {
            Some(id) => Some(id),
            None => tx
                .prepare_cached(&format!(
                    "SELECT id FROM commands WHERE created_at < ?1 AND status NOT IN {UNFINISHED} \
                     ORDER BY created_at, id LIMIT 1"
                ))
                .and_then(|mut st| st.query_row([before], |row| row.get(0)).optional())
                .map_err(db("prune the history"))?,
        };
        let Some(command) = next else { break };
        tx.prepare_cached("UPDATE commands SET deleting = 1 WHERE id = ?1 AND deleting = 0")
            .and_then(|mut st| st.execute([&command]))
            .map_err(db("prune a command"))?;
        let ids = invocation_ids(&tx, &command, "", left + 1)?;
        let mut whole = ids.len() <= left;
        for id in ids.iter().take(left) {
            if !delete_chunks(&tx, id, &mut rows)? {
                whole = false;
                break;
            }
            for sql in [
                "DELETE FROM invocation_steps WHERE invocation_id = ?1",
                "DELETE FROM invocations WHERE id = ?1",
            ] {
                tx.prepare_cached(sql)
                    .and_then(|mut st| st.execute([id]))
                    .map_err(db("prune an invocation"))?;
            }
            done.invocations += 1;
            left -= 1;
        }
        if !whole {
            break;
        }
        left = left.saturating_sub(usize::from(ids.is_empty()));
        for sql in [
            "DELETE FROM invocation_counts WHERE command_id = ?1",
            "DELETE FROM commands WHERE id = ?1",
        ] {
            tx.prepare_cached(sql)
                .and_then(|mut st| st.execute([&command]))
                .map_err(db("prune a command"))?;
        }
        done.commands += 1;
    }
    tx.commit().map_err(db("prune the history"))?;
    done.more = left == 0 || rows == 0;
    Ok(done)
}

/// Output chunks a batch may delete per invocation of its budget, on average.
const CHUNKS_PER_INVOCATION: usize = 10;

/// Deletes an invocation's output chunks, at most `rows` of them (counted down); true when
/// none is left.
fn delete_chunks(c: &Connection, invocation: &str, rows: &mut usize) -> Result<bool, StoreError> {
    let limit = *rows;
    let n = c
        .prepare_cached(
            "DELETE FROM output_chunks WHERE rowid IN \
             (SELECT rowid FROM output_chunks WHERE invocation_id = ?1 LIMIT ?2)",
        )
        .and_then(|mut st| st.execute(params![invocation, limit as i64]))
        .map_err(db("prune output"))?;
    *rows -= n.min(limit);
    Ok(n < limit)
}

/// Up to `limit` invocation IDs of a command, in order, after `after`.
fn invocation_ids(
    c: &Connection,
    command: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    c.prepare_cached(
        "SELECT id FROM invocations WHERE command_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )
    .and_then(|mut st| {
        st.query_map(params![command, after, limit as i64], |row| row.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
    })
    .map_err(db("prune the history"))
}

/// Tops the history up to `commands` seeded commands (`cmd-seed-NNNNNNNN`, the missing ones) of `per_command`
/// successful invocations each (one step that printed `ok`), the first created at
/// `first_created_at` and one second apart. For benchmarks and tests of a server with a long
/// history; the server never calls it.
pub(crate) fn seed_history(
    c: &mut Connection,
    commands: usize,
    per_command: usize,
    first_created_at: i64,
) -> Result<u64, StoreError> {
    let err = db("seed the history");
    let tx = c.transaction().map_err(err)?;
    let mut n = 0u64;
    for k in 0..commands {
        let at = first_created_at + k as i64;
        let command = format!("cmd-seed-{k:08}");
        // One already there (or pruned and seeded again) is kept as it is.
        let added = tx.prepare_cached(&format!(
            "INSERT OR IGNORE INTO commands ({CMD_COLS}) VALUES (?1, 'AWS-RunShellScript', '1', '{{}}', \
             '[\"all\"]', '50', '0', 600, 3600, 2500, 'seeded history', ?2, 'Success', '{{}}', 0, 0, 'admin')"
        ))
        .and_then(|mut st| st.execute(params![command, at]))
        .map_err(db("seed the history"))?;
        if added == 0 {
            continue;
        }
        for i in 0..per_command {
            let id = format!("inv-seed-{k:08}-{i:06}");
            let node = format!("seed-node-{i:06}");
            tx.prepare_cached(
                "INSERT INTO invocations (id, command_id, node_id, node_name, status, exit_code, \
                 requested_at, started_at, finished_at) VALUES (?1, ?2, ?3, ?3, 'Success', 0, ?4, ?4, ?4)",
            )
            .and_then(|mut st| st.execute(params![id, command, node, at]))
            .map_err(db("seed the history"))?;
            tx.prepare_cached(
                "INSERT INTO invocation_steps (invocation_id, position, name, status, exit_code, \
                 stdout_bytes) VALUES (?1, 0, 'runShellScript', 'Success', 0, 3)",
            )
            .and_then(|mut st| st.execute([&id]))
            .map_err(db("seed the history"))?;
            tx.prepare_cached(
                "INSERT INTO output_chunks (invocation_id, step, stream, offset, data) \
                 VALUES (?1, 'runShellScript', 0, 0, 'ok\n')",
            )
            .and_then(|mut st| st.execute([&id]))
            .map_err(db("seed the history"))?;
            n += 1;
        }
        if per_command > 0 {
            let n = i64::try_from(per_command).unwrap_or(i64::MAX);
            let counts = [((command.as_str(), "Success"), n)].into();
            add_counts(&tx, &counts).map_err(db("seed the history"))?;
        }
    }
    tx.commit().map_err(db("seed the history"))?;
    Ok(n)
}
