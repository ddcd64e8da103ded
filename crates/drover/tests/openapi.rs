//! The OpenAPI document against a live server, by schemathesis (a third-party API fuzzer, from
//! PyPI; `cargo xtask test` installs it): every check, on every operation, with a node, a
//! document and a command that exist, so the fuzzer reaches past "not found". Any request the
//! document allows but the server refuses, any status or body the document does not declare,
//! and any server error fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use drover_testkit::{wait_status, Env};

/// The `st` command: `DROVER_SCHEMATHESIS`, or where `cargo xtask test` installs it.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("DROVER_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let installed =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/venv/bin/st");
    assert!(
        installed.is_file(),
        "schemathesis is not installed: run `cargo xtask test` (it installs it into \
         target/tools), or set DROVER_SCHEMATHESIS to its `st` command"
    );
    installed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_openapi_document_does_not_say() -> anyhow::Result<()> {
    let st = schemathesis();
    let env = Env::new(env!("CARGO_BIN_EXE_drover"))?;
    let server = env.start_server(0, &[])?;
    let node = env.register_agent(&server, "probe", &[])?;
    let _agent = env.run_agent("probe", &[])?;
    wait_status(&server, std::slice::from_ref(&node), "Online").await?;
    let doc = env.path("probe.yaml");
    std::fs::write(
        &doc,
        "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: s\n    inputs:\n      runCommand: [echo probe]\n",
    )?;
    env.cli_ok(&["docs", "create", "Probe", "--file", &doc.to_string_lossy()])?;
    // Sessions that the fuzzer starts run nothing: they are to run as a user the node lacks,
    // so the agent refuses each one (a generated command line never reaches a shell).
    let prefs = env.path("prefs.yaml");
    std::fs::write(
        &prefs,
        "schemaVersion: \"1.0\"\nsessionType: Standard_Stream\ninputs:\n  runAsEnabled: true\n  runAsDefaultUser: drover-nobody-here\n",
    )?;
    env.cli_ok(&[
        "docs",
        "update",
        "SessionManagerRunShell",
        "--file",
        &prefs.to_string_lossy(),
    ])?;
    env.cli_ok(&["docs", "set-default", "SessionManagerRunShell", "2"])?;
    // The operations on one user, group or policy by name act on these throwaway ones, so the
    // fuzzer never disables, deletes or revokes the admin it runs as (see schemathesis.toml).
    env.cli_ok(&["users", "create", "fuzzee"])?;
    env.cli_ok(&["groups", "create", "fuzz-group"])?;
    let command = env
        .cli_ok(&[
            "run",
            "--no-wait",
            "--targets",
            &node,
            "--",
            "echo",
            "probe",
        ])?
        .trim()
        .to_string();

    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api/schemathesis.toml");
    // One worker: CPython 3.11's `ast` is not safe across threads, and hypothesis parses
    // lambdas with it (SystemError: AST constructor recursion depth mismatch).
    let out = Command::new(&st)
        .current_dir(env.path(""))
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", server.url))
        .args(["--tls-verify", "false", "--checks", "all", "--workers", "1"])
        // Logging out revokes the token the fuzzer runs with: every later answer would be 401.
        .args(["--exclude-path", "/api/v1/auth/logout"])
        // Deleting the throwaway user, group or policy the other operations are pointed at
        // (schemathesis.toml) turns their later answers into 404s that the stateful phase
        // reads as "a created resource is gone": these three deletions are left out.
        .args(["--exclude-operation-id", "delete_user"])
        .args(["--exclude-operation-id", "delete_group"])
        .args(["--exclude-operation-id", "delete_policy"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", server.token),
        ])
        .env("DROVER_NODE", &node)
        .env("DROVER_COMMAND", &command)
        .env("NO_COLOR", "1")
        .output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis reported:\n{report}");
    assert!(report.contains("passed"), "{report}");
    Ok(())
}
