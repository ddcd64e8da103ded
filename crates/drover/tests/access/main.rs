//! Central access control end to end: users, tokens, logins and Cedar policies deciding each
//! request through the real API, against a real server and real agents.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod accounts;
mod deletions;
mod http;
mod oidc;
mod oidc_flows;
mod params;
mod requests;
mod secrets;
mod table;
mod webhooks;

use std::collections::BTreeMap;

use drover_api::{CreateTokenRequest, SendCommand, StartSession};
use drover_client::Client;
use drover_testkit::{wait_status, wait_until, Env, Proc, Server, DEADLINE};

pub fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

/// The case table: users, nodes and the expected decisions.
struct Table {
    users: Vec<(String, Vec<String>)>,
    nodes: Vec<(String, Vec<String>)>,
    cases: Vec<[String; 5]>,
}

fn table() -> Table {
    let text = include_str!("cases.txt");
    let mut t = Table {
        users: Vec::new(),
        nodes: Vec::new(),
        cases: Vec::new(),
    };
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        match section {
            "[users]" => t.users.push((words[0].clone(), words[1..].to_vec())),
            "[nodes]" => t.nodes.push((words[0].clone(), words[1..].to_vec())),
            "[cases]" => t.cases.push(words.try_into().expect("five words a case")),
            other => panic!("unknown section {other}"),
        }
    }
    t
}

