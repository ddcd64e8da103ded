//! The web console in a real browser: Debian's chromium, headless, driven by playwright-core
//! (`tests/browser/console.mjs`) against a real server with a real agent on loopback. Both are
//! installed by `cargo xtask test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::time::Duration;

use drover_testkit::browser;
use drover_testkit::{wait_status, wait_until, Env};

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

fn create_user(env: &Env, name: &str, group: &str, password: &str) {
    let mut cmd = env.command();
    cmd.args([
        "users",
        "create",
        name,
        "--group",
        group,
        "--password-stdin",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_lists_the_nodes_and_downloads_the_report() {
    let dir = browser::scripts(env!("CARGO_MANIFEST_DIR")).unwrap();
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    create_user(&env, "ops", "admins", "ops's long password");
    let node = env.register_agent(&server, "web-01", &[]).unwrap();
    let _agent = env.run_agent("web-01", &[]).unwrap();
    wait_status(&server, std::slice::from_ref(&node), "Online")
        .await
        .unwrap();
    // What a node's owner may set: markup, and what a spreadsheet would run.
    env.cli_ok(&[
        "nodes",
        "tag",
        &node,
        "calc==1+1;=2",
        "note=<img src=x onerror=alert(1)>",
    ])
    .unwrap();

    let downloads = env.path("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let (ok, out) = browser::run(
        &dir.join("console.mjs"),
        &[
            ("CONSOLE_URL", server.url.clone()),
            ("CONSOLE_USER", "ops".into()),
            ("CONSOLE_PASSWORD", "ops's long password".into()),
            ("NODE_ID", node.clone()),
            ("NODE_NAME", "web-01".into()),
            (
                "NODE_TAGS",
                "calc==1+1;=2; note=<img src=x onerror=alert(1)>".into(),
            ),
            ("DOWNLOADS", downloads.display().to_string()),
        ],
    )
    .unwrap();
    println!("{out}");
    assert!(ok, "the browser's checks failed:\n{out}");
    // Every check ran and passed: a script that stopped early would print fewer lines.
    assert_eq!(browser::passed(&out), 12, "{out}");
}

/// Where the browser tests save their screenshots: `target/console-screenshots/` of the
/// workspace (or of CARGO_TARGET_DIR).
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_admin_tasks_terminals_commands_and_replays_and_hides_what_a_viewer_may_not_do(
) {
    let dir = browser::scripts(env!("CARGO_MANIFEST_DIR")).unwrap();
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    create_user(&env, "ops", "admins", "ops's long password");
    create_user(&env, "watcher", "viewers", "watcher's long password");
    let a = env.register_agent(&server, "web-01", &[]).unwrap();
    let b = env.register_agent(&server, "web-02", &[]).unwrap();
    let _agent_a = env.run_agent("web-01", &[]).unwrap();
    let _agent_b = env.run_agent("web-02", &[]).unwrap();
    wait_status(&server, &[a.clone(), b.clone()], "Online")
        .await
        .unwrap();

    // An association for the State Manager page: applied at creation to both nodes.
    env.cli_ok(&[
        "assoc",
        "create",
        "console-baseline",
        "--doc",
        "RunShellScript",
        "--param",
        "commands=true",
        "--targets",
        "all",
        "--schedule",
        "rate(1 day)",
    ])
    .unwrap();

    // A process for the processes tab to find and kill (node A is this machine), and a file
    // for the file tab.
    // The shell reaps the sleep (a zombie would keep its row) and exits with its status; its
    // own command line does not contain the mark.
    let seconds = (50_000 + std::process::id() % 10_000).to_string();
    let mark = format!("sleep {seconds}");
    let mut sleeper = Command::new("sh")
        .args(["-c", "sleep \"$1\"; exit $?", "sh", &seconds])
        .spawn()
        .unwrap();
    // A log under /var/log for the logs tab, where this user may write one (CI runs as root).
    let log = PathBuf::from(format!(
        "/var/log/drover-console-test-{}.log",
        std::process::id()
    ));
    let log = std::fs::write(&log, "drop-this line\nkeep-this line\n")
        .ok()
        .map(|_| log);
    if log.is_none() {
        println!("the logs tab's check is skipped: /var/log is not writable by this user");
    }
    let files = env.path("files");
    std::fs::create_dir_all(&files).unwrap();
    let text = format!("written by the console test {}", std::process::id());
    std::fs::write(files.join("notes.txt"), &text).unwrap();

    let (ok, out) = browser::run(
        &dir.join("fleet.mjs"),
        &[
            ("CONSOLE_URL", server.url.clone()),
            ("ADMIN_USER", "ops".into()),
            ("ADMIN_PASSWORD", "ops's long password".into()),
            ("VIEWER_USER", "watcher".into()),
            ("VIEWER_PASSWORD", "watcher's long password".into()),
            ("NODE_A", a.clone()),
            ("NODE_A_NAME", "web-01".into()),
            ("NODE_B", b.clone()),
            ("NODE_B_NAME", "web-02".into()),
            ("PROC_MARK", mark),
            ("FILE_DIR", files.display().to_string()),
            ("FILE_NAME", "notes.txt".into()),
            ("FILE_TEXT", text),
            ("SCREENSHOTS", screenshots().display().to_string()),
            (
                "LOG_FILE",
                log.as_ref()
                    .map(|l| l.display().to_string())
                    .unwrap_or_default(),
            ),
        ],
    )
    .unwrap();
    if let Some(l) = &log {
        let _ = std::fs::remove_file(l);
    }
    // The kill the page asked for reached the process (SIGTERM: the shell says 143).
    let killed = wait_until("the sleep's shell to exit", Duration::from_secs(10), || {
        let status = sleeper.try_wait().unwrap();
        async move { Ok(status) }
    })
    .await;
    if killed.is_err() {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    println!("{out}");
    assert!(ok, "the browser's checks failed:\n{out}");
    assert_eq!(
        browser::passed(&out),
        27 + usize::from(log.is_some()),
        "{out}"
    );
    assert_eq!(
        killed.as_ref().ok().and_then(|s| s.code()),
        Some(143),
        "the process the page killed: {killed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_table_scrolls_sorts_and_searches_a_fleet_of_several_pages() {
    const NODES: usize = 1200;
    let dir = browser::scripts(env!("CARGO_MANIFEST_DIR")).unwrap();
    let env = env();
    let server = env.start_server(0, &[]).unwrap();
    create_user(&env, "ops", "admins", "ops's long password");
    // Real agents, in this process: a process each would not fit.
    let fleet = drover_testkit::fleet::Fleet::start(&server, &env.path("fleet"), "web", NODES)
        .await
        .unwrap();
    let (ok, out) = browser::run(
        &dir.join("table.mjs"),
        &[
            ("CONSOLE_URL", server.url.clone()),
            ("CONSOLE_USER", "ops".into()),
            ("CONSOLE_PASSWORD", "ops's long password".into()),
            ("NODES", NODES.to_string()),
            ("PREFIX", "web".into()),
        ],
    )
    .unwrap();
    fleet.stop().await;
    println!("{out}");
    assert!(ok, "the browser's checks failed:\n{out}");
    assert_eq!(browser::passed(&out), 6, "{out}");
}
