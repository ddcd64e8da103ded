//! Parameter Store end to end: versions, labels, paths; SecureStrings sealed at rest, opened
//! only for those allowed DecryptParameter who ask, and never in clear in the database file,
//! the server's log, the audit log or an answer that did not ask.

use std::io::Write;
use std::process::Stdio;

use drover_client::ParamSelector;
use drover_testkit::wait_status;

use super::{create_user, env};

const SECRET: &str = "hunter2-correct-horse-battery";

/// Bob may read and decrypt what is under /app/dev, and nothing else.
const DEV_ONLY: &str = r#"
@id("dev-params")
permit (
  principal == Drover::User::"bob",
  action in [Drover::Action::"ReadParameter", Drover::Action::"DecryptParameter"],
  resource is Drover::Parameter
)
when { resource.name like "/app/dev/*" };
"#;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_keep_versions_and_secrets_stay_sealed() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();

    env.cli_ok(&["params", "put", "/app/prod/db-url", "postgres://db/app"])
        .unwrap();
    // A secret from standard input, as the help advises.
    let mut put = env
        .command()
        .args([
            "params",
            "put",
            "/app/prod/db-password",
            "-",
            "--type",
            "SecureString",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    put.stdin
        .take()
        .unwrap()
        .write_all(format!("{SECRET}\n").as_bytes())
        .unwrap();
    assert!(put.wait_with_output().unwrap().status.success());
    env.cli_ok(&[
        "params",
        "put",
        "/app/dev/db-password",
        "dev-secret",
        "--type",
        "SecureString",
    ])
    .unwrap();
    env.cli_ok(&["params", "put", "/app/prod/deep/flag", "on"])
        .unwrap();

    // Bad input is refused, naming what is wrong; an existing name needs --overwrite.
    for (args, says) in [
        (vec!["put", "/app/has space", "x"], "name"),
        (vec!["put", "/app/x", "x", "--type", "Blob"], "type"),
        (vec!["put", "/app/x", ""], "value"),
        (vec!["put", "/app/prod/db-url", "again"], "overwrite"),
        (
            vec!["label", "/app/prod/db-url", "--version", "1", "1st"],
            "labels",
        ),
        (vec!["get", "/app/missing"], "not found"),
    ] {
        let mut all = vec!["params"];
        all.extend(args);
        let out = env.cli(&all).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{all:?}: {err}"
        );
    }

    // Versions and labels.
    env.cli_ok(&[
        "params",
        "put",
        "/app/prod/db-url",
        "postgres://db2/app",
        "--overwrite",
    ])
    .unwrap();
    env.cli_ok(&[
        "params",
        "label",
        "/app/prod/db-url",
        "--version",
        "1",
        "stable",
    ])
    .unwrap();
    let get = |spec: &str| json(&env.cli_ok(&["params", "get", spec, "-o", "json"]).unwrap());
    assert_eq!(get("/app/prod/db-url")["value"], "postgres://db2/app");
    assert_eq!(get("/app/prod/db-url")["version"], 2);
    assert_eq!(get("/app/prod/db-url:1")["value"], "postgres://db/app");
    assert_eq!(get("/app/prod/db-url:stable")["version"], 1);
    let history = json(
        &env.cli_ok(&["params", "history", "/app/prod/db-url", "-o", "json"])
            .unwrap(),
    );
    assert_eq!(history.as_array().unwrap().len(), 2);

    // Paths: children, and with --recursive, descendants.
    let names = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["params", "get-by-path"];
        all.extend(args);
        all.extend(["-o", "json"]);
        let v = json(&env.cli_ok(&all).unwrap());
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&["/app/prod"]),
        ["/app/prod/db-password", "/app/prod/db-url"]
    );
    assert_eq!(names(&["/app", "--recursive"]).len(), 4);

    // A SecureString's value: only when asked, and allowed.
    assert!(get("/app/prod/db-password").get("value").is_none());
    let opened = json(
        &env.cli_ok(&[
            "params",
            "get",
            "/app/prod/db-password",
            "--decrypt",
            "-o",
            "json",
        ])
        .unwrap(),
    );
    assert_eq!(opened["value"], SECRET);
    let policy = env.path("dev.cedar");
    std::fs::write(&policy, DEV_ONLY).unwrap();
    env.cli_ok(&["policy", "put", "dev-params", &policy.to_string_lossy()])
        .unwrap();
    let bob = create_user(&env, &server, "bob", &[]);
    let viewer = create_user(&env, &server, "vera", &["groups=viewers".into()]);
    let latest = ParamSelector::default();
    let dev = bob
        .get_parameter("/app/dev/db-password", &latest, true)
        .await
        .unwrap();
    assert_eq!(dev.value.as_deref(), Some("dev-secret"));
    let e = bob
        .get_parameter("/app/prod/db-password", &latest, false)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let listed = bob.parameters_by_path("/app", true, true).await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(listed, ["/app/dev/db-password"]);
    // Viewers see names and plain values, never a secret.
    let seen = viewer
        .get_parameter("/app/prod/db-password", &latest, false)
        .await
        .unwrap();
    assert!(seen.value.is_none());
    let e = viewer
        .get_parameter("/app/prod/db-password", &latest, true)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let e = viewer
        .delete_parameter("/app/prod/db-url")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");

    // Commands reference them as SSM does: a String spliced in when sent, a SecureString
    // only in a script, through an environment variable opened for the node.
    let node = env.register_agent(&server, "web-1", &[]).unwrap();
    let _agent = env.run_agent("web-1", &[]).unwrap();
    wait_status(&server, std::slice::from_ref(&node), "Online")
        .await
        .unwrap();
    // The script compares a digest: the secret itself must not be in the command's text.
    let digest = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        SECRET.as_bytes(),
    ));
    let script = format!(
        "echo url={{{{ssm:/app/prod/db-url}}}}; d=$(printf %s \"{{{{ssm-secure:/app/prod/db-password}}}}\" | sha256sum | cut -c1-64); test \"$d\" = {digest} && echo secret-ok"
    );
    // The answer holds the command, its invocations and their stored output: the value is
    // in none of them.
    let ran = env
        .cli_ok(&["run", "--targets", "all", "-o", "json", "--", &script])
        .unwrap();
    assert!(
        ran.contains("url=postgres://db2/app") && ran.contains("secret-ok"),
        "{ran}"
    );
    assert!(!ran.contains(SECRET), "{ran}");
    let id = json(&ran)["command"]["id"].as_str().unwrap().to_string();
    for args in [
        vec!["commands", "show", &id, "-o", "json"],
        vec!["commands", "list", "-o", "json"],
    ] {
        let out = env.cli_ok(&args).unwrap();
        assert!(
            out.contains(&id) && !out.contains(SECRET),
            "{args:?}: {out}"
        );
    }
    // A script that prints its secret: the output is masked, on the node, before it leaves.
    let ran = env
        .cli_ok(&[
            "run",
            "--targets",
            "all",
            "-o",
            "json",
            "--",
            "echo \"pw={{ssm-secure:/app/prod/db-password}}.\"",
        ])
        .unwrap();
    let masked = format!("pw={}.", "*".repeat(SECRET.len()));
    assert!(ran.contains(&masked) && !ran.contains(SECRET), "{ran}");
    // A document's parameter may default to a parameter's value.
    let doc = env.path("defaulted.yaml");
    std::fs::write(
        &doc,
        "schemaVersion: '2.2'\nparameters:\n  url:\n    type: String\n    default: '{{ssm:/app/prod/db-url}}'\nmainSteps:\n  - action: aws:runShellScript\n    name: s\n    inputs:\n      runCommand: ['echo url={{url}}']\n",
    )
    .unwrap();
    env.cli_ok(&[
        "docs",
        "create",
        "Defaulted-From-Store",
        "--file",
        &doc.to_string_lossy(),
    ])
    .unwrap();
    let ran = env
        .cli_ok(&["run", "--doc", "Defaulted-From-Store", "--targets", "all"])
        .unwrap();
    assert!(ran.contains("url=postgres://db2/app"), "{ran}");
    for (script, says) in [
        (
            "echo {{ssm:/app/nope}}",
            "parameter /app/nope does not exist",
        ),
        ("echo {{ssm:/app/prod/db-password}}", "is a SecureString"),
    ] {
        let out = env.cli(&["run", "--targets", "all", "--", script]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
    }
    // A SecureString only in a script's commands, never spliced elsewhere; and only where
    // the sender named it, never because a document's author wrote it in.
    let out = env
        .cli(&[
            "run",
            "--targets",
            "all",
            "--param",
            "workingDirectory={{ssm-secure:/app/prod/db-password}}",
            "--",
            "pwd",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only in a script's commands"), "{err}");
    let doc = env.path("author.yaml");
    std::fs::write(
        &doc,
        "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: s\n    inputs:\n      runCommand: ['echo {{ssm-secure:/app/prod/db-password}}']\n",
    )
    .unwrap();
    env.cli_ok(&[
        "docs",
        "create",
        "Author-Wrote-It",
        "--file",
        &doc.to_string_lossy(),
    ])
    .unwrap();
    let out = env
        .cli(&["run", "--doc", "Author-Wrote-It", "--targets", "all"])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("written in the document"), "{err}");
    // Bob may not read the production secret, so he may not send a command that uses it.
    let e = bob
        .send_command(&drover_api::SendCommand {
            document: "AWS-RunShellScript".into(),
            parameters: [(
                "commands".to_string(),
                serde_json::json!(["echo {{ssm-secure:/app/prod/db-password}}"]),
            )]
            .into_iter()
            .collect(),
            targets: vec!["all".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");

    // Never in clear: not in the audit log, nor the server's log, nor the database file.
    let audit = env.cli_ok(&["audit", "export", "--since", "1h"]).unwrap();
    assert!(
        audit.contains("parameter//app/prod/db-password version 1"),
        "{audit}"
    );
    assert!(!audit.contains(SECRET));
    // Who opened which secret is in the log; plain reads are not.
    assert!(
        audit.contains("parameter//app/prod/db-password version 1 decrypted"),
        "{audit}"
    );
    assert!(audit.contains("parameter//app/dev/db-password"), "{audit}");
    env.cli_ok(&["params", "delete", "/app/prod/deep/flag"])
        .unwrap();
    let out = env.cli(&["params", "get", "/app/prod/deep/flag"]).unwrap();
    assert!(!out.status.success());
    drop((bob, viewer));
    let log = server.proc.output();
    drop(server);
    assert!(!log.contains(SECRET));
    let dir = env.path("server");
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            let found = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
            assert!(!found, "{} holds the secret in clear", path.display());
        }
    }
}
