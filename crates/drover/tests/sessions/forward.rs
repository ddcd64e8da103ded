//! Port forwarding end to end: `drover forward` through a real server and agent to TCP servers
//! this test runs, on the node and on a "remote" host (another loopback address).

use std::net::SocketAddr;

use drover_testkit::{wait_until, Env, Proc, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{env, node};

/// An echo server; stops with the returned guard.
pub struct Echo {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn echo(bind: &str) -> anyhow::Result<Echo> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            conns.spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(Echo { addr, task })
}

/// `drover forward n1 ARGS`, once it listens: the process, its local port, its session.
pub(super) fn forward(env: &Env, args: &[&str]) -> anyhow::Result<(Proc, u16, String)> {
    let mut cmd = env.command();
    cmd.args(["forward", "n1"]).args(args);
    let p = Proc::spawn("forward", cmd)?;
    let line = p.wait_for_line("Forwarding ", DEADLINE)?;
    let port = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {line:?}"))?;
    let session = line
        .split("(session ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| anyhow::anyhow!("no session in {line:?}"))?
        .to_string();
    Ok((p, port, session))
}

/// Bytes that differ per connection, so that a crossed stream shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `len` bytes through the forward and reads the echo back whole.
async fn round_trip(port: u16, seed: u64, len: usize) -> anyhow::Result<bool> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut r, mut w) = s.into_split();
    let sent = pattern(seed, len);
    let data = sent.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut got = Vec::with_capacity(len);
    r.read_to_end(&mut got).await?;
    writer.await??;
    Ok(got == sent)
}

/// Connections `count` at once, each with its own bytes; true when every one came back intact.
async fn parallel(port: u16, count: u64, len: usize) -> anyhow::Result<()> {
    let mut all = tokio::task::JoinSet::new();
    for seed in 0..count {
        all.spawn(round_trip(port, seed, len));
    }
    let mut intact = 0;
    while let Some(r) = all.join_next().await {
        if r?? {
            intact += 1;
        }
    }
    anyhow::ensure!(
        intact == count,
        "{intact} of {count} connections came back intact"
    );
    Ok(())
}

/// Waits for a session to end and returns it.
async fn ended(
    server: &drover_testkit::Server,
    id: &str,
) -> anyhow::Result<drover_api::SessionView> {
    let client = server.client()?;
    wait_until("the session to end", DEADLINE, || async {
        let s = client.get_session(id).await?;
        Ok(s.ended_at.is_some().then_some(s))
    })
    .await
}

/// A local connection through a forward that the node refuses ends, with nothing read.
async fn refused(port: u16) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await?
        .unwrap_or(0);
    anyhow::ensure!(n == 0, "a refused connection read {n} bytes");
    Ok(())
}

