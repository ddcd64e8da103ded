//! Documents as the server serves them: built-in ones (versioned with the binary) and stored
//! ones; and resolving a document with parameters into the payload agents run, including the
//! documents a `runDocument` or `downloadContent` step fetches from this server.

use std::collections::BTreeMap;

use drover_docs::Document;
use drover_proto::Invoke;
use drover_store::{DocumentVersion, Store};
use serde_json::Value;

use crate::api::ApiError;

/// Built-in documents: name and YAML. Their names are reserved.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "RunShellScript",
        include_str!("builtin/RunShellScript.yaml"),
    ),
    ("RunDocument", include_str!("builtin/RunDocument.yaml")),
    (
        "ApplyAnsiblePlaybooks",
        include_str!("builtin/ApplyAnsiblePlaybooks.yaml"),
    ),
    (
        "StartInteractiveCommand",
        include_str!("builtin/StartInteractiveCommand.yaml"),
    ),
    (
        "StartNonInteractiveCommand",
        include_str!("builtin/StartNonInteractiveCommand.yaml"),
    ),
    (
        "StartPortForwardingSession",
        include_str!("builtin/StartPortForwardingSession.yaml"),
    ),
    (
        "StartPortForwardingSessionToRemoteHost",
        include_str!("builtin/StartPortForwardingSessionToRemoteHost.yaml"),
    ),
    (
        "StartSSHSession",
        include_str!("builtin/StartSSHSession.yaml"),
    ), // Fleet Manager's admin tasks: the console runs these, never a shell.
    (
        "Drover-FleetManager-ListProcesses",
        include_str!("builtin/Drover-FleetManager-ListProcesses.yaml"),
    ),
    (
        "Drover-FleetManager-KillProcess",
        include_str!("builtin/Drover-FleetManager-KillProcess.yaml"),
    ),
    (
        "Drover-FleetManager-ListDirectory",
        include_str!("builtin/Drover-FleetManager-ListDirectory.yaml"),
    ),
    (
        "Drover-FleetManager-ReadFile",
        include_str!("builtin/Drover-FleetManager-ReadFile.yaml"),
    ),
    (
        "Drover-FleetManager-ListUsers",
        include_str!("builtin/Drover-FleetManager-ListUsers.yaml"),
    ),
    (
        "Drover-FleetManager-CreateUser",
        include_str!("builtin/Drover-FleetManager-CreateUser.yaml"),
    ),
    (
        "Drover-FleetManager-DeleteUser",
        include_str!("builtin/Drover-FleetManager-DeleteUser.yaml"),
    ),
    (
        "Drover-FleetManager-Performance",
        include_str!("builtin/Drover-FleetManager-Performance.yaml"),
    ),
    (
        "Drover-FleetManager-TailLog",
        include_str!("builtin/Drover-FleetManager-TailLog.yaml"),
    ),
];

/// The session preferences document: created in the store on first start (as SSM creates its
/// own on first use), so that operators change preferences by updating it.
pub const SESSION_PREFERENCES: (&str, &str) = (
    "SessionManagerRunShell",
    include_str!("builtin/SessionManagerRunShell.yaml"),
);

/// Built-in documents carry the server's version as their version.
pub const BUILTIN_VERSION: i64 = 1;

pub fn is_builtin(name: &str) -> bool {
    BUILTIN.iter().any(|(n, _)| *n == name)
        || name.starts_with("AWS-")
        || name.starts_with("Drover-")
}

/// Accepts the SSM names of the built-ins too (`AWS-RunShellScript`).
fn builtin(name: &str) -> Option<&'static str> {
    let bare = name.strip_prefix("AWS-").unwrap_or(name);
    BUILTIN
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, text)| *text)
}

pub fn builtin_versions(created_at: i64) -> Vec<DocumentVersion> {
    BUILTIN
        .iter()
        .map(|(name, text)| DocumentVersion {
            name: name.to_string(),
            version: BUILTIN_VERSION,
            content: text.to_string(),
            format: "YAML".into(),
            description: describe(text),
            created_at,
            is_default: true,
            latest_version: BUILTIN_VERSION,
        })
        .collect()
}

