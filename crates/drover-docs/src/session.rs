//! Session documents, in SSM's session document schema 1.0: `sessionType` (`Standard_Stream`,
//! `InteractiveCommands`, `NonInteractiveCommands`, `Port`), `inputs` (a shell's preferences),
//! `parameters` (declared like a command document's) and `properties` (the command a
//! command session runs: `properties.linux.commands`).
//!
//! A command session's parameters are never spliced into its command line: `{{ name }}`
//! becomes `${SSM_name}` and the value travels in the environment, so no value, however
//! crafted, is read by the shell as more than a word.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Parameter;
use crate::parse::{check_parameters, deserialize, err, DocError, REFERENCE};
use crate::prefs::Preferences;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionType {
    #[serde(rename = "Standard_Stream")]
    StandardStream,
    InteractiveCommands,
    NonInteractiveCommands,
    Port,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionDocument {
    pub schema_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub session_type: SessionType,
    #[serde(default)]
    pub inputs: Value,
    #[serde(default)]
    pub parameters: BTreeMap<String, Parameter>,
    #[serde(default)]
    pub properties: Value,
}

/// Parses and validates a session document.
pub fn parse_session(text: &str) -> Result<SessionDocument, DocError> {
    let doc: SessionDocument = deserialize(text)?;
    if doc.schema_version != "1.0" {
        return Err(err(
            text,
            Some("schemaVersion"),
            format!(
                "schemaVersion {:?} is not supported for a session document: use \"1.0\"",
                doc.schema_version
            ),
        ));
    }
    check_parameters(text, &doc.parameters)?;
    match doc.session_type {
        SessionType::StandardStream => {
            Preferences::from_inputs(&doc.inputs).map_err(|e| err(text, Some("inputs"), e))?;
        }
        SessionType::InteractiveCommands | SessionType::NonInteractiveCommands => {
            let cmd = doc
                .command()
                .map_err(|e| err(text, Some("properties"), e))?;
            for c in REFERENCE.captures_iter(&cmd) {
                let name = c.get(1).map(|m| m.as_str()).unwrap_or_default();
                if !doc.parameters.contains_key(name) {
                    return Err(err(
                        text,
                        Some(name),
                        format!("{{{{ {name} }}}} is not a parameter of this document"),
                    ));
                }
            }
        }
        SessionType::Port => {
            let names = doc
                .port_references()
                .map_err(|e| err(text, Some("properties"), e))?;
            for name in names {
                if !doc.parameters.contains_key(&name) {
                    return Err(err(
                        text,
                        Some(&name),
                        format!("{{{{ {name} }}}} is not a parameter of this document"),
                    ));
                }
            }
        }
    }
    Ok(doc)
}

/// True when the text is a session document rather than a command document.
pub fn is_session_document(text: &str) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        session_type: Option<Value>,
    }
    deserialize::<Probe>(text).is_ok_and(|p| p.session_type.is_some())
}

impl SessionDocument {
    /// The command line of a command session, as written (`properties.linux.commands`: a
    /// string, or a list of lines).
    pub fn command(&self) -> Result<String, String> {
        let cmds = self
            .properties
            .get("linux")
            .and_then(|l| l.get("commands"))
            .ok_or("properties.linux.commands: a command session needs its command")?;
        let text = match cmds {
            Value::String(s) => s.clone(),
            Value::Array(lines) => lines
                .iter()
                .map(|l| l.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("properties.linux.commands: expected strings")?
                .join("\n"),
            _ => return Err("properties.linux.commands: expected a string or a list".into()),
        };
        if text.trim().is_empty() {
            return Err("properties.linux.commands is empty".into());
        }
        Ok(text)
    }

    /// The command line with every `{{ name }}` as a quoted `"${SSM_name}"` (one word, never
    /// split or globbed), and the environment that carries the (already validated) values.
    pub fn resolve_command(
        &self,
        values: &BTreeMap<String, Value>,
    ) -> Result<(String, BTreeMap<String, String>), String> {
        let line = quote_references(&self.command()?)?;
        let env = values
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => other.to_string(),
                };
                (format!("SSM_{k}"), text)
            })
            .collect();
        Ok((line, env))
    }
}

