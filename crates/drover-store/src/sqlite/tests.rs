//! Tests of the SQLite store against a real database file.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

fn new_node(hex: &str, tags: &[(&str, &str)]) -> NewNode {
    NewNode {
        id: NodeId::random(hex).unwrap(),
        name: String::new(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        registered_at: 100,
        inventory: NodeInventory {
            hostname: format!("host-{hex}"),
            platform: "linux".into(),
            ..NodeInventory::default()
        },
    }
}

fn activation(limit: i64) -> Activation {
    Activation {
        id: "act-1".into(),
        code_hash: "h".into(),
        description: String::new(),
        default_name: String::new(),
        tags: [("env".to_string(), "dev".to_string())].into(),
        registration_limit: limit,
        registrations: 0,
        expires_at: 1000,
        created_at: 0,
    }
}

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
    (dir, s)
}

#[tokio::test]
async fn activation_limits_are_enforced() {
    let (_d, s) = store().await;
    s.create_activation(&activation(1)).await.unwrap();
    let n = s
        .redeem_activation(
            "act-1",
            "h",
            10,
            new_node("00000000000000001", &[("role", "web")]),
        )
        .await
        .unwrap();
    assert_eq!(n.tags.get("env").map(String::as_str), Some("dev"));
    assert_eq!(n.name, "host-00000000000000001");
    let used = s
        .redeem_activation("act-1", "h", 10, new_node("00000000000000002", &[]))
        .await
        .unwrap_err();
    assert!(matches!(used, RedeemError::UsedUp { .. }), "{used}");
    let wrong = s
        .redeem_activation("act-1", "x", 10, new_node("00000000000000003", &[]))
        .await
        .unwrap_err();
    assert!(matches!(wrong, RedeemError::WrongCode(_)));
    let unknown = s
        .redeem_activation("nope", "h", 10, new_node("00000000000000003", &[]))
        .await
        .unwrap_err();
    assert!(matches!(unknown, RedeemError::UnknownActivation(_)));
}

