//! Run Command end to end: documents, parameters, targeting, rate control, timeouts, reboot,
//! cancel, and exactly-once execution across server and agent restarts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;

use drover_testkit::{wait_status, wait_until, Env, Proc, Server, DEADLINE};
use serde_json::Value;

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

/// A server and `names` agents, all Online.
async fn fleet(
    env: &Env,
    names: &[(&str, &str)],
) -> anyhow::Result<(Server, Vec<String>, Vec<Proc>)> {
    let server = env.start_server(0, &[])?;
    let mut ids = Vec::new();
    let mut agents = Vec::new();
    for (name, tag) in names {
        ids.push(env.register_agent(&server, name, &["--tag", tag])?);
        agents.push(env.run_agent(name, &[])?);
    }
    wait_status(&server, &ids, "Online").await?;
    Ok((server, ids, agents))
}

/// Runs `drover run ... -o json` and returns (exit code, parsed output).
fn run_json(env: &Env, args: &[&str]) -> anyhow::Result<(i32, Value)> {
    let mut full = vec!["run", "-o", "json"];
    full.extend_from_slice(args);
    let out = env.cli(&full)?;
    let code = out.status.code().unwrap_or(-1);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{e}: stdout {text:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code, v))
}

fn statuses(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = v["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["status"].as_str().unwrap(),
                i["status_detail"].as_str().unwrap()
            )
        })
        .collect();
    s.sort();
    s
}