/// Creates `name` (attributes and `groups=a,b` from `spec`) and a token for it.
pub fn create_user(env: &Env, server: &Server, name: &str, spec: &[String]) -> Client {
    if name != "admin" {
        let mut args = vec!["users".to_string(), "create".into(), name.into()];
        for s in spec {
            match s.strip_prefix("groups=") {
                Some(groups) => {
                    for g in groups.split(',') {
                        args.extend(["--group".into(), g.into()]);
                    }
                }
                None => args.extend(["--attr".into(), s.clone()]),
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.cli_ok(&args).unwrap();
    }
    let token = env
        .cli_ok(&["tokens", "create", "test", "--user", name])
        .unwrap();
    Client::new(
        &server.url,
        &server.fingerprint,
        Some(token.trim().to_string()),
    )
    .unwrap()
}

const TAIL: &str = r#"schemaVersion: "1.0"
description: The application's log, its last lines
sessionType: InteractiveCommands
properties:
  linux:
    commands: "tail -n 5 /etc/hostname; sleep 600"
"#;

const RELEASE: &str = "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: deploy\n    inputs:\n      runCommand: [echo deployed]\n";

/// A server with the case table's users, groups, nodes (each a real agent), policies and
/// documents. Returns the node IDs by name and a client per user.
async fn fleet(
    env: &Env,
) -> (
    Server,
    BTreeMap<String, String>,
    BTreeMap<String, Client>,
    Vec<Proc>,
    Table,
) {
    let t = table();
    let server = env.start_server(0, &[]).unwrap();
    let mut ids = BTreeMap::new();
    let mut agents = Vec::new();
    for (name, tags) in &t.nodes {
        let mut extra = Vec::new();
        for tag in tags {
            extra.extend(["--tag", tag.as_str()]);
        }
        let id = env.register_agent(&server, name, &extra).unwrap();
        agents.push(env.run_agent(name, &[]).unwrap());
        ids.insert(name.clone(), id);
    }
    let all: Vec<String> = ids.values().cloned().collect();
    wait_status(&server, &all, "Online").await.unwrap();
    for g in ["dba", "developers", "release"] {
        env.cli_ok(&["groups", "create", g]).unwrap();
    }
    let mut clients = BTreeMap::new();
    for (name, spec) in &t.users {
        clients.insert(name.clone(), create_user(env, &server, name, spec));
    }
    let examples = format!("{}/../../examples/policies", env!("CARGO_MANIFEST_DIR"));
    for p in ["departments", "database-admins", "developers"] {
        env.cli_ok(&["policy", "put", p, &format!("{examples}/{p}.cedar")])
            .unwrap();
    }
    let release = std::fs::read_to_string(format!("{examples}/command-prefix.cedar"))
        .unwrap()
        .replace("n-0123456789abcdef0", &ids["plain"]);
    let file = env.path("release.cedar");
    std::fs::write(&file, release).unwrap();
    env.cli_ok(&["policy", "put", "release", &file.to_string_lossy()])
        .unwrap();
    for (name, content) in [("TailAppLog", TAIL), ("Release-Deploy", RELEASE)] {
        let file = env.path(&format!("{name}.yaml"));
        std::fs::write(&file, content).unwrap();
        env.cli_ok(&["docs", "create", name, "--file", &file.to_string_lossy()])
            .unwrap();
    }
    (server, ids, clients, agents, t)
}

/// Runs one case through the API; true when it was allowed. Sessions it starts are ended.
async fn attempt(admin: &Client, who: &Client, action: &str, node: &str, doc: &str) -> bool {
    let doc = (doc != "-").then(|| doc.to_string());
    let result = match action {
        "ReadNode" => who.get_node(node).await.map(|_| ()),
        "StartSession" => match who
            .start_session(&StartSession {
                node: node.into(),
                document: doc,
                ..Default::default()
            })
            .await
        {
            Ok(s) => {
                admin.terminate_session(&s.id).await.unwrap();
                Ok(())
            }
            Err(e) => Err(e),
        },
        "SendCommand" => who
            .send_command(&SendCommand {
                parameters: if doc.is_none() {
                    BTreeMap::from([("commands".into(), serde_json::json!(["true"]))])
                } else {
                    BTreeMap::new()
                },
                document: doc.unwrap_or_else(|| "RunShellScript".into()),
                targets: vec![node.into()],
                ..Default::default()
            })
            .await
            .map(|_| ()),
        other => panic!("no way to try {other}"),
    };
    match result {
        Ok(()) => true,
        Err(e) if matches!(e.status(), Some(403 | 404)) => false,
        Err(e) => panic!("{action} on {node}: neither allowed nor denied: {e}"),
    }
}

/// Sends `script` as `sender` to every node `sender` may see, waits (reading as `admin`) until
/// the command is done, and returns its ID.
async fn run_on_all(sender: &Client, admin: &Client, script: &str) -> String {
    let sent = sender
        .send_command(&SendCommand {
            document: "RunShellScript".into(),
            parameters: BTreeMap::from([("commands".into(), serde_json::json!([script]))]),
            targets: vec!["all".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    wait_until("the fan-out to finish", DEADLINE, || async {
        Ok(admin.get_command(&sent.id).await?.done.then_some(()))
    })
    .await
    .unwrap();
    sent.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_case_table_decides_through_the_api_and_fan_outs_report_denied_nodes() {
    let env = env();
    let (server, ids, clients, _agents, t) = fleet(&env).await;
    assert!(t.cases.len() >= 100, "{} cases", t.cases.len());
    let admin = &clients["admin"];
    let mut wrong = Vec::new();
    for [user, action, node, doc, expect] in &t.cases {
        let allowed = attempt(admin, &clients[user], action, &ids[node], doc).await;
        if allowed != (expect == "allow") {
            wrong.push(format!("{user} {action} {node} {doc}: expected {expect}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases decided otherwise:\n{}",
        wrong.len(),
        t.cases.len(),
        wrong.join("\n")
    );

    // A listing shows only what the user may see.
    let mut seen: Vec<String> = clients["alice"]
        .list_nodes(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    seen.sort();
    assert_eq!(seen, ["amber-dev", "amber-prod-web"]);

    // A fan-out to every node. Nodes Alice may not see are not among her targets; once she
    // may see them all (as a viewer), her department's run and the others are AccessDenied,
    // each reported, none dropped.
    let hidden = clients["alice"]
        .send_command(&SendCommand {
            document: "RunShellScript".into(),
            parameters: BTreeMap::from([("commands".into(), serde_json::json!(["true"]))]),
            targets: vec![ids["blue-dev-web"].clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.status(), Some(404), "{hidden}");
    env.cli_ok(&["users", "groups", "alice", "viewers"])
        .unwrap();
    let command = run_on_all(&clients["alice"], admin, "echo hi").await;
    let invocations = admin.list_invocations(&command, false).await.unwrap();
    let mut by_node: Vec<(String, String, String)> = invocations
        .iter()
        .map(|i| {
            (
                i.node_name.clone(),
                i.status.clone(),
                i.status_detail.clone(),
            )
        })
        .collect();
    by_node.sort();
    assert_eq!(
        by_node,
        [
            ("amber-dev".into(), "Success".into(), "".into()),
            ("amber-prod-web".into(), "Success".into(), "".into()),
            (
                "blue-dev-web".into(),
                "Failed".into(),
                "AccessDenied".into()
            ),
            (
                "blue-prod-db".into(),
                "Failed".into(),
                "AccessDenied".into()
            ),
            ("plain".into(), "Failed".into(), "AccessDenied".into()),
        ]
    );
    // A listing with output shows it only from the nodes whose output the reader may read
    // (decided for the page at once): Alice, a viewer of Amber, reads the admin's command on
    // every node, and its output on Amber's nodes only.
    let sent = run_on_all(admin, admin, "echo out").await;
    let stdout = |list: Vec<drover_api::InvocationView>| -> Vec<(String, Vec<String>)> {
        let mut v: Vec<_> = list
            .into_iter()
            .map(|i| (i.node_name, i.steps.into_iter().map(|s| s.stdout).collect()))
            .collect();
        v.sort();
        v
    };
    let every = stdout(admin.list_invocations(&sent, true).await.unwrap());
    assert_eq!(every.len(), 5, "{every:?}");
    assert!(every.iter().all(|(_, out)| out == &["out\n"]), "{every:?}");
    let amber_only: Vec<(String, Vec<String>)> = every
        .into_iter()
        .map(|(n, out)| {
            let out = if n.starts_with("amber-") { out } else { vec![] };
            (n, out)
        })
        .collect();
    assert_eq!(
        stdout(
            clients["alice"]
                .list_invocations(&sent, true)
                .await
                .unwrap()
        ),
        amber_only
    );
    // A token scoped to reading commands, and not their output, sees no node's output, though
    // its user is an administrator.
    let scoped = admin
        .create_token(
            "admin",
            &CreateTokenRequest {
                name: "commands-only".into(),
                scope: vec!["ReadCommand".into()],
                expires_in_secs: None,
            },
        )
        .await
        .unwrap();
    let scoped = Client::new(&server.url, &server.fingerprint, Some(scoped.token)).unwrap();
    let no_output: Vec<(String, Vec<String>)> =
        amber_only.into_iter().map(|(n, _)| (n, vec![])).collect();
    assert_eq!(
        stdout(scoped.list_invocations(&sent, true).await.unwrap()),
        no_output
    );
    // The CLI says so too, per node.
    let out = env_cli_as(
        &env,
        &server,
        "alice",
        &["run", "--targets", "all", "--per-node", "--", "echo", "hi"],
    );
    assert_eq!(out.matches("AccessDenied").count(), 3, "{out}");
    // Bob may not read Alice's command, and sees no trace of it.
    assert_eq!(
        clients["bob"]
            .get_command(&command)
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
}

/// Runs the CLI as `user` (a config file of its own, with a fresh token).
pub fn env_cli_as(env: &Env, server: &Server, user: &str, args: &[&str]) -> String {
    let token = env
        .cli_ok(&[
            "tokens",
            "create",
            &format!("cli-{}", args.len()),
            "--user",
            user,
        ])
        .unwrap();
    let config = env.path(&format!("{user}.toml"));
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\nca_fingerprint = \"{}\"\ntoken = \"{}\"\n",
            server.url,
            server.fingerprint,
            token.trim()
        ),
    )
    .unwrap();
    let out = env
        .command()
        .env("DROVER_CONFIG", &config)
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
