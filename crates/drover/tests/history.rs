//! Command history: retention through the real server, and correctness at fleet scale with a
//! long history already stored (500 nodes, 100,000 invocations, a server killed mid-run).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;

use drover_testkit::fleet::Fleet;
use drover_testkit::{wait_status, wait_until, Env, DEADLINE};
use serde_json::Value;

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

fn send(env: &Env, args: &[&str]) -> Value {
    let mut full = vec!["run", "-o", "json"];
    full.extend_from_slice(args);
    let out = env.cli(&full).unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_output_first_then_the_whole_command() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(
        0,
        &[
            "--output-max-age",
            "1s",
            "--history-max-age",
            "4s",
            "--prune-interval",
            "1s",
        ],
    )?;
    let id = env.register_agent(&server, "a", &[])?;
    let _agent = env.run_agent("a", &[])?;
    wait_status(&server, &[id], "Online").await?;
    let v = send(&env, &["--targets", "all", "--", "echo kept"]);
    let command = v["command"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["invocations"][0]["steps"][0]["stdout"], "kept\n");

    let client = server.client()?;
    wait_until("the output to be pruned", DEADLINE, || {
        let (c, id) = (client.clone(), command.clone());
        async move { Ok(c.get_command(&id).await?.output_pruned.then_some(())) }
    })
    .await?;
    // The result stays, without its output, and the CLI says why the output is empty.
    let invs = client.list_invocations(&command, true).await?;
    assert_eq!(
        (invs[0].status.as_str(), invs[0].exit_code),
        ("Success", Some(0))
    );
    assert_eq!(invs[0].steps[0].stdout, "");
    let show = env.cli(&["commands", "show", &command, "--per-node"])?;
    let stderr = String::from_utf8_lossy(&show.stderr);
    assert!(stderr.contains("retention policy deleted"), "{stderr}");
    assert!(String::from_utf8_lossy(&show.stdout).contains("Success"));

    wait_until("the command to be deleted", DEADLINE, || {
        let (c, id) = (client.clone(), command.clone());
        async move {
            match c.get_command(&id).await {
                Err(e) if e.status() == Some(404) => Ok(Some(())),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(None),
            }
        }
    })
    .await?;
    assert!(client.list_invocations(&command, false).await.is_err());
    // A page cursor that was pruned is an error, not a silent end of the list.
    let gone = client.list_commands(10, Some(&command)).await.unwrap_err();
    assert_eq!(gone.status(), Some(404), "{gone}");
    assert!(gone.to_string().contains("retention"), "{gone}");
    let metrics = client.get_text("/metrics").await?;
    for what in ["output", "invocation", "command"] {
        assert!(
            metrics.contains(&format!("drover_history_pruned_total{{what=\"{what}\"}} 1")),
            "{metrics}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_flags_are_checked() -> anyhow::Result<()> {
    let env = env();
    for (flag, value, says) in [
        ("--history-max-age", "soon", "invalid history_max_age"),
        ("--output-max-age", "0s", "out of range"),
        ("--prune-interval", "2d", "out of range"),
        ("--history-max-invocations", "9999", "at least 10000"),
        ("--history-max-invocations", "many", "invalid value"),
    ] {
        let out = env.cli(&["server", "--data-dir", "unused", flag, value])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
    Ok(())
}

/// 500 nodes, 100,000 invocations already stored, and the server SIGKILLed while the command
/// runs: every invocation ends exactly once (one Success, its output once, its script run
/// once), and the history is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_nodes_with_a_long_history_each_run_once() -> anyhow::Result<()> {
    const NODES: usize = 500;
    let env = env();
    let mut server = env.start_server(0, &[])?;
    // Seed the history while the server is down (it holds the database otherwise).
    server.proc.kill9();
    let db = env.path("server").join("drover.db");
    // An hour old: well within the default retention.
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        - 3600;
    let seeded = tokio::task::spawn_blocking(move || {
        drover_store::SqliteStore::open(&db)?.seed_history(200, 500, an_hour_ago)
    })
    .await??;
    assert_eq!(seeded, 100_000);
    server.kill_and_restart(&env)?;

    let fleet = Fleet::start(&server, &env.path("fleet"), "n", NODES).await?;
    wait_status(&server, &fleet.ids, "Online").await?;

    let marks = env.path("marks");
    std::fs::create_dir_all(&marks)?;
    let script = format!(
        "echo ok; echo once >> '{}'/$DROVER_NODE_ID",
        marks.display()
    );
    let client = server.client()?;
    let cmd = client
        .send_command(&drover_api::SendCommand {
            document: "AWS-RunShellScript".into(),
            parameters: [("commands".to_string(), Value::from(vec![script]))].into(),
            targets: vec!["all".into()],
            max_concurrency: Some("100%".into()),
            max_errors: Some("0".into()),
            delivery_timeout_secs: Some(600),
            execution_timeout_secs: Some(600),
            comment: "scale".into(),
            output_limit: None,
        })
        .await?;
    // Kill the server once part of the fleet has reported.
    wait_until("some results", DEADLINE, || {
        let (c, id) = (client.clone(), cmd.id.clone());
        async move {
            let counts = c.get_command(&id).await?.counts;
            Ok((counts.get("Success").copied().unwrap_or(0) >= 50).then_some(()))
        }
    })
    .await?;
    server.kill_and_restart(&env)?;
    let client = server.client()?;
    let done = wait_until("the command to finish", DEADLINE * 8, || {
        let (c, id) = (client.clone(), cmd.id.clone());
        async move {
            let v = c.get_command(&id).await?;
            Ok(v.done.then_some(v))
        }
    })
    .await?;
    assert_eq!(done.status, "Success", "{:?}", done.counts);
    assert_eq!(done.counts, BTreeMap::from([("Success".to_string(), 500)]));

    let invs = client.list_invocations(&cmd.id, true).await?;
    assert_eq!(invs.len(), NODES);
    for inv in &invs {
        assert_eq!(inv.status, "Success", "{inv:?}");
        assert_eq!(inv.steps.len(), 1, "{inv:?}");
        assert_eq!(inv.steps[0].stdout, "ok\n", "{inv:?}");
    }
    for id in &fleet.ids {
        let ran = std::fs::read_to_string(marks.join(id))?;
        assert_eq!(
            ran,
            "once\n",
            "node {id} ran the script {} times",
            ran.lines().count()
        );
    }
    // The history is as seeded: the oldest and newest seeded commands, whole.
    for seeded in ["cmd-seed-00000000", "cmd-seed-00000199"] {
        let c = client.get_command(seeded).await?;
        assert_eq!(c.counts, BTreeMap::from([("Success".to_string(), 500)]));
    }
    assert_eq!(client.list_commands(1000, None).await?.commands.len(), 201);
    fleet.stop().await;
    Ok(())
}
