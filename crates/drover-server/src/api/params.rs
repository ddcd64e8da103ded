//! `/api/v1/parameters`: Parameter Store. Names are hierarchical and travel in the query or
//! the body (they hold `/`). A SecureString's value is sealed with the master key before it
//! reaches the store, per version, and opened only for a caller allowed `DecryptParameter` on
//! it who asks; it is never logged, and the audit log records only the name and version.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_api::{LabelParameterRequest, ParameterView, PutParameterRequest, PutParameterResponse};
use drover_policy::{Context, Resource};
use drover_store::params::{ParameterVersion, PutParameter, Selector};

use super::audited::{note, AuditNote};
use super::{rfc3339, validate, ApiError, Body, Query};
use crate::authz::{Action, Principal};
use crate::{secrets, AppState};

/// A name: levels of letters, digits and `_.-`, split by `/`, optionally led by one.
pub const PARAMETER_NAME: &str = r"^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,14}$";
/// A path to list under: `/`, or a name led by `/`.
pub const PARAMETER_PATH: &str = r"^/([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,14}/?)?$";
/// A label: not a number (that would read as a version), at most 100 characters.
pub const PARAMETER_LABEL: &str = r"^[A-Za-z_.-][A-Za-z0-9_.-]{0,99}$";
const MAX_NAME: usize = 1011;
/// SSM's standard tier.
const MAX_VALUE: usize = 4096;
const MAX_LIST: usize = 1000;
const KINDS: [&str; 3] = ["String", "StringList", "SecureString"];

fn check_name(name: &str) -> Result<(), ApiError> {
    validate::text("name", name, MAX_NAME)?;
    validate::pattern(
        "name",
        PARAMETER_NAME,
        name,
        "a parameter name such as /app/prod/db-url (letters, digits, _.- and /, at most 15 levels)",
    )
}

/// Tells agents whose settings live in `name` (see `agent_settings.rs`).
fn changed(state: &AppState, name: &str) {
    state.param_changes.send_modify(|(n, changed)| {
        *n += 1;
        *changed = name.to_string();
    });
}

/// The context a version's value is sealed in.
pub fn context(name: &str, version: i64) -> String {
    format!("parameter/{name}/{version}")
}

async fn may(
    state: &AppState,
    who: &Principal,
    action: Action,
    name: &str,
) -> Result<(), ApiError> {
    let resource = Resource::Parameter {
        name: name.to_string(),
    };
    state
        .authz
        .check(who, action, &resource, &Context::default())
        .await
}

/// A version as shown: a SecureString's value only when `open`.
fn view(state: &AppState, p: ParameterVersion, open: bool) -> Result<ParameterView, ApiError> {
    let value = match (p.kind.as_str(), open) {
        ("SecureString", false) => None,
        ("SecureString", true) => {
            let plain = state
                .sealer
                .open(&context(&p.name, p.version), &p.value)
                .map_err(|e| ApiError::Internal(format!("parameter {}: {e}", p.name)))?;
            Some(
                String::from_utf8(plain)
                    .map_err(|_| ApiError::Internal(format!("parameter {}: not UTF-8", p.name)))?,
            )
        }
        _ => Some(p.value),
    };
    Ok(ParameterView {
        name: p.name,
        kind: p.kind,
        value,
        version: p.version,
        labels: p.labels,
        description: p.description,
        modified_at: rfc3339(p.modified_at),
        modified_by: p.modified_by,
    })
}

