//! Framing: a 4-byte big-endian length, then that many bytes of JSON. `decode` works like
//! mini-redis' `Frame::check` + `parse`: it returns `Ok(None)` while a frame is incomplete and
//! never consumes a partial frame, so the caller can simply read more bytes and call it again.

use bytes::{Buf, BufMut, BytesMut};

use crate::Message;

/// Size of the length prefix in bytes.
pub const LENGTH_PREFIX: usize = 4;

/// Largest frame body accepted or produced. Control messages are small; anything bigger is a
/// broken or hostile peer, and refusing it early bounds the memory a peer can make us hold.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Why a frame could not be encoded or decoded. Either is fatal for the stream it arrived on.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    #[error("could not encode {kind} message")]
    Encode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Appends `msg` to `dst` as one frame.
pub fn encode(msg: &Message, dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    serde_json::to_writer(&mut writer, msg).map_err(|source| FrameError::Encode {
        kind: msg.kind(),
        source,
    })?;
    let dst = writer.into_inner();
    let len = dst.len() - start - LENGTH_PREFIX;
    if len > MAX_FRAME_LEN {
        dst.truncate(start);
        return Err(FrameError::Oversize {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // The length fits in u32 because it is at most MAX_FRAME_LEN.
    let prefix = (len as u32).to_be_bytes();
    if let Some(slot) = dst.get_mut(start..start + LENGTH_PREFIX) {
        slot.copy_from_slice(&prefix);
    }
    Ok(())
}

/// Takes one whole frame off the front of `src` and parses it, or returns `Ok(None)` (consuming
/// nothing) when `src` does not yet hold a whole frame. An oversize length is refused as soon as
/// the prefix arrives, before its body is buffered.
pub fn decode(src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
    let Some(prefix) = src.get(..LENGTH_PREFIX) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; LENGTH_PREFIX];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::Oversize {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if src.len() < LENGTH_PREFIX + len {
        src.reserve(LENGTH_PREFIX + len - src.len());
        return Ok(None);
    }
    src.advance(LENGTH_PREFIX);
    let body = src.split_to(len);
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::{Inventory, StreamKind, StreamOpen};
    use proptest::prelude::*;

    fn sample() -> Vec<Message> {
        vec![
            Message::Ping { seq: 7 },
            Message::Pong { seq: u64::MAX },
            Message::Inventory(Inventory {
                hostname: "web-1".into(),
                os_name: "Debian GNU/Linux".into(),
                ip_addresses: vec!["10.0.0.1".into(), "::1".into()],
                ..Inventory::default()
            }),
            Message::Open(StreamOpen {
                kind: StreamKind::Control,
            }),
            Message::Goodbye {
                reason: "server shutting down".into(),
            },
        ]
    }

    #[test]
    fn frames_round_trip_one_byte_at_a_time() {
        let mut wire = BytesMut::new();
        for m in sample() {
            encode(&m, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(m) = decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, sample());
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes()[..]);
        let err = decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Oversize { .. }), "{err}");
    }

    #[test]
    fn unknown_message_type_is_malformed() {
        let body = br#"{"type":"launch_missiles"}"#;
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(body);
        let err = decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    #[test]
    fn encoding_an_oversize_message_leaves_the_buffer_untouched() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        let huge = Message::Goodbye {
            reason: "a".repeat(MAX_FRAME_LEN),
        };
        assert!(matches!(
            encode(&huge, &mut buf),
            Err(FrameError::Oversize { .. })
        ));
        assert_eq!(&buf[..], b"xy");
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = BytesMut::from(&bytes[..]);
            // Whatever the bytes, decoding ends in a value, an error, or a request for more.
            while let Ok(Some(_)) = decode(&mut buf) {}
        }

        #[test]
        fn pings_round_trip(seq in any::<u64>(), reason in ".{0,200}") {
            let msgs = vec![Message::Ping { seq }, Message::Goodbye { reason }];
            let mut buf = BytesMut::new();
            for m in &msgs { encode(m, &mut buf).unwrap(); }
            let mut out = Vec::new();
            while let Some(m) = decode(&mut buf).unwrap() { out.push(m); }
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn a_frame_split_anywhere_decodes_the_same(split in 0usize..200, host in "[a-z0-9.-]{0,60}") {
            let msg = Message::Inventory(Inventory { hostname: host, ..Inventory::default() });
            let mut wire = BytesMut::new();
            encode(&msg, &mut wire).unwrap();
            let split = split.min(wire.len());
            let mut buf = BytesMut::from(&wire[..split]);
            let first = decode(&mut buf).unwrap();
            if split < wire.len() {
                prop_assert!(first.is_none());
                buf.extend_from_slice(&wire[split..]);
                prop_assert_eq!(decode(&mut buf).unwrap(), Some(msg));
            } else {
                prop_assert_eq!(first, Some(msg));
            }
        }
    }
}
