//! The server's own check of an invocation's output, chunk by chunk, before anything is stored:
//! a node (perhaps compromised) decides what it sends, the server decides what it keeps. Each
//! stream must continue exactly where the last chunk ended; the command's output limit holds
//! whatever the agent does; a step must be one of the document's top-level steps (the agent
//! reports nested steps' output under them).

use std::collections::{BTreeMap, HashMap, HashSet};

use drover_proto::OutputStream;

/// A chunk to store: `len` bytes of the node's output at `offset`, as text.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub data: String,
}

/// What one delivery has accepted so far.
pub struct Ledger {
    limit: u64,
    next: HashMap<(String, OutputStream), u64>,
    /// The document's top-level step names: the only ones the node may report.
    steps: HashSet<String>,
    truncated: HashSet<String>,
}

impl Ledger {
    /// `steps`: the names of the invocation's top-level steps; `received`: what the store
    /// already has, per step (`[stdout, stderr]` bytes).
    pub fn new(
        limit: u64,
        steps: impl IntoIterator<Item = String>,
        received: &BTreeMap<String, [u64; 2]>,
    ) -> Self {
        let mut next = HashMap::new();
        for (step, [out, err]) in received {
            next.insert((step.clone(), OutputStream::Stdout), *out);
            next.insert((step.clone(), OutputStream::Stderr), *err);
        }
        // Output stored up to the limit in an earlier delivery was cut then (or filled it
        // exactly, which reads the same): say so when the step finishes in this one.
        let truncated = received
            .iter()
            .filter(|(_, [out, err])| *out >= limit || *err >= limit)
            .map(|(step, _)| step.clone())
            .collect();
        Self {
            limit,
            next,
            steps: steps.into_iter().collect(),
            truncated,
        }
    }

    /// Checks a step name the node reports.
    pub fn step(&self, step: &str) -> Result<(), String> {
        if self.steps.contains(step) {
            return Ok(());
        }
        let shown: String = step.chars().take(64).filter(|c| !c.is_control()).collect();
        Err(format!("the command has no step named {shown:?}"))
    }

    /// Accepts the next chunk of a stream: `Ok(None)` when there is nothing to store (a replay
    /// of what is stored, or output past the limit), an error when the chunk is not where the
    /// stream continues (the delivery then ends, and the next one starts where the store is).
    pub fn accept(
        &mut self,
        step: &str,
        stream: OutputStream,
        offset: u64,
        len: u64,
        data: String,
    ) -> Result<Option<Chunk>, String> {
        self.step(step)?;
        // Invalid UTF-8 becomes U+FFFD (3 bytes) per byte at most.
        if data.len() as u64 > len.saturating_mul(3) {
            return Err(format!(
                "an output chunk of step {step} claims {len} bytes but carries {}",
                data.len()
            ));
        }
        let next = self.next.entry((step.to_string(), stream)).or_insert(0);
        let end = offset.saturating_add(len);
        // An empty chunk says nothing (and must not claim an offset in the store); a chunk
        // wholly inside what is stored is a replay.
        if len == 0 || end <= *next {
            return Ok(None);
        }
        if offset != *next {
            return Err(format!(
                "output of step {step} at offset {offset}, where {next} was expected"
            ));
        }
        *next = end;
        if offset >= self.limit {
            self.truncated.insert(step.to_string());
            return Ok(None);
        }
        if end <= self.limit {
            return Ok(Some(Chunk { offset, len, data }));
        }
        // Keep the part below the limit, cut on a character boundary.
        let keep = self.limit - offset;
        let mut cut = usize::try_from(keep).unwrap_or(usize::MAX).min(data.len());
        while !data.is_char_boundary(cut) {
            cut -= 1;
        }
        self.truncated.insert(step.to_string());
        Ok(Some(Chunk {
            offset,
            len: keep,
            data: data.get(..cut).unwrap_or_default().to_string(),
        }))
    }

    /// Whether the server cut this step's output at the limit.
    pub fn truncated(&self, step: &str) -> bool {
        self.truncated.contains(step)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const OUT: OutputStream = OutputStream::Stdout;

    #[test]
    fn chunks_must_continue_the_stream_and_replays_are_skipped() {
        let mut l = Ledger::new(1 << 20, names(&["s", "t"]), &BTreeMap::new());
        let c = l.accept("s", OUT, 0, 3, "abc".into()).unwrap().unwrap();
        assert_eq!((c.offset, c.len), (0, 3));
        // A replay of stored output: nothing to store.
        assert_eq!(l.accept("s", OUT, 0, 3, "abc".into()).unwrap(), None);
        // A gap, an overlap, a chunk claiming fewer bytes than it carries.
        assert!(l
            .accept("s", OUT, 5, 1, "x".into())
            .unwrap_err()
            .contains("where 3 was expected"));
        assert!(l.accept("s", OUT, 2, 4, "cdef".into()).is_err());
        assert!(l
            .accept("s", OUT, 3, 0, "zzzz".into())
            .unwrap_err()
            .contains("claims 0 bytes"));
        // Streams and steps are separate.
        assert!(l
            .accept("s", OutputStream::Stderr, 0, 1, "e".into())
            .unwrap()
            .is_some());
        assert!(l.accept("t", OUT, 0, 1, "t".into()).unwrap().is_some());
    }

    #[test]
    fn resumes_where_the_store_is() {
        let received = BTreeMap::from([("s".to_string(), [10, 0])]);
        let mut l = Ledger::new(1 << 20, names(&["s"]), &received);
        assert!(l
            .accept("s", OUT, 0, 10, "0123456789".into())
            .unwrap()
            .is_none());
        assert!(l.accept("s", OUT, 10, 1, "x".into()).unwrap().is_some());
    }

    #[test]
    fn the_limit_holds_whatever_the_agent_sends() {
        let mut l = Ledger::new(4, names(&["s", "t"]), &BTreeMap::new());
        let c = l
            .accept("s", OUT, 0, 6, "ab\u{e9}cd".into())
            .unwrap()
            .unwrap();
        // 4 bytes kept: "ab" and the 2-byte é.
        assert_eq!((c.len, c.data.as_str()), (4, "ab\u{e9}"));
        assert!(l.truncated("s"));
        assert_eq!(l.accept("s", OUT, 6, 2, "zz".into()).unwrap(), None);
        assert!(!l.truncated("t"));
    }

    #[test]
    fn only_the_documents_steps_may_be_reported() {
        let mut l = Ledger::new(10, names(&["s"]), &BTreeMap::new());
        assert!(l.step("s").is_ok());
        assert!(l
            .step("bad\u{1b}[2J")
            .unwrap_err()
            .contains("no step named"));
        assert!(l.accept("other", OUT, 0, 1, "x".into()).is_err());
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }
}
