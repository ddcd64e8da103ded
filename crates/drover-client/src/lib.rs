//! A typed client of the Drover HTTP API, used by the CLI, the agent's registration and tests.
//! It trusts the server by the pinned fingerprint of a certificate in the server's chain.

use std::sync::Arc;
use std::time::Duration;

use drover_api::*;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} ({status} {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("could not reach the Drover server at {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("invalid server URL {0:?}: expected https://HOST[:PORT]")]
    BadUrl(String),
    #[error(transparent)]
    Pki(#[from] drover_pki::PkiError),
    #[error("unexpected response from the server: {0}")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Renders an error with its whole source chain (reqwest hides the TLS cause in a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// For WebSockets (HTTP/1.1 only), which reqwest does not do.
    ws_tls: Arc<rustls::ClientConfig>,
    /// The pinned CA's fingerprint (canonical), which also vouches for agents' end-to-end keys.
    ca_fingerprint: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A TLS client configuration that trusts the server by a pinned fingerprint.
pub fn pinned_tls(
    fingerprint: &str,
    alpn: &[&[u8]],
    client_auth: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = drover_pki::crypto_provider();
    let verifier = drover_pki::PinnedServerVerifier::new(fingerprint, provider.clone())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Decode(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ClientError::Decode(format!("node certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

mod alerts;
mod assoc;
mod identity;
mod params;
pub use identity::AuditFilter;
pub use params::ParamSelector;
mod port;
mod session;
pub use port::{ConnectError, PortTunnel};
pub use session::{Download, SessionSocket, SESSION_SUBPROTOCOL};

impl Client {
    /// A client of `server` (`https://host:port`) trusting the pinned `ca_fingerprint`.
    pub fn new(
        server: &str,
        ca_fingerprint: &str,
        token: Option<String>,
    ) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("https://") || base.len() <= "https://".len() {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        let tls = pinned_tls(ca_fingerprint, &[b"h2", b"http/1.1"], None)?;
        let ws_tls = Arc::new(pinned_tls(ca_fingerprint, &[b"http/1.1"], None)?);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base.clone(),
                detail: chain(&e),
            })?;
        Ok(Self {
            http,
            base,
            token,
            ws_tls,
            ca_fingerprint: drover_pki::normalize_fingerprint(ca_fingerprint)?,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the body of a successful answer, or the server's error.
    pub(crate) async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<bytes::Bytes, ClientError> {
        self.send_with_timeout(method, path, body, Duration::from_secs(120))
            .await
    }

    /// [`Client::send`] for a request the server may hold longer than usual.
    pub(crate) async fn send_with_timeout<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |e: reqwest::Error| ClientError::Transport {
            url: self.base.clone(),
            detail: chain(&e),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(api_error(status.as_u16(), &bytes))
    }

    /// GETs `path` and returns the response to read as a stream (after checking its status).
    async fn stream_get(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.get(&url).timeout(Duration::from_secs(24 * 3600));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let transport = |e: reqwest::Error| ClientError::Transport {
            url: self.base.clone(),
            detail: chain(&e),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(transport)?;
        Err(api_error(status.as_u16(), &bytes))
    }

    pub(crate) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
    }

    /// GETs a path and returns the body as text (for `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let bytes = self.send::<()>(Method::GET, path, None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call::<(), _>(Method::GET, "/healthz", None).await
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.call(Method::POST, "/api/v1/register", Some(req)).await
    }

    /// One page of nodes; `filters` as the CLI takes them (`tag:env=prod`, `status=online`).
    pub async fn list_nodes_page(
        &self,
        filters: &[String],
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<NodeList, ClientError> {
        let mut q = form_query();
        for f in filters {
            q.append_pair("filter", f);
        }
        if let Some(l) = limit {
            q.append_pair("limit", &l.to_string());
        }
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
        let qs = q.finish();
        self.call::<(), _>(Method::GET, &format!("/api/v1/nodes?{qs}"), None)
            .await
    }

    /// One page of the console's node table: `query` is its query string
    /// (`sort=name&order=desc&offset=0&limit=100&search=web&filter=...`).
    pub async fn node_table(&self, query: &str) -> Result<drover_api::NodeTable, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/api/v1/node-table?{query}"), None)
            .await
    }

    /// Every node matching `filters`, following pages.
    pub async fn list_nodes(&self, filters: &[String]) -> Result<Vec<NodeView>, ClientError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list_nodes_page(filters, Some(5000), cursor.as_deref())
                .await?;
            all.extend(page.nodes);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    pub async fn get_node(&self, id: &str) -> Result<NodeView, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/api/v1/nodes/{}", escape(id)), None)
            .await
    }

    pub async fn update_tags(&self, id: &str, update: &TagUpdate) -> Result<NodeView, ClientError> {
        self.call(
            Method::PATCH,
            &format!("/api/v1/nodes/{}/tags", escape(id)),
            Some(update),
        )
        .await
    }

    pub async fn deregister(&self, id: &str) -> Result<NodeView, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/nodes/{}/deregister", escape(id)),
            None,
        )
        .await
    }

    pub async fn create_activation(
        &self,
        req: &CreateActivation,
    ) -> Result<ActivationCreated, ClientError> {
        self.call(Method::POST, "/api/v1/activations", Some(req))
            .await
    }

    pub async fn list_activations(&self) -> Result<ActivationList, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/activations", None)
            .await
    }
}

impl Client {
    pub async fn create_document(
        &self,
        name: &str,
        content: &str,
    ) -> Result<DocumentView, ClientError> {
        let body = CreateDocument {
            name: name.to_string(),
            content: content.to_string(),
        };
        self.call(Method::POST, "/api/v1/documents", Some(&body))
            .await
    }

    pub async fn update_document(
        &self,
        name: &str,
        content: &str,
    ) -> Result<DocumentView, ClientError> {
        let body = UpdateDocument {
            content: content.to_string(),
        };
        self.call(
            Method::PUT,
            &format!("/api/v1/documents/{}", escape(name)),
            Some(&body),
        )
        .await
    }

    pub async fn get_document(
        &self,
        name: &str,
        version: Option<i64>,
    ) -> Result<DocumentView, ClientError> {
        let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/documents/{}{q}", escape(name)),
            None,
        )
        .await
    }

    pub async fn list_documents(&self) -> Result<DocumentList, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/documents", None)
            .await
    }

    pub async fn document_versions(&self, name: &str) -> Result<DocumentList, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/documents/{}/versions", escape(name)),
            None,
        )
        .await
    }

    pub async fn set_default_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<DocumentView, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/v1/documents/{}/default", escape(name)),
            Some(&SetDefaultVersion { version }),
        )
        .await
    }

    pub async fn delete_document(&self, name: &str) -> Result<(), ClientError> {
        self.send::<()>(
            Method::DELETE,
            &format!("/api/v1/documents/{}", escape(name)),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn send_command(&self, req: &SendCommand) -> Result<CommandView, ClientError> {
        self.call(Method::POST, "/api/v1/commands", Some(req)).await
    }

    pub async fn get_command(&self, id: &str) -> Result<CommandView, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/commands/{}", escape(id)),
            None,
        )
        .await
    }

    /// Long poll: returns once progress newer than `seen` is stored or the command is done.
    pub async fn wait_command(
        &self,
        id: &str,
        seen: u64,
        timeout_ms: u64,
    ) -> Result<CommandView, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!(
                "/api/v1/commands/{}/wait?seen={seen}&timeout_ms={timeout_ms}",
                escape(id)
            ),
            None,
        )
        .await
    }

    pub async fn cancel_command(&self, id: &str) -> Result<CommandView, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/commands/{}/cancel", escape(id)),
            None,
        )
        .await
    }

    pub async fn list_commands(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<CommandList, ClientError> {
        let mut q = form_query();
        q.append_pair("limit", &limit.to_string());
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/commands?{}", q.finish()),
            None,
        )
        .await
    }

    /// Every invocation of a command (following pages), with output summaries if `output`.
    pub async fn list_invocations(
        &self,
        id: &str,
        output: bool,
    ) -> Result<Vec<InvocationView>, ClientError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = form_query();
            q.append_pair("limit", "5000");
            q.append_pair("output", if output { "true" } else { "false" });
            if let Some(c) = &cursor {
                q.append_pair("cursor", c);
            }
            let page: InvocationList = self
                .call::<(), _>(
                    Method::GET,
                    &format!("/api/v1/commands/{}/invocations?{}", escape(id), q.finish()),
                    None,
                )
                .await?;
            all.extend(page.invocations);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    pub async fn get_invocation(
        &self,
        id: &str,
        node: &str,
    ) -> Result<InvocationView, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!(
                "/api/v1/commands/{}/invocations/{}",
                escape(id),
                escape(node)
            ),
            None,
        )
        .await
    }
}

pub(crate) fn form_query() -> form_urlencoded::Serializer<'static, String> {
    form_urlencoded::Serializer::new(String::new())
}

/// The server's error body as an error (or the status, when the body is not one).
fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error")
                .to_ascii_lowercase(),
            message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
        },
    }
}

fn seg(segment: &str) -> String {
    escape(segment)
}

/// Percent-encodes a path segment.
fn escape(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
