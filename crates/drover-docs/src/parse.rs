//! Parsing and validating a document, with the line and column of each mistake.

use std::collections::BTreeSet;
use std::fmt;

use regex::Regex;
use serde_json::Value;

use crate::model::*;

/// Why a document was refused: where (when known) and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DocError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub reason: String,
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.reason),
            (Some(l), None) => write!(f, "line {l}: {}", self.reason),
            _ => f.write_str(&self.reason),
        }
    }
}

/// Largest document accepted, like SSM's 64 KB.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

pub(crate) fn err(text: &str, needle: Option<&str>, reason: String) -> DocError {
    let (line, column) = needle.and_then(|n| locate(text, n)).unzip();
    DocError {
        line,
        column,
        reason,
    }
}

/// The 1-based line and column of the first occurrence of `needle`.
fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    let at = text.find(needle)?;
    let before = text.get(..at)?;
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(at, |nl| at - nl - 1) + 1;
    Some((line, column))
}

/// `{{ name }}`, with optional spaces. A fixed pattern, exercised by the tests.
#[allow(clippy::expect_used)]
pub(crate) static REFERENCE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(r"\{\{\s*([A-Za-z0-9_.:-]+)\s*\}\}").expect("a valid fixed pattern")
});

/// Parses a document from YAML or JSON (JSON when it starts with `{`) and validates it.
pub fn parse(text: &str) -> Result<Document, DocError> {
    let doc: Document = deserialize(text)?;
    validate(text, &doc)?;
    Ok(doc)
}

/// Reads YAML or JSON into `T`, within the size limit and without YAML aliases; a refusal
/// says where.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, DocError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(err(
            text,
            None,
            format!(
                "the document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                text.len()
            ),
        ));
    }
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| DocError {
            line: Some(e.line()),
            column: Some(e.column()),
            reason: strip_location(&e.to_string()),
        })
    } else {
        refuse_aliases(text)?;
        serde_yaml_ng::from_str(text).map_err(|e| {
            let loc = e.location();
            DocError {
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                reason: strip_location(&e.to_string()),
            }
        })
    }
}

/// Refuses YAML anchors and aliases. An alias repeats what its anchor names, so nested aliases
/// let a 64 KB document expand into gigabytes before anything is validated ("billion laughs"),
/// on the server and on every agent that reads a local document; command documents do not need
/// them. A text that does not scan is refused with the scanner's reason and place.
fn refuse_aliases(text: &str) -> Result<(), DocError> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            // Deny by default: what this scanner cannot read is not handed to another parser
            // that might read aliases in it.
            Err(e) => {
                let m = e.marker();
                return Err(DocError {
                    line: Some(m.line()),
                    column: Some(m.col()),
                    reason: e.info().to_string(),
                });
            }
        };
        let anchored = match event {
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => true,
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _) => anchor != 0,
            _ => false,
        };
        if anchored {
            return Err(DocError {
                line: Some(mark.line()),
                column: Some(mark.col()),
                reason: "YAML anchors and aliases (&name, *name) are not allowed in documents"
                    .into(),
            });
        }
    }
}

/// serde errors end with " at line L column C"; we report the location separately.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg.get(..i).unwrap_or(msg).to_string(),
        None => msg.to_string(),
    }
}

