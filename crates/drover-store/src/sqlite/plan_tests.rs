//! The query-plan test: no statement on a hot path scans a table that grows with history.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::tests::{
    activation, command, invocation, new_node, output, status, step_finished, step_started, store,
};
use super::*;

/// Statements SQLite ran, with their parameters expanded (from `Connection::trace`, which takes
/// a plain function: hence a global).
static TRACED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn traced(sql: &str) {
    TRACED.lock().unwrap().push(sql.to_string());
}

/// Every statement the dispatch, progress and read paths run is planned against a store with
/// history, and none may scan a table that grows with history (it would make each update cost
/// more as the server ages, and each command cost more with the fleet).
#[tokio::test]
async fn no_hot_statement_scans_a_table_that_grows_with_history() {
    let (_d, s) = store().await;
    s.create_activation(&activation(30)).await.unwrap();
    let node = s
        .redeem_activation("act-1", "h", 30, new_node("00000000000000001", &[]))
        .await
        .unwrap();
    // A fleet: on a table of one row a scan is the cheapest plan, and the planner knows it.
    for i in 2..=20 {
        s.redeem_activation("act-1", "h", 30, new_node(&format!("{i:017x}"), &[]))
            .await
            .unwrap();
    }
    // History: earlier commands with their invocations.
    for c in 0..20 {
        let id = format!("cmd-old{c}");
        let invs: Vec<Invocation> = (0..20)
            .map(|i| Invocation {
                id: format!("inv-old{c}-{i}"),
                command_id: id.clone(),
                ..invocation("x")
            })
            .collect();
        s.create_command(&command(&id), &invs).await.unwrap();
    }
    s.conn.lock().unwrap().execute_batch("ANALYZE").unwrap();
    s.conn.lock().unwrap().trace(Some(traced));

    // The work of one command, as the server does it.
    s.create_command(&command("cmd-1"), &[invocation("inv-1")])
        .await
        .unwrap();
    s.record_presence(&[Presence {
        id: node.id.clone(),
        online: true,
        at: 20,
    }])
    .await
    .unwrap();
    s.apply_invocation_updates(&[
        status("InProgress"),
        step_started(),
        output(0, "hello"),
        step_finished(),
        status("Success"),
    ])
    .await
    .unwrap();
    for q in [
        InvocationQuery {
            id: Some("inv-1".into()),
            limit: 1,
            with_steps: true,
            output_cap: Some(0),
            ..InvocationQuery::default()
        },
        InvocationQuery {
            command_id: Some("cmd-1".into()),
            after: Some("inv-0".into()),
            limit: 5000,
            ..InvocationQuery::default()
        },
        InvocationQuery {
            command_id: Some("cmd-1".into()),
            node_id: Some(node.id.to_string()),
            limit: 1,
            with_steps: true,
            ..InvocationQuery::default()
        },
        InvocationQuery {
            command_id: Some("cmd-1".into()),
            status: Some("Success".into()),
            limit: 100,
            with_steps: true,
            output_cap: Some(100),
            ..InvocationQuery::default()
        },
    ] {
        s.list_invocations(&q).await.unwrap();
    }
    s.status_counts("cmd-1").await.unwrap();
    s.get_command("cmd-1").await.unwrap();
    s.get_node(&node.id).await.unwrap();
    s.get_nodes(std::slice::from_ref(&node.id)).await.unwrap();
    s.list_commands(None, 50).await.unwrap();
    s.list_commands(Some("cmd-old10"), 50).await.unwrap();
    // Pruning is not on the hot path, but it runs beside it: each batch must cost what it
    // removes, not what is stored.
    for retention in [
        Retention {
            delete_before: 0,
            max_invocations: u64::MAX,
            output_before: 10,
        },
        Retention {
            delete_before: 10,
            max_invocations: 5,
            output_before: 0,
        },
    ] {
        s.prune_history(&retention, 30).await.unwrap();
    }
    s.conn.lock().unwrap().trace(None);

    let statements = std::mem::take(&mut *TRACED.lock().unwrap());
    assert!(statements.len() > 10, "{statements:#?}");
    let growing = [
        "invocations",
        "invocation_steps",
        "output_chunks",
        "commands",
        "invocation_counts",
        "history_size",
        "nodes",
    ];
    let conn = s.conn.lock().unwrap();
    let mut scans = Vec::new();
    for sql in statements.iter().filter(|s| {
        let t = s.trim_start().to_ascii_uppercase();
        ["SELECT", "UPDATE", "INSERT", "DELETE", "WITH"]
            .iter()
            .any(|k| t.starts_with(k))
    }) {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = st
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for step in plan {
            // `SCAN t USING INDEX i` walks the whole index too: only SEARCH is bounded, and a
            // walk in index order with no filter, which stops at its LIMIT.
            let top_n = sql.contains(" LIMIT ") && !sql.contains(" WHERE ");
            // A partial index that holds at most one row: the command being pruned.
            let bounded = step.ends_with("INDEX commands_deleting");
            let scans_growing = !top_n
                && !bounded
                && growing.iter().any(|t| {
                    step == format!("SCAN {t}") || step.starts_with(&format!("SCAN {t} "))
                });
            if scans_growing {
                scans.push(format!("{step}\n    in {sql}"));
            }
        }
    }
    assert!(
        scans.is_empty(),
        "full scans of growing tables:\n{}",
        scans.join("\n")
    );
}
