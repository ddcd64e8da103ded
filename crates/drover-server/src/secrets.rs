//! Random identifiers and secrets, and their hashes. Secrets (API tokens, activation codes) are
//! 128+ bits of randomness, so a plain SHA-256 is the right hash: there is nothing to
//! brute-force, and lookups by hash stay one indexed query.

use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;
use sha2::{Digest, Sha256};

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new API token: `drv_` and 43 alphanumerics (about 256 bits).
pub fn new_token() -> String {
    format!(
        "drv_{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 43)
    )
}

/// A new activation code: 24 alphanumerics (about 142 bits).
pub fn new_activation_code() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

/// 17 random lowercase hex digits, for node IDs.
pub fn hex17() -> String {
    let n: u128 = rand::thread_rng().gen();
    format!("{:017x}", n & ((1u128 << 68) - 1))
}

/// A random hex ID of `bytes` bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill(buf.as_mut_slice());
    hex::encode(buf)
}