/// Replaces each `{{ name }}` with a reference to `SSM_name` that the shell expands to exactly
/// one word: `"${SSM_name}"` outside quotes, `${SSM_name}` inside double quotes. Inside single
/// quotes nothing expands, so a reference there is refused.
fn quote_references(cmd: &str) -> Result<String, String> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut out = String::with_capacity(cmd.len());
    let mut state = Quote::None;
    let mut rest = cmd;
    while !rest.is_empty() {
        if let Some(m) = REFERENCE.find(rest).filter(|m| m.start() == 0) {
            let name = REFERENCE
                .captures(m.as_str())
                .and_then(|c| c.get(1))
                .map(|g| g.as_str())
                .unwrap_or_default();
            match state {
                Quote::None => out.push_str(&format!("\"${{SSM_{name}}}\"")),
                Quote::Double => out.push_str(&format!("${{SSM_{name}}}")),
                Quote::Single => {
                    return Err(format!(
                    "{{{{ {name} }}}} is inside single quotes, where the shell would not expand it"
                ))
                }
            }
            rest = rest.get(m.end()..).unwrap_or_default();
            continue;
        }
        let mut chars = rest.chars();
        let Some(c) = chars.next() else { break };
        out.push(c);
        match (c, &state) {
            ('\\', Quote::None | Quote::Double) => {
                // An escaped character is taken as it is.
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            ('\'', Quote::None) => state = Quote::Single,
            ('\'', Quote::Single) => state = Quote::None,
            ('"', Quote::None) => state = Quote::Double,
            ('"', Quote::Double) => state = Quote::None,
            _ => {}
        }
        rest = chars.as_str();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use serde_json::json;

    use super::*;

    const TAIL: &str = r#"
schemaVersion: "1.0"
description: Follow the application log.
sessionType: InteractiveCommands
parameters:
  logfile:
    type: String
    allowedPattern: "^/var/log/[a-z0-9_./-]+$"
properties:
  linux:
    commands: "tail -f {{ logfile }}"
    runAsElevated: false
"#;

    #[test]
    fn an_interactive_command_resolves_without_splicing() {
        let doc = parse_session(TAIL).unwrap();
        assert_eq!(doc.session_type, SessionType::InteractiveCommands);
        let values = crate::validate_declared(
            &doc.parameters,
            &BTreeMap::from([("logfile".to_string(), json!("/var/log/app.log"))]),
        )
        .unwrap();
        let (line, env) = doc.resolve_command(&values).unwrap();
        assert_eq!(line, "tail -f \"${SSM_logfile}\"");
        assert_eq!(env["SSM_logfile"], "/var/log/app.log");
    }

    #[test]
    fn references_expand_to_one_word_in_every_quoting() {
        let q = |s: &str| quote_references(s);
        assert_eq!(q("find {{d}} -x").unwrap(), "find \"${SSM_d}\" -x");
        assert_eq!(q("eval \"{{ c }}\"").unwrap(), "eval \"${SSM_c}\"");
        assert_eq!(q("echo \\\"{{a}}").unwrap(), "echo \\\"\"${SSM_a}\"");
        assert_eq!(q("echo 'x' {{a}}").unwrap(), "echo 'x' \"${SSM_a}\"");
        assert!(q("echo '{{a}}'").unwrap_err().contains("single quotes"));
        // In the shell: a value with spaces and globs stays one word.
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("set -- {}; echo $#", q("{{v}}").unwrap())])
            .env("SSM_v", "/ -exec sh ; *")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }

    #[test]
    fn crafted_values_are_refused_by_the_pattern() {
        let doc = parse_session(TAIL).unwrap();
        for bad in [
            "/var/log/x; sh",
            "/etc/shadow",
            "/var/log/$(id)",
            "/var/log/a b",
        ] {
            let r = crate::validate_declared(
                &doc.parameters,
                &BTreeMap::from([("logfile".to_string(), json!(bad))]),
            );
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let undeclared = TAIL.replace("{{ logfile }}", "{{ other }}");
        assert!(parse_session(&undeclared)
            .unwrap_err()
            .reason
            .contains("other"));
        let bad_prefs = "schemaVersion: '1.0'\nsessionType: Standard_Stream\ninputs:\n  idleSessionTimeout: '0'\n";
        assert!(parse_session(bad_prefs)
            .unwrap_err()
            .reason
            .contains("idleSessionTimeout"));
        let no_cmd = "schemaVersion: '1.0'\nsessionType: NonInteractiveCommands\n";
        assert!(parse_session(no_cmd)
            .unwrap_err()
            .reason
            .contains("properties.linux.commands"));
        let v = "schemaVersion: '2.2'\nsessionType: Standard_Stream\n";
        assert!(parse_session(v).unwrap_err().reason.contains("1.0"));
        assert!(is_session_document(TAIL));
        assert!(!is_session_document(
            "schemaVersion: '2.2'\nmainSteps: []\n"
        ));
    }
}
