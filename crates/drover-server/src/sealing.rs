//! Secrets at rest (webhook keys now, Parameter Store's SecureStrings next): envelope
//! encryption. Each value is sealed with its own random data key (ChaCha20-Poly1305), and the
//! data key is sealed with the master key in the data directory (`master.key`, 0600). Both
//! bind the value's context (`webhook/wh-...`) as associated data, so a sealed value copied
//! into another row does not open there. Only the master key's two operations would move to
//! an external key manager.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The format's version, first in every sealed value.
const VERSION: &str = "v1";

pub struct Sealer {
    master: LessSafeKey,
    rng: SystemRandom,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the master key must be 32 bytes")]
    BadKey,
    #[error("the system's random number generator failed")]
    Random,
    /// Tampered with, sealed under another master key or context, or not a sealed value.
    #[error("a sealed value does not open (changed, or sealed with another master key)")]
    Open,
}

fn key(bytes: &[u8]) -> Result<LessSafeKey, SealError> {
    let k = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| SealError::BadKey)?;
    Ok(LessSafeKey::new(k))
}

impl Sealer {
    pub fn new(master: &[u8]) -> Result<Self, SealError> {
        Ok(Self {
            master: key(master)?,
            rng: SystemRandom::new(),
        })
    }

    /// 32 random bytes: a new master key.
    pub fn generate_key() -> Result<[u8; 32], SealError> {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| SealError::Random)?;
        Ok(k)
    }

    /// `nonce || ciphertext`, base64url.
    fn seal_with(&self, k: &LessSafeKey, context: &str, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buf = plain.to_vec();
        k.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut buf,
        )
        .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(B64.encode(out))
    }

    fn open_with(k: &LessSafeKey, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = B64.decode(sealed).map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = body.to_vec();
        let plain = k
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }

    /// Seals `plain` for `context`: `v1.<sealed data key>.<sealed value>`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, SealError> {
        let data_key = Self::generate_key()?;
        let wrapped = self.seal_with(&self.master, context, &data_key)?;
        let value = self.seal_with(&key(&data_key)?, context, plain)?;
        Ok(format!("{VERSION}.{wrapped}.{value}"))
    }

    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.split('.');
        let (Some(VERSION), Some(wrapped), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Open);
        };
        let data_key = Self::open_with(&self.master, context, wrapped)?;
        Self::open_with(&key(&data_key)?, context, value)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let sealer = Sealer::new(&Sealer::generate_key().unwrap()).unwrap();
        let sealed = sealer.seal("webhook/wh-1", b"s3cret").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_ne!(
            sealed,
            sealer.seal("webhook/wh-1", b"s3cret").unwrap(),
            "random"
        );
        assert_eq!(sealer.open("webhook/wh-1", &sealed).unwrap(), b"s3cret");

        assert!(sealer.open("webhook/wh-2", &sealed).is_err(), "another row");
        let other = Sealer::new(&Sealer::generate_key().unwrap()).unwrap();
        assert!(other.open("webhook/wh-1", &sealed).is_err(), "another key");
        // One character of the sealed value changed.
        let (head, tail) = sealed.split_at(sealed.len() - 2);
        let swap = if tail.starts_with('A') { "B" } else { "A" };
        let flipped = format!("{head}{swap}{}", &tail[1..]);
        assert!(sealer.open("webhook/wh-1", &flipped).is_err(), "edited");
        for junk in ["", "v1", "v2.a.b", "v1.a.b.c", "v1.!!.??"] {
            assert!(sealer.open("webhook/wh-1", junk).is_err(), "{junk}");
        }
        assert!(Sealer::new(&[0u8; 16]).is_err());
    }
}
