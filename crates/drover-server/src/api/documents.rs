//! `/api/v1/documents`: command documents with versions.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{CreateDocument, DocumentList, DocumentView, SetDefaultVersion, UpdateDocument};
use drover_store::DocumentVersion;
use serde::Deserialize;

use super::{rfc3339, rules, validate, ApiError, Body, Path, Query};
use crate::authz::{Action, Principal};
use crate::commands::resolve::{self, builtin_versions, is_builtin};
use crate::{secrets, AppState};
use drover_policy::Resource;

fn view(d: DocumentVersion, builtin: bool, with_content: bool) -> DocumentView {
    DocumentView {
        name: d.name,
        version: d.version,
        latest_version: d.latest_version,
        is_default: d.is_default,
        builtin,
        format: d.format,
        description: d.description,
        created_at: rfc3339(d.created_at),
        // The parameters as parsed, so that a form is built from what the server validates.
        parameters: with_content.then(|| parameters_of(&d.content)).flatten(),
        content: with_content.then_some(d.content),
    }
}

/// A command document's parameters, as SSM spells them; none for a session document.
fn parameters_of(text: &str) -> Option<serde_json::Value> {
    if drover_docs::is_session_document(text) {
        return None;
    }
    drover_docs::parse(text)
        .ok()
        .and_then(|d| serde_json::to_value(d.parameters).ok())
}

/// A name as documents are named (built-in ones too).
fn check_shape(name: &str) -> Result<(), ApiError> {
    validate::pattern(
        "document name",
        rules::DOCUMENT_NAME,
        name,
        "3 to 128 letters, digits, '_', '.' or '-'",
    )
}

/// A name a stored document may have.
fn check_name(name: &str) -> Result<(), ApiError> {
    check_shape(name)?;
    if is_builtin(name) {
        return Err(ApiError::Conflict(format!(
            "{name:?} is a built-in document name (names starting with AWS- or Drover- are reserved)"
        )));
    }
    Ok(())
}

/// Parses and validates a document; a refusal says line, column and reason.
fn check_content(content: &str) -> Result<(String, String), ApiError> {
    let description = if drover_docs::is_session_document(content) {
        drover_docs::parse_session(content)
            .map_err(|e| ApiError::BadRequest(format!("invalid session document: {e}")))?
            .description
    } else {
        drover_docs::parse(content)
            .map_err(|e| ApiError::BadRequest(format!("invalid document: {e}")))?
            .description
    };
    let format = if content.trim_start().starts_with('{') {
        "JSON"
    } else {
        "YAML"
    };
    Ok((format.to_string(), description))
}

async fn may(
    state: &AppState,
    who: &Principal,
    action: Action,
    name: &str,
) -> Result<(), ApiError> {
    let resource = Resource::Document {
        name: name.to_string(),
    };
    state
        .authz
        .check(who, action, &resource, &Default::default())
        .await
}

#[utoipa::path(post, path = "/api/v1/documents", request_body = CreateDocument,
    responses((status = 201, body = DocumentView), (status = 400, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<CreateDocument>,
) -> Result<(StatusCode, Json<DocumentView>), ApiError> {
    check_name(&req.name)?;
    may(&state, &who, Action::CreateDocument, &req.name).await?;
    let (format, description) = check_content(&req.content)?;
    let d = state
        .store
        .create_document(&DocumentVersion {
            name: req.name,
            version: 1,
            content: req.content,
            format,
            description,
            created_at: secrets::now(),
            is_default: true,
            latest_version: 1,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view(d, false, true))))
}

#[utoipa::path(put, path = "/api/v1/documents/{name}", request_body = UpdateDocument,
    params(("name" = String, Path)),
    responses((status = 200, body = DocumentView), (status = 400, body = drover_api::ErrorBody), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
    Body(req): Body<UpdateDocument>,
) -> Result<Json<DocumentView>, ApiError> {
    check_name(&name)?;
    may(&state, &who, Action::UpdateDocument, &name).await?;
    let (format, description) = check_content(&req.content)?;
    let d = state
        .store
        .update_document(&name, &req.content, &format, &description, secrets::now())
        .await?;
    Ok(Json(view(d, false, true)))
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/documents/{name}", params(("name" = String, Path), ("version" = Option<i64>, Query)),
    responses((status = 200, body = DocumentView), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<DocumentView>, ApiError> {
    check_shape(&name)?;
    may(&state, &who, Action::ReadDocument, &name).await?;
    let reference = match q.version {
        Some(v) => format!("{name}:{}", validate::range("version", v, 1..=i64::MAX)?),
        None => name.clone(),
    };
    let d = resolve::find(&*state.store, &reference).await?;
    let builtin = is_builtin(&d.name);
    Ok(Json(view(d, builtin, true)))
}

#[utoipa::path(get, path = "/api/v1/documents", responses((status = 200, body = DocumentList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    who: Principal,
) -> Result<Json<DocumentList>, ApiError> {
    let mut documents: Vec<DocumentView> = builtin_versions(0)
        .into_iter()
        .map(|d| view(d, true, false))
        .collect();
    documents.extend(
        state
            .store
            .list_documents()
            .await?
            .into_iter()
            .map(|d| view(d, false, false)),
    );
    let documents = state
        .authz
        .filter(&who, Action::ReadDocument, documents, |d| {
            Resource::Document {
                name: d.name.clone(),
            }
        })
        .await?;
    Ok(Json(DocumentList { documents }))
}

#[utoipa::path(get, path = "/api/v1/documents/{name}/versions", params(("name" = String, Path)),
    responses((status = 200, body = DocumentList), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn versions(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<Json<DocumentList>, ApiError> {
    check_shape(&name)?;
    may(&state, &who, Action::ReadDocument, &name).await?;
    if is_builtin(&name) {
        let d = resolve::find(&*state.store, &name).await?;
        return Ok(Json(DocumentList {
            documents: vec![view(d, true, false)],
        }));
    }
    let documents = state
        .store
        .document_versions(&name)
        .await?
        .into_iter()
        .map(|d| view(d, false, false))
        .collect();
    Ok(Json(DocumentList { documents }))
}

#[utoipa::path(put, path = "/api/v1/documents/{name}/default", request_body = SetDefaultVersion, params(("name" = String, Path)),
    responses((status = 200, body = DocumentView), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn set_default(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
    Body(req): Body<SetDefaultVersion>,
) -> Result<Json<DocumentView>, ApiError> {
    check_name(&name)?;
    may(&state, &who, Action::UpdateDocument, &name).await?;
    let version = validate::range("version", req.version, 1..=i64::MAX)?;
    // The path names the document (404 when it does not exist); a version it lacks is a bad
    // body, not a missing resource.
    let Some(head) = state.store.get_document(&name, None).await? else {
        return Err(ApiError::NotFound(format!("document {name:?} not found")));
    };
    match state.store.set_default_version(&name, version).await {
        Ok(d) => Ok(Json(view(d, false, false))),
        Err(drover_store::StoreError::NotFound(_)) => Err(ApiError::BadRequest(format!(
            "version: document {name:?} has no version {version} (its versions are 1 to {})",
            head.latest_version
        ))),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(delete, path = "/api/v1/documents/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_name(&name)?;
    may(&state, &who, Action::DeleteDocument, &name).await?;
    if name == resolve::SESSION_PREFERENCES.0 {
        return Err(ApiError::Conflict(format!(
            "{name} holds the session preferences: update it (and set its default version) instead"
        )));
    }
    state.store.delete_document(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