/// Stores a version; a SecureString's value is sealed first.
#[utoipa::path(post, operation_id = "put_parameter", path = "/api/v1/parameters", request_body = PutParameterRequest,
    responses((status = 201, body = PutParameterResponse), (status = 400, body = drover_api::ErrorBody), (status = 409, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<PutParameterRequest>,
) -> Result<
    (
        StatusCode,
        axum::Extension<AuditNote>,
        Json<PutParameterResponse>,
    ),
    ApiError,
> {
    check_name(&req.name)?;
    may(&state, &who, Action::PutParameter, &req.name).await?;
    if !KINDS.contains(&req.kind.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "type: {:?} is not String, StringList or SecureString",
            req.kind
        )));
    }
    if req.value.is_empty() || req.value.chars().count() > MAX_VALUE {
        return Err(ApiError::BadRequest(format!(
            "value: 1 to {MAX_VALUE} characters"
        )));
    }
    if req.value.contains('\0') {
        return Err(ApiError::BadRequest("value: no NUL characters".into()));
    }
    validate::text("description", &req.description, 1024)?;
    // The version is known only once stored, and a SecureString is sealed for its version:
    // seal for the next number, and store it only as that number (a race is a conflict).
    let next = state
        .store
        .get_parameter(&req.name, &Selector::Latest)
        .await?
        .map_or(1, |p| p.version + 1);
    let value = if req.kind == "SecureString" {
        state
            .sealer
            .seal(&context(&req.name, next), req.value.as_bytes())
            .map_err(|e| ApiError::Internal(e.to_string()))?
    } else {
        req.value
    };
    let version = state
        .store
        .put_parameter(&PutParameter {
            name: req.name.clone(),
            kind: req.kind.clone(),
            value,
            description: req.description,
            overwrite: req.overwrite,
            version: next,
            at: secrets::now(),
            by: who.user.name.clone(),
        })
        .await?;
    changed(&state, &req.name);
    Ok((
        StatusCode::CREATED,
        note(format!(
            "parameter/{} version {version} ({})",
            req.name, req.kind
        )),
        Json(PutParameterResponse {
            name: req.name,
            version,
        }),
    ))
}

#[derive(Debug, serde::Deserialize)]
pub struct GetQuery {
    name: String,
    version: Option<i64>,
    label: Option<String>,
    #[serde(default)]
    decrypt: bool,
}

/// One version: the newest, or by number or label.
#[utoipa::path(get, operation_id = "get_parameter", path = "/api/v1/parameters",
    params(("name" = String, Query), ("version" = Option<i64>, Query), ("label" = Option<String>, Query), ("decrypt" = Option<bool>, Query)),
    responses((status = 200, body = ParameterView), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(q): Query<GetQuery>,
) -> Result<(axum::Extension<AuditNote>, Json<ParameterView>), ApiError> {
    check_name(&q.name)?;
    may(&state, &who, Action::ReadParameter, &q.name).await?;
    if let Some(l) = &q.label {
        validate::pattern("label", PARAMETER_LABEL, l, "a label")?;
    }
    // Both given: that version, if it carries that label.
    let selector = match (q.version, &q.label) {
        (Some(v), _) => Selector::Version(validate::range("version", v, 1..=i64::MAX)?),
        (None, Some(l)) => Selector::Label(l.clone()),
        (None, None) => Selector::Latest,
    };
    let p = state
        .store
        .get_parameter(&q.name, &selector)
        .await?
        .filter(|p| q.label.as_ref().is_none_or(|l| p.labels.contains(l)))
        .ok_or_else(|| ApiError::NotFound(format!("parameter {} not found", q.name)))?;
    let opened = q.decrypt && p.kind == "SecureString";
    if opened {
        may(&state, &who, Action::DecryptParameter, &q.name).await?;
    }
    let noted = decrypted(opened.then(|| format!("{} version {}", p.name, p.version)));
    Ok((noted, Json(view(&state, p, q.decrypt)?)))
}

/// A read that opened SecureStrings is in the audit log (who read which secret, when); other
/// reads are not.
fn decrypted(what: Option<String>) -> axum::Extension<AuditNote> {
    note(what.map_or_else(String::new, |w| format!("parameter/{w} decrypted")))
}

#[derive(Debug, serde::Deserialize)]
pub struct PathQuery {
    path: String,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    decrypt: bool,
}

/// The newest version of each parameter under a path that the caller may read; SecureStrings
/// opened where asked and allowed.
#[utoipa::path(get, operation_id = "get_parameters_by_path", path = "/api/v1/parameters/by-path",
    params(("path" = String, Query), ("recursive" = Option<bool>, Query), ("decrypt" = Option<bool>, Query)),
    responses((status = 200, body = Vec<ParameterView>)),
    security(("bearer" = [])))]