/// A document's description, command or session document alike.
pub fn describe(text: &str) -> String {
    if drover_docs::is_session_document(text) {
        drover_docs::parse_session(text)
            .map(|d| d.description)
            .unwrap_or_default()
    } else {
        drover_docs::parse(text)
            .map(|d| d.description)
            .unwrap_or_default()
    }
}

/// Splits `name[:version]`.
pub fn split_ref(reference: &str) -> Result<(String, Option<i64>), ApiError> {
    match reference.rsplit_once(':') {
        Some((name, v)) => {
            let version = v.parse::<i64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "invalid document version in {reference:?}: use NAME or NAME:VERSION with VERSION a positive number"
                ))
            })?;
            Ok((name.to_string(), Some(version)))
        }
        None => Ok((reference.to_string(), None)),
    }
}

/// Finds a document by `name[:version]` and returns its record.
pub async fn find(store: &dyn Store, reference: &str) -> Result<DocumentVersion, ApiError> {
    let (name, version) = split_ref(reference)?;
    if let Some(text) = builtin(&name) {
        // The canonical name, so that policies decide on one name whichever alias was sent
        // (a `forbid` on Drover-FleetManager-* must hold for AWS-Drover-FleetManager-* too).
        let name = name.strip_prefix("AWS-").unwrap_or(&name).to_string();
        if version.is_some_and(|v| v != BUILTIN_VERSION) {
            return Err(ApiError::NotFound(format!(
                "built-in document {name} has only version {BUILTIN_VERSION}"
            )));
        }
        return Ok(DocumentVersion {
            name,
            version: BUILTIN_VERSION,
            content: text.to_string(),
            format: "YAML".into(),
            description: describe(text),
            created_at: 0,
            is_default: true,
            latest_version: BUILTIN_VERSION,
        });
    }
    store
        .get_document(&name, version)
        .await?
        .ok_or_else(|| match version {
            Some(v) => ApiError::NotFound(format!("version {v} of document {name:?} not found")),
            None => ApiError::NotFound(format!("document {name:?} not found")),
        })
}

fn parse(record: &DocumentVersion) -> Result<Document, ApiError> {
    if drover_docs::is_session_document(&record.content) {
        return Err(ApiError::BadRequest(format!(
            "{} is a session document: start it with `drover shell` (POST /api/v1/sessions), not Run Command",
            record.name
        )));
    }
    drover_docs::parse(&record.content).map_err(|e| {
        ApiError::Internal(format!(
            "stored document {}:{} no longer parses: {e}",
            record.name, record.version
        ))
    })
}

/// The parts of an [`Invoke`] that are the same for every node of a command.
pub struct Payload {
    pub document: DocumentVersion,
    pub invoke: Invoke,
}

/// Resolves `reference` with `parameters` (refusing bad values, naming the parameter) into the
/// payload for agents.
pub async fn payload(
    store: &dyn Store,
    reference: &str,
    parameters: &BTreeMap<String, Value>,
    execution_timeout_secs: u64,
    output_limit: u64,
) -> Result<Payload, ApiError> {
    let record = find(store, reference).await?;
    let doc = parse(&record)?;
    let values = drover_docs::validate_values(&doc, parameters)
        .map_err(|e| ApiError::BadRequest(format!("invalid parameters: {e}")))?;
    let resolution = drover_docs::resolve(&doc, &values);
    let mut documents = BTreeMap::new();
    let mut contents = BTreeMap::new();
    gather(store, &resolution, &mut documents, &mut contents, 0).await?;
    let steps = serde_json::to_value(&resolution.steps)
        .map_err(|e| ApiError::Internal(format!("encoding steps: {e}")))?;
    Ok(Payload {
        document: record,
        invoke: Invoke {
            invocation_id: String::new(),
            command_id: String::new(),
            steps,
            env: resolution.env,
            documents,
            contents,
            execution_timeout_secs,
            output_limit,
            received: BTreeMap::new(),
        },
    })
}

