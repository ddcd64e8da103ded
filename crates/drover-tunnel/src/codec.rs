//! Adapts the `drover-proto` frame codec to `tokio_util::codec`, so a stream reads and writes
//! whole [`Message`]s.

use bytes::BytesMut;
use drover_proto::{FrameError, Message};

/// Encodes and decodes [`Message`] frames.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

/// A stream that carries frames.
pub type Framed<S> = tokio_util::codec::Framed<S, FrameCodec>;

/// Wraps a stream to read and write messages.
pub fn framed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(stream: S) -> Framed<S> {
    tokio_util::codec::Framed::new(stream, FrameCodec)
}

/// Errors reading or writing frames: the stream failed, or the peer sent a bad frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl tokio_util::codec::Decoder for FrameCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        Ok(drover_proto::decode(src)?)
    }
}

impl tokio_util::codec::Encoder<Message> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(drover_proto::encode(&item, dst)?)
    }
}

impl FrameCodec {
    /// Wraps a stream to read and write messages.
    pub fn framed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(stream: S) -> Framed<S> {
        framed(stream)
    }
}
