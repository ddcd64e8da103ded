//! Tests of the SQLite store against a real database file.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

pub(super) fn new_node(hex: &str, tags: &[(&str, &str)]) -> NewNode {
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

pub(super) fn activation(limit: i64) -> Activation {
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

pub(super) async fn store() -> (tempfile::TempDir, SqliteStore) {
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
async fn nodes_are_read_by_id_in_one_call_skipping_unknown_ones() {
    let (_d, s) = store().await;
    s.create_activation(&activation(10)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let n = s
            .redeem_activation(
                "act-1",
                "h",
                1,
                new_node(&format!("{i:017x}"), &[("i", "x")]),
            )
            .await
            .unwrap();
        ids.push(n.id);
    }
    assert!(s.get_nodes(&[]).await.unwrap().is_empty());
    let unknown = NodeId::parse("n-fffffffffffffffff").unwrap();
    let asked = [ids[2].clone(), unknown, ids[0].clone(), ids[0].clone()];
    let mut got: Vec<_> = s
        .get_nodes(&asked)
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.tags))
        .collect();
    got.sort();
    let mut want = Vec::new();
    for id in [&ids[0], &ids[2]] {
        let n = s.get_node(id).await.unwrap().unwrap();
        assert_eq!(n.tags.get("i").map(String::as_str), Some("x"));
        want.push((n.id, n.tags));
    }
    assert_eq!(got, want);
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

/// The counts are added per command (no trigger per inserted row), then kept by the triggers
/// on update and delete.
#[tokio::test]
async fn a_new_commands_invocations_are_counted_by_status_and_in_the_history_size() {
    let (_d, s) = store().await;
    let size = |s: &SqliteStore| -> i64 {
        s.conn
            .lock()
            .unwrap()
            .query_row("SELECT invocations FROM history_size", [], |r| r.get(0))
            .unwrap()
    };
    let denied = Invocation {
        status: "Failed".into(),
        status_detail: "AccessDenied".into(),
        ..invocation("inv-3")
    };
    let invs = [invocation("inv-1"), invocation("inv-2"), denied];
    s.create_command(&command("cmd-1"), &invs).await.unwrap();
    s.create_command(&command("cmd-2"), &[]).await.unwrap();
    let counts = s.status_counts("cmd-1").await.unwrap();
    assert_eq!(counts, [("Failed".into(), 1), ("Pending".into(), 2)].into());
    assert!(s.status_counts("cmd-2").await.unwrap().is_empty());
    assert_eq!(size(&s), 3);
    s.apply_invocation_updates(&[status("InProgress")])
        .await
        .unwrap();
    let counts = s.status_counts("cmd-1").await.unwrap();
    assert_eq!(
        counts,
        [
            ("Failed".into(), 1),
            ("InProgress".into(), 1),
            ("Pending".into(), 1)
        ]
        .into()
    );
    assert_eq!(size(&s), 3);
}

#[test]
fn reopening_keeps_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    SqliteStore::open(&path).unwrap();
}

pub(super) fn command(id: &str) -> Command {
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
        sender: "admin".into(),
    }
}

pub(super) fn invocation(id: &str) -> Invocation {
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

pub(super) fn output(offset: i64, data: &str) -> InvocationUpdate {
    InvocationUpdate::Output {
        invocation_id: "inv-1".into(),
        step: "s".into(),
        stderr: false,
        offset,
        len: data.len() as i64,
        data: data.into(),
    }
}

pub(super) fn status(st: &str) -> InvocationUpdate {
    InvocationUpdate::Status {
        invocation_id: "inv-1".into(),
        status: st.into(),
        detail: String::new(),
        exit_code: Some(0),
        at: 5,
    }
}

pub(super) fn step_started() -> InvocationUpdate {
    InvocationUpdate::StepStarted {
        invocation_id: "inv-1".into(),
        step: "s".into(),
    }
}

pub(super) fn step_finished() -> InvocationUpdate {
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

/// A group named twice is one membership, not a database error.
#[tokio::test]
async fn a_user_created_with_a_group_named_twice_is_in_it_once() {
    let (_d, s) = store().await;
    let user = User {
        name: "ann".into(),
        source: "local".into(),
        password_hash: None,
        attributes: BTreeMap::new(),
        groups: vec!["admins".into(), "admins".into()],
        disabled: false,
        failed_logins: 0,
        locked_until: 0,
        created_at: 1,
        subject: String::new(),
    };
    s.create_user(&user).await.unwrap();
    let stored = s.get_user("ann").await.unwrap().unwrap();
    assert_eq!(stored.groups, vec!["admins".to_string()]);
}