/// Resolves the stored documents that steps refer to, recursively (at most three levels).
async fn gather(
    store: &dyn Store,
    resolution: &drover_docs::Resolution,
    documents: &mut BTreeMap<String, Value>,
    contents: &mut BTreeMap<String, String>,
    depth: usize,
) -> Result<(), ApiError> {
    for step in &resolution.steps {
        match step.action {
            drover_docs::Action::RunDocument
                if step.inputs.get("documentType").and_then(Value::as_str)
                    == Some("SSMDocument") =>
            {
                if depth >= 3 {
                    return Err(ApiError::BadRequest(
                        "runDocument nests too deeply (at most 3 levels)".into(),
                    ));
                }
                let path = step
                    .inputs
                    .get("documentPath")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if documents.contains_key(&path) {
                    continue;
                }
                let record = find(store, &path).await.map_err(|e| {
                    ApiError::BadRequest(format!(
                        "step {:?} runs document {path:?}: {e}",
                        step.name
                    ))
                })?;
                let doc = parse(&record)?;
                let params: BTreeMap<String, Value> = match step.inputs.get("documentParameters") {
                    Some(Value::Object(m)) => m.clone().into_iter().collect(),
                    Some(Value::String(s)) if !s.trim().is_empty() => serde_json::from_str(s)
                        .map_err(|e| {
                            ApiError::BadRequest(format!(
                                "step {:?}: documentParameters is not a JSON map: {e}",
                                step.name
                            ))
                        })?,
                    _ => BTreeMap::new(),
                };
                let values = drover_docs::validate_values(&doc, &params).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "step {:?} runs {path}: invalid parameters: {e}",
                        step.name
                    ))
                })?;
                let nested = drover_docs::resolve(&doc, &values);
                Box::pin(gather(store, &nested, documents, contents, depth + 1)).await?;
                let json = serde_json::to_value(&nested)
                    .map_err(|e| ApiError::Internal(format!("encoding steps: {e}")))?;
                documents.insert(path, json);
            }
            drover_docs::Action::DownloadContent
                if step.inputs.get("sourceType").and_then(Value::as_str) == Some("SSMDocument") =>
            {
                let info = match step.inputs.get("sourceInfo") {
                    Some(Value::Object(m)) => m.clone(),
                    Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
                    _ => serde_json::Map::new(),
                };
                let name = info
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if name.is_empty() {
                    return Err(ApiError::BadRequest(format!(
                        "step {:?}: sourceInfo.name is required for SSMDocument",
                        step.name
                    )));
                }
                let record = find(store, &name).await.map_err(|e| {
                    ApiError::BadRequest(format!(
                        "step {:?} downloads document {name:?}: {e}",
                        step.name
                    ))
                })?;
                contents.insert(name, record.content);
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn builtin_documents_parse() {
        for (name, text) in BUILTIN {
            if drover_docs::is_session_document(text) {
                drover_docs::parse_session(text)
                    .map_err(|e| format!("{name}: {e}"))
                    .unwrap();
            } else {
                drover_docs::parse(text)
                    .map_err(|e| format!("{name}: {e}"))
                    .unwrap();
            }
        }
        let prefs = drover_docs::parse_session(SESSION_PREFERENCES.1).unwrap();
        assert_eq!(
            drover_docs::Preferences::from_inputs(&prefs.inputs).unwrap(),
            drover_docs::Preferences::default()
        );
    }

    #[test]
    fn references_split() {
        assert_eq!(split_ref("doc").unwrap(), ("doc".into(), None));
        assert_eq!(split_ref("doc:3").unwrap(), ("doc".into(), Some(3)));
        assert!(split_ref("doc:x").is_err());
        assert!(split_ref("doc:0").is_err());
    }
}