fn stdout_of(v: &Value, node: usize) -> String {
    v["invocations"][node]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stdout"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the command's (only) invocation has printed "started".
async fn wait_started(client: &drover_client::Client, id: &str) -> anyhow::Result<()> {
    wait_until("the script to start", DEADLINE, || {
        let (c, id) = (client.clone(), id.to_string());
        async move {
            let invs = c.list_invocations(&id, true).await?;
            let started = invs
                .first()
                .and_then(|i| i.steps.first())
                .is_some_and(|s| s.stdout.contains("started"));
            Ok(started.then_some(()))
        }
    })
    .await
}

/// Waits until the command has a final status.
async fn wait_done(
    client: &drover_client::Client,
    id: &str,
) -> anyhow::Result<drover_api::CommandView> {
    wait_until("the command to end", DEADLINE, || {
        let (c, id) = (client.clone(), id.to_string());
        async move { Ok(Some(c.get_command(&id).await?).filter(|c| c.done)) }
    })
    .await
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_documents_are_validated_before_anything_runs() -> anyhow::Result<()> {
    let env = env();
    let (_server, _ids, _agents) = fleet(&env, &[("p1", "role=web")]).await?;
    let doc = r#"schemaVersion: "2.2"
description: Deploy
parameters:
  env: {type: String, allowedValues: [dev, prod]}
  version: {type: String, allowedPattern: "^[0-9]+\\.[0-9]+$"}
  count: {type: Integer, default: 1}
mainSteps:
  - action: aws:runShellScript
    name: deploy
    inputs:
      runCommand: ["echo deploying {{ version }} to {{ env }} x{{ count }}"]
"#;
    write(&env.path("deploy.yaml"), doc);
    env.cli_ok(&[
        "docs",
        "create",
        "Deploy",
        "--file",
        &env.path("deploy.yaml").to_string_lossy(),
    ])?;
    let err = |args: &[&str]| {
        let out = env.cli(args).unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let base = ["--doc", "Deploy", "--targets", "all"];
    let with =
        |extra: &[&'static str]| -> Vec<&'static str> { [&["run"][..], &base[..], extra].concat() };
    assert!(
        err(&with(&["--param", "env=staging", "--param", "version=1.2"]))
            .contains("parameter \"env\": \"staging\" is not one of the allowed values")
    );
    assert!(
        err(&with(&["--param", "env=dev", "--param", "version=latest"]))
            .contains("parameter \"version\": \"latest\" does not match the pattern")
    );
    assert!(err(&with(&[
        "--param",
        "env=dev",
        "--param",
        "version=1.2",
        "--param",
        "count=many"
    ]))
    .contains("parameter \"count\": \"many\" is not an integer"));
    assert!(err(&with(&["--param", "env=dev"])).contains("parameter \"version\": required"));
    assert!(err(&with(&[
        "--param",
        "env=dev",
        "--param",
        "version=1.2",
        "--param",
        "colour=red"
    ]))
    .contains("parameter \"colour\""));
    assert!(
        err(&["run", "--doc", "Nope", "--targets", "all"]).contains("document \"Nope\" not found")
    );
    assert!(err(&["run", "--targets", "tag:role=db", "--", "true"]).contains("match no node"));
    // Nothing was sent.
    assert!(!env.cli_ok(&["commands", "list"])?.contains("cmd-"));

    let (code, v) = run_json(
        &env,
        &with(&[
            "--param",
            "env=prod",
            "--param",
            "version=2.1",
            "--param",
            "count=3",
        ])[1..],
    )?;
    assert_eq!(code, 0);
    assert_eq!(stdout_of(&v, 0), "deploying 2.1 to prod x3\n");

    // Versions: an update adds a version; the default stays until changed.
    write(&env.path("v2.yaml"), &doc.replace("deploying", "shipping"));
    env.cli_ok(&[
        "docs",
        "update",
        "Deploy",
        "--file",
        &env.path("v2.yaml").to_string_lossy(),
    ])?;
    assert!(env
        .cli_ok(&["docs", "get", "Deploy"])?
        .contains("deploying"));
    assert!(env
        .cli_ok(&["docs", "get", "Deploy:2"])?
        .contains("shipping"));
    env.cli_ok(&["docs", "set-default", "Deploy", "2"])?;
    assert!(env.cli_ok(&["docs", "get", "Deploy"])?.contains("shipping"));
    assert_eq!(
        env.cli_ok(&["docs", "versions", "Deploy", "-o", "csv"])?
            .lines()
            .count(),
        3
    );

    // An invalid document is refused with line, column and reason.
    write(
        &env.path("bad.yaml"),
        &doc.replace("aws:runShellScript", "aws:runPowerShell"),
    );
    let e = err(&[
        "docs",
        "create",
        "Bad",
        "--file",
        &env.path("bad.yaml").to_string_lossy(),
    ]);
    assert!(
        e.contains("line 8, column") && e.contains("unknown action"),
        "{e}"
    );
    assert!(err(&[
        "docs",
        "create",
        "AWS-Mine",
        "--file",
        &env.path("deploy.yaml").to_string_lossy()
    ])
    .contains("reserved"));
    let list = env.cli_ok(&["docs", "list"])?;
    for name in [
        "RunShellScript",
        "RunDocument",
        "ApplyAnsiblePlaybooks",
        "Deploy",
    ] {
        assert!(list.contains(name), "{list}");
    }
    env.cli_ok(&["docs", "delete", "Deploy"])?;
    assert!(err(&["docs", "get", "Deploy"]).contains("not found"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_targeting_rate_control_and_max_errors() -> anyhow::Result<()> {
    let env = env();
    let names = [
        ("w1", "role=web"),
        ("w2", "role=web"),
        ("w3", "role=web"),
        ("w4", "role=web"),
        ("d1", "role=db"),
    ];
    let (_server, _ids, _agents) = fleet(&env, &names).await?;
    assert_eq!(names[4].0, "d1");

    let (code, v) = run_json(&env, &["--targets", "tag:role=db", "--", "echo db"])?;
    assert_eq!(code, 0);
    assert_eq!(v["invocations"].as_array().unwrap().len(), 1);
    assert_eq!(v["invocations"][0]["node_name"], "d1");

    // Never more than two at once: each invocation counts the others running beside it.
    let dir = env.path("running");
    std::fs::create_dir_all(&dir)?;
    let script = format!(
        "d={}; touch $d/$DROVER_NODE_ID; ls $d | wc -l >> $d.log; sleep 0.4; rm $d/$DROVER_NODE_ID",
        dir.display()
    );
    let (code, v) = run_json(
        &env,
        &[
            "--targets",
            "tag:role=web",
            "--max-concurrency",
            "2",
            "--",
            &script,
        ],
    )?;
    assert_eq!(code, 0, "{v}");
    let peaks: Vec<u32> = std::fs::read_to_string(env.path("running.log"))?
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(peaks.len(), 4);
    // Never more than two, and two did run at once (one at a time would also stay under 2).
    assert!(peaks.iter().all(|p| *p <= 2), "{peaks:?}");
    assert!(peaks.contains(&2), "never two at once: {peaks:?}");

    // Max errors 0, one at a time: the first failure stops the rollout.
    let (code, v) = run_json(
        &env,
        &[
            "--targets",
            "tag:role=web",
            "--max-concurrency",
            "1",
            "--max-errors",
            "0",
            "--",
            "exit 1",
        ],
    )?;
    assert_eq!(code, 1);
    assert_eq!(v["command"]["status"], "Failed");
    assert_eq!(
        statuses(&v),
        vec![
            "Cancelled/Terminated",
            "Cancelled/Terminated",
            "Cancelled/Terminated",
            "Failed/"
        ]
    );
    let code = v["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] == "Failed")
        .unwrap()["exit_code"]
        .clone();
    assert_eq!(code, 1);

    // Errors tolerated up to max errors: Incomplete, not Failed, and every node ran.
    let d1 = &_ids[4];
    let (code, v) = run_json(
        &env,
        &[
            "--targets",
            "all",
            "--max-errors",
            "1",
            "--",
            &format!("[ \"$DROVER_NODE_ID\" != {d1} ]"),
        ],
    )?;
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["command"]["status"], "Incomplete");
    assert_eq!(
        statuses(&v),
        vec!["Failed/", "Success/", "Success/", "Success/", "Success/"]
    );
    // One more error than tolerated: Failed.
    let (code, v) = run_json(
        &env,
        &[
            "--targets",
            "all",
            "--max-errors",
            "1",
            "--",
            "[ \"$DROVER_NODE_ID\" = none ]",
        ],
    )?;
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["command"]["status"], "Failed");

    // The folded table shows identical results once.
    let out = env.cli(&["run", "--targets", "all", "--", "echo same"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("5 nodes: Success, exit 0:"), "{text}");
    assert_eq!(text.matches("same").count(), 1, "{text}");

    // --follow prints output as it arrives, each line with its node; --per-node a table.
    let out = env.cli(&[
        "run",
        "--follow",
        "--targets",
        "d1",
        "--",
        "echo first; echo second >&2",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[d1] first") && text.contains("[d1] ! second"),
        "{text}"
    );
    let out = env.cli_ok(&[
        "run",
        "--per-node",
        "--targets",
        "tag:role=web",
        "--",
        "true",
    ])?;
    assert_eq!(
        out.lines().filter(|l| l.contains("Success")).count(),
        4,
        "{out}"
    );

    // One node's output, followed until the invocation ends; the invocation list.
    let id = env
        .cli_ok(&[
            "run",
            "--no-wait",
            "--targets",
            "d1",
            "--",
            "echo listed; sleep 0.2; echo done",
        ])?
        .trim()
        .to_string();
    let out = env.cli_ok(&["invocations", "output", &id, "--node", "d1", "--follow"])?;
    assert_eq!(out, "listed\ndone\n");
    let list = env.cli_ok(&["invocations", "list", "--command", &id, "-o", "csv"])?;
    assert!(list.contains(",d1,Success,0"), "{list}");

    // Metrics count invocations by final status.
    let metrics = _server.client()?.get_text("/metrics").await?;
    assert!(
        metrics.contains("drover_invocations_total{status=\"Success\"}"),
        "{metrics}"
    );
    assert!(
        // 1 (max errors 0) + 1 (Incomplete) + 5 (Failed, all at once).
        metrics.contains("drover_invocations_total{status=\"Failed\"} 7"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_and_execution_timeouts_and_cancel() -> anyhow::Result<()> {
    let env = env();
    let (server, _ids, _agents) = fleet(&env, &[("t1", "role=web")]).await?;
    let offline = env.register_agent(&server, "offline", &[])?;

    let (code, v) = run_json(
        &env,
        &[
            "--targets",
            &offline,
            "--delivery-timeout",
            "1s",
            "--",
            "true",
        ],
    )?;
    assert_eq!(code, 1);
    assert_eq!(statuses(&v), vec!["TimedOut/DeliveryTimedOut"]);

    let marker = format!("sleep 41.{}", std::process::id());
    let (code, v) = run_json(
        &env,
        &[
            "--targets",
            "t1",
            "--execution-timeout",
            "1s",
            "--",
            &format!("echo before; {marker}"),
        ],
    )?;
    assert_eq!(code, 1);
    assert_eq!(statuses(&v), vec!["TimedOut/ExecutionTimedOut"]);
    assert_eq!(v["invocations"][0]["exit_code"], 137);
    assert_eq!(stdout_of(&v, 0), "before\n");
    assert!(!pgrep(&marker), "the timed-out script is still running");

    // Cancel a running command: its process tree is killed.
    let marker = format!("sleep 42.{}", std::process::id());
    let id = env
        .cli_ok(&[
            "run",
            "--no-wait",
            "--targets",
            "t1",
            "--",
            &format!("echo started; {marker}"),
        ])?
        .trim()
        .to_string();
    let client = server.client()?;
    wait_started(&client, &id).await?;
    env.cli_ok(&["commands", "cancel", &id])?;
    let cmd = wait_done(&client, &id).await?;
    assert_eq!(cmd.status, "Cancelled");
    let inv = client.list_invocations(&id, false).await?;
    assert_eq!(inv[0].status, "Cancelled");
    assert_eq!(inv[0].exit_code, Some(137));
    assert!(!pgrep(&marker), "the cancelled script is still running");
    Ok(())
}

/// Whether any process's command line contains `pattern`.
fn pgrep(pattern: &str) -> bool {
    !drover_testkit::pids_with_cmdline(pattern).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_194_reboots_and_resumes_at_the_next_step() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "rebooter", &[])?;
    let mut agent = env.run_agent_with("rebooter", &["--reboot-mode", "restart-agent"], &[])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let count = env.path("step1.count");
    let doc = format!(
        r#"schemaVersion: "2.2"
mainSteps:
  - action: aws:runShellScript
    name: before
    inputs:
      runCommand: ["echo x >> {count}", "echo rebooting now", "exit 194"]
  - action: aws:runShellScript
    name: after
    inputs:
      runCommand: ["echo resumed after reboot"]
"#,
        count = count.display()
    );
    write(&env.path("reboot.yaml"), &doc);
    env.cli_ok(&[
        "docs",
        "create",
        "Reboot",
        "--file",
        &env.path("reboot.yaml").to_string_lossy(),
    ])?;
    let cmd = env
        .cli_ok(&["run", "--no-wait", "--doc", "Reboot", "--targets", &id])?
        .trim()
        .to_string();
    // The agent ends with 194, as a supervisor expects; start it again, as one would.
    let status = agent.wait_exit(DEADLINE)?;
    assert_eq!(status.code(), Some(194));
    let _agent = env.run_agent_with("rebooter", &["--reboot-mode", "restart-agent"], &[])?;
    let client = server.client()?;
    let done = wait_done(&client, &cmd).await?;
    assert_eq!(done.status, "Success");
    let inv = client.get_invocation(&cmd, &id).await?;
    assert_eq!(inv.status, "Success");
    let steps: Vec<(&str, &str, &str)> = inv
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_str(), s.stdout.as_str()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("before", "Success", "rebooting now\n"),
            ("after", "Success", "resumed after reboot\n")
        ]
    );
    assert_eq!(
        std::fs::read_to_string(&count)?,
        "x\n",
        "the step before the reboot ran more than once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_restarts_mid_script_run_each_step_once_with_full_output(
) -> anyhow::Result<()> {
    let env = env();
    let mut server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "survivor", &[])?;
    let mut agent = env.run_agent("survivor", &[])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let count = env.path("runs.count");
    let gate = env.path("gate");
    // The script waits for the test to open the gate, so the restarts happen mid-script.
    let script = format!(
        "echo x >> {c}; echo started; while [ ! -e {g} ]; do sleep 0.05; done; echo finished",
        c = count.display(),
        g = gate.display()
    );
    let cmd = env
        .cli_ok(&["run", "--no-wait", "--targets", &id, "--", &script])?
        .trim()
        .to_string();
    wait_started(&server.client()?, &cmd).await?;

    // The server dies and comes back while the script runs.
    server.kill_and_restart(&env)?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    // The agent dies and comes back while the script runs: it adopts the running script.
    agent.kill9();
    let _agent = env.run_agent("survivor", &[])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    // The server is unreachable when the script finishes: the result waits in the journal.
    let port = server.port()?;
    server.proc.kill9();
    write(&gate, "");
    let journal = env.state_dir("survivor").join("journal");
    wait_until("the script to finish", DEADLINE, || {
        let journal = journal.clone();
        async move {
            let done = std::fs::read_dir(&journal)?
                .filter_map(Result::ok)
                .any(|d| d.path().join("0.1.exit").exists());
            Ok(done.then_some(()))
        }
    })
    .await?;
    server = env.start_server(port, &[])?;

    let client = server.client()?;
    let done = wait_done(&client, &cmd).await?;
    assert_eq!(done.status, "Success");
    let inv = client.get_invocation(&cmd, &id).await?;
    assert_eq!(inv.steps.len(), 1);
    assert_eq!(inv.steps[0].stdout, "started\nfinished\n");
    assert_eq!(
        std::fs::read_to_string(&count)?,
        "x\n",
        "the step ran more than once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_from_private_files_never_from_the_command_line() -> anyhow::Result<()> {
    let env = env();
    let (server, ids, _agents) = fleet(&env, &[("big", "role=web")]).await?;
    let secret = format!("s3cr3t-{}", std::process::id());
    let gate = env.path("gate");
    // Over Linux's 128 KiB limit for one argument: it could not start as an argv string.
    let filler = format!("# {}", "x".repeat(150 * 1024));
    let lines = [
        format!("TOKEN={secret}"),
        filler,
        "echo started".to_string(),
        format!("while [ ! -e {} ]; do sleep 0.02; done", gate.display()),
        "echo \"done ${#TOKEN}\"".to_string(),
    ];
    write(&env.path("big.sh"), &lines.join("\n"));
    let param = format!("commands={}", env.path("big.sh").display());
    let cmd = env
        .cli_ok(&[
            "run",
            "--no-wait",
            "--param-file",
            &param,
            "--doc",
            "RunShellScript",
            "--targets",
            &ids[0],
        ])?
        .trim()
        .to_string();
    let client = server.client()?;
    wait_started(&client, &cmd).await?;
    // While it runs, no process shows the script (or the secret in it) to other local users.
    assert!(!pgrep(&secret), "the script's text is on a command line");
    write(&gate, "");
    let done = wait_done(&client, &cmd).await?;
    assert_eq!(done.status, "Success");
    let inv = client.get_invocation(&cmd, &ids[0]).await?;
    assert_eq!(
        inv.steps[0].stdout,
        format!("started\ndone {}\n", secret.len())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_too_large_to_deliver_is_refused_when_sent_and_a_large_one_runs(
) -> anyhow::Result<()> {
    let env = env();
    let (_server, ids, _agents) = fleet(&env, &[("l1", "role=web")]).await?;
    // 1.2 MB: over the 1 MiB an agent accepts per command. Refused, naming the limit.
    let comment = |kib: usize| format!("# {}\necho ran\n", "y".repeat(kib * 1024));
    write(&env.path("huge.sh"), &comment(1200));
    let param = format!("commands={}", env.path("huge.sh").display());
    let out = env.cli(&["run", "--param-file", &param, "--targets", &ids[0]])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1048576 bytes (1 MiB)"), "{err}");
    assert!(
        !env.cli_ok(&["commands", "list"])?.contains("cmd-"),
        "it was sent"
    );
    // 900 KB is large and legitimate: it runs.
    write(&env.path("large.sh"), &comment(900));
    let param = format!("commands={}", env.path("large.sh").display());
    let (code, v) = run_json(&env, &["--param-file", &param, "--targets", &ids[0]])?;
    assert_eq!(code, 0, "{v}");
    assert_eq!(stdout_of(&v, 0), "ran\n");
    Ok(())
}
