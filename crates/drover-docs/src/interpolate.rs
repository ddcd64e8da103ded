//! Resolving a document with checked parameter values into the steps an agent runs.
//!
//! `{{ name }}` is replaced by the value. A string that is exactly one reference to a list or map
//! becomes that list or map (so `runCommand: "{{ commands }}"` runs each command). A parameter
//! with `interpolationType: ENV_VAR` is never spliced into a script: there the reference becomes
//! `${SSM_name}` and the value travels in the environment variable `SSM_name`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Action, Document, InterpolationType, OnFailure, OnSuccess};
use crate::params::ParamValue;
use crate::parse::REFERENCE;

/// A step ready to run: inputs interpolated, precondition still to be evaluated on the node
/// (it may compare `platformType`, which only the node knows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedStep {
    pub name: String,
    pub action: Action,
    pub inputs: serde_json::Map<String, Value>,
    /// `(left, right)` of `StringEquals`, parameters already substituted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precondition: Option<(String, String)>,
    pub on_failure: OnFailure,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<OnSuccess>,
    #[serde(default)]
    pub finally_step: bool,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub steps: Vec<ResolvedStep>,
    /// Environment for every script: the ENV_VAR parameters.
    pub env: BTreeMap<String, String>,
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

struct Ctx<'a> {
    doc: &'a Document,
    values: &'a BTreeMap<String, ParamValue>,
}

/// Whether a string is script text, and in which language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    No,
    Sh,
    Pwsh,
}

impl Ctx<'_> {
    fn is_env(&self, name: &str) -> bool {
        self.doc
            .parameters
            .get(name)
            .is_some_and(|p| p.interpolation_type == Some(InterpolationType::EnvVar))
    }

    /// Interpolates one string; in a script, ENV_VAR parameters become a reference to the
    /// environment variable in the script's language.
    fn string(&self, s: &str, script: Script) -> Value {
        if let Some(cap) = REFERENCE.captures(s) {
            let whole = cap
                .get(0)
                .is_some_and(|m| m.start() == 0 && m.end() == s.len());
            let name = cap.get(1).map(|m| m.as_str()).unwrap_or_default();
            if whole && !(script != Script::No && self.is_env(name)) {
                if let Some(v) = self.values.get(name) {
                    if !v.is_string() {
                        return v.clone();
                    }
                }
            }
        }
        let out = REFERENCE.replace_all(s, |cap: &regex::Captures<'_>| {
            let name = cap.get(1).map(|m| m.as_str()).unwrap_or_default();
            if script != Script::No && self.is_env(name) {
                match script {
                    // `${SSM_x}` in PowerShell is a PowerShell variable (empty), not the
                    // environment's.
                    Script::Pwsh => format!("$env:SSM_{name}"),
                    _ => format!("${{SSM_{name}}}"),
                }
            } else {
                self.values.get(name).map(as_text).unwrap_or_default()
            }
        });
        Value::String(out.into_owned())
    }

    fn value(&self, v: &Value, script: Script) -> Value {
        match v {
            Value::String(s) => self.string(s, script),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match self.value(item, script) {
                        // A list reference inside a list (runCommand lines) is flattened.
                        Value::Array(inner) => out.extend(inner),
                        other => out.push(other),
                    }
                }
                Value::Array(out)
            }
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), self.value(v, script)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Resolves `doc` with `values` (from [`crate::validate_values`]).
pub fn resolve(doc: &Document, values: &BTreeMap<String, ParamValue>) -> Resolution {
    let ctx = Ctx { doc, values };
    let steps = doc
        .main_steps
        .iter()
        .map(|step| {
            let inputs = step
                .inputs
                .iter()
                .map(|(k, v)| {
                    let script = match step.action {
                        _ if k != "runCommand" => Script::No,
                        Action::RunShellScript => Script::Sh,
                        Action::RunPowerShellScript => Script::Pwsh,
                        _ => Script::No,
                    };
                    (k.clone(), ctx.value(v, script))
                })
                .collect();
            ResolvedStep {
                name: step.name.clone(),
                action: step.action,
                inputs,
                precondition: step.precondition.as_ref().map(|p| {
                    let [l, r] = &p.string_equals;
                    (
                        as_text(&ctx.string(l, Script::No)),
                        as_text(&ctx.string(r, Script::No)),
                    )
                }),
                on_failure: step.on_failure,
                on_success: step.on_success,
                finally_step: step.finally_step,
                max_attempts: step.max_attempts,
            }
        })
        .collect();
    let env = doc
        .parameters
        .iter()
        .filter(|(_, p)| p.interpolation_type == Some(InterpolationType::EnvVar))
        .filter_map(|(name, _)| {
            values
                .get(name)
                .map(|v| (format!("SSM_{name}"), as_text(v)))
        })
        .collect();
    Resolution { steps, env }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_spliced_lists_expand_and_env_vars_stay_out_of_scripts() {
        let doc = crate::parse(
            r#"
schemaVersion: "2.2"
parameters:
  commands: {type: StringList}
  dir: {type: String, default: /tmp}
  secret: {type: String, interpolationType: ENV_VAR}
  os: {type: String, default: Linux}
mainSteps:
  - action: runShellScript
    name: s
    precondition: {StringEquals: ["{{ os }}", Linux]}
    inputs:
      runCommand: ["cd {{dir}}", "{{ commands }}", "echo {{ secret }}"]
      workingDirectory: "{{ dir }}"
"#,
        )
        .unwrap();
        let provided = [
            ("commands".to_string(), json!(["uptime", "id"])),
            ("secret".to_string(), json!("s3cr3t; rm -rf /")),
        ]
        .into();
        let values = crate::validate_values(&doc, &provided).unwrap();
        let r = resolve(&doc, &values);
        let step = &r.steps[0];
        assert_eq!(
            step.inputs["runCommand"],
            json!(["cd /tmp", "uptime", "id", "echo ${SSM_secret}"])
        );
        assert_eq!(step.inputs["workingDirectory"], json!("/tmp"));
        assert_eq!(step.precondition, Some(("Linux".into(), "Linux".into())));
        assert_eq!(r.env["SSM_secret"], "s3cr3t; rm -rf /");
    }

    #[test]
    fn powershell_scripts_read_env_var_parameters_from_the_environment() {
        let doc = crate::parse(
            r#"
schemaVersion: "2.2"
parameters:
  dir: {type: String, interpolationType: ENV_VAR}
mainSteps:
  - action: aws:runPowerShellScript
    name: p
    inputs:
      runCommand: ["Remove-Item -Recurse \"C:\\data\\{{ dir }}\""]
"#,
        )
        .unwrap();
        let provided = [("dir".to_string(), json!("old"))].into();
        let values = crate::validate_values(&doc, &provided).unwrap();
        let r = resolve(&doc, &values);
        let line = r.steps[0].inputs["runCommand"][0].as_str().unwrap();
        assert!(line.contains("$env:SSM_dir"), "{line}");
        assert!(
            !line.contains("${SSM_dir}") && !line.contains("old"),
            "{line}"
        );
    }
}
