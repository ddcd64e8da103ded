//! The frames of a session stream, after its JSON header ([`crate::SessionStart`]). Binary,
//! because a session carries bulk bytes (a shell printing megabytes, a forwarded connection later)
//! and keystrokes whose latency matters: a tag byte, fixed big-endian fields, then the payload.
//!
//! The same frames travel on both hops: on the agent's tunnel stream each is preceded by a 4-byte
//! length ([`SESSION_FRAME_MAX`] at most), and on the client's WebSocket each is one binary
//! message. The server relays them, so it never re-encodes the bytes of a session.
//!
//! Offsets make a session resumable: input carries its byte offset in the input stream, output
//! its offset in its stream, so after a reconnect each side says what it has and the other sends
//! only the rest: nothing lost, nothing twice.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Largest session frame: 64 KiB of data and its header.
pub const SESSION_FRAME_MAX: usize = 64 * 1024 + 64;
/// Most data bytes in one `Input` or `Output` frame.
pub const SESSION_DATA_MAX: usize = 64 * 1024;

/// Which output stream. A PTY has one, reported as `Stdout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStream {
    Stdout,
    Stderr,
}

/// A signal the client may send to the session's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionSignal {
    Hangup,
    Interrupt,
    Quit,
    Terminate,
    Kill,
}

impl SessionSignal {
    /// The signal's number on Linux and macOS (the same for these five).
    pub fn number(self) -> i32 {
        match self {
            SessionSignal::Hangup => 1,
            SessionSignal::Interrupt => 2,
            SessionSignal::Quit => 3,
            SessionSignal::Kill => 9,
            SessionSignal::Terminate => 15,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        Some(match n {
            1 => SessionSignal::Hangup,
            2 => SessionSignal::Interrupt,
            3 => SessionSignal::Quit,
            9 => SessionSignal::Kill,
            15 => SessionSignal::Terminate,
            _ => return None,
        })
    }
}

/// Why and how a session ended: the last frame either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClosed {
    /// `Terminated` (the process ended, or someone ended the session), `Failed`, `TimedOut`.
    pub status: String,
    /// The exit status of the session's process, when it ended by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// For the user's terminal: why the session ended, when it was not the process exiting.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One frame of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFrame {
    /// Client to node: keystrokes or stdin bytes at `offset` in the input stream.
    Input { offset: u64, data: Bytes },
    /// Client to node: the terminal's new size.
    Resize { cols: u16, rows: u16 },
    /// Client to node: signal the session's processes (without a PTY; with one, Ctrl-C is a byte).
    Signal(SessionSignal),
    /// Client to node: no more input (stdin closed).
    Eof,
    /// Node to client: output bytes at `offset` in `stream`, `at_us` microseconds after the
    /// session started on the node (the recording's clock).
    Output {
        stream: SessionStream,
        offset: u64,
        at_us: u64,
        data: Bytes,
    },
    /// Client to server: output received so far, per stream (the server may forget it). Also
    /// the first frame of a client that attaches, saying where to resume.
    Ack { stdout: u64, stderr: u64 },
    /// Server to client: input received so far (a resuming client sends the rest).
    InputAck { offset: u64 },
    /// Either way: the session is over.
    Closed(SessionClosed),
}

/// A session frame that cannot be decoded. Fatal for the session's stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionFrameError {
    #[error("empty session frame")]
    Empty,
    #[error("unknown session frame type {0}")]
    UnknownType(u8),
    #[error("session frame of type {tag} is {len} bytes, too short")]
    Short { tag: u8, len: usize },
    #[error("session frame of {len} bytes exceeds {max}")]
    Oversize { len: usize, max: usize },
    #[error("unknown signal {0}")]
    UnknownSignal(u8),
    #[error("unknown output stream {0}")]
    UnknownStream(u8),
    #[error("malformed close frame: {0}")]
    Closed(String),
}

const INPUT: u8 = 1;
const RESIZE: u8 = 2;
const SIGNAL: u8 = 3;
const EOF: u8 = 4;
const OUTPUT: u8 = 5;
const ACK: u8 = 6;
const INPUT_ACK: u8 = 7;
const CLOSED: u8 = 8;

