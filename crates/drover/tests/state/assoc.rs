//! Associations: applied at creation, on ticks, to new and re-tagged nodes; compliance; a
//! schedule through restarts; both crash points of the scheduler.

use std::collections::BTreeSet;

use drover_testkit::{wait_until, DEADLINE};
use serde_json::Value;

use super::{agent, compliance, env, executions, json, marking, runs, seconds, wait_compliance};

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
    // Each command the scheduler sent is in the audit log, as its owner's.
    let audit = env.cli_ok(&["audit", "export", "--since", "1h"]).unwrap();
    let first = history[history.len() - 1]["command_id"].as_str().unwrap();
    assert!(
        audit.lines().any(|l| l.contains("association.applied")
            && l.contains(first)
            && l.contains("\"admin\"")),
        "{audit}"
    );

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
    assert_eq!(row["reason"], "Failed (exit code 3)", "{row}");
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
    // A node that leaves the targets leaves the association's compliance at its next run.
    env.cli_ok(&["nodes", "untag", &db1, "role"]).unwrap();
    wait_until("db-1 forgotten by stamp", DEADLINE, || async {
        Ok(
            compliance(&env, &["--association", "stamp", "--node", &db1])
                .is_empty()
                .then_some(()),
        )
    })
    .await
    .unwrap();
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
    // Nothing ran while it was down; after, one run for all the missed ticks, then a whole
    // period after it (never two runs closer than a period, less a second of rounding).
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
