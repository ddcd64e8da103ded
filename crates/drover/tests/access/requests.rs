//! Temporary elevated access: asked for with a reason, approved by someone else, granting
//! exactly what was asked, until it expires or is revoked (its sessions end with it); a
//! policy can ask for two approvers.

use drover_api::{CreateAccessRequest, StartSession};
use drover_client::Client;
use drover_testkit::{pids_with_cmdline, wait_status, wait_until, DEADLINE};

use super::{create_user, env};

const TWO_FOR_PRODUCTION: &str = r#"
@id("oncall-leads-approve")
permit (
  principal in Drover::Group::"oncall-leads",
  action == Drover::Action::"ApproveAccess",
  resource is Drover::Node
);

@id("production-needs-two") @approvals("2")
permit (principal, action == Drover::Action::"RequestAccess", resource is Drover::Node)
when { resource.hasTag("Environment") && resource.getTag("Environment") == "Production" };
"#;

fn session(node: &str, marker: &str) -> StartSession {
    StartSession {
        node: node.into(),
        command: Some(marker.into()),
        pty: Some(false),
        ..Default::default()
    }
}

fn ask(node: &str, secs: u64) -> CreateAccessRequest {
    CreateAccessRequest {
        targets: vec![node.into()],
        actions: vec!["StartSession".into()],
        document: None,
        reason: "INC-123 disk full".into(),
        duration_secs: secs,
    }
}

