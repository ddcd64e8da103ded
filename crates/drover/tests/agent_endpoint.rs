//! The agent endpoint under attack: clients without a valid certificate, and peers sending
//! malformed, oversize or unexpected frames. None may harm the other agents' connections.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use drover_proto::{Hello, Inventory, Message, RefuseCode, StreamKind, StreamOpen};
use drover_testkit::{wait_status, Env, Server, DEADLINE};
use drover_tunnel::dial::{dial, Endpoint};
use drover_tunnel::{FrameCodec, Role, Tunnel, TunnelConfig};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env() -> Env {
    Env::new(env!("CARGO_BIN_EXE_drover")).unwrap()
}

type ClientAuth = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Dials the agent endpoint and starts a tunnel; the driver runs until the test ends.
async fn connect(server: &Server, auth: Option<ClientAuth>) -> anyhow::Result<Tunnel> {
    let tls = drover_client::pinned_tls(&server.fingerprint, &[drover_proto::ALPN_AGENT], auth)?;
    let target = Endpoint::parse(&server.url, 443)?;
    let stream = dial(&target, None, Arc::new(tls), DEADLINE).await?;
    let (tunnel, _incoming, driver) = Tunnel::start(stream, Role::Agent, &TunnelConfig::default());
    tokio::spawn(driver);
    Ok(tunnel)
}

fn hello(min: u32, max: u32) -> Message {
    Message::Hello(Hello {
        min_version: min,
        max_version: max,
        inventory: Inventory::default(),
        e2e_key: None,
        settings_parameter: None,
    })
}

fn control() -> Message {
    Message::Open(StreamOpen {
        kind: StreamKind::Control,
    })
}

/// How an exchange ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed the stream or the connection: it has said all it will.
    Closed,
    /// Nothing more came within the deadline: proves nothing about what the server would say.
    Silent,
}

/// Sends `raw` on a new stream and returns what the server answers until it closes.
async fn exchange(tunnel: &Tunnel, raw: &[u8]) -> (Vec<Result<Message, String>>, End) {
    // The server may already have closed the connection: then there is no answer at all.
    let Ok(mut stream) = tunnel.open().await else {
        return (Vec::new(), End::Closed);
    };
    if stream.write_all(raw).await.is_err() || stream.flush().await.is_err() {
        return (Vec::new(), End::Closed);
    }
    let mut framed = FrameCodec::framed(stream);
    let mut answers = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, framed.next()).await {
            Err(_) => return (answers, End::Silent),
            Ok(None) => return (answers, End::Closed),
            Ok(Some(next)) => answers.push(next.map_err(|e| e.to_string())),
        }
    }
}

/// The server ended the exchange without a Welcome.
fn refused_without_welcome((answers, end): &(Vec<Result<Message, String>>, End)) -> bool {
    *end == End::Closed
        && answers
            .iter()
            .all(|a| !matches!(a, Ok(Message::Welcome(_))))
}

