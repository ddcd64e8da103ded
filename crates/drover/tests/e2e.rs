//! End-to-end: the real `drover` binary as server, agents and CLI, in temporary directories on
//! loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use drover_testkit::{wait_status, wait_until, Env, DEADLINE};

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_register_and_show_online_with_inventory() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let mut ids = Vec::new();
    let mut agents = Vec::new();
    for (i, name) in ["web-1", "web-2", "db-1"].iter().enumerate() {
        let role = if i < 2 { "role=web" } else { "role=db" };
        ids.push(env.register_agent(&server, name, &["--tag", role])?);
        agents.push(env.run_agent(name, &[])?);
    }
    let nodes = wait_status(&server, &ids, "Online").await?;
    for n in &nodes {
        assert_eq!(n.inventory.platform, std::env::consts::OS);
        assert_eq!(n.inventory.arch, std::env::consts::ARCH);
        assert!(!n.inventory.hostname.is_empty());
        assert!(!n.inventory.kernel.is_empty());
        assert!(!n.inventory.os_name.is_empty());
        assert_eq!(n.inventory.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(n.inventory.boot_time.is_some());
        assert!(n.last_seen_at.is_some());
    }

    // Filters, as the CLI gives them.
    let web = env.cli_ok(&["nodes", "list", "--filter", "tag:role=web", "-o", "json"])?;
    let web: Vec<serde_json::Value> = serde_json::from_str(&web)?;
    assert_eq!(web.len(), 2);
    let online = env.cli_ok(&[
        "nodes",
        "list",
        "--filter",
        "status=online",
        "--filter",
        "platform=linux",
        "-o",
        "csv",
    ])?;
    assert_eq!(online.lines().count(), 4, "{online}");
    assert!(online.starts_with("ID,NAME,STATUS"));
    let table = env.cli_ok(&["nodes", "show", "db-1"])?;
    assert!(table.contains("role=db"), "{table}");

    // Tag and untag.
    env.cli_ok(&["nodes", "tag", &ids[2], "env=prod", "team=amber"])?;
    env.cli_ok(&["nodes", "untag", &ids[2], "role"])?;
    let shown: serde_json::Value =
        serde_json::from_str(&env.cli_ok(&["nodes", "show", &ids[2], "-o", "json"])?)?;
    assert_eq!(
        shown["tags"],
        serde_json::json!({"env": "prod", "team": "amber"})
    );

    // Bad input is refused with a message naming it.
    let bad = env.cli(&["nodes", "list", "--filter", "colour=red"])?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown filter key \"colour\""));
    let bad = env.cli(&["nodes", "tag", &ids[0], "bad key=x"])?;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid tag key"));
    let bad = env.cli(&["nodes", "show", "n-00000000000000000"])?;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not found"));

    // Metrics count the connections; without a token they are refused.
    let metrics = server.client()?.get_text("/metrics").await?;
    assert!(metrics.contains("drover_agents_connected 3"), "{metrics}");
    let anonymous = drover_client::Client::new(&server.url, &server.fingerprint, None)?;
    assert_eq!(
        anonymous.get_text("/metrics").await.unwrap_err().status(),
        Some(401)
    );
    let doc = anonymous.get_text("/api/v1/openapi.json").await?;
    assert!(doc.contains("/api/v1/nodes"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_come_back_after_the_server_is_killed_and_restarted() -> anyhow::Result<()> {
    let env = env();
    let mut server = env.start_server(0, &[])?;
    let mut ids = Vec::new();
    let mut agents = Vec::new();
    for name in ["a1", "a2", "a3"] {
        ids.push(env.register_agent(&server, name, &[])?);
        agents.push(env.run_agent(name, &[])?);
    }
    wait_status(&server, &ids, "Online").await?;
    server.kill_and_restart(&env)?;
    // A restarted server starts with every node ConnectionLost; the agents reconnect by themselves.
    wait_status(&server, &ids, "Online").await?;
    for a in &agents {
        a.wait_for_lines("connected", 2, DEADLINE)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connects_through_an_http_connect_proxy() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "proxied", &[])?;
    let (proxy_url, seen) = connect_proxy(None).await?;
    let _agent = env.run_agent("proxied", &[("HTTPS_PROXY", &proxy_url)])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    let targets = seen.lock().unwrap().clone();
    assert_eq!(
        targets,
        vec![server.url.trim_start_matches("https://").to_string()]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_authenticates_to_a_proxy_with_the_credentials_in_its_url() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "proxied", &[])?;
    // "svc-agent:p@ss:word", as an operator writes it in a URL.
    let (proxy_url, seen) = connect_proxy(Some("Basic c3ZjLWFnZW50OnBAc3M6d29yZA==")).await?;
    let with_creds = proxy_url.replace("http://", "http://svc-agent:p%40ss%3Aword@");
    // Wrong credentials: refused with 407, and the password is not in the log.
    let wrong = proxy_url.replace("http://", "http://svc-agent:guess%21@");
    let refused = env.run_agent("proxied", &[("HTTPS_PROXY", &wrong)])?;
    refused.wait_for_line("407", DEADLINE)?;
    drop(refused);
    let agent = env.run_agent("proxied", &[("HTTPS_PROXY", &with_creds)])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the right credentials pass"
    );
    for secret in ["p@ss", "p%40ss", "guess"] {
        assert!(!agent.output().contains(secret), "{}", agent.output());
    }
    Ok(())
}

/// A small HTTP CONNECT proxy: records each CONNECT target it lets through and splices the
/// bytes; with `auth`, it answers 407 to a request without that `Proxy-Authorization`.
async fn connect_proxy(
    auth: Option<&'static str>,
) -> anyhow::Result<(String, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                if let Some(auth) = auth {
                    let given = head.lines().find_map(|l| {
                        l.strip_prefix("Proxy-Authorization: ")
                            .map(str::trim)
                            .map(str::to_string)
                    });
                    if given.as_deref() != Some(auth) {
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                            .await;
                        return;
                    }
                }
                let target = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                seen.lock().unwrap().push(target.clone());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    Ok((url, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistered_agent_is_refused_and_its_open_connection_closed() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "doomed", &[])?;
    let other = env.register_agent(&server, "survivor", &[])?;
    let mut agent = env.run_agent("doomed", &[])?;
    let _survivor = env.run_agent("survivor", &[])?;
    wait_status(&server, &[id.clone(), other.clone()], "Online").await?;

    let out = env.cli_ok(&["nodes", "deregister", &id])?;
    assert!(out.contains("deregistered"), "{out}");
    // The open connection is closed at once and the agent stops: it must not retry forever.
    let status = agent.wait_exit(DEADLINE)?;
    assert!(!status.success());
    assert!(
        agent.output().contains("was deregistered"),
        "{}",
        agent.output()
    );
    wait_status(&server, std::slice::from_ref(&id), "Inactive").await?;
    wait_status(&server, &[other], "Online").await?;

    // Started again, it is refused again.
    let mut again = env.run_agent("doomed", &[])?;
    let status = again.wait_exit(DEADLINE)?;
    assert!(!status.success());
    assert!(
        again.output().contains("was deregistered"),
        "{}",
        again.output()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_or_used_up_activation_codes_are_refused() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let register = |activation: &str, dir: &str| {
        env.cli(&[
            "agent",
            "register",
            "--server",
            &server.url,
            "--activation",
            activation,
            "--ca-fingerprint",
            &server.fingerprint,
            "--state-dir",
            &env.path(dir).to_string_lossy(),
        ])
    };
    let stderr = |o: std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    let good = env.activation(1, &[])?;
    let (id, _) = good.split_once(':').unwrap();
    let wrong = register(&format!("{id}:not-the-code"), "w")?;
    assert!(!wrong.status.success());
    assert!(stderr(wrong).contains("activation code is wrong"));

    let unknown = register("act-0000:code", "u")?;
    assert!(stderr(unknown).contains("does not exist"));

    let malformed = register("no-colon", "m")?;
    assert_eq!(malformed.status.code(), Some(64));
    assert!(stderr(malformed).contains("expected ID:CODE"));

    assert!(register(&good, "ok1")?.status.success());
    let used = register(&good, "ok2")?;
    assert!(stderr(used).contains("used up"));

    let short = env.activation(5, &["--expires", "1s"])?;
    let client = server.client()?;
    // Wait until the server's clock has passed the expiry.
    wait_until("the activation to expire", DEADLINE, || {
        let client = client.clone();
        async move {
            let list = client.list_activations().await?;
            Ok(list.activations.iter().any(|a| a.expired).then_some(()))
        }
    })
    .await?;
    let expired = register(&short, "e")?;
    assert!(stderr(expired).contains("expired"));

    let bad_expiry = env.cli(&["activation", "create", "--expires", "90d"])?;
    assert!(String::from_utf8_lossy(&bad_expiry.stderr).contains("30 days"));
    // None of the refused registrations left a node behind.
    assert_eq!(client.list_nodes(&[]).await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_a_server_whose_ca_fingerprint_does_not_match() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let activation = env.activation(1, &[])?;
    let wrong = "ab".repeat(32);
    let out = env.cli(&[
        "agent",
        "register",
        "--server",
        &server.url,
        "--activation",
        &activation,
        "--ca-fingerprint",
        &wrong,
        "--state-dir",
        &env.path("x").to_string_lossy(),
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not contain the pinned CA fingerprint"),
        "{err}"
    );

    // A registered agent whose pinned fingerprint is changed never connects.
    let id = env.register_agent(&server, "pinned", &[])?;
    let state = env.state_dir("pinned").join("agent.json");
    let text = drover_testkit::read(&state)?.replace(&server.fingerprint, &wrong);
    std::fs::write(&state, text)?;
    let agent = env.run_agent("pinned", &[])?;
    agent.wait_for_line("does not contain the pinned CA fingerprint", DEADLINE)?;
    let node = server.client()?.get_node(&id).await?;
    assert_eq!(node.status, "ConnectionLost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drover_up_then_nodes_list_shows_the_local_node_online() -> anyhow::Result<()> {
    let env = env();
    let mut cmd = env.command();
    cmd.args(["up", "--dir"])
        .arg(env.path("up"))
        .args(["--listen", "127.0.0.1:0"]);
    let mut up = drover_testkit::Proc::spawn("up", cmd)?;
    up.wait_for_line("Drover is up. Local node", DEADLINE)?;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&env.cli_ok(&["nodes", "list", "-o", "json"])?)?;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "Online");
    let id = list[0]["id"].as_str().unwrap().to_string();
    up.stop();

    // Run again: it reuses the server data and the agent identity.
    let mut cmd = env.command();
    cmd.args(["up", "--dir"])
        .arg(env.path("up"))
        .args(["--listen", "127.0.0.1:0"]);
    let up = drover_testkit::Proc::spawn("up2", cmd)?;
    up.wait_for_line(&format!("Local node {id} is Online"), DEADLINE)?;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&env.cli_ok(&["nodes", "list", "-o", "json"])?)?;
    assert_eq!(list.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renews_its_certificate_over_the_connection() -> anyhow::Result<()> {
    let env = env();
    let mut server = env.start_server(0, &["--agent-cert-lifetime", "9s", "--heartbeat", "1s"])?;
    let id = env.register_agent(&server, "renewer", &[])?;
    let before = drover_testkit::read(&env.state_dir("renewer").join("node.pem"))?;
    let agent = env.run_agent("renewer", &[])?;
    wait_status(&server, std::slice::from_ref(&id), "Online").await?;
    agent.wait_for_line("renewed the node certificate", DEADLINE)?;
    let after = drover_testkit::read(&env.state_dir("renewer").join("node.pem"))?;
    assert_ne!(before, after);
    // The first certificate has expired by the time it renews twice; a new connection must
    // use the renewed one.
    agent.wait_for_lines("renewed the node certificate", 2, DEADLINE)?;
    server.kill_and_restart(&env)?;
    wait_status(&server, &[id], "Online").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_64_with_a_clear_message() -> anyhow::Result<()> {
    let env = env();
    let out = env.cli(&["server", "--data-dir", "d", "--listen", "nonsense"])?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid listen address \"nonsense\""));
    let out = env.cli(&["server", "--data-dir", "d", "--heartbeat", "soon"])?;
    assert_eq!(out.status.code(), Some(64));
    std::fs::write(env.path("c.toml"), "listen = \"127.0.0.1:0\"\nbogus = 1\n")?;
    let out = env.cli(&["server", "--config", &env.path("c.toml").to_string_lossy()])?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `bogus`"));
    let _ = Duration::ZERO;
    Ok(())
}

/// Runs `drover server` with its output in a file, as `drover server > log` would, until it
/// has logged `needle`; returns the log.
async fn server_log_to_file(env: &Env, extra: &[&str], needle: &str) -> anyhow::Result<String> {
    let log = env.path(&format!("server-{}.log", extra.len()));
    let file = std::fs::File::create(&log)?;
    let data = format!("logdata-{}", extra.len());
    let mut child = env
        .command()
        .args(["server", "--data-dir", &data, "--listen", "127.0.0.1:0"])
        .args(extra)
        // As an operator's shell has it: no NO_COLOR.
        .env_remove("NO_COLOR")
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?;
    let found = drover_testkit::wait_until("the server's log", DEADLINE, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log)?;
            Ok(text.contains(needle).then_some(text))
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    found
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() -> anyhow::Result<()> {
    let env = env();
    for shell in ["bash", "zsh", "fish"] {
        let script = env.cli_ok(&["completions", shell])?;
        assert!(script.contains("max-concurrency"), "{shell}: {script}");
    }
    // A reader that stops early is no error.
    let mut early = env
        .command()
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(early.stdout.take());
    let out = early.wait_with_output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.cli(&["completions", "tcsh-ish"])?;
    assert_eq!(out.status.code(), Some(2));
    env.cli_ok(&["man", "--out-dir", &env.path("man").to_string_lossy()])?;
    let run = std::fs::read_to_string(env.path("man").join("drover-run.1"))?;
    assert!(run.contains("max\\-concurrency"), "{run}");
    assert!(env.path("man").join("drover.1").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_file_are_plain_text_or_json_lines() -> anyhow::Result<()> {
    let env = env();
    let text = server_log_to_file(&env, &[], "listening on").await?;
    assert!(text.contains("applied schema migration"), "{text}");
    assert!(!text.contains('\x1b'), "colour escapes in a file: {text:?}");

    let json = server_log_to_file(&env, &["--log-format", "json"], "listening on").await?;
    let events: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "INFO" && e["fields"]["message"].is_string()),
        "{json}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_gracefully_and_agents_are_told() -> anyhow::Result<()> {
    let env = env();
    let mut server = env.start_server(0, &[])?;
    let id = env.register_agent(&server, "told", &[])?;
    let agent = env.run_agent("told", &[])?;
    wait_status(&server, &[id], "Online").await?;
    server.proc.sigterm();
    let status = server.proc.wait_exit(DEADLINE)?;
    assert!(status.success(), "{status}");
    server.proc.wait_for_line("server stopped", DEADLINE)?;
    agent.wait_for_line("server said goodbye: server shutting down", DEADLINE)?;
    Ok(())
}

#[test]
fn secrets_and_keys_are_private_files() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let env = env();
    let server = env.start_server(0, &[])?;
    env.register_agent(&server, "private", &[])?;
    let mode = |p: std::path::PathBuf| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(&p)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(env.path("server"))?, 0o700);
    assert_eq!(mode(env.path("server/admin.token"))?, 0o600);
    assert_eq!(mode(env.path("server/ca.key"))?, 0o600);
    assert_eq!(mode(env.path("server/server.key"))?, 0o600);
    assert_eq!(mode(env.state_dir("private"))?, 0o700);
    assert_eq!(mode(env.state_dir("private").join("node.pem"))?, 0o600);
    // The token is stored hashed: its clear text is nowhere in the database.
    let token = server.token.clone();
    for file in ["server/drover.db", "server/drover.db-wal"] {
        let bytes = std::fs::read(env.path(file)).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{file}"
        );
    }
    Ok(())
}
