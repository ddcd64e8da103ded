//! Input validation at the boundary: every string from a request is checked here, with an
//! error that names the field and says what is allowed.

use std::collections::BTreeMap;

use drover_store::NodeId;

use super::{rules, ApiError};

pub const MAX_TAGS: usize = 50;

pub fn node_id(s: &str) -> Result<NodeId, ApiError> {
    NodeId::parse(s)
        .filter(|_| rules::matches(rules::NODE_ID, s))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid node ID {s:?}: expected n- followed by 17 lowercase hex digits"
            ))
        })
}

pub fn tag_key(k: &str) -> Result<(), ApiError> {
    if rules::matches(rules::TAG_KEY, k) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid tag key {k:?}: 1 to 128 characters of letters, digits and _ . : / + - @"
        )))
    }
}

pub fn tag_value(k: &str, v: &str) -> Result<(), ApiError> {
    if rules::matches(&rules::tag_value(), v) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid value for tag {k:?}: at most 256 characters, no control characters"
        )))
    }
}

pub fn tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::BadRequest(format!(
            "too many tags: {} (at most {MAX_TAGS})",
            tags.len()
        )));
    }
    for (k, v) in tags {
        tag_key(k)?;
        tag_value(k, v)?;
    }
    Ok(())
}

/// A string that must match `pattern` (from [`rules`]); `what` says what it should look like.
pub fn pattern(field: &str, pattern: &str, v: &str, what: &str) -> Result<(), ApiError> {
    if rules::matches(pattern, v) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid {field} {v:?}: {what}"
        )))
    }
}

/// A number in `range`.
pub fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ApiError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid {field} {v}: from {} to {}",
            range.start(),
            range.end()
        )))
    }
}

/// A whole number given as text (a query parameter), in `range`.
pub fn count(
    field: &str,
    v: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid {field} {v:?}: a number from {} to {}",
                range.start(),
                range.end()
            ))
        })
}

/// A display name or text field: bounded, printable.
pub fn text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if rules::matches(&rules::text(0, max), v) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid {field}: at most {max} characters, no control characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked() {
        assert!(tag_key("env").is_ok());
        assert!(tag_key("aws:cloudformation/stack-name").is_ok());
        assert!(tag_key("").is_err());
        assert!(tag_key("has space").is_err());
        assert!(tag_value("k", "line\nbreak").is_err());
        assert!(tag_value("k", &"x".repeat(257)).is_err());
    }
}
