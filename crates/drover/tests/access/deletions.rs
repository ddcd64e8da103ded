//! Deleting a user, a group or a policy takes effect on the next request; a request that names
//! a group that does not exist is refused as bad input, naming it.

use drover_api::{CreateGroupRequest, UpdateUserRequest};

use super::{create_user, env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_take_effect_at_once() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    let admin = server.client().unwrap();
    let amber = env
        .register_agent(&server, "amber-1", &["--tag", "department=Amber"])
        .unwrap();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies");
    env.cli_ok(&[
        "policy",
        "put",
        "departments",
        &format!("{examples}/departments.cedar"),
    ])
    .unwrap();
    // A group that may read every node, and a user of Amber in it.
    admin
        .create_group(&CreateGroupRequest {
            name: "auditors".into(),
            description: "read every node".into(),
        })
        .await
        .unwrap();
    let auditors = std::env::temp_dir().join(format!("auditors-{}.cedar", std::process::id()));
    std::fs::write(
        &auditors,
        "permit (principal in Drover::Group::\"auditors\", action == Drover::Action::\"ReadNode\", resource);",
    )
    .unwrap();
    env.cli_ok(&["policy", "put", "auditors", &auditors.to_string_lossy()])
        .unwrap();
    let _ = std::fs::remove_file(&auditors);
    let other = env
        .register_agent(&server, "blue-1", &["--tag", "department=Blue"])
        .unwrap();
    let dana = create_user(
        &env,
        &server,
        "dana",
        &["department=Amber".into(), "groups=auditors".into()],
    );
    let seen = |nodes: Vec<drover_api::NodeView>| {
        let mut ids: Vec<String> = nodes.into_iter().map(|n| n.id).collect();
        ids.sort();
        ids
    };
    let mut both = vec![amber.clone(), other.clone()];
    both.sort();
    assert_eq!(seen(dana.list_nodes(&[]).await.unwrap()), both);

    // An unknown group is the request's fault (400, named), not a missing user (404).
    let e = admin
        .update_user(
            "dana",
            &UpdateUserRequest {
                add_groups: vec!["no-such-group".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("no-such-group"), "{e}");

    // The policy goes: the group's grant goes with it.
    env.cli_ok(&["policy", "delete", "auditors"]).unwrap();
    assert_eq!(
        seen(dana.list_nodes(&[]).await.unwrap()),
        vec![amber.clone()]
    );
    let e = env.cli(&["policy", "delete", "auditors"]).unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("not found"));

    // The group goes: its membership goes with it.
    env.cli_ok(&["groups", "delete", "auditors"]).unwrap();
    let shown = env.cli_ok(&["users", "show", "dana"]).unwrap();
    assert!(!shown.contains("auditors"), "{shown}");
    let e = env.cli(&["groups", "delete", "admins"]).unwrap();
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("cannot be deleted"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );

    // The user goes: its tokens stop working at once, and its name is free again.
    env.cli_ok(&["users", "delete", "dana"]).unwrap();
    assert_eq!(dana.whoami().await.unwrap_err().status(), Some(401));
    let e = env.cli(&["users", "show", "dana"]).unwrap();
    assert!(!e.status.success());
    env.cli_ok(&["users", "create", "dana"]).unwrap();
    assert_eq!(dana.whoami().await.unwrap_err().status(), Some(401));
}
