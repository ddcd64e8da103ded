//! Parameter Store over the API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A value to store: the parameter's first version, or (with `overwrite`) its next.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutParameterRequest {
    /// `/app/prod/db-url`: letters, digits, `_.-`, levels split by `/`.
    pub name: String,
    /// `String`, `StringList` (comma-separated) or `SecureString`.
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
    pub value: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub overwrite: bool,
}

fn default_type() -> String {
    "String".into()
}

/// What a put made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutParameterResponse {
    pub name: String,
    pub version: i64,
}

/// Labels to put on a version (each moves there from any other version).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelParameterRequest {
    pub name: String,
    pub version: i64,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ParameterView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Absent for a SecureString unless decryption was asked for and allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub version: i64,
    pub labels: Vec<String>,
    pub description: String,
    pub modified_at: String,
    pub modified_by: String,
}