pub async fn by_path(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(q): Query<PathQuery>,
) -> Result<(axum::Extension<AuditNote>, Json<Vec<ParameterView>>), ApiError> {
    validate::text("path", &q.path, MAX_NAME)?;
    validate::pattern("path", PARAMETER_PATH, &q.path, "a path such as /app/prod")?;
    let found = state
        .store
        .parameters_by_path(&q.path, q.recursive, MAX_LIST)
        .await?;
    // Decided in one pass each (`Authz::filter`): a hidden parameter is not a denial to log.
    let resource = |name: &str| Resource::Parameter {
        name: name.to_string(),
    };
    let readable = state
        .authz
        .filter(&who, Action::ReadParameter, found, |p| resource(&p.name))
        .await?;
    let secrets: Vec<String> = readable
        .iter()
        .filter(|p| q.decrypt && p.kind == "SecureString")
        .map(|p| p.name.clone())
        .collect();
    let openable = state
        .authz
        .filter(&who, Action::DecryptParameter, secrets, |n| resource(n))
        .await?;
    let noted = decrypted((!openable.is_empty()).then(|| {
        let names = openable.join(",");
        names.chars().take(1024).collect()
    }));
    let mut out = Vec::new();
    for p in readable {
        let open = openable.contains(&p.name);
        // One version that does not open spoils only its own value, not the listing.
        let name = p.name.clone();
        match view(&state, p.clone(), open) {
            Ok(v) => out.push(v),
            Err(e) => {
                tracing::warn!(parameter = %name, error = %e, "a parameter's value did not open");
                out.push(view(&state, p, false)?);
            }
        }
    }
    Ok((noted, Json(out)))
}

#[derive(Debug, serde::Deserialize)]
pub struct NameQuery {
    name: String,
    #[serde(default)]
    decrypt: bool,
}

/// Every version kept, oldest first.
#[utoipa::path(get, operation_id = "get_parameter_history", path = "/api/v1/parameters/history",
    params(("name" = String, Query), ("decrypt" = Option<bool>, Query)),
    responses((status = 200, body = Vec<ParameterView>), (status = 404, body = drover_api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(q): Query<NameQuery>,
) -> Result<(axum::Extension<AuditNote>, Json<Vec<ParameterView>>), ApiError> {
    check_name(&q.name)?;
    may(&state, &who, Action::ReadParameter, &q.name).await?;
    let versions = state.store.parameter_history(&q.name).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!(
            "parameter {} not found",
            q.name
        )));
    }
    let secure = versions.iter().any(|p| p.kind == "SecureString");
    if q.decrypt && secure {
        may(&state, &who, Action::DecryptParameter, &q.name).await?;
    }
    let noted = decrypted((q.decrypt && secure).then(|| format!("{} every version", q.name)));
    let shown = versions
        .into_iter()
        .map(|p| view(&state, p, q.decrypt))
        .collect::<Result<_, _>>()?;
    Ok((noted, Json(shown)))
}

#[derive(Debug, serde::Deserialize)]
pub struct DeleteQuery {
    name: String,
}

#[utoipa::path(delete, operation_id = "delete_parameter", path = "/api/v1/parameters", params(("name" = String, Query)),
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Query(q): Query<DeleteQuery>,
) -> Result<(StatusCode, axum::Extension<AuditNote>), ApiError> {
    check_name(&q.name)?;
    may(&state, &who, Action::DeleteParameter, &q.name).await?;
    state.store.delete_parameter(&q.name).await?;
    changed(&state, &q.name);
    Ok((
        StatusCode::NO_CONTENT,
        note(format!("parameter/{}", q.name)),
    ))
}

/// Puts labels on a version.
#[utoipa::path(post, operation_id = "label_parameter", path = "/api/v1/parameters/labels", request_body = LabelParameterRequest,
    responses((status = 204), (status = 404, body = drover_api::ErrorBody)), security(("bearer" = [])))]
pub async fn label(
    State(state): State<Arc<AppState>>,
    who: Principal,
    Body(req): Body<LabelParameterRequest>,
) -> Result<(StatusCode, axum::Extension<AuditNote>), ApiError> {
    check_name(&req.name)?;
    may(&state, &who, Action::PutParameter, &req.name).await?;
    let version = validate::range("version", req.version, 1..=i64::MAX)?;
    if req.labels.is_empty() || req.labels.len() > 10 {
        return Err(ApiError::BadRequest("labels: 1 to 10".into()));
    }
    for l in &req.labels {
        validate::pattern(
            "labels",
            PARAMETER_LABEL,
            l,
            "a label (letters, digits, _.-, not led by a digit)",
        )?;
    }
    state
        .store
        .label_parameter(&req.name, version, &req.labels)
        .await?;
    changed(&state, &req.name);
    Ok((
        StatusCode::NO_CONTENT,
        note(format!(
            "parameter/{} version {version} labels {}",
            req.name,
            req.labels.join(",")
        )),
    ))
}
