//! Webhooks (the audit log's events, posted to operators' endpoints) and change windows (when
//! sessions on a tagged node are expected).
//!
//! A webhook is a cursor into the audit log: the events after it that match the hook's
//! patterns are its queue. The log is durable and ordered, so the queue is too, and a restart
//! resumes at the cursor; the cursor moves past an event only once it was delivered (or given
//! up on), so delivery is at least once and in order.

/// A webhook, as stored. The secret is sealed by the server: the store never sees it in clear.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Webhook {
    /// `wh-` and 16 hex digits.
    pub id: String,
    pub url: String,
    /// Event patterns: an action name, with `*` matching any run of characters.
    pub events: Vec<String>,
    pub description: String,
    /// The HMAC key, sealed (see the server's `sealing`).
    pub sealed_secret: String,
    pub created_by: String,
    pub created_at: i64,
    pub state: HookState,
}

/// Where a webhook is in the log, and how its next event is faring.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HookState {
    /// The last audit entry handled (delivered, given up on, or not of the hook's kinds).
    pub cursor: i64,
    /// Failed attempts at the next event.
    pub attempts: i64,
    /// When the first of those failed (Unix ms), 0 if none did.
    pub failing_since_ms: i64,
    /// Not before this (Unix ms): the backoff after a failure.
    pub next_at_ms: i64,
    /// The last failure's message.
    pub last_error: String,
}

/// One attempt to deliver one event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    pub hook_id: String,
    /// The audit entry, 0 for a test event.
    pub seq: i64,
    pub event: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    pub at_ms: i64,
    /// The receiver's HTTP status, 0 if it gave none.
    pub status: i64,
    /// `delivered`, `failed` (retried later) or `gave_up`.
    pub outcome: String,
    pub error: String,
    pub duration_ms: i64,
}

/// When sessions on the nodes with a tag are expected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeWindow {
    /// `cw-` and 16 hex digits.
    pub id: String,
    pub tag_key: String,
    pub tag_value: String,
    /// Days it opens on, `mon` to `sun`, comma-separated.
    pub days: String,
    /// `HH:MM`, local time in `timezone`. An end at or before the start closes the next day.
    pub start: String,
    pub end: String,
    /// An IANA time zone name (`Europe/Berlin`), or `UTC`.
    pub timezone: String,
    pub description: String,
    pub created_by: String,
    pub created_at: i64,
}

/// Whether an event's action matches a pattern: `*` matches any run of characters, anything
/// else itself.
pub fn pattern_matches(pattern: &str, action: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(mut rest) = action.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole action must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Whether a hook with these patterns wants an event.
pub fn wants(patterns: &[String], action: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_or_by_wildcard() {
        let yes = [
            ("access.expired", "access.expired"),
            ("*", "anything"),
            ("*access_request", "approve_access_request"),
            ("session.*", "session.outside_change_window"),
            ("*access*", "access.expired"),
            ("a*b*c", "aXbYc"),
            ("a*a", "aa"),
        ];
        for (p, a) in yes {
            assert!(pattern_matches(p, a), "{p} should match {a}");
        }
        let no = [
            ("access.expired", "access.expired2"),
            ("session.*", "sessions.started"),
            ("*access_request", "approve_access_request_x"),
            ("a*a", "a"),
            ("a*b*c", "aXcYb"),
            ("", "x"),
        ];
        for (p, a) in no {
            assert!(!pattern_matches(p, a), "{p} should not match {a}");
        }
        assert!(wants(&["x".into(), "login*".into()], "login_failed"));
        assert!(!wants(&[], "login"));
    }
}
