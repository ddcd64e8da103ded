//! Sessions end to end: a real server, a real agent, `drover shell` in a real PTY, and the
//! session's processes on the node.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod browser;
mod forward;
mod pty;
mod resume;
mod ssh;

use std::time::Duration;

use drover_testkit::{pids_with_cmdline, wait_status, wait_until, Env, Proc, Server, DEADLINE};
use pty::PtyCli;

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

/// A server (with `vars`) and one agent named `n1`, Online.
async fn node(
    env: &Env,
    vars: &[(&str, &str)],
    agent_args: &[&str],
) -> anyhow::Result<(Server, String, Proc)> {
    let server = env.start_server_with_env(0, &[], vars)?;
    let id = env.register_agent(&server, "n1", &[])?;
    let agent = env.run_agent_with("n1", agent_args, &[])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    Ok((server, id, agent))
}

/// Replaces the session preferences (`SessionManagerRunShell`'s inputs).
fn set_prefs(env: &Env, inputs: &str) -> anyhow::Result<()> {
    let doc = format!("schemaVersion: \"1.0\"\nsessionType: Standard_Stream\ninputs:\n{inputs}");
    let path = env.path("prefs.yaml");
    std::fs::write(&path, doc)?;
    let out = env.cli_ok(&[
        "docs",
        "update",
        "SessionManagerRunShell",
        "--file",
        &path.to_string_lossy(),
    ])?;
    // As in SSM, a new version is not the default until it is made so.
    let version = out
        .split("version ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no version in {out:?}"))?
        .to_string();
    env.cli_ok(&["docs", "set-default", "SessionManagerRunShell", &version])?;
    Ok(())
}

/// Sessions run as root in most tests, so they create no OS users (one test does).
const AS_ROOT: &str = "  runAsEnabled: true\n  runAsDefaultUser: root\n";

/// `drover shell n1 --no-pty -- SCRIPT` in the background.
fn background_shell(env: &Env, name: &str, script: &str) -> anyhow::Result<Proc> {
    let mut cmd = env.command();
    cmd.args(["shell", "n1", "--no-pty", "--", script]);
    Proc::spawn(name, cmd)
}

/// Waits until no process has `cmdline` in its command line.
async fn gone(cmdline: &str) -> anyhow::Result<()> {
    wait_until("the session's process to end", DEADLINE, || async {
        Ok(pids_with_cmdline(cmdline).is_empty().then_some(()))
    })
    .await
}

