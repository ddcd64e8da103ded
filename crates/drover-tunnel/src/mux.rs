//! The multiplexer: a yamux connection driven by one task that the caller owns. Handles to it
//! open streams through a bounded channel; inbound streams arrive on [`Incoming`].

use std::future::poll_fn;
use std::task::Poll;

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

use crate::buffered::Buffered;

/// One logical stream: a tokio `AsyncRead + AsyncWrite` with its own flow-control window.
pub type Stream = Compat<yamux::Stream>;

/// Which end of the connection this is. The agent dials, so it is the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Server,
}

/// Tuning of one tunnel; the defaults are what the benchmarks chose (see BENCHMARKS.md).
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Most streams open at once on one connection.
    pub max_streams: usize,
    /// Largest data frame; bigger writes are split. Larger frames mean fewer headers and TLS
    /// records per byte, smaller ones fairer interleaving of busy streams.
    pub split_send_size: usize,
    /// Inbound streams queued before the application accepts them; more are refused.
    pub accept_backlog: usize,
    /// How far the receive windows of busy streams may grow, in total, beyond the 256 KiB
    /// every stream starts with. This bounds the memory a peer can make this side buffer:
    /// `max_streams` x 256 KiB + this.
    pub window_growth: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            max_streams: 1024,
            split_send_size: 64 * 1024,
            accept_backlog: 1024,
            window_growth: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel connection failed")]
    Connection(#[source] yamux::ConnectionError),
    #[error("could not open a stream")]
    Open(#[source] yamux::ConnectionError),
    #[error("the tunnel is closed")]
    Closed,
}

type OpenRequest = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// A handle to a running tunnel. Cheap to clone; the tunnel ends when its driver task ends
/// (the peer closed, an I/O error, or [`Tunnel::close`]).
#[derive(Debug, Clone)]
pub struct Tunnel {
    open: mpsc::Sender<OpenRequest>,
    shutdown: CancellationToken,
    closed: CancellationToken,
}

/// Streams the peer opened, in the order they arrived.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<yamux::Stream>,
}

impl Incoming {
    /// The next stream the peer opened, or `None` once the tunnel has ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.rx.recv().await.map(|s| s.compat())
    }
}

impl Tunnel {
    /// Starts multiplexing over `io` (an established, authenticated TLS stream). Returns the
    /// handle, the inbound streams, and the driver future, which the caller must spawn and own:
    /// the tunnel makes progress only while it is polled.
    pub fn start<T>(
        io: T,
        role: Role,
        config: &TunnelConfig,
    ) -> (
        Tunnel,
        Incoming,
        impl std::future::Future<Output = Result<(), TunnelError>> + Send + 'static,
    )
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut cfg = yamux::Config::default();
        // Each setter asserts window >= streams x 256 KiB against the other's current value:
        // lift the window, set the count, then bound the window.
        cfg.set_max_connection_receive_window(None);
        cfg.set_max_num_streams(config.max_streams);
        cfg.set_max_connection_receive_window(Some(connection_window(config)));
        cfg.set_split_send_size(config.split_send_size);
        let mode = match role {
            Role::Agent => yamux::Mode::Client,
            Role::Server => yamux::Mode::Server,
        };
        let conn = yamux::Connection::new(Buffered::new(io.compat()), cfg, mode);
        let (open_tx, open_rx) = mpsc::channel(32);
        let (in_tx, in_rx) = mpsc::channel(config.accept_backlog.max(1));
        let shutdown = CancellationToken::new();
        let closed = CancellationToken::new();
        let tunnel = Tunnel {
            open: open_tx,
            shutdown: shutdown.clone(),
            closed: closed.clone(),
        };
        let driver = drive(conn, open_rx, in_tx, shutdown, closed);
        (tunnel, Incoming { rx: in_rx }, driver)
    }

    /// Opens a new stream to the peer.
    pub async fn open(&self) -> Result<Stream, TunnelError> {
        if self.shutdown.is_cancelled() || self.closed.is_cancelled() {
            return Err(TunnelError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        self.open.send(tx).await.map_err(|_| TunnelError::Closed)?;
        // A tunnel that is closing answers no more opens: don't wait for it.
        tokio::select! {
            r = rx => match r {
                Ok(Ok(stream)) => Ok(stream.compat()),
                Ok(Err(e)) => Err(TunnelError::Open(e)),
                Err(_) => Err(TunnelError::Closed),
            },
            _ = self.shutdown.cancelled() => Err(TunnelError::Closed),
            _ = self.closed.cancelled() => Err(TunnelError::Closed),
        }
    }

    /// Asks the driver to close the connection (flushing what was written) and end.
    pub fn close(&self) {
        self.shutdown.cancel();
    }

    /// Resolves when the tunnel has ended for any reason.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// The most a peer can make this side buffer on one connection.
pub fn connection_window(config: &TunnelConfig) -> usize {
    config
        .max_streams
        .saturating_mul(yamux::DEFAULT_CREDIT as usize)
        .saturating_add(config.window_growth)
}

async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut open_rx: mpsc::Receiver<OpenRequest>,
    in_tx: mpsc::Sender<yamux::Stream>,
    shutdown: CancellationToken,
    closed: CancellationToken,
) -> Result<(), TunnelError>
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    // Ends `closed` however this function returns, including when the caller drops it.
    let _closed = closed.drop_guard();
    let mut pending_open: Option<OpenRequest> = None;
    let mut shutdown_requested = Box::pin(shutdown.cancelled_owned());
    let result = poll_fn(|cx| {
        if shutdown_requested.poll_unpin(cx).is_ready() {
            return Poll::Ready(Ok(true));
        }
        // Serve open requests one at a time; yamux parks the waker while it cannot open more.
        loop {
            if pending_open.is_none() {
                match open_rx.poll_recv(cx) {
                    Poll::Ready(Some(req)) => pending_open = Some(req),
                    Poll::Ready(None) | Poll::Pending => {}
                }
            }
            let Some(req) = pending_open.take() else {
                break;
            };
            if req.is_closed() {
                continue;
            }
            match conn.poll_new_outbound(cx) {
                Poll::Ready(res) => {
                    let _ = req.send(res);
                }
                Poll::Pending => {
                    pending_open = Some(req);
                    break;
                }
            }
        }
        // Polling for inbound streams is what drives the connection's I/O.
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // A full backlog refuses the stream (dropping resets it) rather than
                    // buffering without bound for an application that is not accepting.
                    if let Err(e) = in_tx.try_send(stream) {
                        tracing::debug!(error = %e, "refused an inbound stream: the accept backlog is full");
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(TunnelError::Connection(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(false)),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    match result {
        Ok(true) => {
            // Graceful close: flush what is queued and say goodbye at the yamux level.
            poll_fn(|cx| conn.poll_close(cx))
                .await
                .map_err(TunnelError::Connection)
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    }
}
