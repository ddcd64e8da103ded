//! A parameter a document marks sensitive: the node gets its value, a user without
//! `ReadSecrets` on the document never sees it (not even its sender), an admin does.

use std::collections::BTreeMap;

use drover_api::SendCommand;
use drover_testkit::{wait_status, wait_until, DEADLINE};

use super::{create_user, env};

const DEPLOY: &str = r#"schemaVersion: "2.2"
description: Deploy with a registry password
parameters:
  password:
    type: String
    sensitive: true
  release:
    type: String
mainSteps:
  - action: aws:runShellScript
    name: deploy
    inputs:
      runCommand:
        - test "{{ password }}" = "hunter2-s3cret" && echo "release {{ release }} logged in"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_parameters_are_shown_only_with_read_secrets() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    let admin = server.client().unwrap();
    let node = env
        .register_agent(&server, "amber-1", &["--tag", "department=Amber"])
        .unwrap();
    let _agent = env.run_agent("amber-1", &[]).unwrap();
    wait_status(&server, std::slice::from_ref(&node), "Online")
        .await
        .unwrap();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies");
    env.cli_ok(&[
        "policy",
        "put",
        "departments",
        &format!("{examples}/departments.cedar"),
    ])
    .unwrap();
    admin.create_document("Deploy", DEPLOY).await.unwrap();
    // A sensitive parameter with a default would be readable in the document: refused.
    let e = admin
        .create_document(
            "Leaky",
            &DEPLOY.replace("    sensitive: true", "    sensitive: true\n    default: x"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("cannot have a default"), "{e}");

    let alice = create_user(&env, &server, "alice", &["department=Amber".into()]);
    let sent = alice
        .send_command(&SendCommand {
            document: "Deploy".into(),
            parameters: BTreeMap::from([
                ("password".into(), serde_json::json!("hunter2-s3cret")),
                ("release".into(), serde_json::json!("r42")),
            ]),
            targets: vec![node.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    let hidden = serde_json::json!({"password": "********", "release": "r42"});
    assert_eq!(sent.parameters, hidden);
    let done = wait_until("the deploy to finish", DEADLINE, || async {
        let c = alice.get_command(&sent.id).await?;
        Ok(c.done.then_some(c))
    })
    .await
    .unwrap();
    assert_eq!(done.status, "Success", "{done:?}");
    // The node had the real value (the step compares it), and nobody without ReadSecrets
    // reads it back: not in the command, not in a listing.
    assert_eq!(done.parameters, hidden);
    let inv = alice.get_invocation(&sent.id, &node).await.unwrap();
    assert!(
        inv.steps[0].stdout.contains("release r42 logged in"),
        "{inv:?}"
    );
    let listed = alice.list_commands(50, None).await.unwrap();
    assert_eq!(listed.commands[0].parameters, hidden);
    let shown = env
        .cli_ok(&["commands", "show", &sent.id, "--output", "json"])
        .unwrap();
    assert!(shown.contains("hunter2-s3cret"), "the admin may: {shown}");
    assert!(!format!("{listed:?}{done:?}{inv:?}").contains("hunter2"));
    // The audit entry names the command it made, and never the secret.
    let log = env
        .cli_ok(&["audit", "list", "--action", "send_commands", "-o", "json"])
        .unwrap();
    assert!(
        log.contains(&format!("command/{} document/Deploy", sent.id)),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");
}
