//! Forwarded connections: a stream whose handshake travelled in frames goes on as raw bytes
//! ([`into_raw`]), and two byte streams are spliced ([`splice`]), counting what passes as it
//! passes ([`Counted`]) so that history and metrics see a long connection's bytes before it ends.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Framed;

/// Each direction of a spliced connection reads and writes through one buffer of this size,
/// the largest data frame the tunnel sends, so a busy connection fills whole frames.
pub const SPLICE_BUF: usize = 64 * 1024;

/// A stream that first yields the bytes its frame reader had already buffered (a peer may send
/// its first bytes right behind the handshake), then reads the stream itself.
#[derive(Debug)]
pub struct Raw<S> {
    prefix: BytesMut,
    io: S,
}

/// Ends the framed part of a stream. The frames written must have been flushed (`send` does).
pub fn into_raw<S>(framed: Framed<S>) -> Raw<S> {
    let parts = framed.into_parts();
    Raw {
        prefix: parts.read_buf,
        io: parts.io,
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Raw<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        if let Some(head) = self.prefix.get(..n) {
            buf.put_slice(head);
        }
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Raw<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Bytes through a session's connections, both ways.
#[derive(Debug, Default)]
pub struct Counters {
    /// From the client towards the node.
    pub up: AtomicU64,
    /// From the node towards the client.
    pub down: AtomicU64,
}

impl Counters {
    pub fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// The client's side of a connection: what is read from it goes up, what is written to it
/// came down.
#[derive(Debug)]
pub struct Counted<S> {
    io: S,
    counters: Arc<Counters>,
}

impl<S> Counted<S> {
    pub fn new(io: S, counters: Arc<Counters>) -> Self {
        Self { io, counters }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        self.counters.up.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counters.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Copies both ways until both directions have ended (an end of file is passed on as a
/// half-close, as TCP does) or either side fails. Returns the bytes copied a→b and b→a.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, SPLICE_BUF, SPLICE_BUF).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::FrameCodec;

    #[tokio::test]
    async fn bytes_behind_the_handshake_are_read_first() {
        let (a, mut b) = tokio::io::duplex(1024);
        // The peer writes a frame and raw bytes in one go; the frame reader buffers both.
        let mut wire = bytes::BytesMut::new();
        drover_proto::encode(&drover_proto::Message::ForwardConnected, &mut wire).unwrap();
        wire.extend_from_slice(b"SSH-2.0-banner\r\n");
        b.write_all(&wire).await.unwrap();
        drop(b);
        let mut framed = FrameCodec::framed(a);
        use futures::StreamExt;
        let first = framed.next().await.unwrap().unwrap();
        assert_eq!(first, drover_proto::Message::ForwardConnected);
        let mut raw = into_raw(framed);
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"SSH-2.0-banner\r\n");
    }

    #[tokio::test]
    async fn splice_counts_each_way_and_passes_half_closes() {
        let (mut client, client_end) = tokio::io::duplex(64);
        let (node_end, mut node) = tokio::io::duplex(64);
        let counters = Arc::new(Counters::default());
        let mut counted = Counted::new(client_end, counters.clone());
        let mut node_end = node_end;
        let relay = tokio::spawn(async move { splice(&mut counted, &mut node_end).await });
        client.write_all(&[7u8; 1000]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        node.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 1000);
        node.write_all(b"answer").await.unwrap();
        node.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer");
        assert_eq!(relay.await.unwrap().unwrap(), (1000, 6));
        assert_eq!(counters.get(), (1000, 6));
    }
}
