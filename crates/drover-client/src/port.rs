//! Port sessions from the client: one HTTP/1.1 request upgraded to `drover-mux/1` carries a
//! yamux connection (the transport agents use), on which each forwarded TCP connection is a
//! stream of its own. Measured against a WebSocket per connection, this saves the masking of
//! every byte a client sends and a TLS handshake per connection (BENCHMARKS.md, section 5).

use bytes::Bytes;
use drover_proto::{Message, StreamKind, StreamOpen, MUX_UPGRADE};
use drover_tunnel::{into_raw, FrameCodec, Raw, Role, Stream, Tunnel, TunnelConfig};
use futures::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper::header;
use hyper_util::rt::TokioIo;

use crate::{Client, ClientError};

/// Why a forwarded connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node refused this one connection; the forward stays up. `code` is
    /// `forward_denied` (the deny list) or `forward_failed` (resolving or connecting).
    #[error("{message}")]
    Refused { code: String, message: String },
    /// The session's connection failed (or the session ended).
    #[error("the session's connection failed: {0}")]
    Lost(String),
}

/// An attached port session.
pub struct PortTunnel {
    tunnel: Tunnel,
    driver: tokio::task::JoinHandle<()>,
    /// The agent's end-to-end key, once checked, and the target the handshake is bound to:
    /// every connection is sealed with them.
    sealed: Option<(Vec<u8>, String)>,
}

impl Drop for PortTunnel {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl PortTunnel {
    /// A new connection to the session's target, through the node.
    pub async fn connect(&self) -> Result<Raw<Stream>, ConnectError> {
        let lost = |e: String| ConnectError::Lost(e);
        let s = self.tunnel.open().await.map_err(|e| lost(e.to_string()))?;
        let mut framed = FrameCodec::framed(s);
        framed
            .send(Message::Open(StreamOpen {
                kind: StreamKind::Forward,
            }))
            .await
            .map_err(|e| lost(e.to_string()))?;
        match framed.next().await {
            Some(Ok(Message::ForwardConnected)) => Ok(into_raw(framed)),
            Some(Ok(Message::Error { code, message })) => {
                Err(ConnectError::Refused { code, message })
            }
            Some(Ok(other)) => Err(lost(format!("unexpected {}", other.kind()))),
            Some(Err(e)) => Err(lost(e.to_string())),
            None => Err(lost(
                "the server closed the stream (the session has ended)".into(),
            )),
        }
    }

    /// Seals every connection from now on for the agent whose key this is (checked with
    /// [`Client::check_e2e`]), bound to the target the user asked for
    /// ([`drover_proto::target_label`]): an agent sent elsewhere fails the handshake.
    pub fn seal_with(&mut self, agent_key: Vec<u8>, target: String) {
        self.sealed = Some((agent_key, target));
    }

    /// Carries one local connection through the session until both sides are done: a new
    /// connection to the target, sealed end to end when the session is.
    pub async fn carry<L>(&self, local: &mut L) -> Result<(), ConnectError>
    where
        L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut stream = self.connect().await?;
        let r = match &self.sealed {
            None => drover_tunnel::splice(local, &mut stream).await,
            Some((key, target)) => {
                let t = drover_tunnel::e2e::initiate(&mut stream, key, target)
                    .await
                    .map_err(|e| ConnectError::Lost(e.to_string()))?;
                drover_tunnel::e2e::sealed_splice(local, &mut stream, &t).await
            }
        };
        r.map(|_| ()).map_err(|e| ConnectError::Lost(e.to_string()))
    }

    /// Tells the server the session is over, so that it ends now rather than after the resume
    /// window, and waits (briefly) for the server to close the connection.
    pub async fn goodbye(&self, reason: &str) {
        if let Ok(s) = self.tunnel.open().await {
            let mut framed = FrameCodec::framed(s);
            let _ = framed
                .send(Message::Goodbye {
                    reason: reason.to_string(),
                })
                .await;
            let wait = std::time::Duration::from_secs(2);
            let _ = tokio::time::timeout(wait, self.tunnel.closed()).await;
        }
        self.tunnel.close();
    }

    /// Resolves when the session's connection has ended (the session ended, or the network).
    pub async fn closed(&self) {
        self.tunnel.closed().await
    }
}

impl Client {
    /// Checks a sealed session's offer: its CA certificate is the one this client pins, that
    /// CA issued the node's certificate, and the node's key signed the agent's end-to-end key.
    /// Returns the key and its SHA-256 (hex), for the user's line.
    pub fn check_e2e(
        &self,
        node_id: &str,
        offer: &drover_api::E2eOffer,
    ) -> Result<(Vec<u8>, String), ClientError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let bad = |what: &str| ClientError::Decode(format!("end-to-end offer: {what}"));
        let ca = b64
            .decode(&offer.ca_certificate)
            .map_err(|_| bad("CA certificate"))?;
        let node = b64
            .decode(&offer.node_certificate)
            .map_err(|_| bad("node certificate"))?;
        let key = b64.decode(&offer.public_key).map_err(|_| bad("key"))?;
        let sig = b64.decode(&offer.signature).map_err(|_| bad("signature"))?;
        if drover_pki::fingerprint(&ca) != self.ca_fingerprint {
            return Err(bad("the CA certificate is not the one this client pins"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        drover_pki::verify_e2e_key(&ca, &node, node_id, &key, &sig, now)?;
        let fp = drover_pki::fingerprint(&key);
        Ok((key, fp))
    }

    /// Certifies `public_key` for SSH to `node` through a Drover session.
    pub async fn ssh_certificate(
        &self,
        req: &drover_api::SshCertificateRequest,
    ) -> Result<drover_api::SshCertificate, ClientError> {
        self.call(reqwest::Method::POST, "/api/v1/ssh/certificate", Some(req))
            .await
    }

    /// The server's SSH user CA public key (one OpenSSH line).
    pub async fn ssh_ca(&self) -> Result<String, ClientError> {
        let resp = self.stream_get("/api/v1/ssh/ca").await?;
        let text = resp.text().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            detail: crate::chain(&e),
        })?;
        Ok(text.trim().to_string())
    }

    /// Attaches to a live port session.
    pub async fn attach_port(&self, id: &str) -> Result<PortTunnel, ClientError> {
        let transport = |detail: String| ClientError::Transport {
            url: self.base.clone(),
            detail,
        };
        let tls = self.connect_tls().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| transport(format!("HTTP: {e}")))?;
        let conn = tokio::spawn(conn.with_upgrades());
        let authority = self.authority()?;
        let mut req = hyper::Request::get(format!("/api/v1/sessions/{}/tunnel", crate::seg(id)))
            .header(header::HOST, authority)
            .header(header::UPGRADE, MUX_UPGRADE)
            .header(header::CONNECTION, "upgrade");
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Decode(format!("building the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport(format!("HTTP: {e}")))?;
        if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            use http_body_util::BodyExt;
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            conn.abort();
            return Err(crate::api_error(status, &body));
        }
        let io = hyper::upgrade::on(resp)
            .await
            .map_err(|e| transport(format!("upgrade: {e}")))?;
        let (tunnel, _incoming, driver) =
            Tunnel::start(TokioIo::new(io), Role::Agent, &TunnelConfig::default());
        let driver = tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %e, "the session tunnel ended");
            }
        });
        Ok(PortTunnel {
            tunnel,
            driver,
            sealed: None,
        })
    }
}
