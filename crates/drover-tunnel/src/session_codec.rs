//! Session frames on a tunnel stream: a 4-byte length, then one [`SessionFrame`]. A stream
//! starts with JSON messages (`Open`, `SessionStart`, `SessionStarted`) and switches to this
//! codec, keeping whatever was already buffered ([`into_session`]).

use bytes::{Buf, BufMut, BytesMut};
use drover_proto::{SessionFrame, SESSION_FRAME_MAX};
use tokio_util::codec::{Decoder, Encoder, FramedParts};

use crate::codec::{CodecError, Framed};

/// Encodes and decodes length-prefixed [`SessionFrame`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionCodec;

/// A stream that carries session frames.
pub type SessionFramed<S> = tokio_util::codec::Framed<S, SessionCodec>;

impl Decoder for SessionCodec {
    type Item = SessionFrame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<SessionFrame>, CodecError> {
        let Some(prefix) = src.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix) as usize;
        if len > SESSION_FRAME_MAX {
            return Err(bad(format!(
                "session frame of {len} bytes exceeds {SESSION_FRAME_MAX}"
            )));
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let body = src.split_to(len).freeze();
        SessionFrame::decode(body)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }
}

impl Encoder<SessionFrame> for SessionCodec {
    type Error = CodecError;

    fn encode(&mut self, item: SessionFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0);
        item.encode(dst);
        let len = dst.len() - start - 4;
        if len > SESSION_FRAME_MAX {
            dst.truncate(start);
            return Err(bad(format!(
                "session frame of {len} bytes exceeds {SESSION_FRAME_MAX}"
            )));
        }
        // The length fits: SESSION_FRAME_MAX is far below u32::MAX.
        let prefix = (len as u32).to_be_bytes();
        if let Some(slot) = dst.get_mut(start..start + 4) {
            slot.copy_from_slice(&prefix);
        }
        Ok(())
    }
}

fn bad(why: String) -> CodecError {
    CodecError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, why))
}

/// Switches a stream from JSON messages to session frames, keeping what was already read.
pub fn into_session<S>(framed: Framed<S>) -> SessionFramed<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let parts = framed.into_parts();
    let mut next = FramedParts::new::<SessionFrame>(parts.io, SessionCodec);
    next.read_buf = parts.read_buf;
    next.write_buf = parts.write_buf;
    tokio_util::codec::Framed::from_parts(next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use bytes::Bytes;
    use drover_proto::SessionStream;

    use super::*;

    #[test]
    fn frames_split_anywhere_decode_whole() {
        let frames = vec![
            SessionFrame::Input {
                offset: 0,
                data: Bytes::from_static(b"echo hi\r"),
            },
            SessionFrame::Output {
                stream: SessionStream::Stdout,
                offset: 0,
                at_us: 5,
                data: Bytes::from(vec![b'x'; 70_000 / 2]),
            },
            SessionFrame::Resize { cols: 1, rows: 2 },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            SessionCodec.encode(f.clone(), &mut wire).unwrap();
        }
        for cut in [1, 3, 4, 5, 20, wire.len() - 1] {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = SessionCodec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = SessionCodec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got, frames, "cut at {cut}");
        }
    }

    #[test]
    fn an_oversize_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(SessionCodec.decode(&mut buf).is_err());
    }
}