const LEN: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_connections_arrive_intact_on_the_node_and_through_it() -> anyhow::Result<()>
{
    let env = env();
    let (server, _id, _agent) = node(&env, &[], &[]).await?;
    let local = echo("127.0.0.1:0").await?;
    let remote = echo("127.0.0.2:0").await?;

    let (mut to_node, port, sid) =
        forward(&env, &["--remote-port", &local.addr.port().to_string()])?;
    parallel(port, 50, LEN).await?;
    let (mut through, port2, sid2) = forward(
        &env,
        &[
            "--remote-host",
            "127.0.0.2",
            "--remote-port",
            &remote.addr.port().to_string(),
            "--reason",
            "INC-7",
        ],
    )?;
    parallel(port2, 50, LEN).await?;

    // Ctrl-C (here SIGTERM) ends the forward and its session at once, counted.
    to_node.sigterm();
    assert!(to_node.wait_exit(DEADLINE)?.success());
    let s = ended(&server, &sid).await?;
    assert_eq!((s.kind.as_str(), s.status.as_str()), ("Port", "Terminated"));
    assert_eq!(s.document, "StartPortForwardingSession");
    assert_eq!(s.target, format!("localhost:{}", local.addr.port()));
    assert_eq!(s.connections, 50);
    // Sealed end to end by default: the server counts what it relayed, the bytes plus each
    // connection's handshake and an 18-byte frame header and tag per sealed chunk (chunks are
    // what one read of the local socket gives: large here, but not always 64 KiB).
    assert!(s.end_to_end);
    let plain = 50 * LEN as i64;
    for relayed in [s.bytes_in, s.bytes_out] {
        assert!(
            relayed >= plain && relayed < plain + plain / 20,
            "{relayed} bytes relayed for {plain}"
        );
    }

    // Terminating a forward session closes its open connections and ends the client.
    let held = TcpStream::connect(("127.0.0.1", port2)).await?;
    let (mut r, mut w) = held.into_split();
    w.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    r.read_exact(&mut buf).await?;
    env.cli_ok(&["sessions", "terminate", &sid2])?;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, r.read_to_end(&mut rest)).await?;
    assert!(rest.is_empty());
    let status = through.wait_exit(DEADLINE)?;
    assert_eq!(status.code(), Some(1));
    through.wait_for_line("terminated by admin", DEADLINE)?;
    let s = ended(&server, &sid2).await?;
    assert_eq!(s.target, format!("127.0.0.2:{}", remote.addr.port()));
    assert_eq!((s.connections, s.reason.as_str()), (51, "INC-7"));
    assert_eq!(s.detail, "the session was terminated by admin");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_denied_connections_close_alone_and_the_forward_stays_up() -> anyhow::Result<()>
{
    let env = env();
    let server = env.start_server_with_env(0, &["--forward-deny", "127.0.0.0/8"], &[])?;
    let id = env.register_agent(&server, "n1", &[])?;
    let _agent = env.run_agent_with("n1", &[], &[])?;
    drover_testkit::wait_status(&server, std::slice::from_ref(&id), "Online").await?;

    // The cloud metadata address, however it is written.
    let (mut meta, port, _) = forward(&env, &["--remote-host", "169.254.169.254"])?;
    refused(port).await?;
    meta.wait_for_line(
        "169.254.169.254, which is in the deny list (169.254.0.0/16)",
        DEADLINE,
    )?;
    // The forward stays up: the next connection gets the same answer.
    refused(port).await?;
    meta.wait_for_lines("in the deny list", 2, DEADLINE)?;
    assert!(meta.exited().is_none());
    let (_v6, port, _) = forward(&env, &["--remote-host", "[fd00:ec2::254]"])?;
    refused(port).await?;

    // A name is checked on what it resolves to (the operator's list denies loopback here).
    let local = echo("127.0.0.1:0").await?;
    let (names, port, _) = forward(
        &env,
        &[
            "--remote-host",
            "localhost",
            "--remote-port",
            &local.addr.port().to_string(),
        ],
    )?;
    refused(port).await?;
    names.wait_for_line(
        "localhost resolves to 127.0.0.1, which is in the deny list (127.0.0.0/8)",
        DEADLINE,
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refused_on_the_node_closes_with_a_message() -> anyhow::Result<()> {
    let env = env();
    let (_server, _id, _agent) = node(&env, &[], &[]).await?;
    // A port nothing listens on: bound, then closed.
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let (p, port, _) = forward(&env, &["--remote-port", &closed.to_string()])?;
    refused(port).await?;
    p.wait_for_line("Connection refused", DEADLINE)?;
    let bad = env.cli(&["forward", "n1", "--remote-host", "a;b"])?;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("parameter \"host\""), "{err}");
    Ok(())
}

/// Sends `data` through the forward and checks the echo.
pub(super) async fn echo_through(port: u16, data: &[u8]) -> anyhow::Result<()> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut r, mut w) = s.into_split();
    let sent = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        w.shutdown().await
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await?;
    writer.await??;
    anyhow::ensure!(got == data, "the echo differs");
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_relays_none_of_an_end_to_end_sessions_plaintext() -> anyhow::Result<()> {
    let env = env();
    let tap = env.path("relay.tap");
    let tap_var = tap.display().to_string();
    let (server, id, _agent) = node(&env, &[("DROVER_TEST_RELAY_TAP", &tap_var)], &[]).await?;
    let local = echo("127.0.0.1:0").await?;
    let port_arg = local.addr.port().to_string();
    let marker = b"PLAINTEXT-MARKER-the-server-must-not-see-".repeat(2000);

    // By default (endToEndEncryption: optional) the CLI and the agent seal the session.
    let (mut sealed, port, sid) = forward(&env, &["--remote-port", &port_arg])?;
    sealed.wait_for_line("is end-to-end encrypted (agent key sha256:", DEADLINE)?;
    echo_through(port, &marker).await?;
    sealed.sigterm();
    sealed.wait_exit(DEADLINE)?;
    let s = ended(&server, &sid).await?;
    assert!(s.end_to_end);
    let seen = std::fs::read(&tap)?;
    assert!(
        seen.len() > 2 * marker.len(),
        "the tap saw {} bytes",
        seen.len()
    );
    assert!(
        !contains(&seen, b"PLAINTEXT-MARKER"),
        "the server saw the plaintext"
    );

    // Off: the same bytes cross in the clear, and the tap sees them (so it would have above).
    super::set_prefs(&env, "  endToEndEncryption: \"off\"\n")?;
    std::fs::write(&tap, b"")?;
    let (mut plain, port, sid) = forward(&env, &["--remote-port", &port_arg])?;
    echo_through(port, &marker).await?;
    plain.sigterm();
    plain.wait_exit(DEADLINE)?;
    assert!(plain
        .output()
        .contains("is not end-to-end encrypted (the server can read it)"));
    assert!(!plain.output().contains("is end-to-end encrypted"));
    assert!(!ended(&server, &sid).await?.end_to_end);
    assert!(contains(&std::fs::read(&tap)?, b"PLAINTEXT-MARKER"));

    // Required: a client that cannot seal is refused, saying why.
    super::set_prefs(&env, "  endToEndEncryption: required\n")?;
    let refused = server
        .client()?
        .start_session(&drover_api::StartSession {
            node: id,
            document: Some("StartSSHSession".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(409));
    assert!(
        refused.to_string().contains("must be end-to-end encrypted"),
        "{refused}"
    );
    let (required, port, _) = forward(&env, &["--remote-port", &port_arg])?;
    echo_through(port, b"still works").await?;
    required.wait_for_line("is end-to-end encrypted", DEADLINE)?;
    Ok(())
}
