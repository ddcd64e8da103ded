//! Tests of retention (pruning) and of seeding a history, against a real database file.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::tests::{command, invocation, output, step_started, store};
use super::*;

fn seeded_store_rows(s: &SqliteStore, sql: &str) -> i64 {
    s.conn
        .lock()
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Three finished commands of five invocations (created at 100, 101, 102) and a running one
/// created before all of them.
async fn history() -> (tempfile::TempDir, SqliteStore) {
    let (d, s) = store().await;
    s.create_command(
        &Command {
            created_at: 50,
            status: "InProgress".into(),
            ..command("cmd-1")
        },
        &[invocation("inv-1")],
    )
    .await
    .unwrap();
    s.apply_invocation_updates(&[step_started(), output(0, "running")])
        .await
        .unwrap();
    assert_eq!(s.seed_history(3, 5, 100).unwrap(), 15);
    (d, s)
}

async fn prune_all(s: &SqliteStore, r: &Retention, budget: usize) -> Pruned {
    let mut total = Pruned::default();
    loop {
        let p = s.prune_history(r, budget).await.unwrap();
        assert!(
            (p.outputs + p.invocations) as usize <= budget,
            "a batch of budget {budget} did {p:?}"
        );
        total.outputs += p.outputs;
        total.invocations += p.invocations;
        total.commands += p.commands;
        if !p.more {
            return total;
        }
    }
}

#[tokio::test]
async fn retention_prunes_output_first_then_old_commands_and_never_a_running_one() {
    let (_d, s) = history().await;
    let r = Retention {
        delete_before: 101,
        max_invocations: 1_000,
        output_before: 102,
    };
    let p = prune_all(&s, &r, 2).await;
    assert_eq!((p.outputs, p.invocations, p.commands), (10, 5, 1), "{p:?}");

    // The oldest finished command is gone, everything of it.
    assert!(s.get_command("cmd-seed-00000000").await.unwrap().is_none());
    for table in ["invocations", "invocation_steps", "output_chunks"] {
        let column = if table == "invocations" {
            "id"
        } else {
            "invocation_id"
        };
        let left = seeded_store_rows(
            &s,
            &format!("SELECT COUNT(*) FROM {table} WHERE {column} LIKE 'inv-seed-00000000-%'"),
        );
        assert_eq!(left, 0, "{table}");
    }
    assert!(s
        .status_counts("cmd-seed-00000000")
        .await
        .unwrap()
        .is_empty());
    // The next one kept its results but not its output.
    let kept = s.get_command("cmd-seed-00000001").await.unwrap().unwrap();
    assert!(kept.output_pruned);
    let q = |command: &str| InvocationQuery {
        command_id: Some(command.into()),
        limit: 100,
        with_steps: true,
        ..InvocationQuery::default()
    };
    let invs = s.list_invocations(&q("cmd-seed-00000001")).await.unwrap();
    assert_eq!(invs.len(), 5);
    for inv in &invs {
        assert_eq!(inv.status, "Success");
        assert_eq!(
            (inv.steps[0].stdout.as_str(), inv.steps[0].stdout_bytes),
            ("", 3)
        );
    }
    // The newest is whole, and so is the running command, older than all of them.
    assert!(
        !s.get_command("cmd-seed-00000002")
            .await
            .unwrap()
            .unwrap()
            .output_pruned
    );
    for inv in s.list_invocations(&q("cmd-seed-00000002")).await.unwrap() {
        assert_eq!(inv.steps[0].stdout, "ok\n");
    }
    let running = s.list_invocations(&q("cmd-1")).await.unwrap();
    assert_eq!(running[0].steps[0].stdout, "running");
    assert_eq!(
        seeded_store_rows(&s, "SELECT invocations FROM history_size"),
        11
    );
    // Nothing more to do.
    assert_eq!(prune_all(&s, &r, 2).await, Pruned::default());
}

#[tokio::test]
async fn retention_by_count_deletes_the_oldest_finished_commands_whole() {
    let (_d, s) = history().await;
    let r = Retention {
        delete_before: 0,
        max_invocations: 8,
        output_before: 0,
    };
    // 16 stored: the two oldest finished commands go (16 → 11 → 6), the running one stays.
    let p = prune_all(&s, &r, 3).await;
    assert_eq!((p.outputs, p.invocations, p.commands), (0, 10, 2), "{p:?}");
    // Seeding again puts back only what is missing.
    assert_eq!(s.seed_history(3, 5, 100).unwrap(), 10);
    assert_eq!(s.seed_history(3, 5, 100).unwrap(), 0);
    prune_all(&s, &r, 3).await;
    let left: Vec<String> = s
        .list_commands(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, ["cmd-seed-00000002", "cmd-1"]);
    assert_eq!(
        seeded_store_rows(&s, "SELECT invocations FROM history_size"),
        6
    );
    assert_eq!(seeded_store_rows(&s, "SELECT COUNT(*) FROM invocations"), 6);
}

#[tokio::test]
async fn a_pruning_batch_deletes_a_bounded_number_of_output_rows() {
    let (_d, s) = store().await;
    s.create_command(
        &Command {
            status: "Success".into(),
            ..command("cmd-1")
        },
        &[invocation("inv-1")],
    )
    .await
    .unwrap();
    let mut updates = vec![step_started()];
    for k in 0..25 {
        updates.push(output(k, "x"));
    }
    s.apply_invocation_updates(&updates).await.unwrap();
    let chunks = |s: &SqliteStore| seeded_store_rows(s, "SELECT COUNT(*) FROM output_chunks");
    assert_eq!(chunks(&s), 25);
    let r = Retention {
        delete_before: 0,
        max_invocations: u64::MAX,
        output_before: 10,
    };
    // A budget of one invocation allows 10 chunk rows per transaction.
    let mut batches = 0;
    loop {
        let before = chunks(&s);
        let p = s.prune_history(&r, 1).await.unwrap();
        assert!(before - chunks(&s) <= 10, "{p:?}");
        batches += 1;
        if !p.more {
            break;
        }
    }
    assert_eq!((chunks(&s), batches), (0, 4));
    assert!(s.get_command("cmd-1").await.unwrap().unwrap().output_pruned);
}
