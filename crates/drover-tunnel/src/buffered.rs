//! A write buffer between yamux and TLS. yamux writes each frame's 12-byte header and its body
//! as two writes; straight into rustls, each write becomes its own TLS record, so small headers
//! would cost a record (and an AEAD seal) each. Buffering until yamux flushes packs them into
//! full 16 KiB records.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::io::{AsyncRead, AsyncWrite, BufWriter};

/// Buffer size: four full TLS records, so one flush hands rustls large writes. 64 KiB measured
/// as fast as 256 KiB, at a quarter of the memory per connection (BENCHMARKS.md, finding 3).
const WRITE_BUFFER: usize = 64 * 1024;

pub struct Buffered<T> {
    inner: BufWriter<T>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Buffered<T> {
    pub fn new(io: T) -> Self {
        Self {
            inner: BufWriter::with_capacity(WRITE_BUFFER, io),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Buffered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Buffered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
