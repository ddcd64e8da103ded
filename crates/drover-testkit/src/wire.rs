//! Speaking the agent protocol by hand, as a broken or hostile agent would.

use std::sync::Arc;

use anyhow::Context;
use drover_proto::{Hello, Inventory, Message, StreamKind, StreamOpen};
use drover_tunnel::dial::{dial, Endpoint};
use drover_tunnel::{FrameCodec, Framed, Incoming, Role, Stream, Tunnel, TunnelConfig};
use futures::{SinkExt, StreamExt};

use crate::{Server, DEADLINE};

/// A client certificate chain and its key.
pub type Auth = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Dials the agent endpoint with `auth` and starts a tunnel, whose driver runs until the test
/// ends. Returns the streams the server opens too.
pub async fn connect(server: &Server, auth: Auth) -> anyhow::Result<(Tunnel, Incoming)> {
    let tls =
        drover_client::pinned_tls(&server.fingerprint, &[drover_proto::ALPN_AGENT], Some(auth))?;
    let target = Endpoint::parse(&server.url, 443)?;
    let stream = dial(&target, None, Arc::new(tls), DEADLINE).await?;
    let (tunnel, incoming, driver) = Tunnel::start(stream, Role::Agent, &TunnelConfig::default());
    tokio::spawn(driver);
    Ok((tunnel, incoming))
}

/// An agent connection after its Hello: the control stream and the server's answer.
pub struct Hand {
    pub tunnel: Tunnel,
    pub incoming: Incoming,
    pub control: Framed<Stream>,
    pub answer: Message,
}

/// Connects with `auth` and says Hello (speaking every version this build knows).
pub async fn hello(server: &Server, auth: Auth) -> anyhow::Result<Hand> {
    let (tunnel, incoming) = connect(server, auth).await?;
    let mut control = FrameCodec::framed(tunnel.open().await?);
    control
        .send(Message::Open(StreamOpen {
            kind: StreamKind::Control,
        }))
        .await?;
    control
        .send(Message::Hello(Hello {
            min_version: 1,
            max_version: drover_proto::PROTOCOL_VERSION,
            inventory: Inventory::default(),
            e2e_key: None,
            settings_parameter: None,
        }))
        .await?;
    let answer = next(&mut control).await?;
    Ok(Hand {
        tunnel,
        incoming,
        control,
        answer,
    })
}

/// The next message on `framed` that is not a heartbeat; fails after DEADLINE or on close.
pub async fn next(framed: &mut Framed<Stream>) -> anyhow::Result<Message> {
    loop {
        let msg = tokio::time::timeout(DEADLINE, framed.next())
            .await
            .context("nothing from the server in time")?
            .context("the server closed the stream")??;
        if !matches!(msg, Message::Ping { .. } | Message::Pong { .. }) {
            return Ok(msg);
        }
    }
}
