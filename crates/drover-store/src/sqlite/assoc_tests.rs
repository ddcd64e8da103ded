//! Tests of the State Manager tables (`sqlite_assoc.rs`).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
use super::*;

fn store() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch(MIGRATION_ASSOC).unwrap();
    c
}

fn assoc(id: &str, name: &str) -> Association {
    Association {
        id: id.into(),
        name: name.into(),
        document: "AWS-RunShellScript".into(),
        document_version: "$DEFAULT".into(),
        parameters: Default::default(),
        targets: vec!["all".into()],
        schedule: "rate(30 minutes)".into(),
        max_concurrency: "50".into(),
        max_errors: "0".into(),
        apply_only_at_cron_interval: false,
        severity: "UNSPECIFIED".into(),
        owner: "admin".into(),
        created_at: 1,
        updated_at: 1,
        revision: 1,
        next_run_ms: 1000,
    }
}

fn exec(id: &str, assoc: &str, nodes: &[&str]) -> Execution {
    Execution {
        id: id.into(),
        association_id: assoc.into(),
        revision: 1,
        trigger: "schedule".into(),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        command_id: format!("cmd-{id}"),
        status: "Pending".into(),
        detail: String::new(),
        created_at: 1,
        finished_at: None,
    }
}

fn row(exec: &str, status: &str) -> Compliance {
    Compliance {
        association_id: "a1".into(),
        node_id: "n1".into(),
        status: status.into(),
        reason: String::new(),
        execution_id: exec.into(),
        at: 1,
    }
}

#[test]
fn a_tick_is_claimed_once() {
    let mut c = store();
    create(&mut c, &assoc("a1", "one"), None).unwrap();
    assert!(claim_run(&mut c, "a1", 1000, 2000, &exec("e1", "a1", &[])).unwrap());
    // A second server (or a retry) that read the same due time loses.
    assert!(!claim_run(&mut c, "a1", 1000, 2000, &exec("e2", "a1", &[])).unwrap());
    let open = executions(&c, "SELECT body FROM association_executions", []).unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(list(&c, Some(1999)).unwrap().len(), 0);
    assert_eq!(list(&c, Some(2000)).unwrap().len(), 1);
}

#[test]
fn names_are_unique_and_updates_check_the_revision() {
    let mut c = store();
    create(&mut c, &assoc("a1", "one"), None).unwrap();
    assert!(matches!(
        create(&mut c, &assoc("a2", "one"), None),
        Err(StoreError::Conflict(_))
    ));
    let mut a = assoc("a1", "renamed");
    a.revision = 2;
    update(&mut c, &a, 1, false, None).unwrap();
    assert!(matches!(
        update(&mut c, &a, 1, false, None),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(get(&c, "renamed").unwrap().unwrap().revision, 2);
    assert!(get(&c, "one").unwrap().is_none());
}

#[test]
fn a_new_node_is_claimed_once_and_results_never_go_back_in_time() {
    let mut c = store();
    create(&mut c, &assoc("a1", "one"), None).unwrap();
    let claimed = claim_nodes(&mut c, &exec("e1", "a1", &["n1", "n2"]), 5).unwrap();
    assert_eq!(claimed, vec!["n1", "n2"]);
    let again = claim_nodes(&mut c, &exec("e2", "a1", &["n1", "n3"]), 5).unwrap();
    assert_eq!(again, vec!["n3"]);
    record(&mut c, &[row("e3", "Compliant")], false).unwrap();
    // An older execution finishing late does not overwrite a newer result.
    record(&mut c, &[row("e1", "NonCompliant")], false).unwrap();
    let n1 = compliance(&c, Some("a1"), Some("n1")).unwrap();
    assert_eq!(n1[0].status, "Compliant");
    let s = summary(&c).unwrap();
    assert_eq!((s[0].compliant, s[0].pending), (1, 2));
    delete(&mut c, "a1").unwrap();
    assert!(compliance(&c, None, None).unwrap().is_empty());
    // A deleted association claims nothing.
    assert!(claim_nodes(&mut c, &exec("e4", "a1", &["n9"]), 5)
        .unwrap()
        .is_empty());
}

#[test]
fn nodes_that_left_the_targets_are_forgotten() {
    let mut c = store();
    create(&mut c, &assoc("a1", "one"), None).unwrap();
    let mut rows = vec![row("e1", "Compliant")];
    rows.push(Compliance {
        node_id: "n2".into(),
        ..row("e1", "Compliant")
    });
    record(&mut c, &rows, false).unwrap();
    // e2 reached n1 only; n2 left. A row newer than e2 would stay.
    assert_eq!(forget(&mut c, "a1", "e2", &["n1".to_string()]).unwrap(), 1);
    let left: Vec<String> = compliance(&c, Some("a1"), None)
        .unwrap()
        .into_iter()
        .map(|r| r.node_id)
        .collect();
    assert_eq!(left, ["n1"]);
    assert_eq!(forget(&mut c, "a1", "e0", &[]).unwrap(), 0);
}

#[test]
fn a_finished_execution_is_final() {
    let mut c = store();
    create(&mut c, &assoc("a1", "one"), None).unwrap();
    let mut e = exec("e1", "a1", &[]);
    assert!(claim_run(&mut c, "a1", 1000, 2000, &e).unwrap());
    e.status = "Success".into();
    update_execution(&c, &e).unwrap();
    e.status = "Failed".into();
    update_execution(&c, &e).unwrap();
    let all = executions(&c, "SELECT body FROM association_executions", []).unwrap();
    assert_eq!(all[0].status, "Success");
}
