//! Session preferences: the `inputs` of the `SessionManagerRunShell` document, in SSM's names
//! (`idleSessionTimeout`, `maxSessionDuration`, `runAsEnabled`, `runAsDefaultUser`,
//! `shellProfile`), plus Drover's own (`recordSessions`, `recordInput`, `shellEnvironment`,
//! `workingDirectory`, `endToEndEncryption`). Every value is checked; a refusal names the field.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// No input and no output for this long ends a session (1 to 60 minutes).
    pub idle_timeout: Duration,
    /// A session ends after this long (1 to 1,440 minutes); none: no limit.
    pub max_duration: Option<Duration>,
    /// Run sessions as `run_as_default_user` instead of the agent's default user.
    pub run_as_enabled: bool,
    pub run_as_default_user: String,
    /// Commands the shell runs first.
    pub shell_profile: String,
    pub shell_environment: BTreeMap<String, String>,
    pub working_directory: Option<String>,
    pub record_sessions: bool,
    pub record_input: bool,
    pub end_to_end: EndToEnd,
}

/// Whether port and SSH sessions are sealed between client and agent, so the server relays
/// bytes it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndToEnd {
    Off,
    /// When the client and the agent can (the default).
    Optional,
    /// Refuse a session that cannot be.
    Required,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(20 * 60),
            max_duration: None,
            run_as_enabled: false,
            run_as_default_user: String::new(),
            shell_profile: String::new(),
            shell_environment: BTreeMap::new(),
            working_directory: None,
            record_sessions: true,
            record_input: false,
            end_to_end: EndToEnd::Optional,
        }
    }
}

/// SSM writes numbers as strings (`"20"`); both are accepted.
fn minutes(field: &str, v: &Value, max: u64) -> Result<Option<Duration>, String> {
    let n = match v {
        Value::Null => return Ok(None),
        Value::String(s) if s.trim().is_empty() => return Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{field}: {s:?} is not a whole number of minutes"))?,
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{field}: {n} is not a whole number of minutes"))?,
        other => return Err(format!("{field}: expected minutes, got {other}")),
    };
    if !(1..=max).contains(&n) {
        return Err(format!("{field}: {n} minutes is out of range (1 to {max})"));
    }
    Ok(Some(Duration::from_secs(n * 60)))
}

fn boolean(field: &str, v: &Value) -> Result<Option<bool>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s == "true" => Ok(Some(true)),
        Value::String(s) if s == "false" => Ok(Some(false)),
        other => Err(format!("{field}: expected true or false, got {other}")),
    }
}

fn string(field: &str, v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!("{field}: expected a string, got {other}")),
    }
}

/// A user name a node may be asked to run a session as: POSIX portable names, nothing a
/// command line could read as more than a name.
pub fn user_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// An environment variable name a shell accepts.
pub fn env_name_ok(k: &str) -> bool {
    k.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && k.len() <= 128
}

