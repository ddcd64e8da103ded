//! SecureStrings in output: a command's SecureString values (in `DROVER_SECURE_n`, opened for
//! this node) are masked in what the agent sends of a step's output, byte for byte, so that
//! offsets stay those of the journal.

use drover_proto::Invoke;

/// SecureStrings shorter than this are not masked: a stray match would garble output.
const MIN_MASKED: usize = 4;

/// The SecureString values the command carries for this node (in `DROVER_SECURE_n`).
pub fn secrets(invoke: &Invoke) -> Vec<Vec<u8>> {
    invoke
        .env
        .iter()
        .filter(|(k, v)| k.starts_with(drover_proto::SECURE_ENV_PREFIX) && v.len() >= MIN_MASKED)
        .map(|(_, v)| v.as_bytes().to_vec())
        .collect()
}

/// Replaces every whole occurrence of a secret in `buf` with as many `*` (offsets stay those
/// of the journal). Unless this is the stream's last chunk, a tail that may be the start of a
/// secret is held back for the next chunk, so that no secret is ever split between two.
pub fn mask(buf: &mut Vec<u8>, secrets: &[Vec<u8>], last: bool) {
    if !last {
        let mut keep = buf.len();
        for s in secrets {
            let from = buf.len().saturating_sub(s.len().saturating_sub(1));
            let held = (from..buf.len()).find(|&j| {
                buf.get(j..)
                    .zip(s.get(..buf.len() - j))
                    .is_some_and(|(tail, head)| tail == head)
            });
            if let Some(j) = held {
                keep = keep.min(j);
            }
        }
        buf.truncate(keep);
    }
    for s in secrets {
        let mut i = 0;
        while let Some(window) = buf.get_mut(i..i + s.len()) {
            if window == s.as_slice() {
                window.fill(b'*');
                i += s.len();
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_whole_and_never_split_between_chunks() {
        let secrets = vec![b"hunter2!".to_vec()];
        let mut b = b"pw=hunter2! ok".to_vec();
        mask(&mut b, &secrets, true);
        assert_eq!(b, b"pw=******** ok");
        // A chunk ending with the start of a secret holds it back until more comes.
        let mut b = b"pw=hunt".to_vec();
        mask(&mut b, &secrets, false);
        assert_eq!(b, b"pw=");
        let mut b = b"pw=hunt".to_vec();
        mask(&mut b, &secrets, true);
        assert_eq!(b, b"pw=hunt");
        // Nothing to hold: all is sent.
        let mut b = b"nothing here".to_vec();
        mask(&mut b, &secrets, false);
        assert_eq!(b, b"nothing here");
    }
}
