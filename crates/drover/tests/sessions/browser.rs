//! The session stream as a browser reaches it: a WebSocket whose token rides in a subprotocol,
//! since a browser cannot set headers on one.

use drover_proto::SessionFrame;
use drover_testkit::DEADLINE;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::{env, node, set_prefs, AS_ROOT};

async fn connect(
    url: &str,
    fingerprint: &str,
    path: &str,
    protocols: &str,
) -> anyhow::Result<
    Result<
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        u16,
    >,
> {
    let authority = url.trim_start_matches("https://");
    let tls = drover_client::pinned_tls(fingerprint, &[b"http/1.1"], None)?;
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await?;
    let mut req = format!("wss://{authority}{path}").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocols)?);
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(Ok(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(Err(resp.status().as_u16())),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_attaches_with_its_token_in_a_subprotocol() -> anyhow::Result<()> {
    let env = env();
    let (server, id, _agent) = node(&env, &[], &[]).await?;
    set_prefs(&env, AS_ROOT)?;
    let client = server.client()?;
    let s = client
        .start_session(&drover_api::StartSession {
            node: id.clone(),
            command: Some("read line; echo got-$line".into()),
            ..Default::default()
        })
        .await?;
    let path = format!("/api/v1/sessions/{}/stream", s.id);

    // No token, a wrong one, or the token on another endpoint: refused.
    let none = connect(&server.url, &server.fingerprint, &path, "drover.session.v1").await?;
    assert_eq!(none.err(), Some(401));
    let wrong = "drover.session.v1, drover.bearer.drv_wrong";
    let bad = connect(&server.url, &server.fingerprint, &path, wrong).await?;
    assert_eq!(bad.err(), Some(401));
    let protocols = format!("drover.session.v1, drover.bearer.{}", server.token);
    let elsewhere = connect(
        &server.url,
        &server.fingerprint,
        "/api/v1/nodes",
        &protocols,
    )
    .await?;
    assert!(
        elsewhere.is_err(),
        "the subprotocol token opened a non-stream endpoint"
    );

    let mut ws = connect(&server.url, &server.fingerprint, &path, &protocols)
        .await?
        .map_err(|s| anyhow::anyhow!("refused with {s}"))?;
    ws.send(Message::Binary(
        SessionFrame::Ack {
            stdout: 0,
            stderr: 0,
        }
        .to_bytes(),
    ))
    .await?;
    ws.send(Message::Binary(
        SessionFrame::Input {
            offset: 0,
            data: bytes::Bytes::from_static(b"hello\r"),
        }
        .to_bytes(),
    ))
    .await?;
    let mut screen = String::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let code = loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed; screen: {screen}"))??;
        let Message::Binary(b) = msg else { continue };
        match SessionFrame::decode(b)? {
            SessionFrame::Output { data, .. } => screen.push_str(&String::from_utf8_lossy(&data)),
            SessionFrame::Closed(c) => break c.exit_code,
            _ => {}
        }
    };
    assert!(screen.contains("got-hello"), "{screen}");
    assert_eq!(code, Some(0));
    Ok(())
}