#[tokio::test]
async fn expired_activation_is_refused() {
    let (_d, s) = store().await;
    s.create_activation(&activation(5)).await.unwrap();
    let err = s
        .redeem_activation("act-1", "h", 1000, new_node("00000000000000001", &[]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let (_d, s) = store().await;
    s.create_activation(&activation(100)).await.unwrap();
    for i in 0..25 {
        let role = if i % 2 == 0 { "web" } else { "db" };
        s.redeem_activation(
            "act-1",
            "h",
            1,
            new_node(&format!("{i:017x}"), &[("role", role)]),
        )
        .await
        .unwrap();
    }
    let mut q = NodeQuery {
        tags: vec![("role".into(), "web".into())],
        limit: 5,
        ..NodeQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = s.list_nodes(&q).await.unwrap();
        seen.extend(page.nodes.iter().map(|n| n.id.clone()));
        match page.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 13);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);

    let first = seen[0].clone();
    s.record_presence(&[Presence {
        id: first.clone(),
        online: true,
        at: 50,
    }])
    .await
    .unwrap();
    let online = s
        .list_nodes(&NodeQuery {
            status: Some(NodeStatus::Online),
            limit: 100,
            ..NodeQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(online.nodes.len(), 1);
    assert_eq!(online.nodes[0].last_seen_at, 50);

    // Deregistered stays Inactive even if a late disconnect event arrives.
    s.deregister_node(&first, 60).await.unwrap();
    s.record_presence(&[Presence {
        id: first.clone(),
        online: false,
        at: 70,
    }])
    .await
    .unwrap();
    assert_eq!(
        s.get_node(&first).await.unwrap().unwrap().status,
        NodeStatus::Inactive
    );
}

#[tokio::test]
async fn tags_are_set_and_removed() {
    let (_d, s) = store().await;
    s.create_activation(&activation(1)).await.unwrap();
    let n = s
        .redeem_activation("act-1", "h", 1, new_node("00000000000000001", &[]))
        .await
        .unwrap();
    let set = [("team".to_string(), "amber".to_string())].into();
    let after = s
        .update_tags(&n.id, &set, &["env".to_string()])
        .await
        .unwrap();
    assert_eq!(after.tags, set);
    let found = s
        .list_nodes(&NodeQuery {
            tags: vec![("team".into(), "amber".into())],
            limit: 10,
            ..NodeQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(found.nodes.len(), 1);
    let gone = s
        .list_nodes(&NodeQuery {
            tags: vec![("env".into(), "dev".into())],
            limit: 10,
            ..NodeQuery::default()
        })
        .await
        .unwrap();
    assert!(gone.nodes.is_empty());
}

#[test]
fn reopening_keeps_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    SqliteStore::open(&path).unwrap();
}

fn command(id: &str) -> Command {
    Command {
        id: id.into(),
        document_name: "RunShellScript".into(),
        document_version: "1".into(),
        parameters: "{}".into(),
        targets: vec!["all".into()],
        max_concurrency: "50".into(),
        max_errors: "0".into(),
        delivery_timeout_secs: 600,
        execution_timeout_secs: 3600,
        output_limit: 1 << 20,
        comment: String::new(),
        created_at: 1,
        status: "Pending".into(),
        payload: "{}".into(),
        cancel_requested: false,
        output_pruned: false,
    }
}

fn invocation(id: &str) -> Invocation {
    Invocation {
        id: id.into(),
        command_id: "cmd-1".into(),
        node_id: "n-00000000000000001".into(),
        node_name: "a".into(),
        status: "Pending".into(),
        status_detail: String::new(),
        exit_code: None,
        requested_at: 1,
        started_at: None,
        finished_at: None,
        steps: Vec::new(),
    }
}

fn output(offset: i64, data: &str) -> InvocationUpdate {
    InvocationUpdate::Output {
        invocation_id: "inv-1".into(),
        step: "s".into(),
        stderr: false,
        offset,
        len: data.len() as i64,
        data: data.into(),
    }
}

fn status(st: &str) -> InvocationUpdate {
    InvocationUpdate::Status {
        invocation_id: "inv-1".into(),
        status: st.into(),
        detail: String::new(),
        exit_code: Some(0),
        at: 5,
    }
}

fn step_started() -> InvocationUpdate {
    InvocationUpdate::StepStarted {
        invocation_id: "inv-1".into(),
        step: "s".into(),
    }
}

fn step_finished() -> InvocationUpdate {
    InvocationUpdate::StepFinished {
        invocation_id: "inv-1".into(),
        step: "s".into(),
        status: "Success".into(),
        exit_code: 0,
        truncated: false,
    }
}

#[tokio::test]
async fn replayed_output_is_stored_once_and_final_statuses_stay_final() {
    let (_d, s) = store().await;
    s.create_command(&command("cmd-1"), &[invocation("inv-1")])
        .await
        .unwrap();
    s.apply_invocation_updates(&[
        status("InProgress"),
        step_started(),
        output(0, "hello "),
        output(6, "world\n"),
        // A replay after a reconnect: already stored, skipped.
        output(0, "hello "),
        output(6, "world\n"),
        output(12, "again\n"),
        step_finished(),
        status("Success"),
        // Late news from a stale delivery cannot undo a final status.
        status("InProgress"),
    ])
    .await
    .unwrap();
    let q = InvocationQuery {
        command_id: Some("cmd-1".into()),
        limit: 10,
        with_steps: true,
        ..InvocationQuery::default()
    };
    let inv = &s.list_invocations(&q).await.unwrap()[0];
    assert_eq!(inv.status, "Success");
    assert_eq!(inv.steps[0].stdout, "hello world\nagain\n");
    assert_eq!(inv.steps[0].stdout_bytes, 18);
    assert_eq!(
        s.status_counts("cmd-1").await.unwrap().get("Success"),
        Some(&1)
    );
}

#[tokio::test]
async fn documents_keep_versions_and_a_default() {
    let (_d, s) = store().await;
    let v1 = DocumentVersion {
        name: "Deploy".into(),
        version: 1,
        content: "one".into(),
        format: "YAML".into(),
        description: String::new(),
        created_at: 1,
        is_default: true,
        latest_version: 1,
    };
    s.create_document(&v1).await.unwrap();
    assert!(matches!(
        s.create_document(&v1).await,
        Err(StoreError::Conflict(_))
    ));
    let v2 = s
        .update_document("Deploy", "two", "YAML", "", 2)
        .await
        .unwrap();
    assert_eq!((v2.version, v2.is_default), (2, false));
    assert_eq!(
        s.get_document("Deploy", None)
            .await
            .unwrap()
            .unwrap()
            .content,
        "one"
    );
    s.set_default_version("Deploy", 2).await.unwrap();
    assert_eq!(
        s.get_document("Deploy", None)
            .await
            .unwrap()
            .unwrap()
            .content,
        "two"
    );
    assert!(s.set_default_version("Deploy", 9).await.is_err());
    assert_eq!(s.document_versions("Deploy").await.unwrap().len(), 2);
    s.delete_document("Deploy").await.unwrap();
    assert!(s.get_document("Deploy", None).await.unwrap().is_none());
}

#[tokio::test]
async fn commits_are_flushed_to_disk_before_they_return() {
    let (_d, s) = store().await;
    // 2 = FULL: with WAL, each commit syncs the log (NORMAL would wait for a checkpoint).
    let level: i64 = s
        .call(|c| {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0))
                .map_err(db("read synchronous"))
        })
        .await
        .unwrap();
    assert_eq!(level, 2);
}

#[tokio::test]
async fn an_activations_tags_cannot_be_overridden_at_registration() {
    let (_d, s) = store().await;
    s.create_activation(&activation(5)).await.unwrap();
    // The activation sets env=dev: a node may not claim env=prod.
    let refused = s
        .redeem_activation(
            "act-1",
            "h",
            10,
            new_node("00000000000000003", &[("env", "prod")]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, RedeemError::TagConflict { key, .. } if key == "env"),
        "{refused}"
    );
    // Nothing was used up by the refusal; an open key and the same value are fine.
    let n = s
        .redeem_activation(
            "act-1",
            "h",
            10,
            new_node("00000000000000004", &[("env", "dev"), ("role", "web")]),
        )
        .await
        .unwrap();
    assert_eq!(n.tags.get("env").map(String::as_str), Some("dev"));
    assert_eq!(n.tags.get("role").map(String::as_str), Some("web"));
    let act = s.list_activations().await.unwrap();
    assert_eq!(act[0].registrations, 1);
}

#[tokio::test]
async fn a_renewal_retires_the_previous_certificate_once_the_new_one_is_seen_and_is_rate_limited() {
    let (_d, s) = store().await;
    s.create_activation(&activation(1)).await.unwrap();
    let n = s
        .redeem_activation("act-1", "h", 10, new_node("00000000000000001", &[]))
        .await
        .unwrap();
    s.certificate_issued(&n.id, "old", 10, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.check_certificate(&n.id, "old").await.unwrap(),
        CertCheck::Current
    );
    assert_eq!(
        s.check_certificate(&n.id, "forged").await.unwrap(),
        CertCheck::Retired
    );

    // Too soon after the first issue.
    let refused = s.certificate_issued(&n.id, "new", 50, 100).await.unwrap();
    assert_eq!(refused.unwrap_err().last_issued_at, 10);
    s.certificate_issued(&n.id, "new", 110, 100)
        .await
        .unwrap()
        .unwrap();
    // Until the agent shows it saved the new one, the old one still works (it may have died
    // before saving it).
    assert_eq!(
        s.check_certificate(&n.id, "old").await.unwrap(),
        CertCheck::Current
    );
    assert_eq!(
        s.check_certificate(&n.id, "new").await.unwrap(),
        CertCheck::Promoted
    );
    assert_eq!(
        s.check_certificate(&n.id, "old").await.unwrap(),
        CertCheck::Retired
    );
    assert_eq!(
        s.check_certificate(&n.id, "new").await.unwrap(),
        CertCheck::Current
    );

    // The agent's acknowledgement promotes without a reconnect.
    s.certificate_issued(&n.id, "newer", 300, 100)
        .await
        .unwrap()
        .unwrap();
    assert!(s.certificate_saved(&n.id).await.unwrap());
    assert!(!s.certificate_saved(&n.id).await.unwrap());
    assert_eq!(
        s.check_certificate(&n.id, "new").await.unwrap(),
        CertCheck::Retired
    );
    assert_eq!(
        s.check_certificate(&n.id, "newer").await.unwrap(),
        CertCheck::Current
    );
}

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
    s.create_activation(&activation(10)).await.unwrap();
    let node = s
        .redeem_activation("act-1", "h", 10, new_node("00000000000000001", &[]))
        .await
        .unwrap();
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