impl Preferences {
    /// Reads the `inputs` object of a `Standard_Stream` session document.
    pub fn from_inputs(inputs: &Value) -> Result<Self, String> {
        let mut p = Preferences::default();
        let Some(obj) = inputs.as_object() else {
            return if inputs.is_null() {
                Ok(p)
            } else {
                Err("inputs: expected an object".into())
            };
        };
        let known = [
            "idleSessionTimeout",
            "maxSessionDuration",
            "runAsEnabled",
            "runAsDefaultUser",
            "shellProfile",
            "shellEnvironment",
            "workingDirectory",
            "recordSessions",
            "recordInput",
            "endToEndEncryption",
            // SSM's, accepted and ignored: Drover keeps recordings itself.
            "s3BucketName",
            "s3KeyPrefix",
            "s3EncryptionEnabled",
            "cloudWatchLogGroupName",
            "cloudWatchEncryptionEnabled",
            "cloudWatchStreamingEnabled",
            "kmsKeyId",
        ];
        if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!("inputs.{k}: unknown preference"));
        }
        let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
        if let Some(d) = minutes("idleSessionTimeout", get("idleSessionTimeout"), 60)? {
            p.idle_timeout = d;
        }
        p.max_duration = minutes("maxSessionDuration", get("maxSessionDuration"), 1440)?;
        p.run_as_enabled = boolean("runAsEnabled", get("runAsEnabled"))?.unwrap_or(false);
        p.run_as_default_user =
            string("runAsDefaultUser", get("runAsDefaultUser"))?.unwrap_or_default();
        if p.run_as_enabled && !user_name_ok(&p.run_as_default_user) {
            return Err(format!(
                "runAsDefaultUser: {:?} is not a valid user name (needed when runAsEnabled is true)",
                p.run_as_default_user
            ));
        }
        p.shell_profile = match get("shellProfile") {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Object(m) => match m.get("linux") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(format!(
                        "shellProfile.linux: expected a string, got {other}"
                    ))
                }
            },
            other => {
                return Err(format!(
                    "shellProfile: expected {{\"linux\": \"...\"}}, got {other}"
                ))
            }
        };
        match get("shellEnvironment") {
            Value::Null => {}
            Value::Object(m) => {
                for (k, v) in m {
                    let Some(v) = v.as_str().filter(|v| !v.contains('\0')) else {
                        return Err(format!("shellEnvironment.{k}: expected a string"));
                    };
                    if !env_name_ok(k) {
                        return Err(format!("shellEnvironment.{k}: not a valid variable name"));
                    }
                    // Variables that make the dynamic loader or a shell run code of their
                    // choosing, before the session's user is even switched to.
                    if k.starts_with("LD_")
                        || matches!(k.as_str(), "BASH_ENV" | "ENV" | "PROMPT_COMMAND")
                    {
                        return Err(format!(
                            "shellEnvironment.{k}: this variable may not be set"
                        ));
                    }
                    p.shell_environment.insert(k.clone(), v.to_string());
                }
            }
            other => return Err(format!("shellEnvironment: expected an object, got {other}")),
        }
        p.working_directory =
            string("workingDirectory", get("workingDirectory"))?.filter(|d| !d.is_empty());
        if let Some(d) = &p.working_directory {
            if !d.starts_with('/') || d.contains('\0') {
                return Err(format!("workingDirectory: {d:?} is not an absolute path"));
            }
        }
        p.end_to_end = match get("endToEndEncryption") {
            Value::Null => EndToEnd::Optional,
            Value::String(s) if s == "off" => EndToEnd::Off,
            Value::String(s) if s == "optional" => EndToEnd::Optional,
            Value::String(s) if s == "required" => EndToEnd::Required,
            other => {
                return Err(format!(
                "endToEndEncryption: expected \"off\", \"optional\" or \"required\", got {other}"
            ))
            }
        };
        if let Some(b) = boolean("recordSessions", get("recordSessions"))? {
            p.record_sessions = b;
        }
        p.record_input = boolean("recordInput", get("recordInput"))?.unwrap_or(false);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn ssm_inputs_are_read() {
        let p = Preferences::from_inputs(&json!({
            "idleSessionTimeout": "5",
            "maxSessionDuration": 90,
            "runAsEnabled": true,
            "runAsDefaultUser": "app",
            "shellProfile": {"linux": "cd /srv", "windows": ""},
            "shellEnvironment": {"APP_ENV": "prod"},
            "s3BucketName": "",
            "recordInput": "true",
        }))
        .unwrap();
        assert_eq!(p.idle_timeout, Duration::from_secs(300));
        assert_eq!(p.max_duration, Some(Duration::from_secs(5400)));
        assert_eq!(p.run_as_default_user, "app");
        assert_eq!(p.shell_profile, "cd /srv");
        assert!(p.record_sessions && p.record_input);
        assert_eq!(
            Preferences::from_inputs(&Value::Null).unwrap(),
            Preferences::default()
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (inputs, field) in [
            (json!({"idleSessionTimeout": "0"}), "idleSessionTimeout"),
            (json!({"idleSessionTimeout": 61}), "idleSessionTimeout"),
            (json!({"maxSessionDuration": "1441"}), "maxSessionDuration"),
            (json!({"maxSessionDuration": "soon"}), "maxSessionDuration"),
            (
                json!({"runAsEnabled": true, "runAsDefaultUser": "a;b"}),
                "runAsDefaultUser",
            ),
            (json!({"runAsEnabled": "yes"}), "runAsEnabled"),
            (
                json!({"shellEnvironment": {"1X": "y"}}),
                "shellEnvironment.1X",
            ),
            (json!({"workingDirectory": "relative"}), "workingDirectory"),
            (json!({"colour": "blue"}), "inputs.colour"),
        ] {
            let e = Preferences::from_inputs(&inputs).unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
    }

    #[test]
    fn end_to_end_encryption_is_off_optional_or_required() {
        let read = |v: &str| Preferences::from_inputs(&json!({"endToEndEncryption": v}));
        assert_eq!(read("off").unwrap().end_to_end, EndToEnd::Off);
        assert_eq!(read("required").unwrap().end_to_end, EndToEnd::Required);
        // Sealed whenever both ends can.
        assert_eq!(Preferences::default().end_to_end, EndToEnd::Optional);
        let e = read("maybe").unwrap_err();
        assert!(e.starts_with("endToEndEncryption: expected"), "{e}");
    }
}
