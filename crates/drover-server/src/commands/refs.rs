//! Parameter Store references in a command, as SSM writes them: `{{ssm:/app/prod/db-url}}` is
//! replaced by the parameter's value when the command is sent; `{{ssm-secure:/app/prod/pw}}`
//! (a SecureString) only in a script's commands, where it becomes a reference to an
//! environment variable (`${DROVER_SECURE_0}`). The command record keeps the parameter's
//! name in that variable, never its value; the value is opened as each invocation is
//! delivered, so it reaches the node and nothing else. A reference to a parameter that is
//! missing, or that the sender may not read (decrypt, for a SecureString), refuses the command
//! before anything is sent, naming it.
//!
//! A SecureString is used only where the sender named it, in the parameter values they sent: a
//! reference written into a document (or a document it runs) would let that document's author
//! use the sender's right to decrypt. The variable pins the version checked when sent.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use drover_proto::Invoke;
use drover_store::params::Selector;
use drover_store::Store;
use regex::Regex;
use serde_json::Value;

use crate::api::ApiError;
use crate::authz::{Action, Authz, Principal};
use crate::sealing::Sealer;

static REF: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\{\{\s*(ssm|ssm-secure):(/?[A-Za-z0-9_.\-/]+)\s*\}\}").ok());

/// The environment variables that carry SecureStrings to a script.
pub const SECURE_PREFIX: &str = drover_proto::SECURE_ENV_PREFIX;

/// The actions whose `runCommand` is a script, and how a script names an environment variable.
fn script_var(action: &str, var: &str) -> Option<String> {
    match action {
        "aws:runShellScript" => Some(format!("${{{var}}}")),
        "aws:runPowerShellScript" => Some(format!("${{env:{var}}}")),
        _ => None,
    }
}

