//! Alice and Bob federate in from their company's identity provider (a real OpenID provider,
//! `oidc-provider` from npm, on loopback) with the department Amber and Blue in their ID
//! tokens, and each reaches only the nodes tagged with their department.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use drover_api::StartSession;
use drover_client::Client;
use drover_testkit::{wait_status, Env, Proc, Server, DEADLINE};

use super::env;

/// The provider's script, with its npm packages installed by `cargo xtask test`.
fn idp_script() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "oidc-provider is not installed: run `cargo xtask test` (it runs npm ci in {})",
        dir.display()
    );
    dir.join("idp.mjs")
}

/// What a user's browser does: open the authorization URL, sign in as `$IDP_USER` on the
/// provider's form, and follow the redirects back to the CLI's loopback listener.
const BROWSER: &str = r#"#!/bin/sh
set -e
jar=$(mktemp)
page=$(curl -sS -c "$jar" -b "$jar" -L -o /dev/null -w '%{url_effective}' "$1")
curl -sS -c "$jar" -b "$jar" -L -o /dev/null --data-urlencode "login=$IDP_USER" "$page/login"
"#;

pub fn start_idp() -> (Proc, String) {
    let mut cmd = Command::new("node");
    cmd.arg(idp_script())
        .env(
            "IDP_ACCOUNTS",
            r#"{"alice": {"department": "Amber", "groups": ["engineering", "admins"]},
                "bob": {"department": "Blue", "groups": ["engineering", "oncall"]},
                "admin": {"department": "Amber", "groups": ["admins"]}}"#,
        )
        .env("IDP_CLIENT_ID", "drover")
        .env("IDP_CLIENT_SECRET", "drover-test-secret");
    let idp = Proc::spawn("idp", cmd).unwrap();
    let line = idp.wait_for_line("issuer ", DEADLINE).unwrap();
    let issuer = line.split_whitespace().last().unwrap().to_string();
    (idp, issuer)
}

/// Runs `drover login --oidc` as `user` with a config file of its own: (succeeded, output).
fn login_oidc(env: &Env, server: &Server, user: &str) -> (bool, String, PathBuf) {
    let browser = env.path("browser.sh");
    std::fs::write(&browser, BROWSER).unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = env.path(&format!("{user}.toml"));
    let out = env
        .command()
        .env("DROVER_CONFIG", &config)
        .env("BROWSER", &browser)
        .env("IDP_USER", user)
        .args([
            "login",
            "--server",
            &server.url,
            "--ca-fingerprint",
            &server.fingerprint,
            "--oidc",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, config)
}

/// `drover login --oidc` as `user`; returns a client with the token it saved.
fn federate(env: &Env, server: &Server, user: &str) -> (Client, PathBuf) {
    let (ok, text, config) = login_oidc(env, server, user);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("as {user}")), "{text}");
    let saved = std::fs::read_to_string(&config).unwrap();
    let token = saved
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    (
        Client::new(&server.url, &server.fingerprint, Some(token)).unwrap(),
        config,
    )
}

/// A server whose users log in through the provider at `issuer`, with the test's claims.
pub fn oidc_server(env: &Env, issuer: &str) -> Server {
    let secret = env.path("client-secret");
    std::fs::write(&secret, "drover-test-secret\n").unwrap();
    env.start_server(
        0,
        &[
            "--oidc-issuer",
            issuer,
            "--oidc-client-id",
            "drover",
            "--oidc-client-secret-file",
            &secret.to_string_lossy(),
            "--oidc-attribute",
            "department",
            "--oidc-group",
            "engineering",
            "--oidc-group",
            "oncall=responders",
            "--oidc-scope",
            "profile",
            "--oidc-scope",
            "groups",
            "--oidc-scope",
            "department",
            "--oidc-device",
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_and_bob_federate_in_and_reach_only_their_departments_nodes() {
    let env = env();
    let (_idp, issuer) = start_idp();
    let server = oidc_server(&env, &issuer);
    // The console's login page offers the provider, by its host, to anyone.
    let methods = super::http::request(&server, "GET", "/api/v1/auth/methods", &[], None).await;
    let methods: drover_api::AuthMethods = serde_json::from_str(&methods.body).unwrap();
    let host = issuer
        .split("://")
        .nth(1)
        .unwrap()
        .split([':', '/'])
        .next()
        .unwrap();
    assert_eq!(methods.oidc.map(|o| o.name).as_deref(), Some(host));
    let amber = env
        .register_agent(&server, "amber", &["--tag", "department=Amber"])
        .unwrap();
    let blue = env
        .register_agent(&server, "blue", &["--tag", "department=Blue"])
        .unwrap();
    let _agents = [
        env.run_agent("amber", &[]).unwrap(),
        env.run_agent("blue", &[]).unwrap(),
    ];
    wait_status(&server, &[amber.clone(), blue.clone()], "Online")
        .await
        .unwrap();
    // Only mapped groups: `admins` at the provider makes nobody an admin here.
    env.cli_ok(&["groups", "create", "engineering"]).unwrap();
    env.cli_ok(&["groups", "create", "responders"]).unwrap();
    let policy = format!(
        "{}/../../examples/policies/departments.cedar",
        env!("CARGO_MANIFEST_DIR")
    );
    env.cli_ok(&["policy", "put", "departments", &policy])
        .unwrap();

    for (user, department, mine, theirs) in [
        ("alice", "Amber", &amber, &blue),
        ("bob", "Blue", &blue, &amber),
    ] {
        let (client, config) = federate(&env, &server, user);
        // The user came from the ID token: its department is an attribute, its groups the
        // provider's.
        let me = client.whoami().await.unwrap();
        assert_eq!(me.user.source, "oidc");
        assert_eq!(
            me.user.attributes.get("department").map(String::as_str),
            Some(department)
        );
        assert!(
            me.user.groups.contains(&"engineering".to_string()),
            "{:?}",
            me.user
        );
        // Only their department's node is there for them.
        let nodes: Vec<String> = client
            .list_nodes(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(nodes, std::slice::from_ref(mine));
        // Sessions: on their node, yes; on the other, it does not even exist.
        let s = client
            .start_session(&StartSession {
                node: mine.clone(),
                command: Some("true".into()),
                pty: Some(false),
                ..Default::default()
            })
            .await
            .unwrap();
        server.client().unwrap().terminate_session(&s.id).await.ok();
        let e = client
            .start_session(&StartSession {
                node: theirs.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");
        // Commands through the CLI to every node: theirs runs it; the other, which they may
        // not see, is not among their targets at all.
        let out = env
            .command()
            .env("DROVER_CONFIG", &config)
            .args([
                "run",
                "--targets",
                "all",
                "--per-node",
                "--",
                "echo",
                "hello",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(mine.as_str()) && text.contains("Success"),
            "{text}"
        );
        assert!(!text.contains(theirs.as_str()), "{text}");
    }
    // A local user's name is not the provider's to take: its `admin` is refused.
    let (ok, text, _) = login_oidc(&env, &server, "admin");
    assert!(!ok && text.contains("refused"), "{text}");
    let users = env.cli_ok(&["users", "list"]).unwrap();
    assert!(users.contains("alice") && users.contains("oidc"), "{users}");
}