impl SessionFrame {
    /// Appends the frame's bytes (without a length prefix) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            SessionFrame::Input { offset, data } => {
                dst.reserve(9 + data.len());
                dst.put_u8(INPUT);
                dst.put_u64(*offset);
                dst.put_slice(data);
            }
            SessionFrame::Resize { cols, rows } => {
                dst.put_u8(RESIZE);
                dst.put_u16(*cols);
                dst.put_u16(*rows);
            }
            SessionFrame::Signal(s) => {
                dst.put_u8(SIGNAL);
                dst.put_u8(u8::try_from(s.number()).unwrap_or(0));
            }
            SessionFrame::Eof => dst.put_u8(EOF),
            SessionFrame::Output {
                stream,
                offset,
                at_us,
                data,
            } => {
                dst.reserve(18 + data.len());
                dst.put_u8(OUTPUT);
                dst.put_u8(match stream {
                    SessionStream::Stdout => 1,
                    SessionStream::Stderr => 2,
                });
                dst.put_u64(*offset);
                dst.put_u64(*at_us);
                dst.put_slice(data);
            }
            SessionFrame::Ack { stdout, stderr } => {
                dst.put_u8(ACK);
                dst.put_u64(*stdout);
                dst.put_u64(*stderr);
            }
            SessionFrame::InputAck { offset } => {
                dst.put_u8(INPUT_ACK);
                dst.put_u64(*offset);
            }
            SessionFrame::Closed(c) => {
                dst.put_u8(CLOSED);
                // Serializing a struct of strings and an integer cannot fail.
                if let Ok(json) = serde_json::to_vec(c) {
                    dst.put_slice(&json);
                }
            }
        }
    }

    /// The frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one whole frame (its length already known). Data payloads are slices of `src`,
    /// not copies.
    pub fn decode(mut src: Bytes) -> Result<SessionFrame, SessionFrameError> {
        if src.len() > SESSION_FRAME_MAX {
            return Err(SessionFrameError::Oversize {
                len: src.len(),
                max: SESSION_FRAME_MAX,
            });
        }
        if src.is_empty() {
            return Err(SessionFrameError::Empty);
        }
        let tag = src.get_u8();
        let need = match tag {
            INPUT | INPUT_ACK => 8,
            RESIZE => 4,
            SIGNAL => 1,
            EOF | CLOSED => 0,
            OUTPUT => 17,
            ACK => 16,
            other => return Err(SessionFrameError::UnknownType(other)),
        };
        if src.len() < need {
            return Err(SessionFrameError::Short {
                tag,
                len: src.len() + 1,
            });
        }
        Ok(match tag {
            INPUT => SessionFrame::Input {
                offset: src.get_u64(),
                data: src,
            },
            RESIZE => SessionFrame::Resize {
                cols: src.get_u16(),
                rows: src.get_u16(),
            },
            SIGNAL => {
                let n = src.get_u8();
                SessionFrame::Signal(
                    SessionSignal::from_number(n).ok_or(SessionFrameError::UnknownSignal(n))?,
                )
            }
            EOF => SessionFrame::Eof,
            OUTPUT => {
                let stream = match src.get_u8() {
                    1 => SessionStream::Stdout,
                    2 => SessionStream::Stderr,
                    n => return Err(SessionFrameError::UnknownStream(n)),
                };
                SessionFrame::Output {
                    stream,
                    offset: src.get_u64(),
                    at_us: src.get_u64(),
                    data: src,
                }
            }
            ACK => SessionFrame::Ack {
                stdout: src.get_u64(),
                stderr: src.get_u64(),
            },
            INPUT_ACK => SessionFrame::InputAck {
                offset: src.get_u64(),
            },
            _ => SessionFrame::Closed(
                serde_json::from_slice(&src)
                    .map_err(|e| SessionFrameError::Closed(e.to_string()))?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use proptest::prelude::*;

    use super::*;

    fn round_trip(f: SessionFrame) {
        assert_eq!(SessionFrame::decode(f.to_bytes()).unwrap(), f);
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(SessionFrame::Input {
            offset: 7,
            data: Bytes::from_static(b"ls\r"),
        });
        round_trip(SessionFrame::Resize { cols: 80, rows: 24 });
        for s in [
            SessionSignal::Hangup,
            SessionSignal::Interrupt,
            SessionSignal::Quit,
            SessionSignal::Terminate,
            SessionSignal::Kill,
        ] {
            round_trip(SessionFrame::Signal(s));
        }
        round_trip(SessionFrame::Eof);
        round_trip(SessionFrame::Output {
            stream: SessionStream::Stderr,
            offset: u64::MAX,
            at_us: 12,
            data: Bytes::from_static(b"\xff\x00 not utf-8"),
        });
        round_trip(SessionFrame::Ack {
            stdout: 1,
            stderr: 2,
        });
        round_trip(SessionFrame::InputAck { offset: 3 });
        round_trip(SessionFrame::Closed(SessionClosed {
            status: "TimedOut".into(),
            exit_code: None,
            message: "idle for 20 minutes".into(),
        }));
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(
            SessionFrame::decode(Bytes::new()),
            Err(SessionFrameError::Empty)
        );
        assert_eq!(
            SessionFrame::decode(Bytes::from_static(&[99])),
            Err(SessionFrameError::UnknownType(99))
        );
        assert_eq!(
            SessionFrame::decode(Bytes::from_static(&[RESIZE, 0])),
            Err(SessionFrameError::Short {
                tag: RESIZE,
                len: 2
            })
        );
        assert_eq!(
            SessionFrame::decode(Bytes::from_static(&[SIGNAL, 200])),
            Err(SessionFrameError::UnknownSignal(200))
        );
        let big = Bytes::from(vec![INPUT; SESSION_FRAME_MAX + 1]);
        assert!(matches!(
            SessionFrame::decode(big),
            Err(SessionFrameError::Oversize { .. })
        ));
    }

    proptest! {
        /// Nothing a peer sends panics the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SessionFrame::decode(Bytes::from(bytes));
        }
    }
}
