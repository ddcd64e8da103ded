//! Exactly once, at every crash point: real agents kill themselves (SIGKILL) at each named point
//! between "the invocation is recorded" and "the server has the result", and are started again
//! as systemd would. Every unit appends its label to a file per node; the file must end with
//! each label exactly once, in order, for plain steps, retries, nested documents and reboots.
//! A unit marked `hold` keeps running (it waits for a file the test removes) while its agent is
//! down, so the restarted agent must adopt a live process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::sync::Mutex;

use drover_testkit::{wait_status, wait_until, Env, DEADLINE};

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

/// One agent's case: where it dies, and which unit (by label) it holds running meanwhile.
struct Case {
    point: String,
    hold: Option<String>,
}

/// What a kind of document is, what it runs, and what every node must end with.
struct Kind {
    /// `(name, yaml)` of stored documents, the last one is run.
    docs: Vec<(&'static str, String)>,
    /// The labels of its script units, in the order they start.
    scripts: &'static [&'static str],
    /// How many unit records are written (script units and runDocument units).
    unit_records: usize,
    /// How many steps end through the normal path (a step that asks for a reboot does not).
    steps_done: usize,
    reboots: bool,
}

impl Kind {
    fn expected(&self) -> String {
        self.scripts.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Every crash point between "recorded" and "delivered", at each of its hits.
    fn cases(&self) -> Vec<Case> {
        let at = |p: String| Case {
            point: p,
            hold: None,
        };
        let mut cases = vec![at("invocation-recorded".into())];
        for (k, label) in self.scripts.iter().enumerate() {
            let k = k + 1;
            cases.push(at(format!("unit-recorded:{k}")));
            // Killed while its script runs: the script is held until the agent is back.
            cases.push(Case {
                point: format!("unit-started:{k}"),
                hold: Some(label.to_string()),
            });
            cases.push(at(format!("unit-exited:{k}")));
        }
        cases.extend((1..=self.unit_records).map(|k| at(format!("unit-done:{k}"))));
        cases.extend((1..=self.steps_done).map(|k| at(format!("step-done:{k}"))));
        if self.reboots {
            cases.push(at("rebooting".into()));
        }
        for p in ["finished", "result-sent", "delivered-received"] {
            cases.push(at(p.into()));
        }
        cases
    }
}

/// A shell snippet, as a YAML string, that records `label` once per run and then waits while
/// `$MARKS/$DROVER_NODE_ID.hold-<label>` exists. `label` may use shell expansions.
fn unit(marks: &Path, label: &str, then: &str) -> String {
    let m = marks.display();
    serde_json::to_string(&format!(
        "echo \"{label}\" >> \"{m}/$DROVER_NODE_ID\"; \
         while [ -e \"{m}/$DROVER_NODE_ID.hold-{label}\" ]; do sleep 0.02; done; {then}"
    ))
    .unwrap()
}

async fn crash_matrix(env: &Env, kind: Kind) -> anyhow::Result<()> {
    let cases = kind.cases();
    let expected = kind.expected();
    let server = env.start_server(0, &[])?;
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks)?;
    let mut ids = Vec::new();
    let mut agents = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("c{i}");
        ids.push(env.register_agent(&server, &name, &[])?);
        // The hits add up across restarts, so the point fires once, in whichever run gets there.
        let counter = env.path(&format!("{name}.hits"));
        agents.push(env.supervise_agent(
            &name,
            &["--reboot-mode", "restart-agent"],
            &[
                ("DROVER_CRASH_AT", &case.point),
                ("DROVER_CRASH_COUNTER", &counter.to_string_lossy()),
            ],
        )?);
    }
    wait_status(&server, &ids, "Online").await?;
    for (name, yaml) in &kind.docs {
        let file = env.path(&format!("{name}.yaml"));
        std::fs::write(&file, yaml)?;
        env.cli_ok(&["docs", "create", name, "--file", &file.to_string_lossy()])?;
    }
    let holds: Vec<Option<std::path::PathBuf>> = cases
        .iter()
        .zip(&ids)
        .map(|(c, id)| {
            c.hold
                .as_ref()
                .map(|l| marks.join(format!("{id}.hold-{l}")))
        })
        .collect();
    for h in holds.iter().flatten() {
        std::fs::write(h, "")?;
    }
    let doc = kind.docs.last().map(|(n, _)| *n).unwrap_or_default();
    let cmd = env
        .cli_ok(&[
            "run",
            "--no-wait",
            "--doc",
            doc,
            "--targets",
            &ids.join(","),
        ])?
        .trim()
        .to_string();

    // Supervise: restart whoever exits; release a held unit once its agent, started again,
    // has resumed the invocation (so it adopts the running process); until the command ends.
    let client = server.client()?;
    let agents = Mutex::new(agents);
    let (agents_ref, holds_ref, client_ref, cmd_ref) = (&agents, &holds, &client, &cmd);
    wait_until("the command to end", DEADLINE * 3, || async move {
        {
            let mut agents = agents_ref.lock().unwrap();
            for (a, hold) in agents.iter_mut().zip(holds_ref) {
                a.tend(env)?;
                if let Some(h) = hold {
                    if a.was_killed() && a.proc.output().contains("resuming an invocation") {
                        let _ = std::fs::remove_file(h);
                    }
                }
            }
        }
        Ok(client_ref.get_command(cmd_ref).await?.done.then_some(()))
    })
    .await?;

    let agents = agents.into_inner().unwrap();
    let mut failures = Vec::new();
    for ((case, id), agent) in cases.iter().zip(&ids).zip(&agents) {
        let what = format!("{} (agent {})", case.point, agent.name);
        if !agent.was_killed() {
            failures.push(format!("{what}: the crash point was never reached"));
        }
        // With --reboot-mode restart-agent a restart is the reboot: an agent killed after the
        // reboot was recorded has had it.
        let rebooted_by_crash = ["unit-done:1", "rebooting"].contains(&case.point.as_str());
        if kind.reboots && !rebooted_by_crash && !agent.exits.iter().any(|s| s.code() == Some(194))
        {
            failures.push(format!("{what}: no reboot"));
        }
        let ran = std::fs::read_to_string(marks.join(id)).unwrap_or_default();
        if ran != expected {
            failures.push(format!("{what}: ran {ran:?}, expected {expected:?}"));
        }
        let inv = client.get_invocation(&cmd, id).await?;
        if inv.status != "Success" {
            failures.push(format!("{what}: {} {:?}", inv.status, inv.steps));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_step_runs_once_whatever_point_the_agent_dies_at() -> anyhow::Result<()> {
    let env = env();
    let marks = env.path("marks");
    let doc = format!(
        "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: only\n    \
         inputs:\n      runCommand: [{}]\n",
        unit(&marks, "p", "")
    );
    let kind = Kind {
        docs: vec![("Plain", doc)],
        scripts: &["p"],
        unit_records: 1,
        steps_done: 1,
        reboots: false,
    };
    crash_matrix(&env, kind).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_of_a_retried_step_runs_once() -> anyhow::Result<()> {
    let env = env();
    let marks = env.path("marks");
    // Attempt 1 fails, attempt 2 succeeds.
    let doc = format!(
        "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: flaky\n    \
         maxAttempts: 2\n    inputs:\n      runCommand: [{}]\n",
        unit(
            &marks,
            "a$DROVER_STEP_ATTEMPT",
            "[ \"$DROVER_STEP_ATTEMPT\" -ge 2 ]"
        )
    );
    let kind = Kind {
        docs: vec![("Retry", doc)],
        scripts: &["a1", "a2"],
        unit_records: 2,
        steps_done: 1,
        reboots: false,
    };
    crash_matrix(&env, kind).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_of_a_nested_document_runs_once() -> anyhow::Result<()> {
    let env = env();
    let marks = env.path("marks");
    let inner = format!(
        "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: one\n    \
         inputs:\n      runCommand: [{}]\n  - action: aws:runShellScript\n    name: two\n    \
         inputs:\n      runCommand: [{}]\n",
        unit(&marks, "n1", ""),
        unit(&marks, "n2", "")
    );
    let outer = format!(
        "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runDocument\n    name: nested\n    \
         inputs:\n      documentType: SSMDocument\n      documentPath: Inner\n  \
         - action: aws:runShellScript\n    name: after\n    inputs:\n      runCommand: [{}]\n",
        unit(&marks, "a", "")
    );
    let kind = Kind {
        docs: vec![("Inner", inner), ("Outer", outer)],
        scripts: &["n1", "n2", "a"],
        // n1, n2, the runDocument unit itself, a.
        unit_records: 4,
        steps_done: 2,
        reboots: false,
    };
    crash_matrix(&env, kind).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_step_and_the_step_after_it_run_once() -> anyhow::Result<()> {
    let env = env();
    let marks = env.path("marks");
    let doc = format!(
        "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: before\n    \
         inputs:\n      runCommand: [{}]\n  - action: aws:runShellScript\n    name: after\n    \
         inputs:\n      runCommand: [{}]\n",
        unit(&marks, "r1", "exit 194"),
        unit(&marks, "r2", "")
    );
    let kind = Kind {
        docs: vec![("Reboot", doc)],
        scripts: &["r1", "r2"],
        unit_records: 2,
        // The step that asks for the reboot ends through the reboot path.
        steps_done: 1,
        reboots: true,
    };
    crash_matrix(&env, kind).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_running_when_the_machine_crashed_is_reported_lost_never_run_again(
) -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "m", &[])?;
    let mut agent = env.run_agent_with("m", &[], &[("DROVER_CRASH_AT", "unit-started")])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks)?;
    let doc = format!(
        "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: first\n    \
         inputs:\n      runCommand: [{}]\n  - action: aws:runShellScript\n    name: second\n    \
         inputs:\n      runCommand: [{}]\n",
        unit(&marks, "p", ""),
        unit(&marks, "q", "")
    );
    std::fs::write(env.path("doc.yaml"), doc)?;
    env.cli_ok(&[
        "docs",
        "create",
        "Two",
        "--file",
        &env.path("doc.yaml").to_string_lossy(),
    ])?;
    let hold = marks.join(format!("{id}.hold-p"));
    std::fs::write(&hold, "")?;
    let cmd = env
        .cli_ok(&["run", "--no-wait", "--doc", "Two", "--targets", &id])?
        .trim()
        .to_string();
    agent.wait_exit(DEADLINE)?;
    let ran = marks.join(&id);
    wait_until("the step to run", DEADLINE, || {
        let ran = ran.clone();
        async move { Ok((std::fs::read_to_string(&ran).unwrap_or_default() == "p\n").then_some(())) }
    })
    .await?;

    // The machine goes down with the agent: the step's processes die, the next boot has a new ID.
    let journal = env.state_dir("m").join("journal");
    let victims = drover_testkit::pids_with_cmdline(&journal.to_string_lossy());
    assert!(!victims.is_empty(), "the held step is not running");
    for pid in victims {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::Kill);
        }
    }
    let _agent = env.run_agent_with("m", &[], &[("DROVER_TEST_BOOT_ID", "after-the-crash")])?;
    let client = server.client()?;
    let done = wait_until("the command to end", DEADLINE, || {
        let (c, cmd) = (client.clone(), cmd.clone());
        async move { Ok(Some(c.get_command(&cmd).await?).filter(|c| c.done)) }
    })
    .await?;
    assert_eq!(done.status, "Failed");
    let inv = client.get_invocation(&cmd, &id).await?;
    assert_eq!(inv.status, "Failed");
    assert_eq!(
        (inv.steps[0].status.as_str(), inv.steps[0].exit_code),
        ("Failed", Some(-1))
    );
    assert!(
        inv.steps[0].stderr.contains("not run again"),
        "{:?}",
        inv.steps[0].stderr
    );
    assert_eq!(inv.steps[1].status, "Skipped");
    assert_eq!(
        std::fs::read_to_string(marks.join(&id))?,
        "p\n",
        "the lost step ran again"
    );
    Ok(())
}

/// The order of the system calls that make a unit's record durable, as strace saw them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_units_record_reaches_the_disk_before_its_script_may_run() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "d", &[])?;
    let mut agent = env.run_agent("d", &[])?;
    let pid = agent.pid().expect("the agent runs");
    // Attached to the running agent (and, with -f, to every thread and child it makes later),
    // so that stopping the agent ends strace too.
    let trace = env.path("agent.trace");
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-s", "4096"])
        .args(["-e", "trace=fsync,fdatasync,write,execve", "-o"])
        .arg(&trace)
        .args(["-p", &pid.to_string()]);
    let _strace = drover_testkit::Proc::spawn("strace", cmd)?;
    wait_until(
        "strace to trace every thread of the agent",
        DEADLINE,
        || async move {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
            let mut all = true;
            for t in tasks.filter_map(Result::ok) {
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                all &= status
                    .lines()
                    .any(|l| l.starts_with("TracerPid:") && !l.ends_with("\t0"));
            }
            Ok(all.then_some(()))
        },
    )
    .await?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let out = env.cli_ok(&[
        "run",
        "--doc",
        "RunShellScript",
        "--param",
        "commands=echo one",
        "--targets",
        &id,
    ])?;
    assert!(out.contains("Success"), "{out}");
    agent.stop();

    let trace = std::fs::read_to_string(&trace)?;
    let lines: Vec<&str> = trace.lines().collect();
    let find = |from: usize, pred: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .skip(from)
            .position(|l| pred(l))
            .map(|p| p + from)
    };
    let script = find(0, &|l| {
        // The script's own shell (the wrapper's command line has `-c` and ends with it too).
        l.contains("execve(\"/bin/sh\", [\"/bin/sh\", \"/") && l.contains("0.1.sh\"]")
    })
    .expect("the script's exec is not in the trace");
    let before = &lines[..script];
    let last = |pred: &dyn Fn(&str) -> bool| before.iter().rposition(|l| pred(l));
    // The unit's record, then its flush, then the gate; and the journal's directories flushed.
    let record = last(&|l| {
        l.contains("write(")
            && l.contains("/state.log>")
            && l.contains(r#"\"0.1\":{\"status\":\"Running\""#)
    });
    let synced_log =
        // (strace may split the call around another thread's line: `<unfinished ...>`.)
        last(&|l| l.contains("fdatasync(") && l.contains("/state.log>") && !l.contains("= -1"));
    let gate = last(&|l| l.contains("write(") && l.contains("\"go\\n\""));
    let entry_dir =
        last(&|l| l.contains(" fsync(") && l.contains("/journal/inv-") && l.ends_with(">) = 0"));
    let journal_dir = last(&|l| l.contains(" fsync(") && l.ends_with("/journal>) = 0"));
    let (Some(record), Some(synced_log), Some(gate), Some(_), Some(_)) =
        (record, synced_log, gate, entry_dir, journal_dir)
    else {
        panic!(
            "no record, fdatasync of the state log, fsync of the journal's directories or gate \
             write before the script ran:\n{}",
            before.join("\n")
        );
    };
    assert!(
        record < synced_log,
        "the unit's record was not flushed:\n{}",
        before.join("\n")
    );
    assert!(
        synced_log < gate,
        "the gate opened before the record was on disk"
    );
    Ok(())
}
