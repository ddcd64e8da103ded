//! Session limits from the preferences: the idle timeout and maximum duration a broker
//! enforces, and how a shell document of an operator's own may only make them stricter.

use std::time::Duration;

use drover_docs::Preferences;

use super::broker::Limits;

/// One minute of session limits. Tests shorten it (feature `test-hooks`, variable
/// `DROVER_TEST_SESSION_MINUTE_MS`) so that an idle timeout of "1 minute" is testable.
fn minute() -> Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("DROVER_TEST_SESSION_MINUTE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    Duration::from_secs(60)
}

/// A shell document's preferences within the server-wide ones.
pub(super) fn stricter(server: Preferences, own: Preferences) -> Preferences {
    Preferences {
        idle_timeout: server.idle_timeout.min(own.idle_timeout),
        max_duration: match (server.max_duration, own.max_duration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        shell_profile: own.shell_profile,
        shell_environment: own.shell_environment,
        working_directory: own.working_directory,
        ..server
    }
}

fn minutes(d: Duration) -> String {
    match d.as_secs() / 60 {
        1 => "1 minute".into(),
        n => format!("{n} minutes"),
    }
}

fn scaled(d: Duration) -> Duration {
    minute().mul_f64(d.as_secs_f64() / 60.0)
}

/// The limits a session's broker enforces.
pub(super) fn of(prefs: &Preferences) -> Limits {
    Limits {
        idle: scaled(prefs.idle_timeout),
        max: prefs.max_duration.map(scaled),
        idle_words: minutes(prefs.idle_timeout),
        max_words: prefs.max_duration.map(minutes).unwrap_or_default(),
    }
}
