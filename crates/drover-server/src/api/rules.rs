//! The shapes of the API's inputs, as regular expressions that both the validators (`validate.rs`
//! and the handlers) and the OpenAPI document (`openapi.rs`) use: a client generated from the
//! document accepts exactly what the server accepts, and the two cannot drift.
//!
//! The patterns are written in the subset that Rust's `regex`, ECMA-262 (JSON Schema) and
//! Python's `re` (schemathesis) read alike: anchored, `\u` escapes, no inline flags. Lengths count
//! characters (code points), as JSON Schema does.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::Regex;

/// Rust's `char::is_control`: the Cc category.
const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";

pub const NODE_ID: &str = r"^n-[0-9a-f]{17}$";
pub const COMMAND_ID: &str = r"^cmd-[A-Za-z0-9-]{0,60}$";
pub const INVOCATION_ID: &str = r"^inv-[A-Za-z0-9-]{0,60}$";
pub const SESSION_ID: &str = r"^s-[0-9a-f]{10,40}$";
/// A command line: not blank, no NUL.
pub const COMMAND_LINE: &str = r"^[^\u0000]*[^\u0000\s][^\u0000]*$";
/// A terminal type (`TERM`).
pub const TERM: &str = r"^[A-Za-z0-9_.+-]{1,64}$";
pub const DOCUMENT_NAME: &str = r"^[A-Za-z0-9_.-]{3,128}$";
/// `NAME` or `NAME:VERSION` (a positive version).
pub const DOCUMENT_REF: &str = r"^[A-Za-z0-9_.-]{3,128}(:[1-9][0-9]{0,17})?$";
/// User names: what an identity provider's `preferred_username` or e-mail looks like.
pub const USER_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$";
pub const GROUP_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
pub const TOKEN_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}$";
pub const POLICY_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/// A new password: 12 to 1024 characters, no control characters.
pub const PASSWORD: (usize, usize) = (12, 1024);
/// A policy file, in characters.
pub const MAX_POLICY_CHARS: usize = 256 * 1024;
pub const TAG_KEY: &str = r"^[A-Za-z0-9_.:/+@-]{1,128}$";
/// A rate: a count from 1, or a percentage from 1 to 100 (`max_concurrency`).
pub const RATE: &str = r"^([1-9][0-9]{0,8}|([1-9][0-9]?|100)%)$";
/// A rate that may be zero (`max_errors`).
pub const RATE_OR_ZERO: &str = r"^([0-9]{1,9}|([0-9][0-9]?|100)%)$";

/// Printable text of `min` to `max` characters (no control characters).
pub fn text(min: usize, max: usize) -> String {
    format!("^[^{CONTROL}]{{{min},{max}}}$")
}

/// A tag value.
pub fn tag_value() -> String {
    text(0, 256)
}

/// The `filter` of `GET /api/v1/nodes`: `tag:KEY=VALUE`, `platform=P`, `status=S` (any case) or
/// `name=N`.
pub fn node_filter() -> String {
    let key = TAG_KEY.trim_start_matches('^').trim_end_matches('$');
    let value = format!("[^{CONTROL}]{{0,256}}");
    let statuses = ["online", "connectionlost", "connection_lost", "inactive"]
        .map(any_case)
        .join("|");
    format!("^(tag:{key}={value}|platform={value}|status=({statuses})|name={value})$")
}

/// `word` in any mix of cases, as a pattern without flags.
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Does `s` match `pattern` (one of the above)?
pub fn matches(pattern: &str, s: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(re) = cache.get(pattern) {
        return re.is_match(s);
    }
    match Regex::new(pattern) {
        Ok(re) => {
            let m = re.is_match(s);
            cache.insert(pattern.to_string(), re);
            m
        }
        // The patterns are constants tested below: unreachable, and failing closed if not.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles_and_means_what_it_says() {
        assert!(matches(NODE_ID, "n-0123456789abcdef0"));
        assert!(!matches(NODE_ID, "n-0123456789ABCDEF0"));
        assert!(matches(COMMAND_ID, "cmd-1a2b"));
        assert!(!matches(COMMAND_ID, "0"));
        assert!(matches(DOCUMENT_REF, "AWS-RunShellScript:3"));
        assert!(!matches(DOCUMENT_REF, "doc:0"));
        assert!(!matches(DOCUMENT_NAME, "ab"));
        assert!(matches(RATE, "100%") && matches(RATE, "7") && !matches(RATE, "0"));
        assert!(!matches(RATE, "101%") && matches(RATE_OR_ZERO, "0%"));
        let t = text(0, 3);
        assert!(matches(&t, "é€😀") && !matches(&t, "abcd") && !matches(&t, "a\u{85}"));
        let f = node_filter();
        assert!(matches(&f, "tag:env=prod=1") && matches(&f, "status=Connection_Lost"));
        assert!(matches(&f, "platform=") && !matches(&f, "status=gone"));
        assert!(!matches(&f, "colour=red") && !matches(&f, "name=a\nb"));
    }
}
