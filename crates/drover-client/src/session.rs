//! Sessions from the client: start, list, show, terminate, download a recording, and attach
//! to a session's stream: a WebSocket over the same pinned TLS as the API, carrying binary
//! session frames.

use drover_api::{SessionList, SessionView, StartSession};
use drover_proto::SessionFrame;
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::{Client, ClientError};

/// The WebSocket subprotocol of session streams.
pub const SESSION_SUBPROTOCOL: &str = "drover.session.v1";

/// An attached session stream.
pub struct SessionSocket {
    ws: WebSocketStream<TlsStream<TcpStream>>,
}

impl SessionSocket {
    /// Sends one frame.
    pub async fn send(&mut self, f: &SessionFrame) -> Result<(), ClientError> {
        self.ws
            .send(WsMessage::Binary(f.to_bytes()))
            .await
            .map_err(|e| ClientError::Decode(format!("session stream: {e}")))
    }

    /// The next frame; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Result<SessionFrame, ClientError>> {
        loop {
            return match self.ws.next().await? {
                Ok(WsMessage::Binary(b)) => Some(
                    SessionFrame::decode(b)
                        .map_err(|e| ClientError::Decode(format!("session frame: {e}"))),
                ),
                Ok(WsMessage::Close(_)) => None,
                Ok(_) => continue,
                Err(e) => Some(Err(ClientError::Decode(format!("session stream: {e}")))),
            };
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A response body read as it arrives.
pub struct Download {
    resp: reqwest::Response,
    base: String,
}

impl Download {
    /// The next chunk; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        self.resp.chunk().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            detail: crate::chain(&e),
        })
    }
}

impl Client {
    pub async fn start_session(&self, req: &StartSession) -> Result<SessionView, ClientError> {
        self.call(Method::POST, "/api/v1/sessions", Some(req)).await
    }

    pub async fn list_sessions(
        &self,
        node: Option<&str>,
        active: bool,
        before: Option<&str>,
        limit: usize,
    ) -> Result<SessionList, ClientError> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("limit", &limit.to_string());
        if let Some(n) = node {
            q.append_pair("node", n);
        }
        if active {
            q.append_pair("active", "true");
        }
        if let Some(b) = before {
            q.append_pair("before", b);
        }
        let path = format!("/api/v1/sessions?{}", q.finish());
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn get_session(&self, id: &str) -> Result<SessionView, ClientError> {
        let path = format!("/api/v1/sessions/{}", crate::seg(id));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn terminate_session(&self, id: &str) -> Result<SessionView, ClientError> {
        let path = format!("/api/v1/sessions/{}/terminate", crate::seg(id));
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// The recording, to read chunk by chunk (never whole).
    pub async fn recording(&self, id: &str) -> Result<Download, ClientError> {
        let path = format!("/api/v1/sessions/{}/recording", crate::seg(id));
        Ok(Download {
            resp: self.stream_get(&path).await?,
            base: self.base.clone(),
        })
    }

    /// Attaches to a live session's stream.
    pub async fn attach_session(&self, id: &str) -> Result<SessionSocket, ClientError> {
        let transport = |detail: String| ClientError::Transport {
            url: self.base.clone(),
            detail,
        };
        let authority = self.authority()?;
        let url = format!(
            "wss://{authority}/api/v1/sessions/{}/stream",
            crate::seg(id)
        );
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::BadUrl(format!("{url}: {e}")))?;
        let headers = req.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SESSION_SUBPROTOCOL),
        );
        if let Some(t) = &self.token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| ClientError::Decode("the token is not a valid header".into()))?;
            headers.insert("Authorization", v);
        }
        let tls = self.connect_tls().await?;
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(drover_proto::SESSION_FRAME_MAX);
        config.max_frame_size = Some(drover_proto::SESSION_FRAME_MAX);
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, tls, Some(config))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp
                        .body()
                        .as_deref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    crate::api_error(status, body.as_bytes())
                }
                other => transport(format!("WebSocket: {other}")),
            })?;
        Ok(SessionSocket { ws })
    }
}

impl Client {
    /// `host:port` of the server.
    pub(crate) fn authority(&self) -> Result<&str, ClientError> {
        self.base
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::BadUrl(self.base.clone()))
    }

    /// A TLS connection to the server (pinned, HTTP/1.1), for a stream of its own.
    pub(crate) async fn connect_tls(&self) -> Result<TlsStream<TcpStream>, ClientError> {
        let transport = |detail: String| ClientError::Transport {
            url: self.base.clone(),
            detail,
        };
        let (host, port) = split_host_port(self.authority()?);
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| transport("connect timed out".into()))?
        .map_err(|e| transport(e.to_string()))?;
        // Keystrokes are tiny: send each at once.
        let _ = tcp.set_nodelay(true);
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| ClientError::BadUrl(format!("{host}: {e}")))?;
        tokio_rustls::TlsConnector::from(self.ws_tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| transport(format!("TLS: {e}")))
    }
}

/// `host:port` (or `[v6]:port`) into its parts; 443 when no port is given.
fn split_host_port(authority: &str) -> (String, u16) {
    let authority = authority.split('/').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            let port = p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(443);
            return (h.to_string(), port);
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(443)),
        None => (authority.to_string(), 443),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split() {
        assert_eq!(
            split_host_port("127.0.0.1:8443"),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(split_host_port("[::1]:9"), ("::1".into(), 9));
        assert_eq!(
            split_host_port("drover.example"),
            ("drover.example".into(), 443)
        );
    }
}
