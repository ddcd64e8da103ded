//! Slow and greedy clients on the one port: half-sent requests, connections that never
//! authenticate, many connections from one address or with one node certificate, and agents
//! that open streams they have no use for. None may hold resources for long or keep real
//! agents and operators out.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use drover_proto::{Message, StreamKind, StreamOpen};
use drover_testkit::{wait_status, wire, Env, Server, DEADLINE};
use drover_tunnel::{FrameCodec, Tunnel};
use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

fn server_addr(server: &Server) -> SocketAddr {
    server.url.trim_start_matches("https://").parse().unwrap()
}

/// A TLS connection to the API from `source` (another loopback address than the agents').
async fn tls_from(
    server: &Server,
    source: &str,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    let tcp = socket.connect(server_addr(server)).await?;
    let tls = drover_client::pinned_tls(&server.fingerprint, &[b"http/1.1"], None)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await?)
}

/// Waits until the server closes `stream` (EOF or an error); fails after DEADLINE.
async fn closed_by_server<S: AsyncReadExt + Unpin>(stream: &mut S) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the server kept the connection open for {DEADLINE:?}"))
}

/// Sends one HTTP/1.1 request and reads its whole response (by Content-Length).
async fn http_exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    request: &str,
) -> anyhow::Result<String> {
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(
                n > 0,
                "connection closed mid-response: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return Ok(text.into_owned());
                }
            }
        }
    })
    .await?
}

