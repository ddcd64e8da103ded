//! State Manager end to end, against a real server and real agents: associations applied at
//! creation, on their schedule, and to nodes that come to match later; compliance; a schedule
//! that survives restarts (neither skipped nor doubled, a missed run once); exactly one
//! command per execution at every crash point of the scheduler.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::path::Path;

use drover_testkit::{wait_status, wait_until, Env, Proc, Server, DEADLINE};
use serde_json::Value;

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every run appends its command's ID to a file named after the node.
fn marking(marks: &Path) -> String {
    format!(
        "commands=echo \"$DROVER_COMMAND_ID\" >> {}/\"$DROVER_NODE_ID\"",
        marks.display()
    )
}

/// The command IDs a node ran, in order; each at most once.
fn runs(marks: &Path, node: &str) -> Vec<String> {
    let text = std::fs::read_to_string(marks.join(node)).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let unique: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(
        unique.len(),
        lines.len(),
        "{node} ran a command twice: {lines:?}"
    );
    lines
}

fn executions(env: &Env, name: &str) -> Vec<Value> {
    let out = env
        .cli_ok(&["assoc", "history", name, "--limit", "1000", "-o", "json"])
        .unwrap();
    json(&out).as_array().unwrap().clone()
}

fn compliance(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["compliance", "list", "-o", "json"];
    all.extend(args);
    let out = env.cli(&all).unwrap();
    json(&String::from_utf8_lossy(&out.stdout))
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until `node`'s compliance with `assoc` is `status`; returns the row.
async fn wait_compliance(env: &Env, assoc: &str, node: &str, status: &str) -> Value {
    wait_until(
        &format!("{node} {status} with {assoc}"),
        DEADLINE,
        || async {
            Ok(compliance(env, &["--association", assoc, "--node", node])
                .into_iter()
                .find(|c| c["status"] == status))
        },
    )
    .await
    .unwrap()
}

async fn agent(env: &Env, server: &Server, name: &str, tags: &[&str]) -> (String, Proc) {
    let mut extra = Vec::new();
    for t in tags {
        extra.extend(["--tag", t]);
    }
    let id = env.register_agent(server, name, &extra).unwrap();
    let proc = env.run_agent(name, &[]).unwrap();
    wait_status(server, std::slice::from_ref(&id), "Online")
        .await
        .unwrap();
    (id, proc)
}

fn seconds(rfc3339: &Value) -> i64 {
    time::OffsetDateTime::parse(
        rfc3339.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_association_applies_at_creation_on_ticks_and_to_nodes_that_come_to_match() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let (web1, _a1) = agent(&env, &server, "web-1", &["role=web"]).await;
    let (db1, _a2) = agent(&env, &server, "db-1", &["role=db"]).await;

    let script = marking(&marks);
    env.cli_ok(&[
        "assoc",
        "create",
        "stamp",
        "--doc",
        "AWS-RunShellScript",
        "--param",
        &script,
        "--targets",
        "tag:role=web",
        "--schedule",
        "rate(2 seconds)",
        "--severity",
        "high",
    ])
    .unwrap();
    // Applied at creation, then on its ticks.
    let history = wait_until("the creation and two ticks", DEADLINE, || async {
        let h = executions(&env, "stamp");
        let done = |t: &str| {
            h.iter()
                .filter(|e| e["trigger"] == t && e["status"] == "Success")
                .count()
        };
        Ok((done("create") == 1 && done("schedule") >= 2).then_some(h))
    })
    .await
    .unwrap();
    for e in &history {
        assert!(e["command_id"].as_str().unwrap().starts_with("cmd-"));
    }
    wait_compliance(&env, "stamp", &web1, "Compliant").await;
    assert!(runs(&marks, &db1).is_empty(), "db-1 is not a target");

    // A node registered afterwards is applied to within seconds, not at the next tick only.
    let (web2, _a3) = agent(&env, &server, "web-2", &["role=web"]).await;
    wait_compliance(&env, "stamp", &web2, "Compliant").await;
    // And one re-tagged into the targets.
    env.cli_ok(&["nodes", "tag", &db1, "role=web"]).unwrap();
    wait_compliance(&env, "stamp", &db1, "Compliant").await;
    let h = executions(&env, "stamp");
    let new_node: Vec<&Value> = h.iter().filter(|e| e["trigger"] == "new-node").collect();
    assert!(
        new_node.iter().any(|e| e["nodes"][0] == web2.as_str())
            && new_node.iter().any(|e| e["nodes"][0] == db1.as_str()),
        "{new_node:?}"
    );
    // Every node ran each command it got once (runs() checks), and only commands of
    // executions of this association.
    let sent: BTreeSet<String> = h
        .iter()
        .map(|e| e["command_id"].as_str().unwrap().to_string())
        .collect();
    for node in [&web1, &web2, &db1] {
        for cmd in runs(&marks, node) {
            assert!(sent.contains(&cmd), "{node} ran {cmd}, not an execution's");
        }
    }

    // A failing association: NonCompliant, with the reason.
    env.cli_ok(&[
        "assoc",
        "create",
        "broken",
        "--doc",
        "AWS-RunShellScript",
        "--param",
        "commands=echo nope >&2; exit 3",
        "--targets",
        "tag:role=web",
        "--schedule",
        "cron(0 3 ? * SUN *)",
        "--severity",
        "critical",
    ])
    .unwrap();
    let row = wait_compliance(&env, "broken", &web1, "NonCompliant").await;
    assert!(
        row["reason"].as_str().unwrap().contains("exit code 3"),
        "{row}"
    );
    for node in [&web2, &db1] {
        wait_compliance(&env, "broken", node, "NonCompliant").await;
    }
    // `compliance list` fails when something listed is not compliant, as `run` does.
    let out = env.cli(&["compliance", "list", "--node", "web-1"]).unwrap();
    assert!(!out.status.success());
    let summary = json(
        &env.cli_ok(&["compliance", "summary", "-o", "json"])
            .unwrap(),
    );
    let by_name = |n: &str| {
        summary
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["association_name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("broken")["non_compliant"], 3, "{summary}");
    assert_eq!(by_name("broken")["severity"], "CRITICAL");
    assert_eq!(by_name("stamp")["severity"], "HIGH");

    // Bad input is refused, naming what is wrong, and creates nothing.
    let base = |name: &'static str| {
        vec![
            "assoc",
            "create",
            name,
            "--doc",
            "AWS-RunShellScript",
            "--param",
            "commands=true",
            "--targets",
            "all",
            "--schedule",
            "rate(1 hour)",
        ]
    };
    let with = |name: &'static str, flag: &'static str, value: &'static str| {
        let mut v = base(name);
        let i = v.iter().position(|a| *a == flag);
        match i {
            Some(i) => v[i + 1] = value,
            None => v.extend([flag, value]),
        }
        v
    };
    for (args, says) in [
        (with("bad-1", "--schedule", "rate(5 weeks)"), "schedule"),
        (
            with("bad-2", "--schedule", "cron(0 2 * * SUN *)"),
            "day-of-week",
        ),
        (with("bad-3", "--doc", "No-Such-Doc"), "not found"),
        (with("bad-4", "--severity", "urgent"), "compliance_severity"),
        (
            with("bad-5", "--targets", "n-00000000000000000"),
            "no such node",
        ),
        (with("bad-6", "--max-errors", "150%"), "max_errors"),
        (with("stamp", "--schedule", "rate(1 hour)"), "exists"),
        (with("bad-7", "--param", "nope=1"), "nope"),
    ] {
        let out = env.cli(&args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    let list = json(&env.cli_ok(&["assoc", "list", "-o", "json"]).unwrap());
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    // Run now, then an update (applied again at once), then delete.
    env.cli_ok(&["assoc", "run-now", "broken"]).unwrap();
    wait_until("a run-now execution", DEADLINE, || async {
        Ok(executions(&env, "broken")
            .iter()
            .any(|e| e["trigger"] == "run-now" && e["status"] == "Failed")
            .then_some(()))
    })
    .await
    .unwrap();
    env.cli_ok(&["assoc", "update", "broken", "--param", "commands=true"])
        .unwrap();
    wait_compliance(&env, "broken", &web1, "Compliant").await;
    env.cli_ok(&["assoc", "delete", "broken"]).unwrap();
    let out = env.cli(&["assoc", "show", "broken"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    assert!(compliance(&env, &["--node", &web1])
        .iter()
        .all(|c| c["association_name"] == "stamp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_survives_restarts_neither_skipped_nor_doubled() {
    let env = env();
    let mut server = env.start_server(0, &[]).unwrap();
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let (node, _agent) = agent(&env, &server, "web-1", &[]).await;
    const PERIOD: i64 = 3;
    env.cli_ok(&[
        "assoc",
        "create",
        "tick",
        "--doc",
        "AWS-RunShellScript",
        "--param",
        &marking(&marks),
        "--targets",
        "all",
        "--schedule",
        "rate(3 seconds)",
    ])
    .unwrap();
    let ticks = |h: &[Value]| -> Vec<i64> {
        let mut t: Vec<i64> = h
            .iter()
            .filter(|e| e["trigger"] == "schedule")
            .map(|e| seconds(&e["created_at"]))
            .collect();
        t.sort();
        t
    };
    wait_until("a first tick", DEADLINE, || async {
        Ok((!ticks(&executions(&env, "tick")).is_empty()).then_some(()))
    })
    .await
    .unwrap();

    // Killed and started again at once, mid-period: the next tick comes, once.
    server.kill_and_restart(&env).unwrap();
    let before = ticks(&executions(&env, "tick")).len();
    wait_until("a tick after the restart", DEADLINE, || async {
        Ok((ticks(&executions(&env, "tick")).len() >= before + 2).then_some(()))
    })
    .await
    .unwrap();

    // Down for several periods: the missed runs happen once when it comes back.
    let port = server.port().unwrap();
    server.proc.kill9();
    let since_down = time::OffsetDateTime::now_utc().unix_timestamp();
    // Waiting on the clock is the point here: three periods must pass unserved.
    wait_until("three periods to pass", DEADLINE, || async {
        Ok(
            (time::OffsetDateTime::now_utc().unix_timestamp() > since_down + 3 * PERIOD)
                .then_some(()),
        )
    })
    .await
    .unwrap();
    let server = env.start_server(port, &[]).unwrap();
    let back = time::OffsetDateTime::now_utc().unix_timestamp();
    let h = wait_until("the missed run and the next tick", DEADLINE, || async {
        let h = executions(&env, "tick");
        Ok((ticks(&h).iter().filter(|t| **t >= back).count() >= 2).then_some(h))
    })
    .await
    .unwrap();
    let all = ticks(&h);
    // Nothing ran while it was down; after, one run for all the missed ticks, then the
    // schedule's phase (never two runs closer than a period, less a second of rounding).
    assert!(!all.iter().any(|t| *t > since_down && *t < back), "{all:?}");
    for pair in all.windows(2) {
        assert!(pair[1] - pair[0] >= PERIOD - 1, "doubled: {all:?}");
    }
    let after: Vec<&i64> = all.iter().filter(|t| **t >= back).collect();
    assert!(
        *after[0] - back <= 2,
        "the missed run waited: {all:?} back at {back}"
    );
    assert!(*after[1] - *after[0] >= PERIOD - 1, "{all:?}");
    // Each execution's command ran once on the node.
    wait_until("the last run's result", DEADLINE, || async {
        let h = executions(&env, "tick");
        Ok(h.iter()
            .all(|e| e["status"] != "InProgress" && e["status"] != "Pending")
            .then_some(()))
    })
    .await
    .ok();
    let ran = runs(&marks, &node);
    let sent: Vec<String> = executions(&env, "tick")
        .iter()
        .filter(|e| e["status"] == "Success")
        .map(|e| e["command_id"].as_str().unwrap().to_string())
        .collect();
    for cmd in &sent {
        assert!(ran.contains(cmd), "{cmd} never ran: {ran:?}");
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_claiming_and_sending_sends_the_command_once() {
    let env = env();
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mut node = None;
    let mut agent_proc = None;
    for (i, point) in ["assoc-before-send", "assoc-after-send"]
        .into_iter()
        .enumerate()
    {
        let port = match &node {
            None => 0,
            Some((_, port)) => *port,
        };
        let mut server = env
            .start_server_with_env(port, &[], &[("DROVER_TEST_CRASH_AT", point)])
            .unwrap();
        if node.is_none() {
            let (id, proc) = agent(&env, &server, "web-1", &[]).await;
            node = Some((id, server.port().unwrap()));
            agent_proc = Some(proc);
        }
        let name = format!("crash-{i}");
        // The server dies right after the association is stored: the answer may not come.
        let _ = env.cli(&[
            "assoc",
            "create",
            &name,
            "--doc",
            "AWS-RunShellScript",
            "--param",
            &marking(&marks),
            "--targets",
            "all",
            "--schedule",
            "rate(1 day)",
        ]);
        let status = server.proc.wait_exit(DEADLINE).unwrap();
        assert!(!status.success(), "{point}: the server did not crash");
        assert!(server
            .proc
            .output()
            .contains(&format!("crashing at {point}")));
        let port = node.as_ref().unwrap().1;
        let _server = env.start_server(port, &[]).unwrap();
        let h = wait_until(
            &format!("{name} applied after the restart"),
            DEADLINE,
            || async {
                let h = executions(&env, &name);
                Ok((h.len() == 1 && h[0]["status"] == "Success").then_some(h))
            },
        )
        .await
        .unwrap();
        let cmd = h[0]["command_id"].as_str().unwrap().to_string();
        let ran = runs(&marks, &node.as_ref().unwrap().0);
        assert_eq!(
            ran.iter().filter(|c| **c == cmd).count(),
            1,
            "{point}: {ran:?}"
        );
        let commands = env.cli_ok(&["commands", "list", "-o", "json"]).unwrap();
        let sent = json(&commands)
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["comment"].as_str().unwrap_or_default().contains(&name))
            .count();
        assert_eq!(sent, 1, "{point}: {commands}");
    }
    drop(agent_proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_through_two_servers_contexts() {
    let (eu, us) = (env(), env());
    let s_eu = eu.start_server(0, &[]).unwrap();
    let s_us = us.start_server(0, &[]).unwrap();
    let (n_eu, _a_eu) = agent(&eu, &s_eu, "eu-1", &[]).await;
    let (_n_us, _a_us) = agent(&us, &s_us, "us-1", &[]).await;
    // The EU operator's CLI knows both servers.
    for (name, env, server) in [("prod-eu", &eu, &s_eu), ("prod-us", &us, &s_us)] {
        eu.cli_ok(&[
            "context",
            "add",
            name,
            "--server",
            &server.url,
            "--token-file",
            &env.path("server/admin.token").to_string_lossy(),
            "--ca-fingerprint",
            &server.fingerprint,
        ])
        .unwrap();
    }
    let list = json(&eu.cli_ok(&["context", "list", "-o", "json"]).unwrap());
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "prod-eu", "prod-us"]);

    // One command through both: one folded result, nodes named with their context.
    let out = eu
        .cli_ok(&[
            "run",
            "--contexts",
            "prod-eu,prod-us",
            "--targets",
            "all",
            "--",
            "echo hello",
        ])
        .unwrap();
    assert!(
        out.contains("2 nodes: Success, exit 0: prod-eu/eu-1, prod-us/us-1"),
        "{out}"
    );
    let v = json(
        &eu.cli_ok(&[
            "run",
            "--contexts",
            "prod-eu,prod-us",
            "--targets",
            "all",
            "-o",
            "json",
            "--",
            "true",
        ])
        .unwrap(),
    );
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["context"], "prod-us");
    // A node failing in one context fails the whole run, and says where.
    let script = format!("test \"$DROVER_NODE_ID\" = {n_eu}");
    let out = eu
        .cli(&[
            "run",
            "--contexts",
            "prod-eu,prod-us",
            "--targets",
            "all",
            "--",
            &script,
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("1 node: Failed, exit 1: prod-us/us-1"),
        "{text}"
    );
    assert!(
        text.contains("1 node: Success, exit 0: prod-eu/eu-1"),
        "{text}"
    );
    // An unknown context is refused before anything is sent anywhere.
    let before = json(&eu.cli_ok(&["commands", "list", "-o", "json"]).unwrap());
    let out = eu
        .cli(&[
            "run",
            "--contexts",
            "prod-eu,nowhere",
            "--targets",
            "all",
            "--",
            "true",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("\"nowhere\""),
        "{err}"
    );
    let after = json(&eu.cli_ok(&["commands", "list", "-o", "json"]).unwrap());
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len()
    );

    // Every verb takes --context; `use` changes the default.
    let us_nodes = eu
        .cli_ok(&["nodes", "list", "--context", "prod-us"])
        .unwrap();
    assert!(
        us_nodes.contains("us-1") && !us_nodes.contains("eu-1"),
        "{us_nodes}"
    );
    eu.cli_ok(&["context", "use", "prod-us"]).unwrap();
    let nodes = eu.cli_ok(&["nodes", "list"]).unwrap();
    assert!(nodes.contains("us-1"), "{nodes}");
    eu.cli_ok(&["context", "remove", "prod-us"]).unwrap();
    let out = eu.cli(&["nodes", "list", "--context", "prod-us"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no context \"prod-us\""));
    let out = eu
        .cli(&["context", "add", "bad name", "--server", &s_eu.url])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid context name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_take_their_settings_from_a_parameter() {
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    env.cli_ok(&[
        "params",
        "put",
        "/drover/agents/web",
        r#"{"log_level":"debug","heartbeat_secs":7,"proxy":"proxy.invalid:3128"}"#,
    ])
    .unwrap();
    let id = env.register_agent(&server, "web-1", &[]).unwrap();
    // The proxy applies from the next connection: this one dials directly (an explicit
    // proxy setting of its own would win anyway).
    let agent = env
        .run_agent_with(
            "web-1",
            &["--settings-parameter", "/drover/agents/web"],
            &[],
        )
        .unwrap();
    wait_status(&server, std::slice::from_ref(&id), "Online")
        .await
        .unwrap();
    let line = agent
        .wait_for_line("applied settings from the server", DEADLINE)
        .unwrap();
    assert!(
        line.contains("log_level=\"debug\"") && line.contains("heartbeat_secs=7"),
        "{line}"
    );
    // Debug lines now show.
    agent
        .wait_for_line("DEBUG log filter changed", DEADLINE)
        .unwrap();
    let kept = std::fs::read_to_string(env.state_dir("web-1").join("settings.json")).unwrap();
    assert!(kept.contains("proxy.invalid:3128"), "{kept}");

    // A change reaches the running agent; an invalid one is refused and changes nothing.
    env.cli_ok(&[
        "params",
        "put",
        "/drover/agents/web",
        r#"{"heartbeat_secs":1}"#,
        "--overwrite",
    ])
    .unwrap();
    server
        .proc
        .wait_for_line("heartbeat_secs 1: from 5 to 600", DEADLINE)
        .unwrap();
    env.cli_ok(&[
        "params",
        "put",
        "/drover/agents/web",
        r#"{"log_level":"warn"}"#,
        "--overwrite",
    ])
    .unwrap();
    agent.wait_for_line("log_level=\"warn\"", DEADLINE).unwrap();

    // Only parameters under /drover/agents/ are read this way.
    let other = env.register_agent(&server, "web-2", &[]).unwrap();
    env.cli_ok(&["params", "put", "/app/config", r#"{"log_level":"debug"}"#])
        .unwrap();
    let _agent2 = env
        .run_agent_with("web-2", &["--settings-parameter", "/app/config"], &[])
        .unwrap();
    wait_status(&server, std::slice::from_ref(&other), "Online")
        .await
        .unwrap();
    server
        .proc
        .wait_for_line(
            "agents' settings are read only from parameters under",
            DEADLINE,
        )
        .unwrap();
}