fn encode(msgs: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for m in msgs {
        drover_proto::encode(m, &mut buf).unwrap();
    }
    buf.to_vec()
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
async fn clients_without_a_node_certificate_from_this_ca_cannot_reach_the_agent_endpoint(
) -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let real = env.register_agent(&server, "real", &[])?;

    // No client certificate: TLS completes (the API needs none), the agent endpoint says nothing.
    let tunnel = connect(&server, None).await?;
    let ex = exchange(&tunnel, &encode(&[control(), hello(1, 1)])).await;
    assert!(refused_without_welcome(&ex), "{ex:?}");
    drover_testkit::wait_until("the refusal to be counted", DEADLINE, || async {
        Ok((refused_count(&server, "no_certificate").await? >= 1).then_some(()))
    })
    .await?;

    // A certificate from another CA, even one naming a real node, fails the handshake.
    let other_ca = drover_pki::CertificateAuthority::generate("impostor CA")?;
    let key = drover_pki::NodeKey::generate()?;
    let (cert, _) = other_ca.sign_node_csr(&key.csr_pem, &real, Duration::from_secs(3600))?;
    let auth = (
        drover_pki::certs_from_pem(&cert)?,
        drover_pki::key_from_pem(&key.key_pem)?,
    );
    match connect(&server, Some(auth)).await {
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.contains("certificate") || e.contains("alert"),
                "not a TLS refusal: {e}"
            );
        }
        Ok(tunnel) => {
            // TLS 1.3 reports a rejected client certificate on the first read.
            let ex = exchange(&tunnel, &encode(&[control(), hello(1, 1)])).await;
            assert!(refused_without_welcome(&ex), "{ex:?}");
        }
    }
    let node = server.client()?.get_node(&real).await?;
    assert_eq!(node.status, "ConnectionLost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversize_and_unexpected_frames_are_refused_without_harming_other_agents(
) -> anyhow::Result<()> {
    let env = env();
    let server = env.start_server(0, &[])?;
    let bystander = env.register_agent(&server, "bystander", &[])?;
    let agent = env.run_agent("bystander", &[])?;
    wait_status(&server, std::slice::from_ref(&bystander), "Online").await?;

    let attacker = env.register_agent(&server, "attacker", &[])?;
    let identity = drover_agent::Identity::load(&env.state_dir("attacker"))?;
    let auth = identity.client_auth()?;

    // Malformed JSON in a frame.
    let tunnel = connect(&server, Some(identity.client_auth()?)).await?;
    let mut raw = encode(&[control()]);
    raw.extend_from_slice(&10u32.to_be_bytes());
    raw.extend_from_slice(b"not json!!");
    let (answers, _) = exchange(&tunnel, &raw).await;
    assert!(
        matches!(answers.first(), Some(Ok(Message::Error { code, .. })) if code == "bad_frame"),
        "{answers:?}"
    );

    // A length prefix far beyond the limit: refused before the body is read.
    let tunnel = connect(&server, Some(identity.client_auth()?)).await?;
    let mut raw = encode(&[control()]);
    raw.extend_from_slice(&u32::MAX.to_be_bytes());
    raw.extend_from_slice(&[0u8; 1024]);
    let (answers, _) = exchange(&tunnel, &raw).await;
    match answers.first() {
        Some(Ok(Message::Error { code, message })) => {
            assert_eq!(code, "bad_frame");
            assert!(message.contains("exceeds the limit"), "{message}");
        }
        other => panic!("expected an oversize error, got {other:?}"),
    }

    // A message out of place (a Welcome from the agent) where Hello belongs.
    let tunnel = connect(&server, Some(identity.client_auth()?)).await?;
    let welcome = Message::Welcome(drover_proto::Welcome {
        version: 1,
        node_id: attacker.clone(),
        heartbeat_secs: 1,
        settings: None,
    });
    let ex = exchange(&tunnel, &encode(&[control(), welcome])).await;
    assert!(refused_without_welcome(&ex), "{ex:?}");

    // A Hello whose inventory would put escapes and megabytes in the store: refused, stored
    // nothing.
    let tunnel = connect(&server, Some(identity.client_auth()?)).await?;
    let hostile = Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        inventory: Inventory {
            hostname: format!("\u{1b}]0;pwned\u{7}{}", "x".repeat(100_000)),
            ..Inventory::default()
        },
        e2e_key: None,
        settings_parameter: None,
    });
    let (answers, _) = exchange(&tunnel, &encode(&[control(), hostile])).await;
    match answers.first() {
        Some(Ok(Message::Refused(r))) => {
            assert!(r.message.contains("inventory hostname"), "{}", r.message);
        }
        other => panic!("expected a refusal of the inventory, got {other:?}"),
    }
    let stored = server.client()?.get_node(&attacker).await?;
    assert!(
        !stored.inventory.hostname.contains('\u{1b}'),
        "{}",
        stored.inventory.hostname
    );

    // No protocol version in common.
    let tunnel = connect(&server, Some(auth)).await?;
    let (answers, _) = exchange(&tunnel, &encode(&[control(), hello(90, 99)])).await;
    match answers.first() {
        Some(Ok(Message::Refused(r))) => {
            assert_eq!(r.code, RefuseCode::Version);
            assert!(
                r.message.contains("no common protocol version"),
                "{}",
                r.message
            );
        }
        other => panic!("expected a version refusal, got {other:?}"),
    }

    // Raw garbage instead of TLS on the same port.
    let mut tcp = tokio::net::TcpStream::connect(server.url.trim_start_matches("https://")).await?;
    tcp.write_all(&[0xde; 4096]).await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut sink)).await;

    // The bystander never noticed: still Online on its first connection, and the API answers.
    wait_status(&server, &[bystander], "Online").await?;
    assert_eq!(
        agent.output().matches("connected").count(),
        1,
        "{}",
        agent.output()
    );
    let node = server.client()?.get_node(&attacker).await?;
    assert_eq!(node.status, "ConnectionLost");
    Ok(())
}