/// Parameter declarations: names, patterns that compile, defaults that pass their own checks.
pub(crate) fn check_parameters(
    text: &str,
    parameters: &std::collections::BTreeMap<String, crate::model::Parameter>,
) -> Result<(), DocError> {
    let name_re =
        Regex::new(r"^[A-Za-z0-9_]{1,128}$").map_err(|e| err(text, None, e.to_string()))?;
    for (name, p) in parameters {
        if !name_re.is_match(name) {
            return Err(err(
                text,
                Some(name),
                format!("invalid parameter name {name:?}: letters, digits and _ only"),
            ));
        }
        if let Some(pat) = &p.allowed_pattern {
            Regex::new(pat).map_err(|e| {
                err(
                    text,
                    Some(pat),
                    format!("allowedPattern of parameter {name:?} is not a valid regular expression: {e}"),
                )
            })?;
        }
        if p.sensitive && p.default.is_some() {
            return Err(err(
                text,
                Some(name),
                format!(
                    "parameter {name:?} is sensitive and cannot have a default: whoever may \
                     read the document would read it"
                ),
            ));
        }
        if let Some(default) = &p.default {
            crate::params::check_one(name, p, default.clone()).map_err(|e| {
                err(
                    text,
                    Some(name),
                    format!("the default of parameter {name:?} is invalid: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

fn validate(text: &str, doc: &Document) -> Result<(), DocError> {
    if doc.schema_version != "2.2" {
        return Err(err(
            text,
            Some("schemaVersion"),
            format!(
                "schemaVersion {:?} is not supported: use \"2.2\"",
                doc.schema_version
            ),
        ));
    }
    check_parameters(text, &doc.parameters)?;
    if doc.main_steps.is_empty() {
        return Err(err(
            text,
            Some("mainSteps"),
            "mainSteps is empty: a document needs at least one step".into(),
        ));
    }
    let step_re =
        Regex::new(r"^[A-Za-z0-9_.-]{1,100}$").map_err(|e| err(text, None, e.to_string()))?;
    let refs = &*REFERENCE;
    let mut seen = BTreeSet::new();
    for step in &doc.main_steps {
        let here = Some(step.name.as_str()).filter(|n| !n.is_empty());
        if !step_re.is_match(&step.name) {
            return Err(err(
                text,
                here,
                format!(
                    "invalid step name {:?}: 1 to 100 letters, digits, '_', '.' or '-'",
                    step.name
                ),
            ));
        }
        if !seen.insert(step.name.clone()) {
            return Err(err(
                text,
                here,
                format!(
                    "two steps are named {:?}: step names must be unique",
                    step.name
                ),
            ));
        }
        if !(1..=10).contains(&step.max_attempts) {
            return Err(err(
                text,
                here,
                format!("step {:?}: maxAttempts must be from 1 to 10", step.name),
            ));
        }
        check_inputs(step).map_err(|r| err(text, here, format!("step {:?}: {r}", step.name)))?;
        if let Some(pre) = &step.precondition {
            let [left, right] = &pre.string_equals;
            if left == "platformType" {
                if !["Linux", "MacOS", "Windows"].contains(&right.as_str()) {
                    return Err(err(
                        text,
                        Some(right),
                        format!(
                            "step {:?}: platformType is compared with Linux, MacOS or Windows, not {right:?}",
                            step.name
                        ),
                    ));
                }
            } else if !refs.is_match(left) {
                return Err(err(
                    text,
                    Some(left),
                    format!(
                        "step {:?}: a precondition compares platformType or a {{{{ parameter }}}}, not {left:?}",
                        step.name
                    ),
                ));
            }
        }
        // Every {{ reference }} must name a declared parameter.
        let mut all = Value::Object(step.inputs.clone()).to_string();
        if let Some(pre) = &step.precondition {
            all.push_str(&pre.string_equals.join(" "));
        }
        for cap in refs.captures_iter(&all) {
            let Some(name) = cap.get(1).map(|m| m.as_str()) else {
                continue;
            };
            if !doc.parameters.contains_key(name) {
                return Err(err(
                    text,
                    Some(name),
                    format!(
                        "step {:?} uses {{{{ {name} }}}}, which is not a declared parameter",
                        step.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A value that is exactly one `{{ parameter }}`: checked once the parameter is known.
fn is_reference(s: &str) -> bool {
    REFERENCE
        .find(s)
        .is_some_and(|m| m.start() == 0 && m.end() == s.len())
}

fn is_str_or_ref(v: &Value) -> bool {
    v.is_string()
}

fn check_inputs(step: &Step) -> Result<(), String> {
    let allowed: &[&str] = match step.action {
        // Not run by Drover: its inputs are SSM's business; the step fails on the node.
        Action::Unsupported(_) => return Ok(()),
        Action::RunShellScript | Action::RunPowerShellScript => &[
            "runCommand",
            "workingDirectory",
            "timeoutSeconds",
            "env",
            "id",
        ],
        Action::RunDocument => &[
            "documentType",
            "documentPath",
            "documentParameters",
            "timeoutSeconds",
        ],
        Action::DownloadContent => &["sourceType", "sourceInfo", "destinationPath"],
    };
    for key in step.inputs.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "unknown input {key:?} for {}: expected one of {}",
                step.action.name(),
                allowed.join(", ")
            ));
        }
    }
    let get = |k: &str| step.inputs.get(k);
    match step.action {
        Action::Unsupported(_) => {}
        Action::RunShellScript | Action::RunPowerShellScript => {
            match get("runCommand") {
                Some(Value::String(_)) => {}
                Some(Value::Array(lines)) if lines.iter().all(Value::is_string) => {}
                Some(_) => return Err("runCommand must be a string or a list of strings".into()),
                None => return Err("runCommand is required".into()),
            }
            if let Some(v) = get("workingDirectory") {
                if !is_str_or_ref(v) {
                    return Err("workingDirectory must be a string".into());
                }
            }
            if let Some(v) = get("timeoutSeconds") {
                if !(v.is_u64() || v.is_string()) {
                    return Err("timeoutSeconds must be a number of seconds".into());
                }
            }
            if let Some(v) = get("env") {
                let ok = v
                    .as_object()
                    .is_some_and(|m| m.values().all(Value::is_string));
                if !ok {
                    return Err("env must map names to strings".into());
                }
            }
        }
        Action::RunDocument => {
            match get("documentType").and_then(Value::as_str) {
                Some("SSMDocument") | Some("LocalPath") => {}
                Some(r) if is_reference(r) => {}
                Some(other) => {
                    return Err(format!(
                        "documentType {other:?} is not supported: use SSMDocument or LocalPath"
                    ))
                }
                None => return Err("documentType is required (SSMDocument or LocalPath)".into()),
            }
            if !get("documentPath").is_some_and(Value::is_string) {
                return Err("documentPath is required".into());
            }
            if let Some(v) = get("documentParameters") {
                if !(v.is_object() || v.is_string()) {
                    return Err("documentParameters must be a map (or a JSON string of one)".into());
                }
            }
        }
        Action::DownloadContent => {
            match get("sourceType").and_then(Value::as_str) {
                Some("HTTP") | Some("Git") | Some("GitHub") | Some("SSMDocument") => {}
                Some(r) if is_reference(r) => {}
                Some(other) => {
                    return Err(format!(
                    "sourceType {other:?} is not supported: use HTTP, Git, GitHub or SSMDocument"
                ))
                }
                None => return Err("sourceType is required".into()),
            }
            match get("sourceInfo") {
                Some(Value::Object(_)) | Some(Value::String(_)) => {}
                _ => return Err("sourceInfo is required: a map, or a JSON string of one".into()),
            }
            if let Some(v) = get("destinationPath") {
                if !v.is_string() {
                    return Err("destinationPath must be a string".into());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod alias_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Ten levels of ten aliases each: 10^10 strings once expanded, from a few hundred bytes.
    fn laughs() -> String {
        let mut doc = String::from("schemaVersion: '2.2'\nl0: &l0 [\"lol\"]\n");
        for i in 1..10 {
            let refs = vec![format!("*l{}", i - 1); 10].join(", ");
            doc.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        doc.push_str("mainSteps:\n  - action: aws:runShellScript\n    name: s\n    inputs:\n      runCommand: *l9\n");
        doc
    }

    #[test]
    fn anchors_and_aliases_are_refused_before_they_expand() {
        let e = parse(&laughs()).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.reason.contains("anchors and aliases"), "{e}");
        let one = "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: &n s\n    inputs: {runCommand: [echo]}\n";
        assert!(parse(one).unwrap_err().reason.contains("anchors"));
    }

    #[test]
    fn ampersands_and_stars_in_scripts_are_not_aliases() {
        let doc = "schemaVersion: '2.2'\nmainSteps:\n  - action: aws:runShellScript\n    name: s\n    inputs:\n      runCommand: [\"ls *.log && echo &done\", 'a & b']\n";
        parse(doc).unwrap();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const GOOD: &str = r#"
schemaVersion: "2.2"
description: Say hello
parameters:
  greeting:
    type: String
    default: hello
    allowedPattern: "^[a-z ]+$"
  commands:
    type: StringList
    default: ["uptime"]
mainSteps:
  - action: aws:runShellScript
    name: hello
    inputs:
      runCommand:
        - echo {{ greeting }}
  - action: runShellScript
    name: run
    precondition:
      StringEquals: [platformType, Linux]
    onFailure: continue
    inputs:
      runCommand: "{{ commands }}"
      timeoutSeconds: 60
"#;

    #[test]
    fn a_good_document_parses_in_yaml_and_json() {
        let doc = parse(GOOD).unwrap();
        assert_eq!(doc.main_steps.len(), 2);
        assert_eq!(doc.main_steps[1].on_failure, OnFailure::Continue);
        assert_eq!(doc.main_steps[1].action, Action::RunShellScript);
        let json = serde_json::to_string_pretty(&doc).unwrap();
        assert_eq!(parse(&json).unwrap(), doc);
    }

    fn refused(text: &str) -> DocError {
        parse(text).unwrap_err()
    }

    #[test]
    fn mistakes_are_reported_with_line_column_and_reason() {
        let e = refused(&GOOD.replace("aws:runShellScript", "aws:runPowerShelScript"));
        assert!(e.reason.contains("unknown action"), "{e}");
        assert!(e.reason.contains("aws:configureDocker"), "{e}");
        assert_eq!(e.line, Some(13), "{e}");

        let e = refused(&GOOD.replace("onFailure: continue", "onFailure: retry"));
        assert!(e.reason.contains("unknown variant `retry`"), "{e}");
        assert!(e.line.is_some());

        let e = refused(&GOOD.replace("echo {{ greeting }}", "echo {{ greting }}"));
        assert!(e.reason.contains("greting"), "{e}");
        assert!(e.to_string().starts_with("line "), "{e}");

        let e = refused(&GOOD.replace("name: run", "name: hello"));
        assert!(e.reason.contains("unique"), "{e}");

        let e = refused(&GOOD.replace("default: hello", "default: hello\n    sensitive: true"));
        assert!(
            e.reason.contains("sensitive and cannot have a default"),
            "{e}"
        );

        let e = refused(&GOOD.replace("default: hello", "default: HELLO"));
        assert!(
            e.reason.contains("default of parameter \"greeting\""),
            "{e}"
        );

        let e = refused(&GOOD.replace("timeoutSeconds: 60", "timeout: 60"));
        assert!(e.reason.contains("unknown input \"timeout\""), "{e}");

        let e = refused(&GOOD.replace("\"2.2\"", "\"1.2\""));
        assert!(e.reason.contains("schemaVersion"), "{e}");

        let e = refused("{\"schemaVersion\": \"2.2\", \"mainSteps\": [}");
        assert_eq!(e.line, Some(1));
    }
}
