//! The one HTTPS port: accept TCP, complete TLS, then route by ALPN: `drover-agent/1` to the
//! agent endpoint, anything else (h2, http/1.1) to the HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Request;
use tower::ServiceExt;

use drover_pki::crypto_provider;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::HttpConnection;
use crate::datadir::DataDir;
use crate::{AppState, ServerConfig, ServerError};

pub fn tls_config(
    config: &ServerConfig,
    data: &DataDir,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = crypto_provider();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(ServerError::io("read", p));
    let ca_pem = read(&data.ca_cert_path())?;
    let mut roots = RootCertStore::empty();
    for cert in drover_pki::certs_from_pem(&ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| ServerError::Tls(format!("agent CA: {e}")))?;
    }
    // Client certificates are optional at the TLS layer (browsers and the CLI have none), but
    // one that is presented must chain to the agent CA. The agent endpoint then requires one.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => (data.path.join("server.crt"), data.path.join("server.key")),
        _ => {
            return Err(ServerError::Config(
                "--tls-cert and --tls-key must be given together".into(),
            ))
        }
    };
    let chain = drover_pki::certs_from_pem(&read(&cert_path)?)?;
    let key = drover_pki::key_from_pem(&read(&key_path)?)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert_path.display())))?;
    cfg.alpn_protocols = vec![
        drover_proto::ALPN_AGENT.to_vec(),
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
    ];
    Ok(Arc::new(cfg))
}

pub async fn serve(
    state: Arc<AppState>,
    tls: Arc<rustls::ServerConfig>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let acceptor = tls;
    let router =
        crate::api::router(state.clone()).layer(axum::middleware::from_fn(close_unauthenticated));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = async {
                state.admission.wait_for_room().await;
                listener.accept().await
            } => match accepted {
                // Admitted here, before the next accept, so that `wait_for_room` sees it.
                // Refused connections are closed at once: holding them would spend the
                // descriptors the caps are there to protect.
                Ok((tcp, peer)) => match state.admission.admit(peer.ip()) {
                    Ok(slot) => {
                        tracker.spawn(handle(
                            state.clone(),
                            acceptor.clone(),
                            router.clone(),
                            (tcp, peer, slot),
                            stop.clone(),
                        ));
                    }
                    Err(refusal) => {
                        tracing::debug!(%peer, ?refusal, "connection refused");
                        state.metrics.refused(refusal.metric());
                    }
                },
                Err(e) => {
                    // Out of file descriptors or similar: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tracing::info!(
        agents = state.registry.connected_count(),
        "shutting down: closing connections"
    );
    tracker.close();
    state.registry.close_all();
    stop.cancel();
    if tokio::time::timeout(state.config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tracker.len(),
            "connections still open after the grace period; closing them"
        );
    }
}

async fn handle(
    state: Arc<AppState>,
    acceptor: Arc<rustls::ServerConfig>,
    router: axum::Router,
    (tcp, peer, unauthenticated): (TcpStream, SocketAddr, crate::admission::Unauthenticated),
    stop: CancellationToken,
) {
    let deadline = Instant::now() + state.admission.limits().handshake_timeout;
    let evicted = unauthenticated.evicted();
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(deadline, async {
            // The ClientHello is the peer's to send; the rest is mostly ours to compute. Once
            // it is in, the connection is no longer a slow client to evict for its age: in a
            // reconnect storm those are agents waiting for our CPU.
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
            unauthenticated.waiting_on_us();
            let tls = start.into_stream(acceptor).await;
            unauthenticated.waiting_on_peer();
            tls
        }) => r,
        _ = evicted.cancelled() => {
            state.metrics.refused("evicted");
            return;
        }
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            state.metrics.refused("tls_handshake");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            state.metrics.refused("tls_timeout");
            return;
        }
    };
    let is_agent = tls.get_ref().1.alpn_protocol() == Some(drover_proto::ALPN_AGENT);
    if is_agent {
        crate::agents::serve_agent(state, tls, peer, stop, unauthenticated, deadline).await;
        return;
    }
    serve_http(
        router,
        tls,
        peer,
        stop,
        HttpConnection::new(unauthenticated),
        deadline,
        evicted.clone(),
    )
    .await;
    if evicted.is_cancelled() {
        state.metrics.refused("evicted");
    }
}

/// Answers `Connection: close` on an HTTP/1 connection that has not authenticated, so that the
/// client opens a new one for its next request. Such a connection is closed at its deadline;
/// were it kept alive, a client reusing it just then would see it reset under a request it had
/// already sent (a non-idempotent one it cannot safely retry). HTTP/2 closes with GOAWAY, which
/// tells the client which requests were not handled, so it needs nothing.
async fn close_unauthenticated(
    req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let conn = req.extensions().get::<HttpConnection>().cloned();
    let http1 = req.version() <= axum::http::Version::HTTP_11;
    let mut res = next.run(req).await;
    let switching = res.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS;
    if http1 && !switching && conn.is_some_and(|c| !c.is_authenticated()) {
        res.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// How long an HTTP connection that timed out or is shutting down may take to finish the
/// requests it has in flight.
const HTTP_GRACE: Duration = Duration::from_secs(5);

async fn serve_http(
    router: axum::Router,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    stop: CancellationToken,
    conn_state: HttpConnection,
    deadline: Instant,
    evicted: CancellationToken,
) {
    let for_requests = conn_state.clone();
    let service = TowerToHyperService::new(router.map_request(
        move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(for_requests.clone());
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req
        },
    ));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper has no timer unless given one: without it a half-sent request head waits forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let mut unauthenticated_deadline = true;
    let finish = loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline), if unauthenticated_deadline => {
                unauthenticated_deadline = false;
                if !conn_state.is_authenticated() {
                    tracing::debug!(%peer, "closing an HTTP connection that never authenticated");
                    break true;
                }
            }
            // Only while unauthenticated: an authenticated connection is never evicted.
            _ = evicted.cancelled() => {
                tracing::debug!(%peer, "evicted an unauthenticated HTTP connection for a newer one");
                return;
            }
            _ = stop.cancelled() => break true,
        }
    };
    if finish {
        conn.as_mut().graceful_shutdown();
        if tokio::time::timeout(HTTP_GRACE, conn).await.is_err() {
            tracing::debug!(%peer, "HTTP connection did not finish in its grace period");
        }
    }
}

/// Longest wait for a request head, including between requests on a kept-alive connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
