//! Session recordings in asciicast v2 (what `asciinema play` and `asciinema cat` read): a JSON
//! header line, then one JSON array per event: `[seconds, "o", text]` for output, `"i"` for
//! input, `"r"` for a resize to `"COLSxROWS"`.
//!
//! Recordings sit behind [`Recordings`] so that an object store can hold them later; the data
//! directory's `recordings/` is the one implementation. Neither side loads a whole recording:
//! events are appended as they happen (flushed whenever the session goes quiet, so a session
//! cut off mid-way keeps everything up to the cut) and served as a stream.

use std::path::PathBuf;

use drover_proto::SessionStream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

/// Where recordings are kept.
#[async_trait::async_trait]
pub trait Recordings: Send + Sync + 'static {
    /// A new, empty recording for the session.
    async fn create(&self, session_id: &str)
        -> std::io::Result<Box<dyn AsyncWrite + Send + Unpin>>;
    /// The recording and its size in bytes; none if there is none.
    async fn open(
        &self,
        session_id: &str,
    ) -> std::io::Result<Option<(u64, Box<dyn AsyncRead + Send + Unpin>)>>;
    /// Deletes the recording, if there is one.
    async fn delete(&self, session_id: &str) -> std::io::Result<()>;
}

/// Recordings as files in a directory, readable by the server's user only.
pub struct DirRecordings {
    dir: PathBuf,
}

impl DirRecordings {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, id: &str) -> std::io::Result<PathBuf> {
        // Session IDs are the server's own; refuse anything else before it reaches a path.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "bad session id",
            ));
        }
        Ok(self.dir.join(format!("{id}.cast")))
    }
}

#[async_trait::async_trait]
impl Recordings for DirRecordings {
    async fn create(&self, id: &str) -> std::io::Result<Box<dyn AsyncWrite + Send + Unpin>> {
        let path = self.path(id)?;
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .await?;
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .await?;
        Ok(Box::new(f))
    }

    async fn open(
        &self,
        id: &str,
    ) -> std::io::Result<Option<(u64, Box<dyn AsyncRead + Send + Unpin>)>> {
        let path = self.path(id)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => {
                let len = f.metadata().await?.len();
                Ok(Some((len, Box::new(f))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, id: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(id)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Writes one session's events. Output text is decoded as UTF-8 per stream, carrying a
/// character split across reads over to the next one.
pub struct CastWriter {
    out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Per output stream (stdout, stderr).
    carry: [Vec<u8>; 2],
    record_input: bool,
    pub failed: bool,
}

impl CastWriter {
    pub async fn start(
        sink: Box<dyn AsyncWrite + Send + Unpin>,
        cols: u16,
        rows: u16,
        term: &str,
        timestamp: i64,
        record_input: bool,
    ) -> Self {
        let mut w = Self {
            out: BufWriter::with_capacity(64 * 1024, sink),
            carry: [Vec::new(), Vec::new()],
            record_input,
            failed: false,
        };
        let header = serde_json::json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": timestamp,
            "env": {"TERM": term},
        });
        w.line(header.to_string()).await;
        w
    }

    async fn line(&mut self, mut line: String) {
        if self.failed {
            return;
        }
        line.push('\n');
        if let Err(e) = self.out.write_all(line.as_bytes()).await {
            tracing::warn!(error = %e, "could not write a session recording; it stops here");
            self.failed = true;
        }
    }

    fn event(at_us: u64, code: &str, data: &str) -> String {
        let secs = at_us as f64 / 1e6;
        // Serializing a string cannot fail.
        let text = serde_json::to_string(data).unwrap_or_default();
        format!("[{secs:.6}, \"{code}\", {text}]")
    }

    /// Output of either stream (a command without a PTY has two; the cast has one screen).
    pub async fn output(&mut self, stream: SessionStream, at_us: u64, data: &[u8]) {
        let [out, err] = &mut self.carry;
        let carry = match stream {
            SessionStream::Stdout => out,
            SessionStream::Stderr => err,
        };
        let mut bytes = std::mem::take(carry);
        bytes.extend_from_slice(data);
        let keep = incomplete_tail(&bytes);
        *carry = bytes.split_off(bytes.len() - keep);
        if bytes.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&bytes);
        let line = Self::event(at_us, "o", &text);
        self.line(line).await;
    }

    pub async fn input(&mut self, at_us: u64, data: &[u8]) {
        if self.record_input {
            let line = Self::event(at_us, "i", &String::from_utf8_lossy(data));
            self.line(line).await;
        }
    }

    pub async fn resize(&mut self, at_us: u64, cols: u16, rows: u16) {
        let line = Self::event(at_us, "r", &format!("{cols}x{rows}"));
        self.line(line).await;
    }

    /// Pushes buffered events to storage (called when the session goes quiet).
    pub async fn flush(&mut self) {
        if !self.failed && self.out.flush().await.is_err() {
            self.failed = true;
        }
    }

    pub async fn finish(mut self) {
        for carry in std::mem::take(&mut self.carry) {
            if !carry.is_empty() {
                let text = String::from_utf8_lossy(&carry).into_owned();
                let line = Self::event(0, "o", &text);
                self.line(line).await;
            }
        }
        self.flush().await;
        let _ = self.out.shutdown().await;
    }
}

/// How many bytes at the end of `b` start a UTF-8 character that is not complete yet.
fn incomplete_tail(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => b.len() - e.valid_up_to(),
        Err(_) => {
            // Invalid bytes somewhere: only a truncated sequence at the very end is carried.
            let start = b.len().saturating_sub(3);
            (start..b.len())
                .find(|&i| {
                    b.get(i..)
                        .is_some_and(|t| matches!(std::str::from_utf8(t), Err(e) if e.error_len().is_none() && e.valid_up_to() == 0))
                })
                .map(|i| b.len() - i)
                .unwrap_or(0)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[tokio::test]
    async fn a_character_split_across_reads_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let rec = DirRecordings::new(dir.path().to_path_buf());
        let sink = rec.create("s-1").await.unwrap();
        let mut w = CastWriter::start(sink, 80, 24, "xterm", 5, true).await;
        let e = "é".as_bytes();
        w.output(SessionStream::Stdout, 10, &[b'a', e[0]]).await;
        w.output(SessionStream::Stdout, 20, &[e[1], b'b']).await;
        w.input(30, b"ls\r").await;
        w.resize(40, 100, 30).await;
        w.finish().await;
        let (len, _) = rec.open("s-1").await.unwrap().unwrap();
        let text = std::fs::read_to_string(dir.path().join("s-1.cast")).unwrap();
        assert_eq!(len as usize, text.len());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("\"version\":2"), "{}", lines[0]);
        assert_eq!(lines[1], "[0.000010, \"o\", \"a\"]");
        assert_eq!(lines[2], "[0.000020, \"o\", \"éb\"]");
        assert_eq!(lines[3], "[0.000030, \"i\", \"ls\\r\"]");
        assert_eq!(lines[4], "[0.000040, \"r\", \"100x30\"]");
    }

    #[tokio::test]
    async fn ids_that_could_escape_the_directory_are_refused() {
        let rec = DirRecordings::new("/tmp/none".into());
        for id in ["../x", "a/b", "", "a.b"] {
            assert!(rec.open(id).await.is_err(), "{id}");
        }
    }

    #[test]
    fn only_a_truncated_character_is_carried() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(&[b'a', 0xc3]), 1);
        assert_eq!(incomplete_tail(&[0xff, b'a']), 0);
        assert_eq!(incomplete_tail(&[0xff, 0xe2, 0x82]), 2);
    }
}
