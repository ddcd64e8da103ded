//! The document model, in SSM's words (schema 2.2).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A parsed, validated document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    #[serde(rename = "schemaVersion")]
    pub schema_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// In document order, which is the order a console shows them in.
    #[serde(default)]
    pub parameters: BTreeMap<String, Parameter>,
    #[serde(rename = "mainSteps")]
    pub main_steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParamType {
    String,
    StringList,
    Integer,
    Boolean,
    StringMap,
    MapList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Parameter {
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_items: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_chars: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolation_type: Option<InterpolationType>,
    /// A Drover extension: the value is a secret. A command's view shows it only to users
    /// allowed `ReadSecrets` on the document; it may have no default (a document is readable
    /// by everyone who may read documents).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterpolationType {
    /// Pass the value as the environment variable `SSM_<name>` instead of splicing it.
    #[serde(rename = "ENV_VAR")]
    EnvVar,
}

/// What a step does: one of the plugins of SSM's command document reference, accepted with or
/// without the `aws:` prefix. Drover runs four of them; documents with the others (typically
/// Windows steps beside Linux ones) are accepted, and such a step, unless its precondition
/// skips it, fails on the node saying it is not supported there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RunShellScript,
    /// Run with PowerShell 7 (`pwsh`) when the node has it.
    RunPowerShellScript,
    RunDocument,
    DownloadContent,
    /// Another SSM plugin (its `aws:` name), which Drover does not run.
    Unsupported(&'static str),
}

/// SSM command plugins that Drover accepts in documents but does not run.
pub const UNSUPPORTED_PLUGINS: &[&str] = &[
    "aws:applications",
    "aws:cloudWatch",
    "aws:configureDocker",
    "aws:configurePackage",
    "aws:domainJoin",
    "aws:psModule",
    "aws:refreshAssociation",
    "aws:runDockerAction",
    "aws:softwareInventory",
    "aws:updateAgent",
    "aws:updateSsmAgent",
];

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::RunShellScript => "aws:runShellScript",
            Action::RunPowerShellScript => "aws:runPowerShellScript",
            Action::RunDocument => "aws:runDocument",
            Action::DownloadContent => "aws:downloadContent",
            Action::Unsupported(name) => name,
        }
    }

    /// A step that runs a script the document gives (`runCommand`).
    pub fn runs_script(self) -> bool {
        matches!(self, Action::RunShellScript | Action::RunPowerShellScript)
    }
}

impl TryFrom<String> for Action {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bare = s.strip_prefix("aws:").unwrap_or(&s);
        match bare {
            "runShellScript" => return Ok(Action::RunShellScript),
            "runPowerShellScript" => return Ok(Action::RunPowerShellScript),
            "runDocument" => return Ok(Action::RunDocument),
            "downloadContent" => return Ok(Action::DownloadContent),
            _ => {}
        }
        if let Some(name) = UNSUPPORTED_PLUGINS
            .iter()
            .find(|p| p.strip_prefix("aws:") == Some(bare))
        {
            return Ok(Action::Unsupported(name));
        }
        Err(format!(
            "unknown action {s:?}: expected one of SSM's command plugins (aws:runShellScript, \
             aws:runPowerShellScript, aws:runDocument, aws:downloadContent, {})",
            UNSUPPORTED_PLUGINS.join(", ")
        ))
    }
}

// By hand: a derived impl would demand `'de: 'static` for the plugin name.
impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Action::try_from(s).map_err(serde::de::Error::custom)
    }
}

impl From<Action> for String {
    fn from(a: Action) -> String {
        a.name().to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Stop the document; the invocation fails.
    #[default]
    Exit,
    /// Stop the document; the invocation succeeds.
    SuccessAndExit,
    /// Go on with the next step; the invocation still fails at the end.
    Continue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnSuccess {
    /// Stop the document after this step, successfully.
    Exit,
}

/// `{"StringEquals": ["platformType", "Linux"]}` or `{"StringEquals": ["{{ p }}", "x"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precondition {
    #[serde(rename = "StringEquals")]
    pub string_equals: [String; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    pub action: Action,
    pub name: String,
    #[serde(default)]
    pub inputs: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precondition: Option<Precondition>,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<OnSuccess>,
    #[serde(default)]
    pub finally_step: bool,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub max_attempts: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}