async fn refused_count(server: &Server, reason: &str) -> anyhow::Result<u64> {
    let metrics = server.client()?.get_text("/metrics").await?;
    Ok(metrics
        .lines()
        .find(|l| {
            l.starts_with("drover_agent_refused_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_capped_while_agents_and_operators_get_in(
) -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(
        0,
        &[
            "--handshake-timeout",
            "2s",
            "--max-unauthenticated-per-address",
            "20",
        ],
    )?;

    // A client that authenticates is not cut off at the handshake deadline. It connects first,
    // so its deadline passes before the slow clients' deadlines do.
    let mut authed = tls_from(&server, "127.0.0.3").await?;
    let nodes = format!(
        "GET /api/v1/nodes?limit=1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
        server.token
    );
    let listed = http_exchange(&mut authed, &nodes).await?;
    assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
    assert!(
        !listed.to_ascii_lowercase().contains("connection: close"),
        "{listed}"
    );
    // A client that has not authenticated is told to take a new connection for its next
    // request, and this one is closed: never reset later under a request it has sent.
    let mut anonymous = tls_from(&server, "127.0.0.4").await?;
    let ca = http_exchange(
        &mut anonymous,
        "GET /api/v1/ssh/ca HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await?;
    assert!(ca.starts_with("HTTP/1.1 200"), "{ca}");
    assert!(
        ca.to_ascii_lowercase().contains("connection: close"),
        "{ca}"
    );
    closed_by_server(&mut anonymous).await?;
    let healthz = http_exchange(
        &mut authed,
        &nodes.replace("/api/v1/nodes?limit=1", "/healthz"),
    )
    .await?;
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");

    // Slowloris from 127.0.0.2: 20 connections, each with half a request head.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut tls = tls_from(&server, "127.0.0.2").await?;
        tls.write_all(b"GET /api/v1/nodes HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await?;
        tls.flush().await?;
        slow.push(tls);
    }
    // The 21st from that address is closed at once, before TLS completes.
    match tls_from(&server, "127.0.0.2").await {
        Err(_) => {}
        Ok(mut tls) => closed_by_server(&mut tls).await?,
    }
    assert_eq!(refused_count(&server, "address_cap").await?, 1);

    // Meanwhile an agent (from 127.0.0.1) registers and comes online, and operators are served.
    let node = env.register_agent(&server, "agent", &[])?;
    let agent = env.run_agent("agent", &[])?;
    wait_status(&server, std::slice::from_ref(&node), "Online").await?;
    env.cli_ok(&["nodes", "list"])?;

    // Every slow connection is closed by the handshake deadline.
    for tls in &mut slow {
        closed_by_server(tls).await?;
    }
    // The authenticated connection is past its own deadline now, and still served.
    let again = http_exchange(&mut authed, &nodes).await?;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    // A key given twice is refused, never silently the last one (a proxy may check the first).
    let body = r#"{"registration_limit":1,"expires_in_secs":60,"registration_limit":100000}"#;
    let twice = http_exchange(
        &mut authed,
        &format!(
            "POST /api/v1/activations HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            server.token,
            body.len()
        ),
    )
    .await?;
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    assert!(twice.contains("duplicate field"), "{twice}");

    // The agent kept its one connection through all of it.
    assert_eq!(
        agent.output().matches("connected").count(),
        1,
        "{}",
        agent.output()
    );
    Ok(())
}

fn encode(msgs: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for m in msgs {
        drover_proto::encode(m, &mut buf).unwrap();
    }
    buf.to_vec()
}

async fn connect(server: &Server, auth: wire::Auth) -> anyhow::Result<Tunnel> {
    Ok(wire::connect(server, auth).await?.0)
}

async fn tunnel_closed(tunnel: &Tunnel) -> anyhow::Result<()> {
    tokio::time::timeout(DEADLINE, tunnel.closed())
        .await
        .map_err(|_| anyhow::anyhow!("the server kept the tunnel open for {DEADLINE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_cannot_pin_connections_streams_or_time() -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &["--handshake-timeout", "5s"])?;
    env.register_agent(&server, "greedy", &[])?;
    let identity = drover_agent::Identity::load(&env.state_dir("greedy"))?;

    // Before its Hello a connection is unauthenticated: bounded by the handshake deadline and
    // the unauthenticated caps (the per-node cap counts only connections whose certificate
    // proved current, so a retired certificate cannot take the real agent's slots).
    let first = &connect(&server, identity.client_auth()?).await?;
    let second = &connect(&server, identity.client_auth()?).await?;

    // Streams opened before the Hello beyond a tiny backlog are reset at once: they cannot
    // each pin a 256 KiB window.
    let mut control = FrameCodec::framed(first.open().await?);
    control
        .send(Message::Open(StreamOpen {
            kind: StreamKind::Control,
        }))
        .await?;
    let mut reset = 0;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut s = first.open().await?;
        s.write_all(&[0u8; 1024]).await?;
        s.flush().await?;
        streams.push(s);
    }
    for s in &mut streams {
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
        {
            reset += 1;
        }
    }
    assert!(
        reset >= 47,
        "only {reset} of 50 unaccepted streams were reset"
    );

    // A connection that never says Hello is closed at the handshake deadline.
    tunnel_closed(second).await?;
    tunnel_closed(first).await?;

    // After its Hello, an agent that opens a second stream is disconnected.
    let wire::Hand {
        tunnel,
        mut control,
        answer,
        ..
    } = wire::hello(&server, identity.client_auth()?).await?;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    let mut extra = tunnel.open().await?;
    extra
        .write_all(&encode(&[Message::Ping { seq: 1 }]))
        .await?;
    extra.flush().await?;
    match wire::next(&mut control).await? {
        Message::Error { code, .. } => assert_eq!(code, "unexpected_stream"),
        other => panic!("expected an error naming the stream, got {other:?}"),
    }
    tunnel_closed(&tunnel).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_retires_the_old_certificate_and_renewals_are_rate_limited() -> anyhow::Result<()>
{
    let env = env();
    let server = env.start_server(0, &["--agent-cert-lifetime", "24s", "--heartbeat", "1s"])?;
    let id = env.register_agent(&server, "renewer", &[])?;
    let old = drover_agent::Identity::load(&env.state_dir("renewer"))?;

    // Right after registration, a renewal is refused: at most one per lifetime / 6.
    let wire::Hand {
        tunnel,
        mut control,
        answer,
        ..
    } = wire::hello(&server, old.client_auth()?).await?;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    let key = drover_pki::NodeKey::generate()?;
    control
        .send(Message::RenewCertificate {
            csr_pem: key.csr_pem,
        })
        .await?;
    match wire::next(&mut control).await? {
        Message::Error { code, message } => {
            assert_eq!(code, "renewal_failed");
            assert!(
                message.contains("renewals are allowed once every 4 s"),
                "{message}"
            );
        }
        other => panic!("expected the renewal to be refused, got {other:?}"),
    }
    tunnel.close();

    // The agent renews after two thirds of the lifetime and says it saved the new certificate;
    // from then on the old one is refused although it has not expired.
    let agent = env.run_agent("renewer", &[])?;
    agent.wait_for_line("renewed the node certificate", DEADLINE)?;
    server
        .proc
        .wait_for_line("the agent saved its renewed certificate", DEADLINE)?;
    let answer = wire::hello(&server, old.client_auth()?).await?.answer;
    match answer {
        Message::Refused(r) => assert!(r.message.contains("retired"), "{}", r.message),
        other => panic!("the old certificate was not refused: {other:?}"),
    }
    // The agent, on its renewed certificate, was not disturbed.
    wait_status(&server, &[id], "Online").await?;
    assert_eq!(
        agent.output().matches("connected").count(),
        1,
        "{}",
        agent.output()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_from_many_addresses_cannot_fill_the_server_against_agents(
) -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(
        0,
        &[
            "--max-unauthenticated",
            "20",
            "--max-unauthenticated-per-address",
            "10",
        ],
    )?;
    let node = env.register_agent(&server, "agent", &[])?;
    // Two attacker addresses fill every unauthenticated slot with half-sent requests.
    let mut slow = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..10 {
            let mut tls = tls_from(&server, source).await?;
            tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
            tls.flush().await?;
            slow.push(tls);
        }
    }
    // The agent still gets in: the oldest slow connection makes room.
    let _agent = env.run_agent("agent", &[])?;
    wait_status(&server, std::slice::from_ref(&node), "Online").await?;
    closed_by_server(&mut slow[0]).await?;
    assert!(refused_count(&server, "evicted").await? >= 1);
    Ok(())
}