fn latest_session(env: &Env) -> anyhow::Result<serde_json::Value> {
    let list: serde_json::Value =
        serde_json::from_str(&env.cli_ok(&["sessions", "list", "-o", "json"])?)?;
    Ok(list[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_runs_commands_and_full_screen_programs_follows_resizes_and_ctrl_c_and_returns_its_status(
) -> anyhow::Result<()> {
    let env = env();
    let (_server, _id, _agent) = node(&env, &[], &[]).await?;
    set_prefs(&env, &format!("{AS_ROOT}  recordInput: true\n"))?;
    let mut cli = PtyCli::spawn(&env, &["shell", "n1", "--reason", "INC-1"], &[])?;
    cli.send(b"echo READY-$((40+2))\r").await?;
    cli.expect("READY-42", DEADLINE).await?;

    // A window resize reaches the remote PTY. The resize and the typed command travel apart
    // (a signal and a read), so ask again until the new size shows.
    cli.resize(40, 100)?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let from = cli.len();
        cli.send(b"stty size\r").await?;
        if cli
            .expect_after(from, "40 100", Duration::from_secs(1))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resize never reached the PTY:\n{}",
            cli.text()
        );
    }

    // Ctrl-C reaches the remote foreground process, not this client.
    let from = cli.len();
    cli.send(b"sleep 30.75\r").await?;
    // Ctrl-C once the sleep runs (before, the shell itself would take it).
    wait_until("the remote sleep to start", DEADLINE, || async {
        Ok((!pids_with_cmdline("sleep 30.75").is_empty()).then_some(()))
    })
    .await?;
    cli.send(b"\x03").await?;
    cli.send(b"echo AFTER-$((2+3))\r").await?;
    cli.expect_after(from, "AFTER-5", Duration::from_secs(10))
        .await?;

    // A full-screen program draws and quits.
    let from = cli.len();
    cli.send(b"top -d 0.5\r").await?;
    // A second frame: top has set its terminal up and reads keys (input typed before that
    // is flushed by top itself).
    let first = cli.expect_after(from, "load average", DEADLINE).await?;
    cli.expect_after(first, "load average", DEADLINE).await?;
    cli.send(b"q").await?;
    cli.expect_after(first, "\x1b[?1l", DEADLINE).await?;
    cli.send(b"echo BACK-$((1+1))\r").await?;
    cli.expect_after(from, "BACK-2", DEADLINE).await?;

    cli.send(b"exit 7\r").await?;
    assert_eq!(cli.exit_code(DEADLINE).await?, 7);

    let s = latest_session(&env)?;
    assert_eq!(s["status"], "Terminated");
    assert_eq!(s["exit_code"], 7);
    assert_eq!(s["reason"], "INC-1");
    assert_eq!(s["kind"], "Shell");
    let id = s["id"].as_str().unwrap();

    // The recording plays with asciinema, and `sessions replay` shows the same.
    let cast = env.path("s.cast");
    env.cli_ok(&["sessions", "download", id, "-o", &cast.to_string_lossy()])?;
    let text = std::fs::read_to_string(&cast)?;
    assert!(
        text.contains("\"i\""),
        "input was to be recorded:\n{text:.400}"
    );
    // `asciinema cat` wants a controlling terminal (it sets /dev/tty raw); its output is
    // taken from a pipe, byte for byte.
    let (_tty, pts) = pty_process::open()?;
    let played = pty_process::Command::new("asciinema")
        .arg("cat")
        .arg(&cast)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn(pts)
        .map_err(|e| anyhow::anyhow!("running asciinema (README's test command installs it): {e}"))?
        .wait_with_output()
        .await?;
    assert!(
        played.status.success(),
        "{}",
        String::from_utf8_lossy(&played.stderr)
    );
    let played = String::from_utf8_lossy(&played.stdout).into_owned();
    assert!(
        played.contains("READY-42") && played.contains("AFTER-5"),
        "{played}"
    );
    let replayed = env.cli_ok(&["sessions", "replay", id, "--speed", "100000"])?;
    assert_eq!(replayed, played);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_sessions_keep_streams_apart_and_return_the_exit_status() -> anyhow::Result<()> {
    let env = env();
    let (_server, _id, _agent) = node(&env, &[], &[]).await?;
    set_prefs(&env, AS_ROOT)?;
    let out = env.cli(&[
        "shell",
        "n1",
        "--no-pty",
        "--",
        "echo out; echo err >&2; exit 3",
    ])?;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));

    // With a PTY (the default for a command), output is the terminal's.
    let out = env.cli(&["shell", "n1", "--", "tty; exit 4"])?;
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/dev/pts/"));

    // Stdin reaches a command without a PTY, and its end is the command's end of input.
    let mut child = env
        .command()
        .args(["shell", "n1", "--no-pty", "--", "wc -c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&[b'x'; 100_000])?;
    let out = child.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100000");
    assert!(out.status.success());

    // Output still in flight when the command exits is all delivered: nothing is read here
    // until the command has exited on the node, so the 600 kB are all queued on the hops then (the replay buffer holds 1 MiB).
    let done = env.path("printed");
    let script = format!("head -c 600000 /dev/zero; touch {}", done.display());
    let mut child = env
        .command()
        .args(["shell", "n1", "--no-pty", "--", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    wait_until("the command to print everything", DEADLINE, || async {
        Ok(done.exists().then_some(()))
    })
    .await?;
    let mut stdout = child.stdout.take().unwrap();
    use std::io::Read;
    let mut all = Vec::new();
    stdout.read_to_end(&mut all)?;
    let total = all.len();
    assert!(child.wait()?.success());
    assert_eq!(total, 600_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_and_maximum_duration_end_sessions_with_a_message() -> anyhow::Result<()> {
    let env = env();
    // A session "minute" is 400 ms here.
    let (_server, _id, _agent) =
        node(&env, &[("DROVER_TEST_SESSION_MINUTE_MS", "400")], &[]).await?;
    set_prefs(&env, &format!("{AS_ROOT}  idleSessionTimeout: \"1\"\n"))?;
    let out = env.cli(&["shell", "n1", "--no-pty", "--", "sleep 20"])?;
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("idle for 1 minute"), "{err}");
    assert_eq!(latest_session(&env)?["status"], "TimedOut");

    // Output keeps a session from being idle; the maximum duration still ends it.
    set_prefs(
        &env,
        &format!("{AS_ROOT}  idleSessionTimeout: \"1\"\n  maxSessionDuration: \"3\"\n"),
    )?;
    let out = env.cli(&[
        "shell",
        "n1",
        "--no-pty",
        "--",
        "while :; do echo tick; sleep 0.1; done",
    ])?;
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maximum duration of 3 minutes"), "{err}");
    let ticks = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(
        ticks > 5,
        "the session was cut before its maximum duration: {ticks} ticks"
    );
    assert!(
        pids_with_cmdline("while :; do echo tick").is_empty(),
        "the command outlived its session"
    );

    // Out-of-range preferences are refused, naming the field.
    let path = env.path("bad.yaml");
    std::fs::write(&path, "schemaVersion: \"1.0\"\nsessionType: Standard_Stream\ninputs:\n  maxSessionDuration: \"1441\"\n")?;
    let out = env.cli(&[
        "docs",
        "update",
        "SessionManagerRunShell",
        "--file",
        &path.to_string_lossy(),
    ])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("maxSessionDuration"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_and_an_agent_stop_end_live_sessions_and_their_processes() -> anyhow::Result<()> {
    let env = env();
    let (server, _id, agent) = node(&env, &[], &[]).await?;
    set_prefs(&env, AS_ROOT)?;
    let mut shell = background_shell(&env, "shell", "echo started; exec sleep 61.25")?;
    shell.wait_for_line("started", DEADLINE)?;
    let id = latest_session(&env)?["id"].as_str().unwrap().to_string();
    env.cli_ok(&["sessions", "terminate", &id])?;
    assert_eq!(shell.wait_exit(DEADLINE)?.code(), Some(255));
    shell.wait_for_line("terminated by", DEADLINE)?;
    gone("sleep 61.25").await?;
    let shown = env.cli_ok(&["sessions", "show", &id])?;
    assert!(shown.contains("terminate_requested"), "{shown}");
    let again = env.cli(&["sessions", "terminate", &id])?;
    assert!(String::from_utf8_lossy(&again.stderr).contains("already ended"));
    let metrics = server.client()?.get_text("/metrics").await?;
    for needle in [
        "drover_sessions_started_total 1",
        "drover_sessions_active 0",
        "drover_sessions_ended_total{status=\"Terminated\"} 1",
        // "started\n"
        "drover_session_bytes_total{direction=\"out\"} 8",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }

    // An agent that stops ends its sessions, and the user sees why.
    let mut shell = background_shell(&env, "shell", "echo started; exec sleep 62.25")?;
    shell.wait_for_line("started", DEADLINE)?;
    agent.sigterm();
    assert_eq!(shell.wait_exit(DEADLINE)?.code(), Some(255));
    shell.wait_for_line("the agent on the node is stopping", DEADLINE)?;
    gone("sleep 62.25").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sessions_on_one_node_at_once() -> anyhow::Result<()> {
    let env = env();
    let (_server, _id, _agent) = node(&env, &[], &[]).await?;
    set_prefs(&env, AS_ROOT)?;
    let mut shells = Vec::new();
    for i in 0..20 {
        let shell = background_shell(&env, &format!("shell{i}"), &format!("seq {i} 2000"))?;
        shells.push((i, shell));
    }
    for (i, p) in &mut shells {
        assert_eq!(p.wait_exit(DEADLINE)?.code(), Some(0), "session {i}");
        // The pipe may still hold lines after the exit.
        p.wait_for_line("2000", DEADLINE)?;
        let expected: Vec<String> = (*i..=2000).map(|n| n.to_string()).collect();
        let got: Vec<String> = p
            .output()
            .lines()
            .filter(|l| !l.starts_with('['))
            .map(str::to_string)
            .collect();
        assert_eq!(got, expected, "session {i}");
    }
    Ok(())
}

/// Deletes the test's OS user however the test ends.
struct UserGuard(String);

impl Drop for UserGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .args(["-r", &self.0])
            .output();
        let _ = std::fs::remove_file(format!("/etc/sudoers.d/{}", self.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_run_as_the_default_user_created_once_or_as_the_configured_one(
) -> anyhow::Result<()> {
    if !rustix_is_root() {
        eprintln!("skipped: creating the session user needs root");
        return Ok(());
    }
    let user = format!("drv-{:x}", std::process::id());
    let _cleanup = UserGuard(user.clone());
    let env = env();
    let (_server, _id, agent) = node(&env, &[], &["--session-user", &user]).await?;
    for _ in 0..2 {
        let out = env.cli_ok(&["shell", "n1", "--no-pty", "--", "id -un"])?;
        assert_eq!(out.trim(), user);
    }
    let created = agent
        .output()
        .lines()
        .filter(|l| l.contains("created the session user"))
        .count();
    assert_eq!(created, 1, "{}", agent.output());
    set_prefs(&env, AS_ROOT)?;
    assert_eq!(
        env.cli_ok(&["shell", "n1", "--no-pty", "--", "id -un"])?
            .trim(),
        "root"
    );
    // A configured user that does not exist is refused, saying so.
    set_prefs(
        &env,
        "  runAsEnabled: true\n  runAsDefaultUser: no-such-user-x\n",
    )?;
    let out = env.cli(&["shell", "n1", "--no-pty", "--", "id -un"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-user-x"));
    Ok(())
}

fn rustix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_command_document_runs_only_its_command_with_checked_parameters(
) -> anyhow::Result<()> {
    let env = env();
    let (_server, _id, _agent) = node(&env, &[], &[]).await?;
    set_prefs(&env, AS_ROOT)?;
    let doc = r#"
schemaVersion: "1.0"
description: Show a file under /tmp.
sessionType: InteractiveCommands
parameters:
  file:
    type: String
    allowedPattern: "^/tmp/[a-z0-9_.-]+$"
properties:
  linux:
    commands: "echo showing; cat {{ file }}"
"#;
    let path = env.path("show.yaml");
    std::fs::write(&path, doc)?;
    env.cli_ok(&[
        "docs",
        "create",
        "ShowTmpFile",
        "--file",
        &path.to_string_lossy(),
    ])?;
    let target = format!("/tmp/drover-show-{}.txt", std::process::id());
    std::fs::write(&target, "hello from the file\n")?;
    let out = env.cli(&[
        "shell",
        "n1",
        "--doc",
        "ShowTmpFile",
        "--param",
        &format!("file={target}"),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the file"));
    let _ = std::fs::remove_file(&target);

    // Crafted values never reach a shell: the pattern refuses them, naming the parameter.
    for bad in ["/tmp/x; id", "/tmp/$(id)", "/etc/passwd", "/tmp/a b"] {
        let out = env.cli(&[
            "shell",
            "n1",
            "--doc",
            "ShowTmpFile",
            "--param",
            &format!("file={bad}"),
        ])?;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("parameter \"file\""), "{bad}: {err}");
    }
    // Unknown parameters, and a command where a document is given, are refused.
    let out = env.cli(&["shell", "n1", "--doc", "ShowTmpFile", "--param", "cmd=id"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("cmd"));
    // A command document is not a session.
    let out = env.cli(&["shell", "n1", "--doc", "RunShellScript"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("command document"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_profile_sets_the_environment_the_directory_and_runs_its_commands(
) -> anyhow::Result<()> {
    let env = env();
    let (_server, _id, _agent) = node(&env, &[], &[]).await?;
    set_prefs(
        &env,
        &format!(
            "{AS_ROOT}  shellProfile:\n    linux: \"export FROM_PROFILE=yes\"\n  \
             shellEnvironment:\n    APP_ENV: prod\n  workingDirectory: /tmp\n"
        ),
    )?;
    let mut cli = PtyCli::spawn(&env, &["shell", "n1"], &[])?;
    cli.send(b"echo \"P=$FROM_PROFILE E=$APP_ENV D=$(pwd)\"\r")
        .await?;
    cli.expect("P=yes E=prod D=/tmp", DEADLINE).await?;
    cli.send(b"exit\r").await?;
    assert_eq!(cli.exit_code(DEADLINE).await?, 0);
    // A command session gets the environment and the directory, not the profile's commands.
    let out = env.cli_ok(&[
        "shell",
        "n1",
        "--no-pty",
        "--",
        "echo \"P=$FROM_PROFILE E=$APP_ENV D=$(pwd)\"",
    ])?;
    assert_eq!(out.trim(), "P= E=prod D=/tmp");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_or_a_server_restart_leaves_no_session_process_behind() -> anyhow::Result<()>
{
    let env = env();
    let (mut server, id, mut agent) = node(&env, &[], &[]).await?;
    set_prefs(&env, AS_ROOT)?;

    // SIGKILL of the agent: nothing runs its cleanup, so the kernel must end the sessions'
    // processes (PR_SET_PDEATHSIG through setpriv, and the PTY's hangup). Both kinds.
    let mut pipes = background_shell(&env, "pipes", "echo started; exec sleep 63.25")?;
    let mut cmd = env.command();
    cmd.args(["shell", "n1", "--", "echo started; exec sleep 64.25"]);
    let mut pty = Proc::spawn("pty", cmd)?;
    pipes.wait_for_line("started", DEADLINE)?;
    pty.wait_for_line("started", DEADLINE)?;
    agent.kill9();
    gone("sleep 63.25").await?;
    gone("sleep 64.25").await?;
    for p in [&mut pipes, &mut pty] {
        assert_eq!(p.wait_exit(DEADLINE)?.code(), Some(255));
        p.wait_for_line("the connection to the node was lost", DEADLINE)?;
    }

    // SIGKILL of the server: the agent sees its connection fail and hangs its sessions up; the
    // restarted server ends what the store still had open, saying why. The lost connection is
    // in the store first: presence is written in batches, so "Online" could otherwise still be
    // the killed agent's.
    wait_status(&server, std::slice::from_ref(&id), "ConnectionLost").await?;
    let _agent = env.run_agent_with("n1", &[], &[])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let mut shell = background_shell(&env, "shell", "echo started; exec sleep 65.25")?;
    shell.wait_for_line("started", DEADLINE)?;
    let client = server.client()?;
    let live = client.list_sessions(None, true, None, 10).await?.sessions;
    assert_eq!(live.len(), 1, "{live:?}");
    let sid = live[0].id.clone();
    server.kill_and_restart(&env)?;
    gone("sleep 65.25").await?;
    assert_eq!(shell.wait_exit(DEADLINE)?.code(), Some(255));
    let s = server.client()?.get_session(&sid).await?;
    assert_eq!(
        (s.status.as_str(), s.detail.as_str()),
        ("Terminated", "the server restarted")
    );
    Ok(())
}
