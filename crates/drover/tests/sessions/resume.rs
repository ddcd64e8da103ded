//! A client whose connection to the server is cut resumes its session with every byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use drover_testkit::{Proc, DEADLINE};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{env, node, set_prefs, AS_ROOT};

/// A TCP proxy that can drop every connection and refuse new ones (a network outage).
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    /// Connections refused while down: the client noticed and is trying again.
    refused: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (d, c, r) = (down.clone(), conns.clone(), refused.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    r.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Ok(Self {
            addr,
            down,
            refused,
            conns,
            accept,
        })
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Waits until the client has been refused `n` times during the outage.
    async fn wait_refused(&self, n: usize) -> anyhow::Result<()> {
        let r = self.refused.clone();
        drover_testkit::wait_until("the client to try to reconnect", DEADLINE, || {
            let r = r.clone();
            async move { Ok((r.load(Ordering::SeqCst) >= n).then_some(())) }
        })
        .await
    }

    fn heal(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Waits until the server has relayed at least `bytes` of session output (its metrics count
/// them as they pass, whether or not a client is attached).
async fn relayed_out(
    server: &drover_testkit::Server,
    bytes: u64,
    what: &str,
) -> anyhow::Result<()> {
    let client = server.client()?;
    drover_testkit::wait_until(what, DEADLINE, || {
        let client = client.clone();
        async move {
            let m = client.get_text("/metrics").await?;
            let out = m
                .lines()
                .find_map(|l| l.strip_prefix("drover_session_bytes_total{direction=\"out\"} "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            Ok((out >= bytes).then_some(()))
        }
    })
    .await
}

/// A node, and the CLI logged in to its server through a proxy.
async fn behind_proxy(
    env: &drover_testkit::Env,
) -> anyhow::Result<(drover_testkit::Server, Proc, Proxy)> {
    let (server, _id, agent) = node(env, &[], &[]).await?;
    set_prefs(env, AS_ROOT)?;
    let target: SocketAddr = server.url.trim_start_matches("https://").parse()?;
    let proxy = Proxy::start(target).await?;
    env.cli_ok(&[
        "login",
        "--server",
        &format!("https://{}", proxy.addr),
        "--token-file",
        &env.path("server/admin.token").to_string_lossy(),
        "--ca-fingerprint",
        &server.fingerprint,
    ])?;
    Ok((server, agent, proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_for_ten_seconds_resumes_with_no_gap_and_no_duplicate(
) -> anyhow::Result<()> {
    let env = env();
    let (server, _agent, proxy) = behind_proxy(&env).await?;
    let script = "for i in $(seq 1 150); do echo tick-$i; sleep 0.1; done";
    let mut shell = super::background_shell(&env, "shell", script)?;
    shell.wait_for_line("tick-10", DEADLINE)?;
    proxy.cut();
    // The outage lasts until the client has tried to come back and the node has printed 100
    // more ticks (10 s): the server has relayed "tick-1\n" to "tick-110\n", 882 bytes.
    proxy.wait_refused(1).await?;
    relayed_out(&server, 882, "10 s of output during the outage").await?;
    proxy.heal();
    assert_eq!(shell.wait_exit(DEADLINE * 2)?.code(), Some(0));
    let ticks: Vec<String> = shell
        .output()
        .lines()
        .filter(|l| l.starts_with("tick-"))
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = (1..=150).map(|i| format!("tick-{i}")).collect();
    assert_eq!(ticks, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_typed_while_cut_off_arrives_once() -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let env = env();
    let (_server, _agent, proxy) = behind_proxy(&env).await?;
    let mut child = env
        .command()
        .args(["shell", "n1", "--no-pty", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<String>| -> anyhow::Result<()> {
        while !seen.iter().any(|l| l == needle) {
            seen.push(rx.recv_timeout(DEADLINE)?);
        }
        Ok(())
    };
    for i in 1..=5 {
        writeln!(stdin, "in-{i}")?;
    }
    wait_for("in-5", &mut seen)?;
    proxy.cut();
    for i in 6..=10 {
        writeln!(stdin, "in-{i}")?;
    }
    // The outage lasts until the client has tried to come back twice with that input held.
    proxy.wait_refused(2).await?;
    proxy.heal();
    for i in 11..=15 {
        writeln!(stdin, "in-{i}")?;
    }
    drop(stdin);
    wait_for("in-15", &mut seen)?;
    assert!(child.wait()?.success());
    // The pipe is closed once the CLI exits: whatever it still held comes now.
    seen.extend(rx.iter());
    let expected: Vec<String> = (1..=15).map(|i| format!("in-{i}")).collect();
    assert_eq!(seen, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_whose_connection_drops_attaches_again_and_carries_new_connections(
) -> anyhow::Result<()> {
    let env = env();
    let (server, _agent, proxy) = behind_proxy(&env).await?;
    let echo = super::forward::echo("127.0.0.1:0").await?;
    let (mut fwd, port, sid) =
        super::forward::forward(&env, &["--remote-port", &echo.addr.port().to_string()])?;
    super::forward::echo_through(port, b"before the outage").await?;
    proxy.cut();
    fwd.wait_for_line("attaching again", DEADLINE)?;
    proxy.wait_refused(1).await?;
    proxy.heal();
    fwd.wait_for_line(&format!("attached again to session {sid}"), DEADLINE)?;
    // The same session, sealed as before, carries new connections.
    super::forward::echo_through(port, b"after the outage").await?;
    fwd.sigterm();
    assert!(fwd.wait_exit(DEADLINE)?.success());
    let client = server.client()?;
    let s = drover_testkit::wait_until("the session to end", DEADLINE, || {
        let client = client.clone();
        let sid = sid.clone();
        async move {
            let s = client.get_session(&sid).await?;
            Ok(s.ended_at.is_some().then_some(s))
        }
    })
    .await?;
    assert_eq!((s.connections, s.end_to_end), (2, true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_shell_cut_off_resumes_with_every_line_once() -> anyhow::Result<()> {
    let env = env();
    let (server, _agent, proxy) = behind_proxy(&env).await?;
    let mut cli = super::pty::PtyCli::spawn(&env, &["shell", "n1"], &[])?;
    cli.send(b"echo READY-$((6*7))\r").await?;
    cli.expect("READY-42", DEADLINE).await?;
    cli.send(b"for i in $(seq 1 60); do echo tick-$i; sleep 0.1; done; echo END-$((1+1))\r")
        .await?;
    cli.expect("tick-5\r", DEADLINE).await?;
    proxy.cut();
    // The outage lasts until the client has tried to come back and the shell has printed
    // every tick (the server counts its output: each "tick-N\r\n" line, and the END line).
    proxy.wait_refused(1).await?;
    // 60 lines of at least 8 bytes, beyond the prompt and echoes before them.
    relayed_out(&server, 600, "the loop to print during the outage").await?;
    proxy.heal();
    cli.expect("END-2", DEADLINE).await?;
    let text = cli.text();
    for i in 1..=60 {
        let line = format!("tick-{i}\r\n");
        assert_eq!(text.matches(&line).count(), 1, "{line:?} in:\n{text}");
    }
    cli.send(b"exit 0\r").await?;
    assert_eq!(cli.exit_code(DEADLINE).await?, 0);
    Ok(())
}