/// Waits until `s` has ended; returns its detail.
async fn ended(admin: &Client, s: &str) -> String {
    wait_until("the session to end", DEADLINE, || async {
        let v = admin.get_session(s).await?;
        Ok(v.ended_at.is_some().then_some(v.detail))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_is_asked_approved_by_another_and_ends_by_itself() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    let dev = env.register_agent(&server, "dev-1", &[]).unwrap();
    let prod = env
        .register_agent(&server, "prod-1", &["--tag", "Environment=Production"])
        .unwrap();
    let _agents = [
        env.run_agent("dev-1", &[]).unwrap(),
        env.run_agent("prod-1", &[]).unwrap(),
    ];
    wait_status(&server, &[dev.clone(), prod.clone()], "Online")
        .await
        .unwrap();
    let admin = server.client().unwrap();
    env.cli_ok(&["groups", "create", "oncall-leads"]).unwrap();
    let policy = env.path("two.cedar");
    std::fs::write(&policy, TWO_FOR_PRODUCTION).unwrap();
    env.cli_ok(&["policy", "put", "production", &policy.to_string_lossy()])
        .unwrap();
    let bob = create_user(&env, &server, "bob", &[]);
    let carol = create_user(&env, &server, "carol", &["groups=admins".into()]);
    let erin = create_user(&env, &server, "erin", &["groups=oncall-leads".into()]);
    let frank = create_user(&env, &server, "frank", &["groups=oncall-leads".into()]);

    // Bob may do nothing on the node, and asks.
    let e = bob
        .start_session(&session(&dev, "sleep 4343"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let r = bob.request_access(&ask(&dev, 4)).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.nodes.as_slice()),
        ("Pending", std::slice::from_ref(&dev))
    );
    // Not even an admin approves their own request; bob cannot approve his.
    let e = bob.decide_access(&r.id, "approve", "").await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("their own request"), "{e}");
    let e = bob
        .start_session(&session(&dev, "sleep 4343"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "pending grants nothing: {e}");

    // Carol approves: exactly what was asked, on that node.
    let r = carol
        .decide_access(&r.id, "approve", "go ahead")
        .await
        .unwrap();
    assert_eq!(r.status, "Approved");
    let s = bob
        .start_session(&session(&dev, "sleep 4343"))
        .await
        .unwrap();
    assert!(
        s.reason.contains(&r.id) && s.reason.contains("INC-123"),
        "{s:?}"
    );
    let _socket = bob.attach_session(&s.id).await.unwrap();
    wait_until("the session's process", DEADLINE, || async {
        Ok((!pids_with_cmdline("sleep 4343").is_empty()).then_some(()))
    })
    .await
    .unwrap();
    let e = bob
        .start_session(&session(&prod, "true"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "another node is not granted: {e}");
    let e = bob
        .send_command(&drover_api::SendCommand {
            document: "RunShellScript".into(),
            parameters: [("commands".to_string(), serde_json::json!(["true"]))].into(),
            targets: vec![dev.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "another action is not granted: {e}");

    // The grant runs out: its session ends, and the node is gone for bob again.
    let detail = ended(&admin, &s.id).await;
    assert!(detail.contains("expired"), "{detail}");
    wait_until("the session's process to go", DEADLINE, || async {
        Ok(pids_with_cmdline("sleep 4343").is_empty().then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        admin.get_access_request(&r.id).await.unwrap().status,
        "Expired"
    );
    let e = bob.start_session(&session(&dev, "true")).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");

    // Revoked: its session ends at once.
    let r = bob.request_access(&ask(&dev, 3600)).await.unwrap();
    carol.decide_access(&r.id, "approve", "").await.unwrap();
    let s = bob
        .start_session(&session(&dev, "sleep 4344"))
        .await
        .unwrap();
    let _socket = bob.attach_session(&s.id).await.unwrap();
    wait_until("the session's process", DEADLINE, || async {
        Ok((!pids_with_cmdline("sleep 4344").is_empty()).then_some(()))
    })
    .await
    .unwrap();
    // A port session under the same grant (no process on the node: it ends in the broker).
    let port = bob
        .start_session(&StartSession {
            node: dev.clone(),
            document: Some("StartPortForwardingSession".into()),
            parameters: [("portNumber".to_string(), serde_json::json!("22"))].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(port.reason.contains(&r.id), "{port:?}");
    let r = carol
        .decide_access(&r.id, "revoke", "incident over")
        .await
        .unwrap();
    assert_eq!(r.status, "Revoked");
    assert!(ended(&admin, &s.id).await.contains("revoked"));
    assert!(ended(&admin, &port.id).await.contains("revoked"));

    // Production needs two approvers of oncall-leads.
    let r = bob.request_access(&ask(&prod, 3600)).await.unwrap();
    let one = erin.decide_access(&r.id, "approve", "").await.unwrap();
    assert_eq!((one.status.as_str(), one.approvals_needed), ("Pending", 2));
    let e = erin.decide_access(&r.id, "approve", "").await.unwrap_err();
    assert_eq!(e.status(), Some(409), "one approver counts once: {e}");
    let e = bob
        .start_session(&session(&prod, "true"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let two = frank.decide_access(&r.id, "approve", "").await.unwrap();
    assert_eq!(two.status, "Approved");
    bob.start_session(&session(&prod, "true")).await.unwrap();
    // How many it takes does not depend on who approves first: an admin counts once too.
    let r = bob.request_access(&ask(&prod, 60)).await.unwrap();
    let one = carol.decide_access(&r.id, "approve", "").await.unwrap();
    assert_eq!((one.status.as_str(), one.approvals_needed), ("Pending", 2));
    // A grant never overrides a policy that forbids.
    let frozen = env.path("frozen.cedar");
    std::fs::write(
        &frozen,
        format!(
            "forbid (principal, action == Drover::Action::\"StartSession\", \
             resource == Drover::Node::\"{prod}\");"
        ),
    )
    .unwrap();
    env.cli_ok(&["policy", "put", "frozen", &frozen.to_string_lossy()])
        .unwrap();
    let e = bob
        .start_session(&session(&prod, "true"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    env.cli_ok(&["policy", "delete", "frozen"]).unwrap();
    // A node that does not exist is not found, like one bob may not ask for.
    let e = bob
        .request_access(&ask("n-00000000000000000", 60))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    // Denied: nothing granted.
    let r = bob.request_access(&ask(&dev, 60)).await.unwrap();
    let r = carol.decide_access(&r.id, "deny", "not now").await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.ended_reason.as_str()),
        ("Denied", "not now")
    );
    // The log has each step.
    let log = env
        .cli_ok(&["audit", "list", "--limit", "1000", "-o", "json"])
        .unwrap();
    for step in [
        "create_access_request",
        "approve_access_request",
        "revoke_access_request",
        "deny_access_request",
        "access.expired",
    ] {
        assert!(log.contains(step), "{step} missing from the audit log");
    }
    // What a request made is named in its entry.
    assert!(
        log.contains("/api/v1/access-requests access-request/ar-"),
        "{log}"
    );
    assert!(log.contains("/api/v1/sessions session/s-"), "{log}");
}