/// Every reference in a tree of values: (secure, name).
fn collect(v: &Value, out: &mut Vec<(bool, String)>) {
    let Some(re) = REF.as_ref() else { return };
    match v {
        Value::String(s) => {
            for c in re.captures_iter(s) {
                let secure = c.get(1).is_some_and(|m| m.as_str() == "ssm-secure");
                let name = c.get(2).map(|m| m.as_str().to_string()).unwrap_or_default();
                if !out.contains(&(secure, name.clone())) {
                    out.push((secure, name));
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        Value::Object(m) => m.values().for_each(|i| collect(i, out)),
        _ => {}
    }
}

struct Subst<'a> {
    plain: &'a BTreeMap<String, String>,
    vars: &'a BTreeMap<String, String>,
}

impl Subst<'_> {
    /// Replaces references in a string; `script` is how a script names a variable, if this is
    /// a script's text. A SecureString anywhere else is refused.
    fn string(&self, s: &str, script: Option<&str>) -> Result<String, ApiError> {
        let Some(re) = REF.as_ref() else {
            return Ok(s.to_string());
        };
        let mut bad = None;
        let out = re.replace_all(s, |c: &regex::Captures<'_>| {
            let secure = c.get(1).is_some_and(|m| m.as_str() == "ssm-secure");
            let name = c.get(2).map(|m| m.as_str()).unwrap_or_default();
            if !secure {
                return self.plain.get(name).cloned().unwrap_or_default();
            }
            match (script, self.vars.get(name)) {
                (Some(action), Some(var)) => script_var(action, var).unwrap_or_default(),
                _ => {
                    bad = Some(name.to_string());
                    String::new()
                }
            }
        });
        match bad {
            Some(name) => Err(ApiError::BadRequest(format!(
                "{{{{ssm-secure:{name}}}}} may appear only in a script's commands (runCommand), \
                 where it reaches the script in an environment variable"
            ))),
            None => Ok(out.into_owned()),
        }
    }

    fn value(&self, v: &mut Value, script: Option<&str>) -> Result<(), ApiError> {
        match v {
            Value::String(s) => *s = self.string(s, script)?,
            Value::Array(items) => {
                for i in items {
                    self.value(i, script)?;
                }
            }
            Value::Object(m) => {
                for i in m.values_mut() {
                    self.value(i, script)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A list of steps (`{action, inputs, ...}`): a script step's `runCommand` may hold
    /// SecureStrings; everything else only plain references.
    fn steps(&self, steps: &mut Value) -> Result<(), ApiError> {
        let Some(list) = steps.as_array_mut() else {
            return self.value(steps, None);
        };
        for step in list {
            let action = step
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let Some(fields) = step.as_object_mut() else {
                continue;
            };
            for (k, v) in fields.iter_mut() {
                if k != "inputs" {
                    self.value(v, None)?;
                    continue;
                }
                let Some(inputs) = v.as_object_mut() else {
                    self.value(v, None)?;
                    continue;
                };
                for (ik, iv) in inputs.iter_mut() {
                    let script = (ik == "runCommand" && script_var(&action, "x").is_some())
                        .then_some(action.as_str());
                    self.value(iv, script)?;
                }
            }
        }
        Ok(())
    }
}

/// Resolves the references in a command's payload for `who`, before it is stored or sent.
pub async fn resolve(
    store: &dyn Store,
    authz: &Authz,
    who: &Principal,
    sent: &BTreeMap<String, Value>,
    invoke: &mut Invoke,
) -> Result<(), ApiError> {
    let mut found = Vec::new();
    collect(&invoke.steps, &mut found);
    for d in invoke.documents.values() {
        collect(d, &mut found);
    }
    for v in invoke.env.values() {
        collect(&Value::String(v.clone()), &mut found);
    }
    let mut named = Vec::new();
    for v in sent.values() {
        collect(v, &mut named);
    }
    if let Some((_, name)) = found.iter().find(|r| r.0 && !named.contains(r)) {
        return Err(ApiError::BadRequest(format!(
            "{{{{ssm-secure:{name}}}}} is written in the document, not in the parameters you sent: \
             a SecureString is used only where the sender names it (pass the reference as a \
             parameter value)"
        )));
    }
    if found.is_empty() {
        return Ok(());
    }
    let mut plain = BTreeMap::new();
    let mut vars = BTreeMap::new();
    // Variable -> `NAME:VERSION`: the version checked now is the one opened at delivery.
    let mut pinned = BTreeMap::new();
    for (secure, name) in found {
        let written = format!(
            "{{{{{}:{name}}}}}",
            if secure { "ssm-secure" } else { "ssm" }
        );
        let resource = drover_policy::Resource::Parameter { name: name.clone() };
        let ctx = drover_policy::Context::default();
        let action = if secure {
            Action::DecryptParameter
        } else {
            Action::ReadParameter
        };
        authz
            .check(who, action, &resource, &ctx)
            .await
            .map_err(|_| {
                ApiError::Forbidden(format!("{written}: you may not read parameter {name}"))
            })?;
        let p = store
            .get_parameter(&name, &Selector::Latest)
            .await?
            .ok_or_else(|| {
                ApiError::BadRequest(format!("{written}: parameter {name} does not exist"))
            })?;
        match (secure, p.kind == "SecureString") {
            (false, false) => {
                plain.insert(name, p.value);
            }
            (true, true) => {
                let var = format!("{SECURE_PREFIX}{}", vars.len());
                pinned.insert(var.clone(), format!("{name}:{}", p.version));
                vars.insert(name, var);
            }
            (false, true) => {
                return Err(ApiError::BadRequest(format!(
                    "{written}: parameter {name} is a SecureString; reference it as {{{{ssm-secure:{name}}}}}"
                )))
            }
            (true, false) => {
                return Err(ApiError::BadRequest(format!(
                    "{written}: parameter {name} is a {}, not a SecureString; reference it as {{{{ssm:{name}}}}}",
                    p.kind
                )))
            }
        }
    }
    let subst = Subst {
        plain: &plain,
        vars: &vars,
    };
    subst.steps(&mut invoke.steps)?;
    for d in invoke.documents.values_mut() {
        if let Some(steps) = d.get_mut("steps") {
            subst.steps(steps)?;
        }
        if let Some(env) = d.get_mut("env") {
            subst.value(env, None)?;
        }
    }
    let env: Vec<(String, String)> = invoke
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in env {
        invoke.env.insert(k, subst.string(&v, None)?);
    }
    // The variables name their parameters' versions until delivery opens them.
    invoke.env.extend(pinned);
    Ok(())
}

/// Opens the SecureStrings an invocation carries (its `DROVER_SECURE_*` variables name them),
/// just before it goes to the node. Err says which could not be opened.
pub async fn open_secrets(
    store: &dyn Store,
    sealer: &Sealer,
    env: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for (k, v) in env.iter_mut() {
        if !k.starts_with(SECURE_PREFIX) {
            continue;
        }
        let (name, version) = v
            .rsplit_once(':')
            .and_then(|(n, ver)| Some((n.to_string(), ver.parse::<i64>().ok()?)))
            .ok_or_else(|| format!("{k} does not name a parameter version"))?;
        let p = store
            .get_parameter(&name, &Selector::Version(version))
            .await
            .map_err(|e| format!("parameter {name}: {e}"))?
            .filter(|p| p.kind == "SecureString")
            .ok_or_else(|| {
                format!("parameter {name} version {version} is gone, or not a SecureString")
            })?;
        let plain = sealer
            .open(&crate::api::parameter_context(&p.name, p.version), &p.value)
            .map_err(|e| format!("parameter {v}: {e}"))?;
        *v = String::from_utf8(plain).map_err(|_| format!("parameter {v}: not UTF-8"))?;
    }
    Ok(())
}
